"""Gauges computed from the SQL store at scrape time: feedback, models, review queue, dead letters.

These figures belong to the database, not to one worker process: the people and jobs
that fill `feedback`, `model_registry` and `model_events` run elsewhere. The collector
runs a handful of GROUP BY queries (each served by an index) at most once per
`min_interval_s` (15 s; `$TEXTWORKER_METRICS_SQL_INTERVAL_S` changes it); scrapes in
between get the cached figures, so a Prometheus server scraping every few seconds
never loads the database.

A table that does not exist yet (an older schema) contributes nothing;
`textworker_sql_up` is 0 when the database could not be read.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from prometheus_client.core import GaugeMetricFamily, Metric

from worker.sinks import tables
from worker.sinks.sql import make_engine, normalise_url

log = logging.getLogger(__name__)
DEFAULT_INTERVAL_S = 15.0
INTERVAL_ENV = "TEXTWORKER_METRICS_SQL_INTERVAL_S"


@dataclass
class _Family:
    name: str
    doc: str
    labels: list[str]
    rows: list[tuple[list[str], float]] = field(default_factory=list)


def _queries() -> list[tuple[str, str, list[str], Any]]:
    fb, mr, me, rq, dl = tables.feedback, tables.model_registry, tables.model_events, tables.review_queue, tables.dead_letters
    count = sa.func.count()
    return [
        ("textworker_feedback_items", "Feedback rows (labels, answers, references people gave), by source.",
         ["pipeline", "stage", "source"], sa.select(fb.c.pipeline, fb.c.stage, fb.c.source, count).group_by(fb.c.pipeline, fb.c.stage, fb.c.source)),
        ("textworker_review_queue_items", "Review-queue items by status (open, labelled, skipped).",
         ["pipeline", "stage", "status"], sa.select(rq.c.pipeline, rq.c.stage, rq.c.status, count).group_by(rq.c.pipeline, rq.c.stage, rq.c.status)),
        ("textworker_model_versions", "Registered model versions (one per fine-tune run) by status: candidate, champion, retired.",
         ["name", "status"], sa.select(mr.c.name, mr.c.status, count).group_by(mr.c.name, mr.c.status)),
        ("textworker_model_events", "Model lifecycle events by action: register (a fine-tune run), promote/reject (gate decisions), rollback, retire.",
         ["name", "action"], sa.select(me.c.name, me.c.action, count).group_by(me.c.name, me.c.action)),
        ("textworker_model_champion_info", "1 for the version each model family serves (status champion).",
         ["name", "version"], sa.select(mr.c.name, mr.c.version, sa.literal(1)).where(mr.c.status == "champion")),
        ("textworker_dead_letters_pending", "Dead letters stored and not requeued, by reason.",
         ["pipeline", "reason"], sa.select(dl.c.pipeline, dl.c.reason, count).where(dl.c.requeued_at.is_(None)).group_by(dl.c.pipeline, dl.c.reason)),
        ("textworker_dead_letters_requeued", "Dead letters marked for requeue and not yet processed again.",
         ["pipeline"], sa.select(dl.c.pipeline, count).where(dl.c.requeued_at.is_not(None)).group_by(dl.c.pipeline)),
    ]


class SqlLifecycleCollector:
    """A prometheus_client collector over one database (see the module docstring)."""

    def __init__(self, database_url: str, min_interval_s: float = DEFAULT_INTERVAL_S) -> None:
        self.url = normalise_url(database_url)
        self.min_interval_s = min_interval_s
        self._lock = threading.Lock()
        self._engine: sa.Engine | None = None
        self._families: list[_Family] = []
        self._up = 0.0
        self._seconds = 0.0
        self._at = float("-inf")

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if time.monotonic() - self._at >= self.min_interval_s:
                self._refresh()
            families, up, seconds = list(self._families), self._up, self._seconds
        for family in families:
            gauge = GaugeMetricFamily(family.name, family.doc, labels=family.labels)
            for labels, value in family.rows:
                gauge.add_metric(labels, value)
            yield gauge
        yield GaugeMetricFamily("textworker_sql_up", "1 when the last read of the SQL store worked.", value=up)
        yield GaugeMetricFamily("textworker_sql_scrape_seconds", "Time the last read of the SQL store took.", value=seconds)

    def describe(self) -> list[Metric]:
        return []

    def _refresh(self) -> None:
        started = time.perf_counter()
        try:
            if self._engine is None:
                self._engine = make_engine(self.url)
            existing = set(sa.inspect(self._engine).get_table_names())
            families = []
            with self._engine.connect() as conn:
                for name, doc, labels, query in _queries():
                    if query.get_final_froms()[0].name not in existing:
                        continue
                    family = _Family(name, doc, labels)
                    for row in conn.execute(query):
                        family.rows.append(([str(v) for v in row[:-1]], float(row[-1])))
                    families.append(family)
            self._families, self._up = families, 1.0
        except sa.exc.SQLAlchemyError as exc:
            log.warning("metrics: cannot read the SQL store", extra={"error": str(exc).splitlines()[0][:300]})
            self._up = 0.0
        self._seconds = time.perf_counter() - started
        self._at = time.monotonic()

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


_collectors: dict[str, SqlLifecycleCollector] = {}
_collectors_lock = threading.Lock()


def collector_for(database_url: str) -> SqlLifecycleCollector:
    """One shared collector per database URL in this process (so the throttle holds across endpoints)."""
    key = normalise_url(database_url)
    with _collectors_lock:
        if key not in _collectors:
            _collectors[key] = SqlLifecycleCollector(key, float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL_S)))
        return _collectors[key]

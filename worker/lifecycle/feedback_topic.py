"""Labelled feedback from a Kafka topic (`feedback: {topic: ...}` in the pipeline file).

Each record's value is one JSON object with a `stage` field and that stage type's row
fields (see `worker.lifecycle.feedback.validate_row`). `drain()` reads in a consumer
group until the topic has been quiet for `idle_ms`, stores the valid rows, and only
then commits the offsets to Kafka: at least once. Rows are keyed by their fingerprint,
so a record read twice (after a crash between the insert and the commit) is stored
once — effectively once. Invalid records are skipped with a warning naming their
partition, offset and reason; they never block the topic.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict
from typing import Any

from sqlalchemy.engine import Engine

from schemas.pipeline import KafkaSource, PipelineSpec
from worker.lifecycle.feedback import ImportReport, Rejected, RowProblem, stage_labels, store_rows, validate_row

log = logging.getLogger(__name__)
JOIN_TIMEOUT_S = 30.0


def topic_settings(spec: PipelineSpec) -> KafkaSource:
    """The feedback topic as kafka-python settings, sharing the kafka source's servers and security."""
    fb = spec.feedback
    if fb is None:
        raise ValueError("the pipeline has no `feedback` topic")
    source = spec.source if isinstance(spec.source, KafkaSource) else None
    servers = fb.bootstrap_servers or (source.bootstrap_servers if source else "")
    extra: dict[str, Any] = {"security": source.security} if source is not None else {}
    return KafkaSource(bootstrap_servers=servers, topics=[fb.topic], group=fb.group or f"{spec.name}-feedback",
                       start=fb.start, api_version=fb.api_version, **extra)


class FeedbackTopicConsumer:
    """A consumer of the feedback topic that stays in its group between drains."""

    def __init__(self, spec: PipelineSpec, engine: Engine) -> None:
        from kafka import KafkaConsumer

        from worker.sources.kafka import consumer_config

        self.spec, self.engine = spec, engine
        self.settings = topic_settings(spec)
        assert spec.feedback is not None
        self.idle_s = spec.feedback.idle_ms / 1000
        self.stages = {stage.name: stage for stage in spec.stages}
        self.labels = {name: stage_labels(stage) for name, stage in self.stages.items()}
        self.consumer = KafkaConsumer(**consumer_config(self.settings, grouped=True))
        self.consumer.subscribe([spec.feedback.topic])

    def drain(self, stop: threading.Event | None = None) -> ImportReport:
        """Read until quiet, store, commit; returns the counts of this drain."""
        report = ImportReport()
        started = quiet_since = time.monotonic()
        while stop is None or not stop.is_set():
            polled = self.consumer.poll(timeout_ms=250)
            records = [record for batch in polled.values() for record in batch]
            now = time.monotonic()
            if records:
                self._store(records, report)
                self.consumer.commit()
                quiet_since = now
                continue
            joined = bool(self.consumer.assignment())
            if (joined and now - quiet_since >= self.idle_s) or (not joined and now - started >= JOIN_TIMEOUT_S):
                break
            if not joined:
                quiet_since = now
        if report.received:
            log.info("feedback topic drained", extra={"received": report.received, "inserted": report.inserted,
                                                      "rejected": len(report.rejected)})
        return report

    def _store(self, records: list[Any], report: ImportReport) -> None:
        by_stage: dict[str, list[Any]] = defaultdict(list)
        for record in records:
            report.received += 1
            where = f"{record.topic}[{record.partition}]@{record.offset}"
            try:
                raw = json.loads(record.value) if record.value is not None else None
                name = raw.get("stage") if isinstance(raw, dict) else None
                if name not in self.stages:
                    raise RowProblem("unknown_stage", f"`stage` must name one of: {', '.join(self.stages)}")
                by_stage[name].append(validate_row(self.stages[name], raw, self.labels[name]))
            except (ValueError, UnicodeDecodeError) as exc:
                self._reject(report, where, RowProblem("invalid_json", f"not valid JSON: {str(exc)[:200]}"), record.offset)
            except RowProblem as problem:
                self._reject(report, where, problem, record.offset)
        for rows in by_stage.values():
            inserted, duplicates = store_rows(self.engine, self.spec.name, rows, source="kafka")
            report.inserted += inserted
            report.duplicates += duplicates

    @staticmethod
    def _reject(report: ImportReport, where: str, problem: RowProblem, offset: int) -> None:
        report.rejected.append(Rejected(offset, problem.reason, f"{where}: {problem.detail}"))
        log.warning("feedback record skipped", extra={"record": where, "reason": problem.reason, "detail": problem.detail})

    def close(self) -> None:
        self.consumer.close()

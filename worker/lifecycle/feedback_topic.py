"""Labelled feedback from a Kafka topic (`feedback: {topic: ...}` in the pipeline file).

Each record's value is one JSON object with a `stage` field and that stage type's row
fields (see `worker.lifecycle.feedback.validate_row`). `drain()` reads in a consumer
group until the topic has been quiet for `idle_ms`, stores the valid rows, and only
then commits the offsets to Kafka: at least once. Rows are keyed by their fingerprint,
so a record read twice (after a crash between the insert and the commit) is stored
once — effectively once.

Hostile records never block the topic: each record is decoded by the strict decoder of
the source boundary (`worker.sources.validation.decode_json`) and validated by
`validate_any`, which answer a row or a reason code for ANY bytes (nesting, lone
surrogates, NULs, huge numbers, `{"stage": []}`...). A record that is not a valid row
is logged and stored as a dead letter (stage `feedback`, ref `topic/partition/offset`,
its reason code), and so is a row the database refuses (`sink_rejected`); the drain
goes on and commits its offsets.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import defaultdict
from typing import Any

from sqlalchemy.engine import Engine

from schemas.documents import DeadLetter
from schemas.pipeline import KafkaSource, PipelineSpec
from worker.lifecycle.feedback import ImportReport, Rejected, RowProblem, stage_labels, store_rows_isolating, validate_any
from worker.sinks.sql import store_dead_letters
from worker.sources.validation import RecordProblem, dead_letter, decode_json

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
        self.run_id = "feedback-" + uuid.uuid4().hex[:12]
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
        positions: dict[int, str] = {}
        letters: list[DeadLetter] = []
        for record in records:
            report.received += 1
            where = f"{record.topic}/{record.partition}/{record.offset}"
            try:
                if record.value is None:
                    raise RowProblem("null_value", "the record has no value (a tombstone)")
                try:
                    raw = decode_json(record.value)
                except RecordProblem as problem:
                    raise RowProblem(problem.reason, problem.detail) from None
                row = validate_any(self.stages, self.labels, raw)
                by_stage[row.stage].append(row)
                positions[id(row)] = where
            except RowProblem as problem:
                letters.append(self._reject(report, where, problem, record))
            except Exception as exc:  # noqa: BLE001 - no record may stop the drain; the reason names the error
                log.exception("feedback record could not be read", extra={"record": where})
                letters.append(self._reject(report, where, RowProblem("unreadable", f"{type(exc).__name__}: {str(exc)[:200]}"), record))
        for rows in by_stage.values():
            inserted, duplicates, refused = store_rows_isolating(self.engine, self.spec.name, rows, source="kafka")
            report.inserted += inserted
            report.duplicates += duplicates
            for row, message in refused:
                where = positions[id(row)]
                report.rejected.append(Rejected(None, "sink_rejected", f"{where}: {message}"))
                letters.append(dead_letter(where, "sink_rejected", message, row.text[:2000]).model_copy(update={"stage": "feedback"}))
        store_dead_letters(self.engine, self.spec.name, self.run_id, letters)

    def _reject(self, report: ImportReport, where: str, problem: RowProblem, record: Any) -> DeadLetter:
        report.rejected.append(Rejected(record.offset, problem.reason, f"{where}: {problem.detail}"))
        log.warning("feedback record skipped", extra={"record": where, "reason": problem.reason, "detail": problem.detail})
        letter = dead_letter(where, problem.reason, problem.detail, record.value if record.value is not None else b"")
        return letter.model_copy(update={"stage": "feedback"})

    def close(self) -> None:
        self.consumer.close()

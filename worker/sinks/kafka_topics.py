"""Publish dead letters and results to Kafka topics, after they are stored in SQL.

Delivery is at least once: `worker.engine.stream` publishes a batch only after its
SQL transaction committed, waits for every acknowledgement (`flush`), and only then
stores a `<group>:published` offset. A worker that dies between the SQL commit and
that marker re-reads the batch from the marker and publishes it again, so a consumer
of these topics sees every message at least once and must tolerate repeats (the
key is the document id or the dead letter's reference).

Dead letter messages: key = ref, value = the kept payload (UTF-8, at most 64 KiB),
headers `textworker.reason`, `textworker.stage`, `textworker.ref`, `textworker.detail`,
`textworker.pipeline`. Result messages: key = doc id, value = JSON
`{"doc_id", "pipeline", "source_ref", "results": {stage: {label, score, output, model_version}}}`.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from schemas.documents import DeadLetter, Document, StageResult
from schemas.pipeline import KafkaSource
from worker.kafka_client import client_config

log = logging.getLogger(__name__)
PUBLISHED_SUFFIX = ":published"


def dead_letter_message(letter: DeadLetter, pipeline: str) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) for one dead letter."""
    headers = [
        ("textworker.reason", letter.reason.encode()),
        ("textworker.stage", letter.stage.encode()),
        ("textworker.ref", letter.ref.encode("utf-8", "backslashreplace")),
        ("textworker.detail", letter.detail[:1000].encode("utf-8", "backslashreplace")),
        ("textworker.pipeline", pipeline.encode()),
    ]
    return letter.ref.encode("utf-8", "backslashreplace"), letter.payload.encode("utf-8", "backslashreplace"), headers


def result_messages(docs: list[Document], results: list[StageResult], pipeline: str) -> list[tuple[bytes, bytes]]:
    """(key, value) per document that has at least one result, in document order."""
    by_doc: dict[str, dict[str, Any]] = defaultdict(dict)
    for r in results:
        by_doc[r.doc_id][r.stage] = {"label": r.label, "score": r.score, "output": r.output, "model_version": r.model_version}
    messages = []
    for doc in docs:
        if doc.id in by_doc:
            value = {"doc_id": doc.id, "pipeline": pipeline, "source_ref": doc.source_ref, "results": by_doc[doc.id]}
            messages.append((doc.id.encode(), json.dumps(value, ensure_ascii=False, default=str).encode()))
    return messages


class TopicPublisher:
    """A kafka-python producer for the source's `dead_letter_topic` and `results_topic`."""

    def __init__(self, spec: KafkaSource, pipeline: str) -> None:
        self.spec = spec
        self.pipeline = pipeline
        self.producer: KafkaProducer | None = None

    @classmethod
    def from_spec(cls, spec: KafkaSource, pipeline: str, run_id: str = "") -> TopicPublisher:
        """From the kafka source's settings (`results_topic`, `dead_letter_topic`)."""
        return cls(spec, pipeline)

    @property
    def enabled(self) -> bool:
        return bool(self.spec.dead_letter_topic or self.spec.results_topic)

    def _producer(self) -> KafkaProducer:
        if self.producer is None:
            self.producer = KafkaProducer(
                **client_config(self.spec), acks="all", linger_ms=5, max_request_size=4 * 1024 * 1024,
                **{k: v for k, v in self.spec.client_options.items() if k in KafkaProducer.DEFAULT_CONFIG},
            )
        return self.producer

    def publish(self, docs: list[Document], results: list[StageResult], letters: list[DeadLetter], timeout_s: float = 30.0) -> None:
        """Send the batch's messages and wait for every acknowledgement; raises KafkaError on failure."""
        if not self.enabled:
            return
        producer = self._producer()
        futures = []
        if self.spec.dead_letter_topic:
            for letter in letters:
                key, value, headers = dead_letter_message(letter, self.pipeline)
                futures.append(producer.send(self.spec.dead_letter_topic, key=key, value=value, headers=headers))
        if self.spec.results_topic:
            for key, value in result_messages(docs, results, self.pipeline):
                futures.append(producer.send(self.spec.results_topic, key=key, value=value))
        producer.flush(timeout=timeout_s)
        for future in futures:
            future.get(timeout=timeout_s)

    def close(self) -> None:
        if self.producer is not None:
            try:
                self.producer.close(timeout=5)
            except KafkaError as exc:
                log.warning("closing the producer failed", extra={"error": str(exc)})
            self.producer = None

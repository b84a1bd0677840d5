"""Documents from Kafka: a kafka-python consumer whose records become `SourceItem`s.

Each record is parsed by `worker.sources.kafka_records.parse_record` (never raises for
bad data: a `Document`, or a `DeadLetter` with a reason code and the record's position).

Offsets: this module only reads and seeks; what is committed, and when, is decided by
`worker.engine.stream` (see its docstring). On every partition assignment the source
pauses the new partitions and, before it hands out any of their records, seeks each to
the offset `start_offsets()` returns (the offsets stored in SQL). A partition without a
stored offset keeps kafka-python's own choice: the group's committed offset, then the
`start` position (`auto_offset_reset`). The rebalance callback itself does no I/O: it runs
on kafka-python's network thread, which must stay free to send heartbeats.

Replays (`Replay`) read outside the consumer group: every partition is assigned
manually, nothing is committed to Kafka, and reading stops per partition at the end of
the range (see `worker.sources.kafka_replay`).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from schemas.pipeline import KafkaSource
from worker.errors import TextworkerError
from worker.kafka_client import client_config
from worker.sources.base import SourceItem
from worker.sources.kafka_records import parse_record
from worker.sources.kafka_replay import Replay, ReplayTracker

log = logging.getLogger(__name__)
StartOffsets = Callable[[], Mapping[tuple[str, int], int]]
FETCH_HEADROOM = 1024 * 1024


def consumer_config(spec: KafkaSource, *, grouped: bool, fetch_wait_ms: int | None = None) -> dict[str, Any]:
    """KafkaConsumer settings: manual commits, fetch sizes that fit `max_value_bytes`; `fetch_wait_ms`
    (from a latency budget) caps how long the broker may hold a fetch for more data."""
    fetch = spec.max_value_bytes + FETCH_HEADROOM
    config = {
        **client_config(spec),
        "group_id": spec.group if grouped else None,
        "client_id": f"textworker-{os.getpid()}",
        "enable_auto_commit": False,
        "auto_offset_reset": spec.start,
        "session_timeout_ms": spec.session_timeout_ms,
        "heartbeat_interval_ms": max(500, spec.session_timeout_ms // 5),
        "max_poll_interval_ms": spec.max_poll_interval_ms,
        "max_poll_records": spec.max_batch,
        "max_partition_fetch_bytes": max(fetch, 1024 * 1024),
        "fetch_max_bytes": max(4 * fetch, 52428800),
        "receive_message_max_bytes": max(8 * fetch, 100_000_000),
    }
    if fetch_wait_ms is not None:
        config["fetch_max_wait_ms"] = fetch_wait_ms
    return {**config, **spec.client_options}


@dataclass
class Polled:
    """One poll's worth: items in record order and the next offset of every partition in it."""

    items: list[SourceItem] = field(default_factory=list)
    next_offsets: dict[TopicPartition, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)


class _Listener(ConsumerRebalanceListener):
    """Runs on kafka-python's network thread: records changes, does no I/O."""

    def __init__(self, source: KafkaDocumentSource) -> None:
        self.source = source

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.source._on_revoked(set(revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.source._on_assigned(set(assigned))


class KafkaDocumentSource:
    """Polls records from the spec's topics and parses them; see the module docstring.

    Group mode (`replay=None`): subscribes in `spec.group`. Replay mode: assigns every
    partition of the topics and reads the range only. Not thread-safe (one runner).
    """

    def __init__(self, spec: KafkaSource, start_offsets: StartOffsets | None = None, replay: Replay | None = None,
                 fetch_wait_ms: int | None = None) -> None:
        self.spec = spec
        self.fetch_wait_ms = fetch_wait_ms
        self.start_offsets = start_offsets or (lambda: {})
        self.replay = ReplayTracker(replay) if replay is not None else None
        self.consumer: KafkaConsumer | None = None
        self.rebalances = 0
        self._lock = threading.Lock()
        self._pending: set[TopicPartition] = set()
        self._outage_paused: set[TopicPartition] = set()

    # ------------------------------------------------------------------ lifecycle

    def open(self, attempts: int = 12, should_stop: Callable[[], bool] = lambda: False) -> KafkaDocumentSource:
        """Connect (retrying while no broker answers) and subscribe or assign."""
        config = consumer_config(self.spec, grouped=self.replay is None, fetch_wait_ms=self.fetch_wait_ms)
        for attempt in range(1, attempts + 1):
            consumer = None
            try:
                consumer = KafkaConsumer(**config)
                consumer.bootstrap(timeout_ms=10_000)
                self.consumer = consumer
                break
            except KafkaError as exc:
                log.warning("no Kafka broker answers yet", extra={"servers": config["bootstrap_servers"], "attempt": attempt, "error": str(exc)[:200]})
                if consumer is not None:
                    consumer.close(autocommit=False, timeout_ms=1000)
                if should_stop():
                    break
                time.sleep(min(10.0, 0.5 * attempt))
        if self.consumer is None:
            raise TextworkerError(f"no Kafka broker answers at {self.spec.bootstrap_servers}", hint="check `bootstrap_servers`")
        if self.replay is None:
            if self.spec.topic_pattern:
                self.consumer.subscribe(pattern=self.spec.topic_pattern, listener=_Listener(self))
            else:
                self.consumer.subscribe(topics=self.spec.topics, listener=_Listener(self))
        else:
            self.replay.start(self.consumer, self._replay_partitions())
        return self

    def close(self) -> None:
        """Leave the group (partitions move at once) without committing; safe twice."""
        if self.consumer is not None:
            try:
                self.consumer.close(autocommit=False, timeout_ms=5000)
            except KafkaError as exc:
                log.warning("closing the consumer failed", extra={"error": str(exc)})
            self.consumer = None

    @property
    def _consumer(self) -> KafkaConsumer:
        if self.consumer is None:
            raise RuntimeError("KafkaDocumentSource.open() was not called")
        return self.consumer

    def _replay_partitions(self) -> list[TopicPartition]:
        consumer = self._consumer
        if self.spec.topic_pattern:
            pattern = re.compile(self.spec.topic_pattern)
            topics = sorted(t for t in consumer.topics() if pattern.match(t))
        else:
            topics = list(self.spec.topics)
        found = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or [])]
        if not found:
            raise TextworkerError(f"no partitions found for {topics or self.spec.topic_pattern}", hint="check the topic names")
        return found

    # ------------------------------------------------------------------ rebalances

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        with self._lock:
            self.rebalances += 1
            self._pending |= assigned
        if assigned:
            self._consumer.pause(*assigned)

    def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        with self._lock:
            self.rebalances += 1
            self._pending -= revoked
            self._outage_paused -= revoked
        log.info("partitions revoked", extra={"partitions": sorted(f"{tp.topic}/{tp.partition}" for tp in revoked)})

    def assignment(self) -> set[TopicPartition]:
        return set(self._consumer.assignment()) if self.consumer is not None else set()

    def _settle_assignment(self) -> set[TopicPartition]:
        """Seek newly assigned partitions to their stored offsets, then resume them."""
        settled: set[TopicPartition] = set()
        while True:
            with self._lock:
                todo = set(self._pending)
            if not todo:
                return settled
            stored = self.start_offsets()
            with self._lock:
                todo = self._pending & self.assignment()
                self._pending.clear()
            seeks = {tp: stored[(tp.topic, tp.partition)] for tp in todo if (tp.topic, tp.partition) in stored}
            for tp, offset in seeks.items():
                self._consumer.seek(tp, offset)
            if todo:
                self._consumer.resume(*todo)
            settled |= todo
            log.info("partitions assigned", extra={
                "partitions": sorted(f"{tp.topic}/{tp.partition}" for tp in todo),
                "seeks": {f"{tp.topic}/{tp.partition}": o for tp, o in seeks.items()},
            })

    # ------------------------------------------------------------------ reading

    def poll(self, max_records: int, timeout_ms: int) -> Polled:
        """Up to `max_records` parsed records; records of partitions that were just (re)assigned
        or are no longer assigned are dropped (they are read again from the right offset)."""
        raw = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        settled = self._settle_assignment()
        keep = self.assignment() - settled
        polled = Polled()
        for tp, records in raw.items():
            if tp not in keep:
                continue
            if self.replay is not None:
                records = self.replay.admit(tp, records)
            for record in records:
                polled.items.append(parse_record(record, self.spec))
                polled.next_offsets[tp] = record.offset + 1
        if self.replay is not None:
            self.replay.check_caught_up(self._consumer, set(raw))
        return polled

    def caught_up(self) -> bool:
        """Every assigned partition's position is at the high watermark of its last fetch.

        Uses the high watermark that fetch responses carry (`consumer.highwater`), not
        ListOffsets (Tansu answers that wrongly for multi-record batches).
        """
        if self.replay is not None:
            return self.replay.done
        assigned = self.assignment()
        with self._lock:
            if not assigned or self._pending:
                return False
        for tp in assigned:
            highwater = self._consumer.highwater(tp)
            if highwater is None or self._consumer.position(tp, timeout_ms=5000) < highwater:
                return False
        return True

    # ------------------------------------------------------------------ commits and outages

    def commit(self, next_offsets: Mapping[TopicPartition, int], timeout_ms: int = 10_000) -> bool:
        """Commit to Kafka the offsets SQL already holds (for lag tools); failures only log."""
        if self.replay is not None:
            return True
        owned = {tp: OffsetAndMetadata(o, "", -1) for tp, o in next_offsets.items() if tp in self.assignment()}
        if not owned:
            return True
        try:
            self._consumer.commit(owned, timeout_ms=timeout_ms)
            return True
        except KafkaError as exc:
            log.warning("kafka offset commit failed (SQL holds the offsets)", extra={"error": str(exc)[:300]})
            return False

    def pause_for_outage(self) -> None:
        """Stop fetching while the database is away (the batch in flight waits to be written)."""
        if self.consumer is None:
            return
        with self._lock:
            fresh = self.assignment() - self._pending - self._outage_paused
            self._outage_paused |= fresh
        if fresh:
            self._consumer.pause(*fresh)
            log.warning("partitions paused while the database is unavailable", extra={"partitions": len(fresh)})

    def keepalive(self) -> None:
        """poll(0) while paused so the group sees a live member; returns nothing, loses nothing."""
        if self.consumer is None:
            return
        try:
            raw = self._consumer.poll(timeout_ms=0)
        except KafkaError as exc:
            log.warning("kafka poll failed during a database outage", extra={"error": str(exc)[:300]})
            return
        for tp, records in raw.items():
            if records and tp in self.assignment():
                self._consumer.seek(tp, min(r.offset for r in records))
        self.pause_for_outage()

    def resume_after_outage(self) -> None:
        with self._lock:
            paused, self._outage_paused = self._outage_paused & self.assignment(), set()
        if paused:
            self._consumer.resume(*paused)
            log.warning("partitions resumed: the database is back", extra={"partitions": len(paused)})

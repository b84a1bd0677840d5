"""Bounded reads of Kafka partitions for replays and backfills (`textworker run --from-*/--until-*`).

A replay reads every partition of the source's topics outside the consumer group:
partitions are assigned manually, nothing is committed to Kafka or stored as a group
offset (a replay never moves the live group), and results are upserted as usual, so a
replay that is interrupted is simply run again.

Range per partition, half-open: records with `from_offset <= offset < until_offset` and
`from_time <= timestamp < until_time` (milliseconds since the epoch). The start is found
with `offsets_for_times` (or `from_offset`, or the beginning) and records before the
range are still filtered by their own offset and timestamp, so a broker that answers
`offsets_for_times` imprecisely (Tansu does) costs reading time, never correctness.
A partition is done at its first record at or past the end, or when it is caught up:
its position reached the high watermark of the last fetch response. Timestamps are
taken to grow with offsets within a partition (true for LogAppendTime and for one
producer per partition); with `--until-time` the first later record ends the partition.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kafka.structs import TopicPartition

log = logging.getLogger(__name__)


def parse_time(text: str) -> int:
    """An ISO 8601 timestamp as milliseconds since the epoch (no zone means UTC)."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


@dataclass(frozen=True)
class Replay:
    """The range to read; unset bounds are open (the beginning, the current end)."""

    from_offset: int | None = None
    until_offset: int | None = None
    from_time_ms: int | None = None
    until_time_ms: int | None = None

    def __post_init__(self) -> None:
        for name in ("from_offset", "until_offset", "from_time_ms", "until_time_ms"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must not be negative, got {value}")
        if self.from_offset is not None and self.until_offset is not None and self.until_offset < self.from_offset:
            raise ValueError("until_offset is before from_offset")
        if self.from_time_ms is not None and self.until_time_ms is not None and self.until_time_ms < self.from_time_ms:
            raise ValueError("until_time is before from_time")

    def admits(self, offset: int, timestamp: int) -> bool:
        """Whether a record lies after the range's start."""
        if self.from_offset is not None and offset < self.from_offset:
            return False
        return self.from_time_ms is None or timestamp >= self.from_time_ms

    def past_end(self, offset: int, timestamp: int) -> bool:
        if self.until_offset is not None and offset >= self.until_offset:
            return True
        return self.until_time_ms is not None and timestamp >= self.until_time_ms


class ReplayTracker:
    """Seeks partitions to the range's start and tells when each reached its end."""

    def __init__(self, replay: Replay) -> None:
        self.replay = replay
        self.partitions: list[TopicPartition] = []
        self.finished: set[TopicPartition] = set()

    @property
    def done(self) -> bool:
        return bool(self.partitions) and self.finished >= set(self.partitions)

    def start(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        """Assign `partitions` and seek each to the first offset the range may hold."""
        self.partitions = partitions
        consumer.assign(partitions)
        starts = consumer.beginning_offsets(partitions)
        if self.replay.from_time_ms is not None:
            found = consumer.offsets_for_times({tp: self.replay.from_time_ms for tp in partitions})
            for tp, hit in found.items():
                if hit is not None and hit.timestamp >= 0:
                    starts[tp] = max(starts[tp], hit.offset)
        if self.replay.from_offset is not None:
            starts = {tp: max(o, self.replay.from_offset) for tp, o in starts.items()}
        for tp, offset in starts.items():
            consumer.seek(tp, offset)
        log.info("replay started", extra={"starts": {f"{tp.topic}/{tp.partition}": o for tp, o in starts.items()}})

    def admit(self, tp: TopicPartition, records: Sequence[Any]) -> list[Any]:
        """The records of one poll that lie in the range; the first past the end finishes `tp`."""
        if tp in self.finished:
            return []
        kept = []
        for record in records:
            if self.replay.past_end(record.offset, record.timestamp):
                self.finished.add(tp)
                break
            if self.replay.admits(record.offset, record.timestamp):
                kept.append(record)
        return kept

    def check_caught_up(self, consumer: Any, fetched: set[TopicPartition]) -> None:
        """Finish partitions with nothing left (position at the high watermark, or past until_offset)
        and pause them so they are not fetched again."""
        for tp in self.partitions:
            if tp in self.finished or tp in fetched:
                continue
            position = consumer.position(tp, timeout_ms=5000)
            highwater = consumer.highwater(tp)
            until = self.replay.until_offset
            if position is not None and ((highwater is not None and position >= highwater) or (until is not None and position >= until)):
                self.finished.add(tp)
        newly = [tp for tp in self.finished if tp not in consumer.paused()]
        if newly:
            consumer.pause(*newly)

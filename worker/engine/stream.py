"""Streaming driver: Kafka -> validation -> engine -> one SQL transaction per batch -> Kafka commit.

The stages run on whichever executor the engine has: in this process (the stages work
on one batch while the previous one is stored), or Ray actor pools (`--runtime ray`,
several polled batches in flight at once); batches are stored strictly in poll order,
so offsets only ever move forward. With a batch in flight, polls do not wait.

Delivery contract: effectively once in SQL
-------------------------------------------
Each batch goes through these steps, in order:

1. poll up to `max_batch` records (waiting at most `max_wait_ms`) from the partitions
   this worker owns;
2. parse and validate them (bad records become dead letters with a reason), run
   the stages (the engine; stage failures become dead letters too);
3. ONE SQL transaction (`SqlResultSink.write`): documents, results, dead letters and,
   for every partition in the batch, the next offset to read (`stream_offsets`,
   keyed by consumer group). Rows are upserts on natural keys;
4. commit the same offsets to Kafka. Only lag tools read them: SQL is the source of truth;
5. when `dead_letter_topic` / `results_topic` are set: publish the batch's dead letters
   and results, wait for every acknowledgement, then store `<group>:published`
   offsets (a second small transaction).

Every (re)assigned partition is read from the offset stored in SQL (with topics to
publish: the lower of the processed and published offsets), else from the group's
Kafka offset, else from `start`. Hence, for a crash (SIGKILL, power loss) at each step:

- during 1-2, or during 3 before its commit: nothing of the batch is stored (the
  database rolls the transaction back); its records are read again from the stored
  offsets and processed once more -- no loss, and no duplicate rows (upserts);
- after 3, before 4: SQL holds the batch and its offsets; Kafka's committed offset
  lags until the next commit, but the next owner seeks to SQL's offset, so nothing is
  processed twice;
- after 4, before 5's marker: the topics may miss the batch; the next owner re-reads
  from the published marker, re-runs the stages (the same rows are rewritten) and
  publishes again. The topics are therefore AT LEAST ONCE; SQL is effectively once.

Any stored offset N means every record before N has its rows in SQL, in every
interleaving: a write stores only the offsets of records written in the same
transaction, and a worker starts only from a stored offset (or Kafka's committed
offset, which never runs ahead of SQL's). A late write by a worker that lost its
partitions can move an offset back, which costs reprocessing, never results.

Outages
-------
- Database: the sink makes one attempt per call and signals an outage by raising
  `SinkUnavailable` (its backpressure signal). The driver obeys it (`StreamRunner.obey`):
  it pauses the owned partitions, polls the consumer with `poll(0)` so the group keeps
  this member (heartbeats run on kafka-python's own thread), waits (capped backoff) and
  makes the same call again, for as long as the outage lasts. Partitions resume once the
  write succeeds. The batch waits in memory.
- Broker: kafka-python reconnects by itself; errors out of `poll` are logged and the
  loop backs off (0.5 s doubling to 10 s) and polls again. Failed Kafka commits only
  log. Publishing retries until it succeeds.

Rebalances happen only inside `poll`. Records of revoked partitions never enter a
batch; records of newly assigned ones are dropped until the partition is seeked to its
stored offset. A rebalance during a database outage (the keepalive `poll(0)`) leaves
the batch in flight whole -- one transaction covering only its own records -- and its
Kafka commit skips partitions no longer owned.

SIGTERM / SIGINT: stop polling, finish the batch in flight (or, while the database is
unreachable, abandon it before its commit), leave the group, exit 0. A second signal
interrupts at once (exit 130); still consistent, as transactions are atomic.

Replays (`--from-*/--until-*`) read outside the group and store no offsets; see
`worker.sources.kafka_replay`. `--until-end` exits once every owned partition is caught
up (two empty polls in a row and position >= the high watermark of the last fetch).
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from schemas.documents import DeadLetter, Document, StageResult
from schemas.pipeline import KafkaSource, PipelineSpec
from worker.engine.core import Chunk, ChunkInput, Engine
from worker.engine.runs import RunBook, RunSummary, new_run_id
from worker.errors import SinkUnavailable
from worker.sinks import build_publisher, build_sink
from worker.sinks.kafka_topics import PUBLISHED_SUFFIX, TopicPublisher
from worker.sinks.sql import Offset, SinkBatch, SqlResultSink
from worker.sources.kafka import KafkaDocumentSource, Polled
from worker.sources.kafka_replay import Replay, parse_time

log = logging.getLogger(__name__)
MAX_BACKOFF_S = 10.0
T = TypeVar("T")


class Shutdown(Exception):
    """A stop was requested while waiting on the database or the broker: abandon the batch."""


@dataclass(frozen=True)
class StreamOptions:
    """How long to run: forever (default), until caught up, a replay range, or `limit` records."""

    replay: Replay | None = None
    until_end: bool = False
    limit: int | None = None
    idle_polls: int = 2

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> StreamOptions:
        """From `textworker run` flags (--from-offset/--until-offset/--from-time/--until-time/--until-end/--limit)."""
        bounds = {
            "from_offset": getattr(args, "from_offset", None), "until_offset": getattr(args, "until_offset", None),
            "from_time_ms": _time_arg(getattr(args, "from_time", None)), "until_time_ms": _time_arg(getattr(args, "until_time", None)),
        }
        replay = Replay(**bounds) if any(v is not None for v in bounds.values()) else None
        return cls(replay=replay, until_end=bool(getattr(args, "until_end", False)), limit=getattr(args, "limit", None))


def _time_arg(text: str | None) -> int | None:
    return parse_time(text) if text else None


class BatchSizer:
    """How many records the next poll may take under the pipeline's latency budget (`max_latency_ms`).

    A poll never waits to fill a batch (kafka-python returns what has arrived). With a budget,
    the driver also keeps batches short enough that half the budget processes one: it learns
    the seconds per record from each stored batch (moving average, poll to commit), so a
    record that arrives during a batch waits at most about the budget. A backlog of more
    than two such batches is heavy load: polls take up to `max_batch` again, because small
    batches there would only add per-batch overhead and let the backlog grow.
    """

    ALPHA = 0.3

    def __init__(self, max_batch: int, budget_ms: int | None) -> None:
        self.max_batch = max_batch
        self.budget_s = budget_ms / 1000 if budget_ms else None
        self.per_record_s: float | None = None

    def record(self, records: int, seconds: float) -> None:
        if records <= 0 or seconds <= 0:
            return
        sample = seconds / records
        self.per_record_s = sample if self.per_record_s is None else self.ALPHA * sample + (1 - self.ALPHA) * self.per_record_s

    def fits(self) -> int | None:
        """Records that half the budget processes (None: no budget, or nothing measured yet)."""
        if self.budget_s is None or not self.per_record_s:
            return None
        return max(1, min(self.max_batch, int(self.budget_s / 2 / self.per_record_s)))

    def limit(self, backlog: int) -> int:
        fits = self.fits()
        if fits is None or backlog > 2 * fits:
            return self.max_batch
        return fits


@dataclass(frozen=True)
class _Polled:
    """A chunk's driver payload: the offsets to store with it and when it was polled."""

    next_offsets: Mapping[TopicPartition, int]
    polled_at: float


class _Obeying:
    """The sink as the run bookkeeping sees it: its calls obey the backpressure signal (`StreamRunner.obey`)."""

    def __init__(self, sink: SqlResultSink, obey: Callable[[Callable[[], Any]], Any]) -> None:
        self._sink, self._obey = sink, obey
        self.run_id = sink.run_id

    def start_run(self, stats: dict[str, Any] | None = None) -> None:
        self._obey(lambda: self._sink.start_run(stats))

    def finish_run(self, status: str, stats: dict[str, Any]) -> None:
        self._obey(lambda: self._sink.finish_run(status, stats))

    def write(self, batch: SinkBatch) -> None:
        self._obey(lambda: self._sink.write(batch))


class StreamRunner:
    """The loop of the module docstring, over already constructed parts."""

    def __init__(self, spec: PipelineSpec, sink: SqlResultSink, source: KafkaDocumentSource, engine: Engine,
                 publisher: TopicPublisher, options: StreamOptions, stop: threading.Event, meta: dict[str, Any] | None = None) -> None:
        if not isinstance(spec.source, KafkaSource):
            raise TypeError("StreamRunner needs a pipeline with a kafka source")
        self.spec, self.kafka = spec, spec.source
        self.sink, self.source, self.engine, self.publisher = sink, source, engine, publisher
        self.options, self.stop = options, stop
        self.book = RunBook(spec, _Obeying(sink, self.obey), engine, {"source": "kafka", "group": self.kafka.group, **(meta or {})})
        self.records = 0
        self.batches = 0
        self._idle = 0
        self._backoff = 0.5
        self.sizer = BatchSizer(self.kafka.max_batch, spec.max_latency_ms)
        self._backlog = 0
        self._last_stored = 0.0

    @property
    def summary(self) -> RunSummary:
        return self.book.summary

    # ------------------------------------------------------------------ hooks the parts call

    def start_offsets(self) -> Mapping[tuple[str, int], int]:
        """Where each partition resumes: SQL's offset (the lower of processed and published)."""
        stored = self.obey(lambda: self.sink.load_offsets(self.kafka.group))
        if not self.publisher.enabled:
            return stored
        published = self.obey(lambda: self.sink.load_offsets(self.kafka.group + PUBLISHED_SUFFIX))
        return {key: min(offset, published.get(key, offset)) for key, offset in stored.items()}

    def obey(self, call: Callable[[], T]) -> T:
        """Run one sink call, obeying the sink's backpressure signal (`SinkUnavailable`): while the sink
        cannot take writes, the source's partitions stay paused (the batch in flight waits), the group
        sees a live member, stops are honoured, and the same call is made again after a backoff."""
        delay, paused = 0.25, False
        try:
            while True:
                try:
                    return call()
                except SinkUnavailable as exc:
                    if self.stop.is_set():
                        raise Shutdown("stop requested while the database is unavailable") from exc
                    log.warning("database unavailable, retrying", extra={"error": exc.message[:300], "backoff_s": delay})
                    self.source.pause_for_outage()
                    paused = True
                    self.source.keepalive()
                    if self.stop.wait(delay):
                        raise Shutdown("stop requested while the database is unavailable") from exc
                    delay = min(delay * 2, MAX_BACKOFF_S)
        finally:
            if paused:
                self.source.resume_after_outage()

    # ------------------------------------------------------------------ the loop

    def run(self) -> RunSummary:
        """Poll and process until stopped or the options' end; returns the summary."""
        self.book.start()
        status = "failed"
        try:
            self.engine.run(self._batches(), self._complete)
            status = "stopped" if self.stop.is_set() else "finished"
        except Shutdown as exc:
            log.warning("batch abandoned before its commit", extra={"reason": str(exc)})
            status = "stopped"
        finally:
            self._finish_run(status)
        return self.summary

    def _reached_end(self) -> bool:
        if self.options.limit is not None and self.records >= self.options.limit:
            return True
        if self.options.replay is not None:
            return self.source.caught_up()
        return self.options.until_end and self._idle >= self.options.idle_polls and self.source.caught_up()

    def _batches(self) -> Iterator[ChunkInput | None]:
        """Polled batches as engine chunks (None after an empty poll), until stopped or the end."""
        while not self.stop.is_set() and not self._reached_end():
            waited = not self.engine.inflight  # with batches in flight, take what has arrived and go back to them
            polled = self._poll(waited)
            self._observe_lag()
            if polled is None:
                yield None
                continue
            if not polled:
                self._idle += waited  # an idle poll is one that waited and found nothing
                yield None
                continue
            self._idle = 0
            self.records += len(polled)
            yield ChunkInput.of_items(polled.items, _Polled(dict(polled.next_offsets), time.perf_counter()))

    def _poll(self, wait: bool = True) -> Polled | None:
        wanted = self.sizer.limit(self._backlog)
        if self.options.limit is not None:
            wanted = max(1, min(wanted, self.options.limit - self.records))
        try:
            polled = self.source.poll(wanted, self.kafka.max_wait_ms if wait else 0)
        except KafkaError as exc:
            log.warning("kafka poll failed; backing off", extra={"error": str(exc)[:300], "backoff_s": self._backoff})
            self.stop.wait(self._backoff)
            self._backoff = min(self._backoff * 2, MAX_BACKOFF_S)
            return None
        self._backoff = 0.5
        return polled

    def _complete(self, chunk: Chunk) -> None:
        """Store a processed batch with its offsets (one transaction), commit to Kafka, publish."""
        polled: _Polled = chunk.payload
        next_offsets = polled.next_offsets
        started = time.perf_counter()
        self._write(self.book.batch(chunk, self._offsets(next_offsets)))
        now = time.perf_counter()
        self.book.stored(chunk, now - started)
        # the batch's own time: from its poll, or from the previous batch's commit when it waited behind that batch
        self.sizer.record(chunk.items, now - max(polled.polled_at, self._last_stored))
        self._last_stored = now
        self.source.commit(next_offsets)
        self._publish(chunk.docs, chunk.results, chunk.letters, next_offsets)
        self.batches += 1
        log.info("batch stored", extra={"records": chunk.items, "docs": len(chunk.docs), "dead_letters": len(chunk.letters),
                                        "offsets": {f"{tp.topic}/{tp.partition}": o for tp, o in next_offsets.items()}})

    def _offsets(self, next_offsets: Mapping[TopicPartition, int], suffix: str = "") -> list[Offset]:
        if self.options.replay is not None:
            return []
        return [Offset(self.kafka.group + suffix, tp.topic, tp.partition, o) for tp, o in sorted(next_offsets.items())]

    def _write(self, batch: SinkBatch) -> None:
        self.obey(lambda: self.sink.write(batch))

    def _observe_lag(self) -> None:
        """Consumer lag per owned partition: the high watermark of its last fetch minus our position.

        The high watermark comes with every fetch response (no extra request; Tansu answers
        ListOffsets wrongly, see `caught_up`); a partition not fetched yet reports nothing.
        """
        consumer = self.source.consumer
        if consumer is None or self.options.replay is not None:
            return
        lags: dict[tuple[str, int], int] = {}
        for tp in self.source.assignment():
            try:
                highwater = consumer.highwater(tp)
                position = consumer.position(tp, timeout_ms=1000) if highwater is not None else None
            except KafkaError:
                continue
            if highwater is not None and position is not None:
                lags[(tp.topic, tp.partition)] = highwater - position
        self._backlog = sum(lags.values())
        self.engine.hooks.on_lag(self.spec.name, self.kafka.group, lags)

    def _publish(self, docs: list[Document], results: list[StageResult], letters: list[DeadLetter],
                 next_offsets: Mapping[TopicPartition, int]) -> None:
        """Publish after the SQL commit, retrying until acknowledged; then store the published marker."""
        if not self.publisher.enabled:
            return
        delay = 0.5
        while True:
            try:
                self.publisher.publish(docs, results, letters)
                break
            except KafkaError as exc:
                log.warning("publishing to kafka failed; retrying", extra={"error": str(exc)[:300], "backoff_s": delay})
                if self.stop.wait(delay):
                    raise Shutdown("stop requested while publishing") from exc
                delay = min(delay * 2, MAX_BACKOFF_S)
        self._write(SinkBatch(offsets=self._offsets(next_offsets, PUBLISHED_SUFFIX)))

    # ------------------------------------------------------------------ bookkeeping

    def _finish_run(self, status: str) -> None:
        extra = {"records": self.records, "batches": self.batches}
        try:
            self.book.finish(status, extra)
        except Shutdown:
            log.warning("run status not stored: the database is unavailable")


def install_signal_handlers(stop: threading.Event) -> Callable[[], None]:
    """First SIGTERM/SIGINT sets `stop`; a second one raises KeyboardInterrupt. Returns an undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    received: list[int] = []

    def handler(signum: int, _frame: object) -> None:
        received.append(signum)
        if len(received) > 1:
            raise KeyboardInterrupt
        log.warning("stop requested: finishing the batch in flight", extra={"signal": signal.Signals(signum).name})
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


def run_stream(spec: PipelineSpec, database_url: str, options: StreamOptions, engine: Engine,
               stop: threading.Event | None = None, meta: dict[str, Any] | None = None) -> RunSummary:
    """Build the sink, source and publisher for `spec`, run the loop on `engine`, release everything."""
    if not isinstance(spec.source, KafkaSource):
        raise TypeError("run_stream needs a pipeline with a kafka source")
    stop = stop or threading.Event()
    engine.start()  # loads the stages (on Ray: starts the actors; ray.init installs signal handlers, ours go in after)
    restore = install_signal_handlers(stop)
    sink = build_sink(spec.sink, spec.name, new_run_id(), url=database_url, attempts=1)  # one attempt: the driver obeys the signal
    budget = spec.max_latency_ms
    source = KafkaDocumentSource(spec.source, replay=options.replay, fetch_wait_ms=max(5, min(500, budget // 4)) if budget else None)
    publisher = build_publisher("kafka_topics", spec.source, spec.name)
    runner = StreamRunner(spec, sink, source, engine, publisher, options, stop, meta)
    source.start_offsets = runner.start_offsets
    try:
        runner.obey(sink.open)
        source.open(should_stop=stop.is_set)
        return runner.run() if not stop.is_set() else runner.summary
    except Shutdown:
        log.warning("stopped while the database was unavailable")
        return runner.summary
    finally:
        source.close()
        publisher.close()
        sink.close()
        engine.close()
        restore()

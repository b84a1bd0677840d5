"""Run bookkeeping, the same for every driver: the `runs` row, the summary, hooks, log context."""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.pipeline import PipelineSpec
from worker.engine.core import Chunk, Engine
from worker.engine.hooks import HookList
from worker.logs import bind_log_context, unbind_log_context
from worker.sinks.sql import Offset, SinkBatch

log = logging.getLogger(__name__)


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


@dataclass
class RunSummary:
    """What a run did: counts, time, and a row per stage (results, skipped, failed, labels, tokens/s...)."""

    run_id: str
    pipeline: str
    docs: int = 0
    dead_letters: int = 0
    seconds: float = 0.0
    reasons: Counter[str] = field(default_factory=Counter)
    stage_stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def docs_per_s(self) -> float:
        return self.docs / self.seconds if self.seconds else 0.0

    @property
    def stage_counts(self) -> Counter[str]:
        return Counter({name: int(st.get("results", 0)) for name, st in self.stage_stats.items()})

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "pipeline": self.pipeline, "docs": self.docs, "dead_letters": self.dead_letters,
            "seconds": round(self.seconds, 3), "docs_per_s": round(self.docs_per_s, 2), "stages": self.stage_stats,
            "dead_letter_reasons": dict(self.reasons), **self.extra,
        }


class RunBook:
    """One run of `engine` into `sink`: start, a record per stored chunk, finish (always)."""

    def __init__(self, spec: PipelineSpec, sink: Any, engine: Engine, meta: dict[str, Any], *, bind_log: bool = True) -> None:
        """`bind_log=False` where the run starts and ends in different contexts (a server's lifespan)."""
        self.spec, self.sink, self.engine = spec, sink, engine
        self.bind_log = bind_log
        self.meta = meta
        self.summary = RunSummary(run_id=sink.run_id, pipeline=spec.name)
        self._started = 0.0
        self._log_scope: Any = None

    @property
    def hooks(self) -> HookList:
        return self.engine.hooks

    def start(self) -> RunBook:
        self._started = time.perf_counter()
        self.sink.start_run({"stages": [s.name for s in self.spec.stages], **self.meta})
        self.hooks.on_run_start(self.spec, self.sink.run_id)
        if self.bind_log:
            self._log_scope = bind_log_context(run_id=self.sink.run_id, pipeline=self.spec.name)
        return self

    def batch(self, chunk: Chunk, offsets: Sequence[Offset] = ()) -> SinkBatch:
        """The chunk as one sink transaction (documents, results, dead letters, review items, offsets)."""
        return SinkBatch(documents=chunk.docs, results=chunk.results, dead_letters=chunk.letters, reviews=chunk.reviews,
                         offsets=list(offsets))

    def store(self, chunk: Chunk, offsets: Sequence[Offset] = ()) -> None:
        """Write the chunk in one transaction, then count it."""
        started = time.perf_counter()
        self.sink.write(self.batch(chunk, offsets))
        self.stored(chunk, time.perf_counter() - started)

    def stored(self, chunk: Chunk, seconds: float) -> None:
        self.hooks.on_stored(self.spec, chunk, seconds)
        self.summary.docs += len(chunk.docs)
        self.summary.dead_letters += len(chunk.letters)
        self.summary.reasons.update(d.reason for d in chunk.letters)

    def finish(self, status: str, extra: dict[str, Any] | None = None, *, store: bool = True) -> RunSummary:
        self.summary.seconds = time.perf_counter() - self._started
        self.summary.stage_stats = self.engine.stage_summary()
        self.summary.extra.update(extra or {})
        placement = getattr(self.engine.executor, "placement", None)
        if placement:
            self.summary.extra["placement"] = placement  # node ids of each stage's actors
        self.hooks.on_run_end(self.spec, status, self.summary)
        if self._log_scope is not None:
            unbind_log_context(self._log_scope)
            self._log_scope = None
        if store:
            self.sink.finish_run(status, self.summary.as_dict())
        return self.summary


def chunks_of(items: Iterable[Any], size: int) -> Iterable[list[Any]]:
    """Consecutive lists of `size` items (the last one shorter)."""
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch

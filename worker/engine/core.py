"""The stage loop: the one place where documents go through a pipeline's stages.

Every entry point -- `run` over files, `run` over Kafka, `serve`, `requeue`, the
Python API and `bench` -- hands chunks of documents to an `Engine`, which drives each
chunk through the stages on an executor (in this process, Ray actor pools, or Ray
Serve deployments) and hands back, per chunk, its results, dead letters and review
items, in source order.

Per chunk, stage after stage:

1. the stage's `when` is evaluated on each document's results so far; documents it
   does not admit skip the stage (counted, and listed per document);
2. the duplicate-text cache answers the documents it can (`worker.engine.dedupe`); the
   other admitted documents go to the executor as one call
   (`worker.engine.stage_call.run_stage` inside it: hot swap at the batch boundary,
   retries, per-document isolation, out-of-memory splitting);
3. a call that fails as a whole (an actor lost twice, a replica gone) turns its
   documents into `stage_error` dead letters for that stage; the chunk goes on.

Chunks are pipelined: while stage 2 works on chunk N, stage 1 may work on chunk N+1
(Ray actor pools), and while the stages work on chunk N+1 the caller stores chunk N
(every executor whose calls run off the caller's thread).
At most `max_inflight` chunks are in flight and the source is read only when a slot
frees (backpressure), so memory stays bounded however large the input. A chunk is
handed to `on_complete` only after every chunk before it (source order), so a caller
that commits offsets after each chunk never commits past one still in flight.
Hooks (metrics, logging, the review queue) see every stage call and every chunk.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from schemas.documents import DeadLetter, Document, StageResult
from schemas.pipeline import PipelineSpec
from worker.engine.chunks import Chunk, ChunkInput, Context, Outcome, stage_error_letters, unique_docs  # noqa: F401 - re-exported
from worker.engine.conditions import holds
from worker.engine.dedupe import Plan, ResultCache
from worker.engine.hooks import Hook, HookList

log = logging.getLogger(__name__)
Pending = tuple[Chunk, int, list[Document], Plan]  # a stage call in flight: its chunk, stage, admitted documents, cache plan
IDLE_WAIT_S = 0.05  # after an empty read with calls in flight, how long to wait for one of them before reading again
MAX_LABELS = 64  # distinct labels counted per stage; the rest are "(other)" (QA answers are not labels)


@dataclass
class StageTotals:
    """What one stage did over a run: the run summary's per-stage row."""

    docs: int = 0
    results: int = 0
    failed: int = 0
    skipped: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    seconds: float = 0.0
    batches: int = 0
    model_version: str = ""
    labels: Counter[str] = field(default_factory=Counter)
    extra: Counter[str] = field(default_factory=Counter)

    def add_delta(self, delta: dict[str, float]) -> None:
        for key in ("real_tokens", "padded_tokens", "batches"):
            setattr(self, key, getattr(self, key) + int(delta.get(key, 0)))
        self.seconds += float(delta.get("seconds", 0.0))
        for key, value in delta.items():
            if key not in ("real_tokens", "padded_tokens", "batches", "seconds", "docs", "failed", "gpu_memory_bytes"):
                self.extra[key] += int(value)

    def count_label(self, label: str | None) -> None:
        if label is None:
            return
        key = label if label in self.labels or len(self.labels) < MAX_LABELS else "(other)"
        self.labels[key] += 1

    def as_dict(self) -> dict[str, Any]:
        waste = 1 - self.real_tokens / self.padded_tokens if self.padded_tokens else 0.0
        return {
            "results": self.results, "skipped": self.skipped, "failed": self.failed, "labels": dict(self.labels),
            "model_version": self.model_version, "seconds": round(self.seconds, 3), "padding_waste": round(waste, 4),
            "tokens_per_s": round(self.real_tokens / self.seconds, 1) if self.seconds else 0.0, "batches": self.batches,
            **{k: v for k, v in self.extra.items()},
        }


class Executor(Protocol):
    """Runs stage calls. `submit` may run the call at once (in process) or start it elsewhere (Ray).

    `done(timeout)` returns finished calls as (ticket, outcomes, stats delta); with
    `timeout=None` it blocks until at least one call in flight finishes. A call that
    cannot be run at all returns `stage_error` letters as its outcomes; it never raises
    for a document.

    Optional attributes the engine reads: `parallelism` (how many chunks may have a call
    in flight at once; 1 if absent) and `read_before_store` (True when calls run off the
    engine's thread: the engine then takes the next input before it stores a finished
    chunk, so the stages work while it stores).
    """

    def start(self, spec: PipelineSpec) -> dict[str, str]: ...

    def submit(self, index: int, docs: list[Document], context: Context) -> Any: ...

    def done(self, timeout: float | None) -> list[tuple[Any, list[Outcome], dict[str, float]]]: ...

    def close(self) -> None: ...


class Engine:
    """Drives chunks through a pipeline's stages on one executor; see the module docstring."""

    def __init__(self, spec: PipelineSpec, executor: Executor, hooks: Iterable[Hook] = (), *, max_inflight: int | None = None) -> None:
        self.spec = spec
        self.executor = executor
        self.hooks = HookList(hooks)
        self.max_inflight = max_inflight
        self.totals: dict[str, StageTotals] = {s.name: StageTotals() for s in spec.stages}
        self.peak_inflight = 0
        self.inflight = 0  # chunks taken from the source and not yet handed back (a driver polls without waiting while > 0)
        self.cache = ResultCache(spec, max_entries=spec.cache.max_entries)
        self._started = False

    def start(self) -> Engine:
        """Load every stage (in process or in its actors); idempotent."""
        if not self._started:
            versions = self.executor.start(self.spec)
            for name, version in versions.items():
                self.totals[name].model_version = version
            self._started = True
        return self

    def close(self) -> None:
        self.executor.close()

    # ------------------------------------------------------------------ the loop

    def run(self, chunks: Iterable[ChunkInput | None], on_complete: Callable[[Chunk], None]) -> None:
        """Drive every chunk through the stages; `on_complete(chunk)` in source order.

        The iterable may yield None ("nothing now"), so a streaming driver can poll
        without holding finished chunks back.
        """
        self.start()
        self.inflight = 0
        source: Iterator[ChunkInput | None] = iter(chunks)
        parallelism = max(1, getattr(self.executor, "parallelism", 1))
        limit = self.max_inflight or parallelism + 1
        read_first = bool(getattr(self.executor, "read_before_store", False))
        pending: dict[Any, Pending] = {}
        finished: dict[int, Chunk] = {}
        active = next_seq = emit_seq = 0
        exhausted = False

        def may_read() -> bool:
            return not exhausted and active < limit and len(pending) < parallelism

        def read() -> bool:
            """Take the next input and start its first call; False when there is none now (or ever)."""
            nonlocal active, next_seq, exhausted
            try:
                given = next(source)
            except StopIteration:
                exhausted = True
                return False
            if given is None:
                return False
            chunk = Chunk.of(next_seq, given)
            next_seq += 1
            active += 1
            self.inflight = active
            self.peak_inflight = max(self.peak_inflight, active)
            self._advance(chunk, pending, finished)
            return True

        while True:
            self._harvest(pending, finished, timeout=0.0)
            if read_first and emit_seq in finished and may_read():
                read()  # the stages start on the next input while this thread stores the finished chunks
            while emit_seq in finished:
                self._complete(finished.pop(emit_seq), on_complete)
                emit_seq += 1
                active -= 1
            self.inflight = active
            if exhausted and active == 0:
                return
            if may_read():
                if not read() and not exhausted and pending:
                    self._harvest(pending, finished, timeout=IDLE_WAIT_S)  # nothing to read now: wait on a call, not the source
                continue
            if pending:
                self._harvest(pending, finished, timeout=None)

    def process(self, docs: Sequence[Document], letters: Sequence[DeadLetter] = ()) -> Chunk:
        """One chunk, start to end (the Python API and tests)."""
        out: list[Chunk] = []
        self.run([ChunkInput(list(docs), list(letters))], out.append)
        return out[0]

    async def process_async(self, docs: Sequence[Document], letters: Sequence[DeadLetter] = ()) -> Chunk:
        """One chunk through the executor's awaitable `acall` (Ray Serve deployments); same rules as `run`.

        Documents of one chunk share the stage calls, so their ids must be unique within it.
        """
        chunk = Chunk.of(0, ChunkInput(list(docs), list(letters)))
        executor: Any = self.executor  # an executor with an awaitable `acall` (worker.serving.stage_server.ServeExecutor)
        call = executor.acall
        while (step := self._next_call(chunk)) is not None:
            index, eligible, context = step
            name = self.spec.stages[index].name
            plan = self.cache.plan(index, eligible)
            outcomes: Any = []
            delta: Any = {}
            if plan.send:
                try:
                    outcomes, delta = await call(index, plan.send, {d.id: context[d.id] for d in plan.send})
                except Exception as exc:  # noqa: BLE001 - a failed call is data for its documents
                    log.warning("stage call failed", extra={"stage": name, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
                    outcomes, delta = stage_error_letters(plan.send, name, exc), {}
            self._merge(chunk, index, eligible, self._expand(index, plan, list(outcomes)), self._counted(plan, dict(delta)))
        self.hooks.on_chunk(self.spec, chunk)
        return chunk

    # ------------------------------------------------------------------ steps

    def _next_call(self, chunk: Chunk) -> tuple[int, list[Document], Context] | None:
        """The chunk's next stage call (index, admitted documents, their context), skipping empty stages."""
        while chunk.next_stage < len(self.spec.stages):
            index = chunk.next_stage
            stage = self.spec.stages[index]
            eligible = [d for d in chunk.docs if holds(stage.when, chunk.context[d.id])]
            skipped = len(chunk.docs) - len(eligible)
            if skipped:
                admitted = {d.id for d in eligible}
                for doc in chunk.docs:
                    if doc.id not in admitted:
                        chunk.skipped[doc.id].append(stage.name)
                self.totals[stage.name].skipped += skipped
                self.hooks.on_skipped(self.spec.name, stage.name, skipped)
            chunk.next_stage += 1
            if eligible:
                return index, eligible, {d.id: chunk.context[d.id] for d in eligible}
        return None

    def _advance(self, chunk: Chunk, pending: dict[Any, Pending], finished: dict[int, Chunk]) -> None:
        """Start the chunk's next stage call (the cache answers what it can); a chunk with none left is finished."""
        while (step := self._next_call(chunk)) is not None:
            index, eligible, context = step
            plan = self.cache.plan(index, eligible)
            if plan.send:
                ticket = self.executor.submit(index, plan.send, {d.id: context[d.id] for d in plan.send})
                pending[ticket] = (chunk, index, eligible, plan)
                return
            self._merge(chunk, index, eligible, self._expand(index, plan, []), self._counted(plan, {}))
        finished[chunk.seq] = chunk

    def _harvest(self, pending: dict[Any, Pending], finished: dict[int, Chunk], timeout: float | None) -> None:
        """Merge finished calls and move their chunks on; blocks for one when `timeout` is None."""
        while pending:
            done = self.executor.done(timeout)
            if not done:
                return
            for ticket, outcomes, delta in done:
                chunk, index, eligible, plan = pending.pop(ticket)
                self._merge(chunk, index, eligible, self._expand(index, plan, outcomes), self._counted(plan, delta))
                self._advance(chunk, pending, finished)
            timeout = 0.0

    def _expand(self, index: int, plan: Plan, outcomes: list[Outcome]) -> list[Outcome]:
        return plan.outcomes(outcomes, self.cache.store(index))

    @staticmethod
    def _counted(plan: Plan, delta: dict[str, float]) -> dict[str, float]:
        return {**delta, "cache_hits": delta.get("cache_hits", 0) + plan.saved} if plan.saved else delta

    def _merge(self, chunk: Chunk, index: int, eligible: list[Document], outcomes: list[Outcome], delta: dict[str, float]) -> None:
        name = self.spec.stages[index].name
        totals = self.totals[name]
        totals.docs += len(eligible)
        totals.add_delta(delta)
        for outcome in outcomes:
            if isinstance(outcome, StageResult):
                chunk.context[outcome.doc_id][name] = outcome
                chunk.results.append(outcome)
                totals.results += 1
                totals.model_version = outcome.model_version  # a hot swap shows here first
                totals.count_label(outcome.label if "answer" not in outcome.output else None)
            else:
                chunk.letters.append(outcome)
                totals.failed += 1
        self.hooks.on_stage(self.spec.name, name, totals.model_version, eligible, outcomes, delta)

    def _complete(self, chunk: Chunk, on_complete: Callable[[Chunk], None]) -> None:
        self.hooks.on_chunk(self.spec, chunk)
        on_complete(chunk)

    def stage_summary(self) -> dict[str, dict[str, Any]]:
        return {name: totals.as_dict() for name, totals in self.totals.items()}

"""Engine hooks: how metrics, logs, the review queue and the dashboard see the engine at work.

The engine calls each hook's methods; a hook implements the ones it needs (the base
class's are no-ops). Hooks come from the layer above (commands, serving), so the
engine never imports lifecycle, observability or the dashboard. A hook that raises is
logged and skipped: watching the work never breaks it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from schemas.documents import DeadLetter, Document, StageResult
from schemas.pipeline import PipelineSpec
from worker.engine.chunks import Chunk

log = logging.getLogger(__name__)


class Hook:
    """Override what you need."""

    def on_run_start(self, spec: PipelineSpec, run_id: str) -> None:
        """A run begins (before its first chunk)."""

    def on_stage(self, pipeline: str, stage: str, model_version: str, docs: Sequence[Document],
                 outcomes: Sequence[StageResult | DeadLetter], delta: dict[str, float]) -> None:
        """One stage call finished: its documents, outcomes and the stage's stats delta (tokens, seconds...)."""

    def on_skipped(self, pipeline: str, stage: str, count: int) -> None:
        """`count` documents of a chunk were not admitted by a stage's `when`."""

    def on_chunk(self, spec: PipelineSpec, chunk: Chunk) -> None:
        """A chunk went through every stage, before it is stored; may add `chunk.reviews`."""

    def on_stored(self, spec: PipelineSpec, chunk: Chunk, seconds: float) -> None:
        """A chunk was written to the sink (in `seconds`)."""

    def on_run_end(self, spec: PipelineSpec, status: str, summary: Any) -> None:
        """A run ended with `status` (finished, stopped, failed); may add to `summary.stage_stats`."""

    def on_lag(self, pipeline: str, group: str, lags: dict[tuple[str, int], int]) -> None:
        """A streaming source's consumer lag per owned (topic, partition)."""


class HookList(Hook):
    """Several hooks as one; a failing hook is logged, never raised."""

    def __init__(self, hooks: Iterable[Hook] = ()) -> None:
        self.hooks = list(hooks)

    def _each(self, method: str, *args: Any) -> None:
        for hook in self.hooks:
            try:
                getattr(hook, method)(*args)
            except Exception as exc:  # noqa: BLE001 - observers must not stop the pipeline
                log.warning("engine hook failed", extra={"hook": type(hook).__name__, "method": method, "error": str(exc)[:300]})

    def on_run_start(self, spec: PipelineSpec, run_id: str) -> None:
        self._each("on_run_start", spec, run_id)

    def on_stage(self, pipeline: str, stage: str, model_version: str, docs: Sequence[Document],
                 outcomes: Sequence[StageResult | DeadLetter], delta: dict[str, float]) -> None:
        self._each("on_stage", pipeline, stage, model_version, docs, outcomes, delta)

    def on_skipped(self, pipeline: str, stage: str, count: int) -> None:
        self._each("on_skipped", pipeline, stage, count)

    def on_chunk(self, spec: PipelineSpec, chunk: Chunk) -> None:
        self._each("on_chunk", spec, chunk)

    def on_stored(self, spec: PipelineSpec, chunk: Chunk, seconds: float) -> None:
        self._each("on_stored", spec, chunk, seconds)

    def on_run_end(self, spec: PipelineSpec, status: str, summary: Any) -> None:
        self._each("on_run_end", spec, status, summary)

    def on_lag(self, pipeline: str, group: str, lags: dict[tuple[str, int], int]) -> None:
        self._each("on_lag", pipeline, group, lags)

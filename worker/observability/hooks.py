"""Engine hooks for Prometheus metrics and structured logs (installed by the commands and the API)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from schemas.documents import DeadLetter, Document, StageResult
from schemas.pipeline import PipelineSpec
from worker.engine.core import Chunk
from worker.engine.hooks import Hook
from worker.observability import metrics

log = logging.getLogger("worker.engine")


class MetricsHook(Hook):
    """Every stage call, chunk, sink write and run as Prometheus series (see `metrics`)."""

    def on_run_start(self, spec: PipelineSpec, run_id: str) -> None:
        metrics.run_started(spec.name, run_id)

    def on_stage(self, pipeline: str, stage: str, model_version: str, docs: Sequence[Document],
                 outcomes: Sequence[StageResult | DeadLetter], delta: dict[str, float]) -> None:
        results = [o for o in outcomes if isinstance(o, StageResult)]
        metrics.observe_labels(pipeline, stage, results)
        metrics.observe_stage_delta(pipeline, stage, model_version, docs_in=len(docs), results=len(results),
                                    failed=len(outcomes) - len(results), seconds=float(delta.get("seconds", 0.0)), delta=delta)

    def on_skipped(self, pipeline: str, stage: str, count: int) -> None:
        metrics.observe_skipped(pipeline, stage, count)

    def on_stored(self, spec: PipelineSpec, chunk: Chunk, seconds: float) -> None:
        metrics.observe_sink(spec.name, seconds)
        metrics.observe_chunk(spec.name, items=chunk.items, docs=len(chunk.docs), letters=chunk.letters)

    def on_run_end(self, spec: PipelineSpec, status: str, summary: Any) -> None:
        metrics.add_latencies(summary)
        metrics.run_finished(spec.name, status)

    def on_lag(self, pipeline: str, group: str, lags: dict[tuple[str, int], int]) -> None:
        metrics.observe_lag(pipeline, group, lags)


class LogHook(Hook):
    """A log line per dead letter (doc id, stage, reason), so operators can grep a run's failures."""

    def on_stored(self, spec: PipelineSpec, chunk: Chunk, seconds: float) -> None:
        for letter in chunk.letters:
            log.info("dead letter", extra={"doc_id": letter.ref, "stage": letter.stage, "reason": letter.reason})

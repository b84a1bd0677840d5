"""Run a pipeline in this process: source -> validation -> stages in order -> SQL sink.

Documents move in chunks. For each chunk every stage runs over the documents its
`when` admits, then the documents, results and dead letters of the chunk are written
in one transaction. A crash loses at most the chunk in flight, and re-running is
safe because the sink upserts on natural keys.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from schemas.documents import DeadLetter, Document, StageResult
from schemas.pipeline import PipelineSpec
from worker.lifecycle.review import review_items
from worker.logs import bind_log_context, log_context, unbind_log_context
from worker.models.swap import follow_champions
from worker.observability import metrics
from worker.runtime.conditions import holds
from worker.sinks.sql import SinkBatch, SqlResultSink
from worker.sources.base import SourceItem
from worker.stages import Stage, build_stage

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    run_id: str
    pipeline: str
    docs: int = 0
    dead_letters: int = 0
    seconds: float = 0.0
    stage_counts: Counter[str] = field(default_factory=Counter)
    stage_skipped: Counter[str] = field(default_factory=Counter)
    stage_failed: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    labels: dict[str, Counter[str]] = field(default_factory=dict)
    stage_stats: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def docs_per_s(self) -> float:
        return self.docs / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "pipeline": self.pipeline, "docs": self.docs,
            "dead_letters": self.dead_letters, "seconds": round(self.seconds, 3),
            "docs_per_s": round(self.docs_per_s, 2), "stages": {
                name: {"results": self.stage_counts[name], "skipped": self.stage_skipped[name],
                       "failed": self.stage_failed[name], "labels": dict(self.labels.get(name, {})),
                       **self.stage_stats.get(name, {})}
                for name in self.stage_stats
            },
            "dead_letter_reasons": dict(self.reasons),
        }


def chunked(items: Iterable[SourceItem], size: int) -> Iterator[list[SourceItem]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def apply_stages(stages: list[Stage], spec: PipelineSpec, docs: list[Document], summary: RunSummary) -> tuple[list[StageResult], list[DeadLetter]]:
    """Run every stage over the documents its `when` admits; results in stage order."""
    context: dict[str, dict[str, StageResult]] = {d.id: {} for d in docs}
    results: list[StageResult] = []
    letters: list[DeadLetter] = []
    for stage, stage_spec in zip(stages, spec.stages, strict=True):
        eligible = [d for d in docs if holds(stage_spec.when, context[d.id])]
        summary.stage_skipped[stage.name] += len(docs) - len(eligible)
        before = metrics.stage_snapshot(stage)
        with log_context(stage=stage.name, model_version=stage.model_version):
            outcomes = stage.process(eligible, context)
        metrics.observe_stage(spec.name, stage, before, skipped=len(docs) - len(eligible), docs_in=len(eligible), outcomes=outcomes)
        for outcome in outcomes:
            if isinstance(outcome, StageResult):
                context[outcome.doc_id][stage.name] = outcome
                results.append(outcome)
                summary.stage_counts[stage.name] += 1
                summary.labels.setdefault(stage.name, Counter())[str(outcome.label)] += 1
            else:
                letters.append(outcome)
                summary.stage_failed[stage.name] += 1
    return results, letters


def unique_docs(items: list[SourceItem]) -> tuple[list[Document], list[DeadLetter]]:
    """Split a chunk; a repeated id within one chunk keeps its last copy."""
    docs: dict[str, Document] = {}
    letters: list[DeadLetter] = []
    for item in items:
        if isinstance(item, Document):
            docs.pop(item.id, None)
            docs[item.id] = item
        else:
            letters.append(item)
    return list(docs.values()), letters


def run_pipeline(
    spec: PipelineSpec,
    source: Any,
    sink: SqlResultSink,
    *,
    limit: int | None = None,
    chunk_size: int = 256,
    stages: list[Stage] | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
    runtime: str = "local",
    ray_address: str | None = None,
) -> RunSummary:
    """Drain `source` through the stages into `sink`; returns the run's summary.

    `runtime="local"` runs the stages in this process, chunk after chunk;
    `runtime="ray"` runs them in Ray actor pools, pipelined (see ray_pipeline).
    """
    summary = RunSummary(run_id=sink.run_id, pipeline=spec.name)
    items: Iterable[SourceItem] = source.read()
    if limit is not None:
        items = itertools.islice(items, limit)
    started = time.perf_counter()
    status = "failed"
    sink.start_run({"stages": [s.name for s in spec.stages], "runtime": runtime})
    metrics.run_started(spec.name, sink.run_id)
    log_scope = bind_log_context(run_id=sink.run_id, pipeline=spec.name)

    def store(docs: list[Document], letters: list[DeadLetter], results: list[StageResult], items_in_chunk: int) -> None:
        with metrics.time_sink(spec.name):
            sink.write(SinkBatch(documents=docs, results=results, dead_letters=letters, reviews=review_items(spec, docs, results)))
        metrics.observe_chunk(spec.name, items=items_in_chunk, docs=len(docs), letters=letters)
        for letter in letters:
            log.info("dead letter", extra={"doc_id": letter.ref, "stage": letter.stage, "reason": letter.reason})
        summary.docs += len(docs)
        summary.dead_letters += len(letters)
        summary.reasons.update(d.reason for d in letters)
        if on_chunk is not None:
            on_chunk(items_in_chunk, len(docs))

    try:
        if runtime == "ray":
            _run_on_ray(spec, items, chunk_size, summary, store, ray_address, sink.url)
        else:
            stages = stages if stages is not None else [build_stage(s) for s in spec.stages]
            follow_champions(stages, sink.url)
            _run_local(spec, stages, items, chunk_size, summary, store)
        status = "finished"
    finally:
        summary.seconds = time.perf_counter() - started
        metrics.add_latencies(summary)
        metrics.run_finished(spec.name, status)
        unbind_log_context(log_scope)
        sink.finish_run(status, summary.as_dict())
    return summary


Store = Callable[[list[Document], list[DeadLetter], list[StageResult], int], None]


def _run_local(spec: PipelineSpec, stages: list[Stage], items: Iterable[SourceItem], chunk_size: int, summary: RunSummary, store: Store) -> None:
    for stage in stages:
        stage.load()
    try:
        for chunk in chunked(items, chunk_size):
            docs, letters = unique_docs(chunk)
            results, stage_letters = apply_stages(stages, spec, docs, summary)
            store(docs, letters + stage_letters, results, len(chunk))
    finally:
        for stage in stages:
            st = stage.stats
            summary.stage_stats[stage.name] = {
                "model_version": stage.model_version, "seconds": round(st.seconds, 3),  # type: ignore[dict-item]
                "padding_waste": round(st.padding_waste, 4), "tokens_per_s": round(st.tokens_per_s, 1),
                "batches": st.batches,
            }


def _run_on_ray(spec: PipelineSpec, items: Iterable[SourceItem], chunk_size: int, summary: RunSummary, store: Store,
                address: str | None, database_url: str | None = None) -> None:
    from worker.runtime.ray_pipeline import ChunkState, RayPipeline, ensure_ray

    ensure_ray(address)
    pipeline = RayPipeline(spec, database_url=database_url)

    def chunks() -> Iterator[tuple[list[Document], list[DeadLetter], int]]:
        for chunk in chunked(items, chunk_size):
            docs, letters = unique_docs(chunk)
            yield docs, letters, len(chunk)

    def complete(chunk: ChunkState) -> None:
        for result in chunk.results:
            summary.stage_counts[result.stage] += 1
            summary.labels.setdefault(result.stage, Counter())[str(result.label)] += 1
        for letter in chunk.letters:
            if letter.stage != "source":
                summary.stage_failed[letter.stage] += 1
        store(chunk.docs, chunk.letters, chunk.results, chunk.payload)

    try:
        pipeline.run(chunks(), complete)
    finally:
        for name, totals in pipeline.totals.items():
            summary.stage_skipped[name] = totals.skipped
            waste = 1 - totals.real_tokens / totals.padded_tokens if totals.padded_tokens else 0.0
            summary.stage_stats[name] = {
                "model_version": totals.model_version, "seconds": round(totals.seconds, 3),  # type: ignore[dict-item]
                "padding_waste": round(waste, 4), "tokens_per_s": round(totals.real_tokens / totals.seconds, 1) if totals.seconds else 0.0,
                "batches": totals.batches,
            }
        pipeline.shutdown()


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]

"""Run a pipeline's stages in pools of Ray actors, pipelined across chunks.

Each stage gets `replicas` actors with the CPUs/GPUs its spec declares (a stage
asking for GPUs on a cluster without any runs on CPUs, with a warning). The model
loads once per actor. Chunks of documents flow through the stages independently:
stage 2 works on chunk N while stage 1 works on chunk N+1. At most `max_inflight`
chunks are in flight, and the source is read only when a slot frees, so memory
stays bounded however large the input (backpressure).

Delivery: completed chunks are handed to `on_complete` strictly in source order,
so a caller that commits offsets after each chunk never commits past a chunk that
is still in flight. A batch whose actor call fails is retried once on a fresh
actor; if it fails again its documents become `stage_error` dead letters for that
stage and the run goes on.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from schemas.documents import DeadLetter, Document, StageResult
from schemas.pipeline import PipelineSpec
from worker.observability import metrics
from worker.runtime.conditions import holds

log = logging.getLogger(__name__)
ACTOR_START_TIMEOUT_S = 600
Outcome = StageResult | DeadLetter


class StageActor:
    """Holds one stage and its loaded model inside a Ray worker process."""

    def __init__(self, spec: Any, device: str, database_url: str | None = None) -> None:
        import torch

        from worker.logs import setup_logging
        from worker.models.swap import follow_champions
        from worker.stages import build_stage

        setup_logging(os.environ.get("TEXTWORKER_LOG_LEVEL", "WARNING"))
        threads = spec.resources.threads or max(1, int(spec.resources.cpus))
        torch.set_num_threads(threads)
        spec = spec.model_copy(update={"resources": spec.resources.model_copy(update={"device": device})})
        self.stage = build_stage(spec)
        follow_champions([self.stage], database_url)  # the actor switches to new champions between batches
        self.stage.load()

    def process(self, docs: list[Document], context: dict[str, dict[str, StageResult]]) -> tuple[list[Outcome], dict[str, float]]:
        before = (self.stage.stats.real_tokens, self.stage.stats.padded_tokens, self.stage.stats.seconds, self.stage.stats.batches)
        outcomes = self.stage.process(docs, context)
        st = self.stage.stats
        delta = {"real_tokens": st.real_tokens - before[0], "padded_tokens": st.padded_tokens - before[1],
                 "seconds": st.seconds - before[2], "batches": st.batches - before[3]}
        if getattr(self.stage, "device", "cpu").startswith("cuda"):
            import torch

            delta["gpu_memory_bytes"] = float(torch.cuda.max_memory_allocated())
        return outcomes, delta

    def model_version(self) -> str:
        return self.stage.model_version


@dataclass
class ChunkState:
    """One chunk's documents on their way through the stages."""

    seq: int
    docs: list[Document]
    letters: list[DeadLetter]
    payload: Any = None
    context: dict[str, dict[str, StageResult]] = field(default_factory=dict)
    results: list[StageResult] = field(default_factory=list)
    next_stage: int = 0


@dataclass
class StageTotals:
    docs: int = 0
    results: int = 0
    failed: int = 0
    skipped: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    seconds: float = 0.0
    batches: int = 0
    model_version: str = ""


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to `address`/$RAY_ADDRESS, or start a local Ray instance once."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {
        "include_dashboard": False, "log_to_driver": True, "configure_logging": False,
        "runtime_env": {"env_vars": {k: v for k, v in os.environ.items() if k.startswith(("TEXTWORKER_", "HF_", "TOKENIZERS_"))}},
    }
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, **kwargs)


class RayStagePool:
    """`replicas` actors for one stage; calls go to the least-busy actor."""

    def __init__(self, spec: Any, cpu_scale: float = 1.0, database_url: str | None = None) -> None:
        import ray

        self.spec = spec
        self.database_url = database_url
        gpus = spec.resources.gpus
        if gpus and ray.cluster_resources().get("GPU", 0) < gpus:
            log.warning("stage asks for GPUs but the cluster has none: running on CPU", extra={"stage": spec.name})
            gpus = 0
        self.device = "cuda" if gpus else "cpu"
        cpus = math.floor(spec.resources.cpus * cpu_scale * 1e4) / 1e4  # Ray counts in 1e-4 units; never round up
        self.options = {"num_cpus": cpus, "num_gpus": gpus, "max_restarts": 1}
        self.remote_cls = ray.remote(StageActor)
        self.actors = [self._new_actor() for _ in range(spec.resources.replicas)]
        self.busy = [0] * len(self.actors)
        try:
            self.model_version = ray.get(self.actors[0].model_version.remote(), timeout=ACTOR_START_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError as exc:
            raise RuntimeError(
                f"stage `{spec.name}`: its actor did not start within {ACTOR_START_TIMEOUT_S}s "
                f"(asks for {self.options}; the cluster has {ray.available_resources()})"
            ) from exc

    def _new_actor(self) -> Any:
        return self.remote_cls.options(**self.options).remote(self.spec, self.device, self.database_url)

    def submit(self, docs: list[Document], context: dict[str, dict[str, StageResult]]) -> tuple[Any, int]:
        index = min(range(len(self.actors)), key=self.busy.__getitem__)
        self.busy[index] += 1
        return self.actors[index].process.remote(docs, context), index

    def done(self, index: int) -> None:
        self.busy[index] -= 1

    def replace(self, index: int) -> None:
        import ray

        ray.kill(self.actors[index], no_restart=True)
        self.actors[index] = self._new_actor()


class RayPipeline:
    """Drives chunks through the stage pools; see the module docstring for the contract."""

    def __init__(self, spec: PipelineSpec, *, max_inflight: int | None = None, database_url: str | None = None) -> None:
        import ray

        self.spec = spec
        wanted = sum(s.resources.cpus * s.resources.replicas for s in spec.stages)
        have = float(ray.cluster_resources().get("CPU", 0)) or wanted
        scale = min(1.0, have / wanted) if wanted else 1.0
        if scale < 1.0:
            log.warning("stages ask for more CPUs than the cluster has: scaling every request down",
                        extra={"wanted_cpus": wanted, "cluster_cpus": have, "scale": round(scale, 3)})
        self.pools = [RayStagePool(s, scale, database_url) for s in spec.stages]
        replicas = sum(s.resources.replicas for s in spec.stages)
        self.max_inflight = max_inflight or replicas + 2
        self.totals = {s.name: StageTotals(model_version=p.model_version) for s, p in zip(spec.stages, self.pools, strict=True)}
        self.peak_inflight = 0

    def run(self, chunks: Iterable[tuple[list[Document], list[DeadLetter], Any]], on_complete: Callable[[ChunkState], None]) -> None:
        import ray

        source: Iterator[tuple[list[Document], list[DeadLetter], Any]] = iter(chunks)
        pending: dict[Any, tuple[ChunkState, int, list[Document], int]] = {}
        finished: dict[int, ChunkState] = {}
        active = 0
        next_seq = emit_seq = 0
        exhausted = False
        while True:
            while not exhausted and active < self.max_inflight:
                try:
                    docs, letters, payload = next(source)
                except StopIteration:
                    exhausted = True
                    break
                chunk = ChunkState(next_seq, docs, letters, payload, {d.id: {} for d in docs})
                next_seq += 1
                active += 1
                self._advance(chunk, pending, finished)
            self.peak_inflight = max(self.peak_inflight, active)
            while emit_seq in finished:
                on_complete(finished.pop(emit_seq))
                emit_seq += 1
                active -= 1
            if exhausted and not pending and not finished:
                return
            if not pending:
                continue
            ready, _ = ray.wait(list(pending), num_returns=1)
            chunk, stage_index, batch, actor = pending.pop(ready[0])
            self.pools[stage_index].done(actor)
            outcomes = self._collect(ready[0], stage_index, batch, actor, chunk)
            self._merge(chunk, stage_index, outcomes)
            chunk.next_stage = stage_index + 1
            self._advance(chunk, pending, finished)

    def _collect(self, ref: Any, stage_index: int, batch: list[Document], actor: int, chunk: ChunkState) -> list[Outcome]:
        import ray

        pool = self.pools[stage_index]
        try:
            outcomes, delta = ray.get(ref)
        except (ray.exceptions.RayError, RuntimeError) as exc:
            log.warning("stage actor call failed; retrying on a fresh actor", extra={"stage": pool.spec.name, "error": str(exc)[:300]})
            pool.replace(actor)
            try:
                outcomes, delta = ray.get(pool.actors[actor].process.remote(batch, chunk.context))
            except (ray.exceptions.RayError, RuntimeError) as again:
                detail = f"{type(again).__name__}: {str(again)[:400]}"
                outcomes = [DeadLetter(ref=d.id, stage=pool.spec.name, reason="stage_error", detail=detail, payload=d.text[:2000]) for d in batch]
                delta = {}
        totals = self.totals[pool.spec.name]
        gpu_memory = delta.pop("gpu_memory_bytes", 0.0)
        for key, value in delta.items():
            setattr(totals, key, getattr(totals, key) + value)
        results = [o for o in outcomes if isinstance(o, StageResult)]
        metrics.observe_labels(self.spec.name, pool.spec.name, results)
        metrics.observe_stage_delta(
            self.spec.name, pool.spec.name, results[0].model_version if results else totals.model_version, docs_in=len(batch),
            results=len(results), failed=len(outcomes) - len(results), seconds=delta.get("seconds", 0.0),
            delta={**delta, "gpu_memory_bytes": gpu_memory},
        )
        return list(outcomes)

    def _merge(self, chunk: ChunkState, stage_index: int, outcomes: list[Outcome]) -> None:
        totals = self.totals[self.spec.stages[stage_index].name]
        for outcome in outcomes:
            totals.docs += 1
            if isinstance(outcome, StageResult):
                chunk.context[outcome.doc_id][outcome.stage] = outcome
                chunk.results.append(outcome)
                totals.results += 1
                totals.model_version = outcome.model_version  # the actors may have swapped models
            else:
                chunk.letters.append(outcome)
                totals.failed += 1

    def _advance(self, chunk: ChunkState, pending: dict[Any, Any], finished: dict[int, ChunkState]) -> None:
        """Submit the chunk to its next stage with eligible documents, or mark it finished."""
        while chunk.next_stage < len(self.spec.stages):
            stage_spec = self.spec.stages[chunk.next_stage]
            eligible = [d for d in chunk.docs if holds(stage_spec.when, chunk.context[d.id])]
            self.totals[stage_spec.name].skipped += len(chunk.docs) - len(eligible)
            metrics.observe_skipped(self.spec.name, stage_spec.name, len(chunk.docs) - len(eligible))
            if eligible:
                context = {d.id: chunk.context[d.id] for d in eligible}
                ref, actor = self.pools[chunk.next_stage].submit(eligible, context)
                pending[ref] = (chunk, chunk.next_stage, eligible, actor)
                return
            chunk.next_stage += 1
        finished[chunk.seq] = chunk

    def shutdown(self) -> None:
        import ray

        for pool in self.pools:
            for actor in pool.actors:
                ray.kill(actor, no_restart=True)

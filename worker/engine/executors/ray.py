"""Ray executor: each stage in a pool of Ray actors, placed by its `resources`.

Each stage gets `replicas` actors with the CPUs/GPUs (fractions allowed) its spec
declares and `threads` torch threads; a stage asking for GPUs on a cluster without
enough runs on CPUs, with a warning, and CPU requests larger than the cluster are
scaled down, with a warning (`fit_placement`, which `serve` uses too). The model loads
once per actor. A call goes to the least-busy actor of its pool; a call whose actor
fails is retried once on a fresh actor, then its documents become `stage_error` dead
letters and the run goes on. The engine keeps several chunks in flight, so stage 2
works on chunk N while stage 1 works on chunk N+1.

Lifetime: the actors belong to the driver. When the driver exits -- or is killed --
Ray ends them; a local Ray instance started by `ensure_ray` ends with the driver too.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

from schemas.documents import Document
from schemas.pipeline import PipelineSpec
from worker.engine.core import Context, Outcome, stage_error_letters
from worker.engine.stage_call import run_stage

log = logging.getLogger(__name__)
ACTOR_START_TIMEOUT_S = 600


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to `address`/$RAY_ADDRESS, or start a local Ray instance once (it ends with this process)."""
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
    else:  # "local": always a new instance of our own, never one a `ray start` left on this machine
        ray.init(address="local", num_cpus=num_cpus, **kwargs)


def cpu_scale(wanted: float, cluster_cpus: float, reserved: float = 0.0) -> float:
    """Factor (<= 1) that fits `wanted` CPUs into the cluster's, less `reserved` (an ingress...)."""
    room = cluster_cpus - reserved
    if wanted <= 0 or room >= wanted:
        return 1.0
    scale = max(room, 0.01) / wanted
    log.warning("stages ask for more CPUs than the cluster has: scaling every request down",
                extra={"wanted_cpus": wanted, "cluster_cpus": cluster_cpus, "scale": round(scale, 3)})
    return scale


def fit_placement(resources: Any, name: str, scale: float, cluster_gpus: float) -> tuple[str, float, float]:
    """(device, num_cpus, num_gpus) of one stage's actors on the cluster as it is now."""
    gpus = resources.gpus
    if gpus and cluster_gpus < gpus:
        log.warning("stage asks for GPUs but the cluster has none free: running on CPU", extra={"stage": name})
        gpus = 0
    cpus = math.floor(resources.cpus * scale * 1e4) / 1e4  # Ray counts in 1e-4 units; never round up
    return ("cuda" if gpus else "cpu"), cpus, gpus


class StageActor:
    """One stage and its loaded model inside a Ray worker process (Ray actor pools and Serve replicas)."""

    def __init__(self, spec: Any, device: str, database_url: str | None = None) -> None:
        import torch

        from worker.engine.swap import follow_champions
        from worker.logs import setup_logging
        from worker.stages import build_stage

        setup_logging(os.environ.get("TEXTWORKER_LOG_LEVEL", "WARNING"))
        torch.set_num_threads(spec.resources.threads or max(1, int(spec.resources.cpus)))
        spec = spec.model_copy(update={"resources": spec.resources.model_copy(update={"device": device})})
        self.stage = build_stage(spec)
        follow_champions([self.stage], database_url)  # the actor switches to new champions between batches
        self.stage.load()

    def process(self, docs: list[Document], context: Context) -> tuple[list[Outcome], dict[str, float]]:
        return run_stage(self.stage, docs, context)

    def model_version(self) -> str:
        return self.stage.model_version

    def node_id(self) -> str:
        import ray

        return str(ray.get_runtime_context().get_node_id())


class RayStagePool:
    """`replicas` actors for one stage; calls go to the least-busy actor."""

    def __init__(self, spec: Any, scale: float = 1.0, database_url: str | None = None) -> None:
        import ray

        self.spec = spec
        self.database_url = database_url
        self.device, cpus, gpus = fit_placement(spec.resources, spec.name, scale, float(ray.cluster_resources().get("GPU", 0)))
        self.options: dict[str, Any] = {"num_cpus": cpus, "num_gpus": gpus, "max_restarts": 1}
        if spec.resources.custom:
            self.options["resources"] = dict(spec.resources.custom)
        self.remote_cls = ray.remote(StageActor)
        self.actors = [self._new_actor() for _ in range(spec.resources.replicas)]
        self.busy = [0] * len(self.actors)

    def _new_actor(self) -> Any:
        return self.remote_cls.options(**self.options).remote(self.spec, self.device, self.database_url)

    def wait_ready(self) -> str:
        """Block until every actor has loaded its model; returns the model version."""
        import ray

        try:
            versions = ray.get([a.model_version.remote() for a in self.actors], timeout=ACTOR_START_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError as exc:
            raise RuntimeError(
                f"stage `{self.spec.name}`: its actors did not start within {ACTOR_START_TIMEOUT_S}s "
                f"(each asks for {self.options}; the cluster has {ray.available_resources()})"
            ) from exc
        return str(versions[0])

    def submit(self, docs: list[Document], context: Context) -> tuple[Any, int]:
        index = min(range(len(self.actors)), key=self.busy.__getitem__)
        self.busy[index] += 1
        return self.actors[index].process.remote(docs, context), index

    def done(self, index: int) -> None:
        self.busy[index] -= 1

    def replace(self, index: int) -> None:
        import ray

        ray.kill(self.actors[index], no_restart=True)
        self.actors[index] = self._new_actor()

    def node_ids(self) -> list[str]:
        import ray

        return [str(n) for n in ray.get([a.node_id.remote() for a in self.actors])]


class RayExecutor:
    """Stage actor pools on a Ray cluster (`address`, $RAY_ADDRESS, or a local instance)."""

    def __init__(self, database_url: str | None = None, address: str | None = None) -> None:
        self.database_url = database_url
        self.address = address
        self.pools: list[RayStagePool] = []
        self.parallelism = 1
        self.placement: dict[str, list[str]] = {}
        self._pending: dict[Any, tuple[int, int, list[Document], Context]] = {}

    def start(self, spec: PipelineSpec) -> dict[str, str]:
        import ray

        ensure_ray(self.address)
        wanted = sum(s.resources.cpus * s.resources.replicas for s in spec.stages)
        scale = cpu_scale(wanted, float(ray.cluster_resources().get("CPU", 0)) or wanted)
        self.pools = [RayStagePool(s, scale, self.database_url) for s in spec.stages]
        self.parallelism = sum(s.resources.replicas for s in spec.stages) + 1
        versions = {pool.spec.name: pool.wait_ready() for pool in self.pools}
        self.placement = self.node_ids()
        log.info("stage actors placed", extra={"placement": self.placement})
        return versions

    def submit(self, index: int, docs: list[Document], context: Context) -> Any:
        ref, actor = self.pools[index].submit(docs, context)
        self._pending[ref] = (index, actor, docs, context)
        return ref

    def done(self, timeout: float | None) -> list[tuple[Any, list[Outcome], dict[str, float]]]:
        import ray

        if not self._pending:
            return []
        refs = list(self._pending)
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        return [(ref, *self._collect(ref)) for ref in ready]

    def _collect(self, ref: Any) -> tuple[list[Outcome], dict[str, float]]:
        import ray

        index, actor, docs, context = self._pending.pop(ref)
        pool = self.pools[index]
        pool.done(actor)
        try:
            outcomes, delta = ray.get(ref)
            return list(outcomes), dict(delta)
        except (ray.exceptions.RayError, RuntimeError) as exc:
            log.warning("stage actor call failed; retrying on a fresh actor", extra={"stage": pool.spec.name, "error": str(exc)[:300]})
        pool.replace(actor)
        try:
            outcomes, delta = ray.get(pool.actors[actor].process.remote(docs, context))
            return list(outcomes), dict(delta)
        except (ray.exceptions.RayError, RuntimeError) as again:
            return list(stage_error_letters(docs, pool.spec.name, again)), {}

    def node_ids(self) -> dict[str, list[str]]:
        """Where each stage's actors run (node ids), e.g. to check a multi-node placement."""
        return {pool.spec.name: pool.node_ids() for pool in self.pools}

    def close(self) -> None:
        import ray

        for pool in self.pools:
            for actor in pool.actors:
                ray.kill(actor, no_restart=True)
        self.pools = []

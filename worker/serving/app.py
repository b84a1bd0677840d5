"""Build the Serve application for a pipeline: one deployment per stage plus the HTTP ingress.

Placement comes from each stage's `resources` in the pipeline file:
- `cpus`, `gpus` -> the replica's `num_cpus` / `num_gpus` (fractional GPUs share a device);
- `replicas` -> a fixed replica count, or, with `min_replicas`/`max_replicas`, Serve
  autoscaling between them starting at `replicas`;
- `threads` -> torch threads per replica (default: the whole CPUs asked for, at least 1).

With `fit_to_cluster` (the default) the request is fitted to the cluster as it is now,
the same way the Ray batch runtime does it: a stage asking for GPUs on a cluster without
enough runs on CPU with a warning, and CPU requests larger than the cluster are scaled
down with a warning (never rounded up, so they fit).

`app_builder` is the entry for a Serve config file or a KubeRay RayService:
`import_path: worker.serving.app:app_builder` with `args: {pipeline: FILE, ...}`.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

from schemas.pipeline import PipelineSpec
from worker.engine.executors.ray import cpu_scale as fit_cpus
from worker.engine.executors.ray import fit_placement
from worker.serving.settings import ServeArgs, ServeSettings

log = logging.getLogger(__name__)
INGRESS_NAME = "ingress"
INGRESS_HEADROOM = 64  # calls beyond max_concurrent that still reach the ingress (and get a fast 429)


def stage_deployment_name(stage_name: str) -> str:
    return f"stage-{stage_name}"


def replica_counts(resources: Any) -> dict[str, Any]:
    """`num_replicas`, or an `autoscaling_config` when min/max replicas are set."""
    if resources.min_replicas is None and resources.max_replicas is None:
        return {"num_replicas": resources.replicas}
    low = resources.min_replicas or 1
    high = max(resources.max_replicas or max(resources.replicas, low), low)
    initial = min(max(resources.replicas, low), high)
    return {"autoscaling_config": {"min_replicas": low, "max_replicas": high, "initial_replicas": initial}}


def initial_replicas(resources: Any) -> int:
    counts = replica_counts(resources)
    return int(counts["num_replicas"]) if "num_replicas" in counts else int(counts["autoscaling_config"]["initial_replicas"])


def cpu_scale(spec: PipelineSpec, settings: ServeSettings, cluster_cpus: float) -> float:
    """Factor (<= 1) that makes every stage's initial replicas plus the ingress fit the cluster's CPUs."""
    if not settings.fit_to_cluster:
        return 1.0
    wanted = sum(s.resources.cpus * initial_replicas(s.resources) for s in spec.stages)
    return fit_cpus(wanted, cluster_cpus, reserved=settings.ingress_cpus)


def stage_options(stage: Any, settings: ServeSettings, scale: float, cluster_gpus: float) -> tuple[str, dict[str, Any]]:
    """(device, deployment options) for one stage: the same placement rules as the Ray executor."""
    device, cpus, gpus = fit_placement(stage.resources, stage.name, scale, cluster_gpus if settings.fit_to_cluster else math.inf)
    options: dict[str, Any] = {
        "name": stage_deployment_name(stage.name),
        "ray_actor_options": {"num_cpus": cpus, "num_gpus": gpus, **({"resources": dict(stage.resources.custom)} if stage.resources.custom else {})},
        "max_ongoing_requests": max(2 * settings.batch_calls, 8),
        **replica_counts(stage.resources),
    }
    return device, options


def with_absolute_models(spec: PipelineSpec) -> PipelineSpec:
    """Relative local model paths made absolute, so replicas find them whatever their working directory."""
    stages = []
    for stage in spec.stages:
        path = Path(stage.model).expanduser()
        if not path.is_absolute() and path.exists():
            stage = stage.model_copy(update={"model": str(path.resolve())})
        stages.append(stage)
    return spec.model_copy(update={"stages": stages})


def build_application(spec: PipelineSpec, settings: ServeSettings) -> Any:
    """The bound Serve application (pass it to `serve.run`). Needs a connected Ray."""
    import ray
    from ray import serve

    from worker.serving.ingress import DocumentsIngress
    from worker.serving.stage_server import StageServer

    spec = with_absolute_models(spec)
    if settings.max_chars is None:
        settings = settings.model_copy(update={"max_chars": spec.source.max_chars})
    cluster = ray.cluster_resources()
    scale = cpu_scale(spec, settings, float(cluster.get("CPU", 0)) or math.inf)
    stage_apps = []
    for stage in spec.stages:
        device, options = stage_options(stage, settings, scale, float(cluster.get("GPU", 0)))
        deployment = serve.deployment(**options)(StageServer)
        stage_apps.append(deployment.bind(stage, device, settings.batch_calls, settings.batch_wait_ms / 1000, settings.database_url))
    ingress = serve.deployment(
        name=INGRESS_NAME, num_replicas=1, ray_actor_options={"num_cpus": settings.ingress_cpus},
        max_ongoing_requests=settings.max_concurrent + INGRESS_HEADROOM,
    )(serve.ingress()(DocumentsIngress))
    return ingress.bind(spec, stage_apps, settings)


def settings_from_args(args: ServeArgs, spec: PipelineSpec) -> ServeSettings:
    """ServeSettings for a pipeline: the database is `database_url`, else $TEXTWORKER_DATABASE_URL, else the sink's."""
    database_url = None
    if args.store:
        database_url = args.database_url or os.environ.get("TEXTWORKER_DATABASE_URL") or spec.sink.url
    fields = args.model_dump(exclude={"pipeline", "store", "database_url"})
    return ServeSettings(**fields, database_url=database_url)


def serve_http_host() -> str | None:
    """The address Serve's HTTP proxies listen on (`http_options.host`), or None when no controller answers."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    if not ray.is_initialized():
        return None
    try:
        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        config: Any = ray.get(controller.get_http_config.remote(), timeout=30)
        host = config.host
    except Exception as exc:  # noqa: BLE001 - no controller (or another Ray version): the caller assumes the worst
        log.warning("could not read Serve's HTTP address", extra={"error": f"{type(exc).__name__}: {str(exc)[:200]}"})
        return None
    return str(host) if host else None


def app_builder(args: dict[str, Any]) -> Any:
    """Application builder for Serve config files: `args` are `ServeArgs` fields.

    Refuses (TextworkerError) to build an application that Serve would expose on any
    address but loopback without a token: `token` in `args`, else $TEXTWORKER_TOKEN
    where the builder runs (a Kubernetes secret in infra/kuberay/rayservice.yaml).
    The token then travels to the ingress replica inside the settings, never in a log.
    """
    from pydantic import SecretStr

    from worker.config import load_pipeline
    from worker.observability.auth import check_bind, resolve_token

    parsed = ServeArgs.model_validate(args)
    token = parsed.token.get_secret_value() if parsed.token else resolve_token()
    host = serve_http_host()
    check_bind(host if host is not None else "an unknown Serve HTTP address", token)
    spec = load_pipeline(parsed.pipeline)
    settings = settings_from_args(parsed, spec)
    if token:
        settings = settings.model_copy(update={"token": SecretStr(token)})
    return build_application(spec, settings)

"""Putting an engine together: executor by runtime, plus the hooks every entry point installs.

The commands, the Python API and serving build engines here, so the engine itself
never imports what hangs on it (metrics, logs, the review queue).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from schemas.pipeline import PipelineSpec
from worker.engine import Engine, Hook
from worker.engine.executors import make_executor


def default_hooks() -> list[Hook]:
    """Metrics, dead-letter log lines and the review queue's routing."""
    from worker.lifecycle.review import ReviewHook
    from worker.observability.hooks import LogHook, MetricsHook

    return [MetricsHook(), LogHook(), ReviewHook()]


def build_engine(spec: PipelineSpec, runtime: str = "local", *, database_url: str | None = None, address: str | None = None,
                 stages: list[Any] | None = None, hooks: Iterable[Hook] | None = None, max_inflight: int | None = None) -> Engine:
    """An engine for `spec` on `runtime` (`local` or `ray`); with `database_url` stages follow that registry's champions."""
    extra: dict[str, Any] = {"stages": stages} if stages is not None else {}
    executor = make_executor(runtime, database_url, address, **extra)
    return Engine(spec, executor, default_hooks() if hooks is None else hooks, max_inflight=max_inflight)


def run_source(spec: PipelineSpec, source: Any, sink: Any, *, runtime: str = "local", address: str | None = None,
               chunk_size: int = 256, limit: int | None = None, on_chunk: Any = None, stages: list[Any] | None = None,
               meta: dict[str, Any] | None = None, engine: Engine | None = None) -> Any:
    """A finite source through an engine (a new one on `runtime` unless given) into `sink`; returns the run summary.

    Closes the engine; the caller owns (and closes) the source and the sink.
    """
    from worker.engine.batch import run_pipeline

    engine = engine or build_engine(spec, runtime, database_url=getattr(sink, "url", None), address=address, stages=stages)
    try:
        return run_pipeline(spec, source, sink, engine, limit=limit, chunk_size=chunk_size, on_chunk=on_chunk,
                            meta={"runtime": runtime, **(meta or {})})
    finally:
        engine.close()


def run_kafka(spec: PipelineSpec, database_url: str, options: Any, stop: Any = None, *, runtime: str = "local",
              address: str | None = None) -> Any:
    """The Kafka driver (`worker.engine.stream`) on a new engine for `runtime`; returns the run summary."""
    from worker.engine.stream import run_stream

    engine = build_engine(spec, runtime, database_url=database_url, address=address)
    return run_stream(spec, database_url, options, engine, stop, meta={"runtime": runtime})

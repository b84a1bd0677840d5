"""The Ray runtime: stage actor pools give the same results as the local runtime,
fall back to CPUs when GPUs are asked for, and keep in-flight work bounded."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas.documents import Document
from schemas.pipeline import FileSource, PipelineSpec, SpamStage, SqlSink
from worker.assembly import run_source as run_pipeline
from worker.config import load_pipeline
from worker.engine.runs import new_run_id
from worker.sinks.sql import SqlResultSink
from worker.sources.files import FileDocumentSource

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "worker" / "seed" / "sample_docs.jsonl"


def _results(url: str) -> dict[tuple[str, str], str]:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT doc_id, stage, label FROM results")).all()
    engine.dispose()
    return {(r.doc_id, r.stage): r.label for r in rows}


def _spec(models_dir: Path, db: str) -> PipelineSpec:
    spec = load_pipeline(REPO / "pipelines" / "demo.yaml", env={"TEXTWORKER_MODELS_DIR": str(models_dir)})
    keep = [s for s in spec.stages if s.name in ("sentiment", "spam", "translate")]
    return spec.model_copy(update={"stages": keep, "sink": SqlSink(url=db), "source": FileSource(path=str(SAMPLE))})


def _run(spec: PipelineSpec, runtime: str, chunk_size: int = 8) -> dict[tuple[str, str], str]:
    sink = SqlResultSink(spec.sink.url, spec.name, new_run_id()).open()
    try:
        summary = run_pipeline(spec, FileDocumentSource(spec.source), sink, chunk_size=chunk_size, runtime=runtime)
    finally:
        sink.close()
    assert summary.docs == 61
    return _results(spec.sink.url)


def test_ray_runtime_matches_local(ray_session: None, models_dir: Path, tmp_path: Path) -> None:
    local = _run(_spec(models_dir, f"sqlite:///{tmp_path / 'local.db'}"), "local")
    on_ray = _run(_spec(models_dir, f"sqlite:///{tmp_path / 'ray.db'}"), "ray")
    assert on_ray.keys() == local.keys()
    assert on_ray == local
    assert sum(1 for (_, stage) in on_ray if stage == "translate") == sum(1 for (d, s), v in on_ray.items() if s == "spam" and v == "ham")


def test_gpu_request_falls_back_to_cpu_with_a_warning(ray_session: None, models_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    from worker.engine.executors.ray import RayStagePool

    spec = SpamStage(name="spam", model=str(models_dir / "spam"), resources={"gpus": 0.5})
    with caplog.at_level(logging.WARNING):
        pool = RayStagePool(spec)
    try:
        assert pool.device == "cpu" and pool.options["num_gpus"] == 0
        assert any("GPU" in r.getMessage() for r in caplog.records)
        import ray

        outcomes, _ = ray.get(pool.submit([Document(id="x", text="Free entry! Text WIN to 80808 now")], {"x": {}})[0])
        assert outcomes[0].label in ("spam", "ham")
    finally:
        import ray

        for actor in pool.actors:
            ray.kill(actor)


def test_in_flight_chunks_stay_bounded(ray_session: None, models_dir: Path) -> None:
    from worker.engine import ChunkInput, Engine
    from worker.engine.executors.ray import RayExecutor

    spec = PipelineSpec(name="bounded", source=FileSource(path="unused"),
                        stages=[SpamStage(name="spam", model=str(models_dir / "spam"), batch_size=8)])
    pipeline = Engine(spec, RayExecutor(), max_inflight=3)
    pulled = completed = 0
    max_ahead = 0

    def chunks() -> Iterator[ChunkInput]:
        nonlocal pulled, max_ahead
        for n in range(40):
            pulled += 1
            max_ahead = max(max_ahead, pulled - completed)
            yield ChunkInput([Document(id=f"c{n}-{i}", text=f"Message number {i} about the meeting at {n} o'clock") for i in range(8)])

    order: list[int] = []

    def done(chunk) -> None:  # type: ignore[no-untyped-def]
        nonlocal completed
        completed += 1
        order.append(chunk.seq)

    try:
        pipeline.run(chunks(), done)
    finally:
        pipeline.close()
    assert completed == 40
    assert order == list(range(40))  # handed over strictly in source order
    assert max_ahead <= 3 and pipeline.peak_inflight <= 3

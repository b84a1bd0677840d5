"""Serve placement from a stage's `resources`, and how a stage replica shares one batch among callers."""

from __future__ import annotations

import logging

import pytest

from schemas.documents import DeadLetter, Document, StageResult
from schemas.pipeline import FileSource, PipelineSpec, Resources, SpamStage
from worker.serving.app import cpu_scale, replica_counts, stage_options
from worker.serving.settings import ServeSettings
from worker.serving.stage_server import StageCall, merge_calls, split_outcomes


def _stage(name: str = "spam", **resources: object) -> SpamStage:
    return SpamStage(name=name, model="models/spam", resources=Resources(**resources))  # type: ignore[arg-type]


def test_fixed_replicas_or_autoscaling_from_min_max() -> None:
    assert replica_counts(Resources(replicas=3)) == {"num_replicas": 3}
    auto = replica_counts(Resources(replicas=2, min_replicas=1, max_replicas=4))["autoscaling_config"]
    assert auto == {"min_replicas": 1, "max_replicas": 4, "initial_replicas": 2}
    assert replica_counts(Resources(replicas=1, min_replicas=3))["autoscaling_config"] == {
        "min_replicas": 3, "max_replicas": 3, "initial_replicas": 3}


def test_gpu_stage_moves_to_cpu_only_when_fitting_to_the_cluster(caplog: pytest.LogCaptureFixture) -> None:
    stage = _stage(gpus=0.5, cpus=2)
    with caplog.at_level(logging.WARNING):
        device, options = stage_options(stage, ServeSettings(), 1.0, cluster_gpus=0)
    assert device == "cpu" and options["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 0}
    assert any("GPU" in r.getMessage() for r in caplog.records)
    device, options = stage_options(stage, ServeSettings(fit_to_cluster=False), 1.0, cluster_gpus=0)
    assert device == "cuda" and options["ray_actor_options"]["num_gpus"] == 0.5
    device, options = stage_options(stage, ServeSettings(), 1.0, cluster_gpus=1)
    assert device == "cuda" and options["name"] == "stage-spam"


def test_cpu_requests_scale_down_to_fit_and_never_round_up() -> None:
    spec = PipelineSpec(name="p", source=FileSource(path="x"), stages=[_stage("a"), _stage("b", replicas=2)])
    settings = ServeSettings(ingress_cpus=0.1)
    scale = cpu_scale(spec, settings, cluster_cpus=2)
    cpus = [stage_options(s, settings, scale, 0)[1]["ray_actor_options"]["num_cpus"] * s.resources.replicas for s in spec.stages]
    assert sum(cpus) + 0.1 <= 2 and scale < 1
    assert cpu_scale(spec, settings, cluster_cpus=16) == 1.0
    assert cpu_scale(spec, ServeSettings(fit_to_cluster=False), cluster_cpus=2) == 1.0


def test_calls_sharing_a_batch_keep_their_own_ids() -> None:
    context = {"x": {"spam": StageResult(doc_id="x", stage="spam", label="ham")}}
    calls = [StageCall([Document(id="x", text="first caller")], context),
             StageCall([Document(id="x", text="second caller"), Document(id="y", text="also second")], {})]
    docs, merged, owners = merge_calls(calls)
    assert len({d.id for d in docs}) == 3
    assert merged[docs[0].id]["spam"].label == "ham" and merged[docs[1].id] == {}
    outcomes = [StageResult(doc_id=docs[2].id, stage="s", label="b"), StageResult(doc_id=docs[0].id, stage="s", label="a"),
                DeadLetter(ref=docs[1].id, stage="s", reason="stage_error")]
    first, second = split_outcomes(outcomes, owners, 2)
    assert [(o.doc_id, o.label) for o in first] == [("x", "a")]  # type: ignore[union-attr]
    assert {(o.doc_id if isinstance(o, StageResult) else o.ref) for o in second} == {"x", "y"}


def test_builder_args_pick_the_database(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.serving.app import settings_from_args
    from worker.serving.settings import ServeArgs

    spec = PipelineSpec(name="p", source=FileSource(path="x"), stages=[_stage()], sink={"url": "sqlite:///sink.db"})  # type: ignore[arg-type]
    monkeypatch.delenv("TEXTWORKER_DATABASE_URL", raising=False)
    assert settings_from_args(ServeArgs(pipeline="p.yaml"), spec).database_url == "sqlite:///sink.db"
    monkeypatch.setenv("TEXTWORKER_DATABASE_URL", "sqlite:///env.db")
    assert settings_from_args(ServeArgs(pipeline="p.yaml"), spec).database_url == "sqlite:///env.db"
    assert settings_from_args(ServeArgs(pipeline="p.yaml", database_url="sqlite:///arg.db"), spec).database_url == "sqlite:///arg.db"
    assert settings_from_args(ServeArgs(pipeline="p.yaml", store=False, max_concurrent=3), spec).database_url is None
    with pytest.raises(ValueError):
        ServeArgs.model_validate({"pipeline": "p.yaml", "max_concurent": 3})

"""The dashboard's model page data: per version, its reference sets, its figures on each, the gate's per-set lines."""

from __future__ import annotations

from pathlib import Path

from worker.dashboard.queries import DashboardStore
from worker.lifecycle import references
from worker.lifecycle.gate import GateRules, decide_with_references
from worker.lifecycle.registry import ModelRegistry
from worker.models import loading
from worker.training.metrics import classification_metrics

GOLDS = ["ham"] * 6 + ["spam"] * 4


def _scores(preds: list[str]) -> dict:
    return classification_metrics(GOLDS, preds, ["ham", "spam"])


def test_model_page_lists_reference_sets_their_figures_and_the_gates_lines(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'd.db'}"
    family = tmp_path / "spam"
    v0 = family / "v0"
    v0.mkdir(parents=True)
    (v0 / "config.json").write_text("{}", encoding="utf-8")
    loading.write_metadata(v0, {"name": "spam", "version": "v0", "task": "spam"})
    references.record_version(v0, task="spam", version="v0", evals=[("eval", "sms.tsv", list(zip(["t"] * 10, GOLDS, strict=True)))])
    good, weak = _scores(["ham"] * 6 + ["spam"] * 4), _scores(["ham"] * 6 + ["spam", "ham", "ham", "ham"])
    registry = ModelRegistry.open(url)
    try:
        registry.register_directory("spam", v0, stage="spam", task="spam")
        registry.promote("spam", "v0", "first")
        registry.register(name="spam", version="v1", stage="spam", task="spam", artifact_path=v0,
                          metrics={"eval": {"all": good, "ref:v0.eval": weak}, "champion_eval": {"all": weak, "ref:v0.eval": good}})
        decision = decide_with_references(good, weak, [("v0.eval", "eval", weak, good)], GateRules("f1:spam", 0.01, 0.05))
        registry.reject("spam", "v1", f"gate: {decision.reason}", {"gate": decision.as_dict()})
    finally:
        registry.close()
    data = DashboardStore(url).models("spam")
    by_version = {v["version"]: v for v in data["versions"]}
    assert [(s["name"], s["role"], s["rows"]) for s in by_version["v0"]["reference_sets"]] == [("v0.eval", "eval", 10)]
    v1 = by_version["v1"]
    assert v1["reference_metrics"]["v0.eval"]["f1_spam"] == weak["per_label"]["spam"]["f1"]
    assert v1["target_metrics"]["f1_spam"] == good["per_label"]["spam"]["f1"]
    [line] = v1["gate_sets"]
    assert line["set"] == "v0.eval" and line["ok"] is False and "falls by" in line["reason"]
    assert by_version["v0"]["gate_sets"] == []

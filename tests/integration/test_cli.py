"""The command line, as users call it: validate, train, eval, models list, clear model errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "pipelines" / "demo.yaml"


def textworker(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], cwd=REPO, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=1800)


def test_validate_ok_and_errors(tmp_path: Path) -> None:
    ok = textworker("validate", str(DEMO))
    assert ok.returncode == 0, ok.stderr
    assert "valid pipeline `demo`" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: x\nsource: {type: file, path: a}\nstages:\n  - name: s\n    type: classify\n    modle: m\n")
    result = textworker("validate", str(bad))
    assert result.returncode == 1
    assert f"{bad}:7: [stages[0].modle] unknown field" in result.stderr
    assert "[stages[0].model] Field required" in result.stderr
    as_json = json.loads(textworker("validate", str(bad), "--json").stdout)
    assert as_json["valid"] is False and len(as_json["problems"]) == 2


def test_hub_id_without_hub_fails_fast_with_a_way_out(tmp_path: Path) -> None:
    pipeline = tmp_path / "hub.yaml"
    pipeline.write_text(
        "version: 1\nname: hub\nsource: {type: file, path: x.jsonl}\n"
        "stages:\n  - {name: s, type: classify, model: roberta-base}\n"
    )
    docs = tmp_path / "x.jsonl"
    docs.write_text('{"id": "1", "text": "hello there"}\n')
    result = textworker("run", str(pipeline), "--input", str(docs), "--database-url", f"sqlite:///{tmp_path}/db.sqlite", env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2
    assert "TW201" in result.stderr and "roberta-base" in result.stderr and "hint:" in result.stderr


def test_missing_local_model_says_how_to_build_it(tmp_path: Path) -> None:
    docs = tmp_path / "x.jsonl"
    docs.write_text('{"id": "1", "text": "hello there"}\n')
    result = textworker("run", str(DEMO), "--input", str(docs), "--database-url", f"sqlite:///{tmp_path}/db.sqlite",
                        env={"TEXTWORKER_MODELS_DIR": str(tmp_path / "nowhere")})
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "make models" in result.stderr


@pytest.mark.slow
def test_train_then_eval_spam_and_list_versions(shared_data: Path, models_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "spam" / "v-test"
    train = textworker(
        "train", str(DEMO), "--stage", "spam", "--data", str(shared_data / "sms_spam" / "train.tsv"),
        "--limit", "600", "--epochs", "1", "--out", str(out), "--json",
    )
    assert train.returncode == 0, train.stderr[-2000:]
    info = json.loads(train.stdout)
    assert info["train_examples"] == 600 and info["labels"] == ["ham", "spam"]
    meta = json.loads((out / "textworker.json").read_text())
    assert meta["name"] == "spam" and len(meta["train_data"]["sha256"]) == 64 and meta["seed"] == 0

    evaluation = textworker("eval", str(DEMO), "--stage", "spam", "--data", str(shared_data / "sms_spam" / "test.tsv"),
                            "--model", str(out), "--json")
    assert evaluation.returncode == 0, evaluation.stderr[-2000:]
    metrics = json.loads(evaluation.stdout)["metrics"]
    assert metrics["n"] == 1104
    assert set(metrics["per_label"]) == {"ham", "spam"}
    assert metrics["per_label"]["spam"]["f1"] > 0.6
    assert metrics["accuracy"] > 0.9

    listed = json.loads(textworker("models", "list", "--dir", str(tmp_path), "--json").stdout)
    assert [(r["family"], r["version"]) for r in listed] == [("spam", "v-test")]


def test_models_list_shows_the_defaults(models_dir: Path) -> None:
    listed = json.loads(textworker("models", "list", "--dir", str(models_dir), "--json").stdout)
    current = {r["family"] for r in listed if r["current"]}
    assert {"sentiment", "spam", "qa", "translate", "roberta"} <= current


def test_models_list_shows_each_versions_int8_check(models_dir: Path, shared_data: Path) -> None:
    """`make models` checks the classifier and QA defaults at int8 on held-out data (the shared sets are here)."""
    listed = {r["family"]: r for r in json.loads(textworker("models", "list", "--dir", str(models_dir), "--json").stdout) if r["current"]}
    for family in ("sentiment", "spam", "qa"):
        quality = listed[family]["int8"]["quality"]
        assert quality["held_out"] is True and quality["rows"] > 400, family
    assert listed["translate"]["int8"] is None
    table = textworker("models", "list", "--dir", str(models_dir)).stdout
    assert "int8 check" in table
    row = next(line for line in table.splitlines() if line.startswith("spam "))
    assert "held out" in row and ("pass" in row or "FAIL" in row)

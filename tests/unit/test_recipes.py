"""Training recipes as data: every stage of pipelines/shared_data.yaml carries a complete `train:` block that
`validate` accepts and whose files exist, and `textworker train` flags override the block field by field."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import shared_data_path
from worker.commands.training import RECIPE_FIELDS, data_files, with_recipe
from worker.config import load_pipeline
from worker.errors import TextworkerError
from worker.stages import plugin_for

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO / "pipelines" / "shared_data.yaml"
COMPLETE = ("data", "eval_data", "base", "out", "epochs", "lr", "max_minutes")


def test_every_shared_data_stage_has_a_complete_recipe_that_validate_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    data = shared_data_path()
    monkeypatch.setenv("TEXTWORKER_SHARED_DATA", str(data))
    done = subprocess.run([sys.executable, "-m", "worker.cli", "validate", str(SHARED), "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    spec = load_pipeline(str(SHARED))
    assert [s.name for s in spec.stages] == ["spam", "sentiment", "topic", "qa", "translate", "translate_general"]
    for stage in spec.stages:
        recipe = stage.train
        assert recipe is not None, f"{stage.name} has no train: block"
        missing = [name for name in COMPLETE if getattr(recipe, name) is None]
        assert not missing, f"{stage.name}: train block lacks {missing}"
        files = data_files(recipe.data)
        assert files and all(Path(f).is_file() for f in files) and Path(recipe.eval_data).is_file(), (recipe.data, recipe.eval_data)
        assert all(f.startswith(str(data)) for f in files) and recipe.eval_data.startswith(str(data))  # ${TEXTWORKER_SHARED_DATA:-...}
        trainer = plugin_for(stage.type).load_trainer()  # a type that can be trained
        assert trainer.read(recipe.eval_data, stage, plugin_for(stage.type).labels(stage), 5)


def test_flags_override_the_recipe_field_by_field(tmp_path: Path) -> None:
    train, other = tmp_path / "train.tsv", tmp_path / "other.tsv"
    train.write_text("a fine day\tpositive\nawful\tnegative\n", encoding="utf-8")
    other.write_text("fine\tpositive\n", encoding="utf-8")
    pipeline = write_pipeline(tmp_path / "p.yaml", {
        "name": "s", "type": "classify", "model": "m", "labels": ["negative", "positive"],
        "train": {"data": str(train), "eval_data": str(train), "epochs": 3, "lr": 0.001, "max_minutes": 5}})
    stage = load_pipeline(str(pipeline)).stage("s")
    flags = argparse.Namespace(**{name: None for name in RECIPE_FIELDS})
    merged = with_recipe(argparse.Namespace(**{**vars(flags), "epochs": 1.0, "eval_data": str(other)}), stage)
    assert (merged.data, merged.eval_data, merged.epochs, merged.lr, merged.max_minutes) == (str(train), str(other), 1.0, 0.001, 5)
    assert merged.batch_size is None and merged.base is None  # neither given: the trainer's default, the stage's model
    bare = load_pipeline(str(pipeline)).model_copy(update={"stages": [stage.model_copy(update={"train": None})]}).stage("s")
    with pytest.raises(TextworkerError, match="no training data"):
        with_recipe(flags, bare)
    with pytest.raises(TextworkerError, match="does not exist"):
        with_recipe(argparse.Namespace(**{**vars(flags), "data": str(tmp_path / "missing.tsv")}), stage)
    with pytest.raises(TextworkerError, match="missing.tsv` does not exist"):
        with_recipe(argparse.Namespace(**{**vars(flags), "data": [str(train), str(tmp_path / "missing.tsv")]}), stage)


def test_a_recipe_may_name_several_data_files_read_as_one_set(tmp_path: Path) -> None:
    news, captions = tmp_path / "news.jsonl", tmp_path / "captions.jsonl"
    news.write_text('{"en": "The shop is closed.", "de": "Der Laden ist geschlossen."}\n', encoding="utf-8")
    captions.write_text('{"en": "A dog runs.", "de": "Ein Hund rennt."}\nnot json\n', encoding="utf-8")
    pipeline = write_pipeline(tmp_path / "p.yaml", {
        "name": "t", "type": "translate", "model": "m", "source_lang": "en", "target_lang": "de",
        "train": {"data": [str(news), str(captions)], "eval_data": str(news), "epochs": 1, "lr": 0.001, "max_minutes": 1}})
    stage = load_pipeline(str(pipeline)).stage("t")
    merged = with_recipe(argparse.Namespace(**{name: None for name in RECIPE_FIELDS}), stage)
    assert data_files(merged.data) == [str(news), str(captions)]
    trainer = plugin_for("translate").load_trainer()
    examples = [e for f in data_files(merged.data) for e in trainer.read(f, stage)]
    assert examples == [("The shop is closed.", "Der Laden ist geschlossen."), ("A dog runs.", "Ein Hund rennt.")]
    with pytest.raises(Exception, match="at least 1 item"):
        load_pipeline(str(write_pipeline(tmp_path / "bad.yaml", {"name": "t", "type": "translate", "model": "m", "train": {"data": []}})))


def write_pipeline(path: Path, stage: dict) -> Path:
    """A one-stage pipeline file (a file source) at `path`."""
    path.write_text(json.dumps({"name": "p", "source": {"type": "file", "path": "x"}, "stages": [stage]}), encoding="utf-8")
    return path

"""Reference sets: bounded stratified snapshots, fingerprints, inheritance, replay sources, the registry copy."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from worker.lifecycle import references
from worker.models import loading


def _labelled(n_ham: int, n_spam: int) -> list[tuple[str, str]]:
    return [(f"ham text {i}", "ham") for i in range(n_ham)] + [(f"spam text {i}", "spam") for i in range(n_spam)]


def _version(root: Path, name: str, meta: dict | None = None) -> Path:
    path = root / name
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}", encoding="utf-8")
    loading.write_metadata(path, {"name": "spam", "version": name, "task": "spam", **(meta or {})})
    return path


def test_sample_is_bounded_stratified_deterministic_and_keeps_order() -> None:
    rows = _labelled(9000, 120)
    picked = references.sample("spam", rows, max_rows=1000, seed=1)
    assert len(picked) == 1000
    counts = {label: sum(g == label for _, g in picked) for label in ("ham", "spam")}
    assert counts["spam"] >= references.MIN_PER_STRATUM and counts["ham"] > 900  # the rare label keeps its floor
    assert picked == references.sample("spam", rows, max_rows=1000, seed=1)
    assert picked != references.sample("spam", rows, max_rows=1000, seed=2)
    assert [rows.index(r) for r in picked] == sorted(rows.index(r) for r in picked)
    assert references.sample("spam", rows[:500], max_rows=1000) == rows[:500]


def test_write_load_fingerprint_and_tamper_detection(tmp_path: Path) -> None:
    version = _version(tmp_path, "v1")
    ref = references.write_set(version, name="v1.eval", task="spam", role="eval", origin="v1", examples=_labelled(30, 10))
    data = (version / ref.file).read_bytes()
    assert ref.sha256 == hashlib.sha256(data).hexdigest() and ref.rows == 40 and ref.strata == {"ham": 30, "spam": 10}
    assert references.load_rows(version, ref) == _labelled(30, 10)
    (version / ref.file).write_bytes(data.replace(b"spam text 3", b"spam text X"))
    with pytest.raises(references.ReferenceError, match="does not match its fingerprint"):
        references.load_rows(version, ref)
    with pytest.raises(references.ReferenceError, match="unknown reference role"):
        references.write_set(version, name="x", task="spam", role="gold", origin="v1", examples=_labelled(1, 1))


def test_a_version_inherits_its_parents_sets_and_adds_its_own_once(tmp_path: Path) -> None:
    train = tmp_path / "train.tsv"
    train.write_text("".join(f"{g}\t{t}\n" for t, g in _labelled(40, 10)), encoding="utf-8")
    parent = _version(tmp_path, "v0")
    first = references.record_version(parent, task="spam", version="v0", train=(str(train), _labelled(40, 10)),
                                      evals=[("eval", "frozen.tsv", _labelled(5, 5))])
    assert [(s.name, s.role) for s in first] == [("v0.eval", "eval"), ("v0.train", "train")]
    assert first[1].source["path"] == str(train.resolve()) and first[1].source["sha256"]
    child = _version(tmp_path, "v1")
    sets = references.record_version(child, task="spam", version="v1", parent_dir=parent,
                                     evals=[("eval", "frozen.tsv", _labelled(5, 5)), ("heldout", "feedback", [("new", "spam")])])
    assert [(s.name, s.origin) for s in sets] == [("v0.eval", "v0"), ("v0.train", "v0"), ("v1.heldout", "v1")]
    assert not (child / "references" / "v1.eval.jsonl").exists()  # same rows as v0.eval: not stored twice
    assert [s.name for s in references.manifest(child)] == ["v0.eval", "v0.train", "v1.heldout"]
    assert references.load_rows(child, sets[0]) == _labelled(5, 5)


def test_replay_uses_the_recorded_file_then_its_snapshot(tmp_path: Path) -> None:
    from worker.training import data_fingerprint

    train = tmp_path / "train.tsv"
    train.write_text("".join(f"{g}\t{t}\n" for t, g in _labelled(40, 10)), encoding="utf-8")
    version = _version(tmp_path, "v0", {"train_data": {"path": str(train), "sha256": data_fingerprint(train)}})
    references.record_version(version, task="spam", version="v0", train=(str(train), _labelled(40, 10)))
    source = references.replay_source(version, "spam")
    assert source is not None and (source.origin, source.where, len(source.examples)) == ("path", str(train), 50)
    train.write_text("ham\tchanged since\n", encoding="utf-8")  # the file no longer matches its fingerprint
    source = references.replay_source(version, "spam")
    assert source is not None and source.origin == "snapshot" and sorted(source.examples) == sorted(_labelled(40, 10))
    train.unlink()
    assert references.replay_source(version, "spam") is not None
    assert references.replay_source(_version(tmp_path, "v-unknown"), "spam") is None


def test_backfill_snapshots_an_old_versions_training_data(tmp_path: Path) -> None:
    from worker.training import data_fingerprint

    train = tmp_path / "seed.tsv"
    train.write_text("".join(f"{g}\t{t}\n" for t, g in _labelled(20, 5)), encoding="utf-8")
    version = _version(tmp_path, "v0-seed", {"train_data": {"path": str(train), "sha256": data_fingerprint(train)}})
    sets = references.backfill(version, ["ham", "spam"])
    assert [(s.name, s.role, s.rows) for s in sets] == [("v0-seed.train", "train", 25)]
    assert references.backfill(version) == sets  # already there: unchanged
    assert json.loads((version / "textworker.json").read_text(encoding="utf-8"))["references"][0]["sha256"] == sets[0].sha256


def test_the_registry_keeps_each_versions_sets_with_their_rows(tmp_path: Path) -> None:
    from worker.lifecycle.registry import ModelRegistry

    version = _version(tmp_path / "spam", "v0")
    references.record_version(version, task="spam", version="v0", evals=[("eval", "frozen", _labelled(3, 2))])
    registry = ModelRegistry.open(f"sqlite:///{tmp_path / 'r.db'}")
    try:
        registry.register_directory("spam", version, stage="spam", task="spam")
        stored = registry.references("spam", "v0", with_rows=True)
        assert [(s["name"], s["rows"]) for s in stored] == [("v0.eval", 5)]
        assert references.decode_rows("spam", stored[0]["rows_data"]) == _labelled(3, 2)
        assert "rows_data" not in registry.references("spam", "v0")[0]
    finally:
        registry.close()


@pytest.mark.parametrize(("task", "seed_file", "rows"), [("spam", "spam.tsv", 332), ("qa", "qa.jsonl", 200),
                                                         ("translate", "translation.jsonl", 685), ("mlm", "sentiment.tsv", 360)])
def test_every_default_model_kind_records_its_seed_data_as_a_train_set(tmp_path: Path, task: str, seed_file: str, rows: int) -> None:
    from worker.lifecycle.defaults import SEED_DIR, finish_version

    version = _version(tmp_path, "v0-seed")
    finish_version(version, name=task, task=task, base="builtin:minilm", data=SEED_DIR / seed_file, info={}, version="v0-seed")
    [train] = references.manifest(version)
    assert (train.name, train.role, train.task, train.rows) == ("v0-seed.train", "train", task, rows)
    assert train.source["sha256"] == loading.read_metadata(version)["train_data"]["sha256"]
    assert len(references.load_rows(version, train)) == rows

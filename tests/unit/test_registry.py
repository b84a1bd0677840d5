"""The model registry's state machine on a real SQLite database and real family directories."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas.pipeline import SpamStage
from worker.lifecycle.registry import CANDIDATE, CHAMPION, RETIRED, ModelRegistry, RegistryError, champion
from worker.models import loading


def _version(family: Path, version: str) -> Path:
    """A version directory as `textworker train` leaves it: config.json plus textworker.json."""
    path = family / version
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}", encoding="utf-8")
    loading.write_metadata(path, {"name": family.name, "version": version, "task": "spam", "metrics": {"f1": 0.5}})
    return path


@pytest.fixture
def family(tmp_path: Path) -> Path:
    family = tmp_path / "models" / "spam"
    first = _version(family, "v0-seed")
    loading.set_current_version(family, first)
    return family


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[ModelRegistry]:
    reg = ModelRegistry.open(f"sqlite:///{tmp_path / 'reg.db'}")
    yield reg
    reg.close()


def _stage(family: Path) -> SpamStage:
    return SpamStage(name="spam", model=str(family))


def _candidate(registry: ModelRegistry, family: Path, version: str) -> None:
    path = _version(family, version)
    registry.register(name="spam", version=version, stage="spam", task="spam", artifact_path=path,
                      parent_version="v0-seed", train_config={"model_version": f"spam@{version}", "seed": 0})


def _actions(registry: ModelRegistry) -> list[tuple[str, str]]:
    return [(e["action"], e["version"]) for e in registry.events("spam")]


def test_bootstrap_registers_the_on_disk_current_version_as_champion(registry: ModelRegistry, family: Path) -> None:
    assert champion(registry.engine, "spam") is None
    record = registry.bootstrap(_stage(family), pipeline="p")
    assert (record.name, record.version, record.status) == ("spam", "v0-seed", CHAMPION)
    ref = champion(registry.engine, "spam")
    assert ref is not None
    assert ref.version == loading.resolve(str(family)).version == "spam@v0-seed"
    assert ref.artifact_path == str((family / "v0-seed").resolve())
    assert registry.bootstrap(_stage(family)).version == "v0-seed"
    assert _actions(registry) == [("register", "v0-seed"), ("promote", "v0-seed")]


def test_promote_retires_the_old_champion_and_moves_the_pointer_only_when_asked(registry: ModelRegistry, family: Path) -> None:
    registry.bootstrap(_stage(family))
    _candidate(registry, family, "v1")
    assert registry.require("spam", "v1").status == CANDIDATE
    registry.promote("spam", "v1", "gate passed", {"delta": 0.2})
    assert registry.require("spam", "v1").status == CHAMPION
    old = registry.require("spam", "v0-seed")
    assert (old.status, old.reason) == (RETIRED, "replaced by v1")
    assert (family / "current").read_text(encoding="utf-8").strip() == "v0-seed"  # the registry changed, the pointer did not
    assert loading.resolve(str(family)).version == "spam@v0-seed"
    _candidate(registry, family, "v1b")
    registry.promote("spam", "v1b", "by hand", move_pointer=True)
    assert (family / "current").read_text(encoding="utf-8").strip() == "v1b"
    assert loading.resolve(str(family)).version == "spam@v1b"
    registry.rollback("spam", "back to v1")
    assert registry.require("spam", "v1").status == CHAMPION
    ref = champion(registry.engine, "spam")
    assert ref is not None and (ref.version, ref.registry_version) == ("spam@v1", "v1")
    promote = [e for e in registry.events("spam", "v1") if e["action"] == "promote"][0]
    assert promote["reason"] == "gate passed" and promote["details"]["delta"] == 0.2 and promote["details"]["previous"] == "v0-seed"
    assert promote["details"]["pointer_moved"] is False
    assert sum(r.status == CHAMPION for r in registry.versions("spam")) == 1
    with pytest.raises(RegistryError, match="already the champion"):
        registry.promote("spam", "v1", "again")


def test_reject_keeps_a_candidate_with_its_reason(registry: ModelRegistry, family: Path) -> None:
    registry.bootstrap(_stage(family))
    _candidate(registry, family, "v1")
    registry.reject("spam", "v1", "macro_f1 improved by 0.001, less than the margin 0.01")
    record = registry.require("spam", "v1")
    assert record.status == CANDIDATE and "less than the margin" in (record.reason or "")
    assert registry.require("spam", "v0-seed").status == CHAMPION
    assert (family / "current").read_text(encoding="utf-8").strip() == "v0-seed"
    assert _actions(registry)[-1] == ("reject", "v1")
    with pytest.raises(RegistryError, match="not a candidate"):
        registry.reject("spam", "v0-seed", "no")


def test_rollback_restores_the_previous_champion_and_never_returns_to_a_rolled_back_one(registry: ModelRegistry, family: Path) -> None:
    registry.bootstrap(_stage(family))
    for version in ("v1", "v2"):
        _candidate(registry, family, version)
        registry.promote("spam", version, "gate passed", move_pointer=True)
    restored = registry.rollback("spam", "v2 mislabels receipts", move_pointer=True)
    assert restored.version == "v1" and restored.status == CHAMPION
    v2 = registry.require("spam", "v2")
    assert v2.status == RETIRED and v2.reason == "rolled back: v2 mislabels receipts"
    assert (family / "current").read_text(encoding="utf-8").strip() == "v1"
    assert registry.rollback("spam").version == "v0-seed"
    assert {r.version: r.status for r in registry.versions("spam")} == {"v0-seed": CHAMPION, "v1": RETIRED, "v2": RETIRED}
    with pytest.raises(RegistryError, match="no earlier champion"):
        registry.rollback("spam")
    assert [a for a, _ in _actions(registry)].count("rollback") == 2
    registry.promote("spam", "v2", "fixed after review")
    assert registry.rollback("spam").version == "v0-seed"


def test_unknown_versions_and_hub_models_are_clear_errors(registry: ModelRegistry, family: Path) -> None:
    registry.bootstrap(_stage(family))
    with pytest.raises(RegistryError, match="no version `v9`"):
        registry.promote("spam", "v9", "x")
    with pytest.raises(RegistryError, match="not a local model family"):
        registry.bootstrap(SpamStage(name="spam", model="someone/spam-model"))
    _candidate(registry, family, "v1")
    with pytest.raises(RegistryError, match="already has a version"):
        registry.register(name="spam", version="v1", stage="spam", task="spam", artifact_path=family / "v1")
    assert json.loads(json.dumps(registry.require("spam", "v1").as_dict(), default=str))["model_version"] == "spam@v1"

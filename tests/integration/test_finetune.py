"""Feedback -> fine-tune -> gate -> registry, through the real CLI, on real SQLite and PostgreSQL.

A deliberately weak spam model (40 SMS labels, one short epoch) is the champion; a few
hundred labelled SMS rows arrive as feedback; `textworker finetune` trains a candidate
that the gate promotes. Then the same texts arrive again with shuffled labels, and the
candidate trained on them is rejected with its reason while the champion stays.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa
import torch

from tests.integration.lifecycle_helpers import (
    FEEDBACK_ROWS,
    WEAK_ROWS,
    build_weak_spam,
    copy_family,
    shuffled,
    sms_rows,
    spam_pipeline,
    write_tsv,
)
from worker.cli import main
from worker.lifecycle.finetune import is_held_out
from worker.lifecycle.registry import CANDIDATE, CHAMPION, RETIRED, ModelRegistry, champion
from worker.models import loading


@pytest.fixture(scope="session")
def weak_spam_family(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_weak_spam(shared_data, tmp_path_factory.mktemp("weak-models"))


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str, code: int = 0) -> object:
    """Run `textworker ARGV --json` in process; the JSON document it printed (Ray worker lines may surround it)."""
    capsys.readouterr()
    assert main([*argv, "--json"]) == code
    out = capsys.readouterr().out
    start = next(i for i, line in enumerate(out.splitlines(keepends=True)) if line.rstrip() in ("{", "["))
    text = "".join(out.splitlines(keepends=True)[start:])
    return json.JSONDecoder().raw_decode(text)[0]


def _spam_f1(metrics: dict, part: str) -> float:
    return float(metrics[part]["per_label"]["spam"]["f1"])


@pytest.mark.slow
# PostgreSQL runs the same promote/reject cycle in tests/integration/test_lifecycle_e2e.py;
# here SQLite, so the suite pays for two fine-tunes once rather than twice.
@pytest.mark.parametrize("database", ["sqlite"])
def test_feedback_finetune_promotes_then_rejects_a_candidate_trained_on_shuffled_labels(
    database: str, request: pytest.FixtureRequest, ray_session: None, shared_data: Path, weak_spam_family: Path,
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    url = request.getfixturevalue("sqlite_url" if database == "sqlite" else "postgres_url")
    family = copy_family(weak_spam_family, tmp_path / "models")
    feedback = sms_rows(shared_data, "train")[WEAK_ROWS:WEAK_ROWS + FEEDBACK_ROWS]
    frozen = write_tsv(tmp_path / "frozen.tsv", sms_rows(shared_data, "test")[:300])
    pipeline = str(spam_pipeline(tmp_path / "lifecycle.yaml", family, url, frozen))

    report = cli_json(capsys, "feedback", "import", str(write_tsv(tmp_path / "fb.tsv", feedback)), "--pipeline", pipeline, "--stage", "spam")
    assert isinstance(report, dict) and report["inserted"] == len(set(feedback)) and report["rejected"] == []

    first = cli_json(capsys, "finetune", pipeline, "--stage", "spam")
    assert isinstance(first, dict)
    assert first["promoted"] is True, first["reason"]
    metrics = first["metrics"]
    weak_f1, new_f1 = _spam_f1(metrics["champion"], "frozen"), _spam_f1(metrics["candidate"], "frozen")
    assert new_f1 >= weak_f1 + 0.02, (weak_f1, new_f1)
    assert metrics["candidate"]["frozen"]["n"] == metrics["champion"]["frozen"]["n"] == 300
    assert metrics["candidate"]["heldout"]["n"] == first["train"]["rows"]["heldout"] > 0

    registry = ModelRegistry.open(url)
    try:
        version = first["candidate"]
        ref = champion(registry.engine, "spam")
        assert ref is not None and ref.registry_version == version and ref.version == f"spam@{version}"
        assert (family / "current").read_text(encoding="utf-8").strip() == "v0-weak"  # the registry decides; the pointer stays
        assert loading.resolve(str(family)).version == "spam@v0-weak"
        assert registry.require("spam", "v0-weak").status == RETIRED
        record = registry.require("spam", version)
        with registry.engine.connect() as conn:
            fps = [r[0] for r in conn.execute(sa.text("SELECT fingerprint FROM feedback"))]
        trained = sorted(fp for fp in fps if not is_held_out(fp, 0.2))
        assert record.data_fingerprint == hashlib.sha256("\n".join(trained).encode()).hexdigest()
        assert record.train_config["seed"] == 0 and record.train_config["rows"]["train_feedback"] == len(trained)
        # where it trained, in the registry and in the version's metadata (a GPU when the fine-tune task has one)
        assert record.train_config["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
        assert loading.read_metadata(record.artifact_path)["device"] == record.train_config["device"]
        assert record.parent_version == "v0-weak"

        again = cli_json(capsys, "feedback", "import", str(write_tsv(tmp_path / "shuffled.tsv", shuffled(feedback))),
                         "--pipeline", pipeline, "--stage", "spam")
        assert isinstance(again, dict) and again["inserted"] == len(set(shuffled(feedback)) - set(feedback))
        second = cli_json(capsys, "finetune", pipeline, "--stage", "spam")
        assert isinstance(second, dict)
        assert second["promoted"] is False
        assert "less than the margin" in second["reason"] or "recall of `spam` drops" in second["reason"], second["reason"]
        rejected = registry.require("spam", second["candidate"])
        assert rejected.status == CANDIDATE and rejected.reason == f"gate: {second['reason']}"
        assert registry.require("spam", version).status == CHAMPION
        assert (family / "current").read_text(encoding="utf-8").strip() == "v0-weak"
        actions = [(e["action"], e["version"]) for e in registry.events("spam")]
        assert actions == [("register", "v0-weak"), ("promote", "v0-weak"), ("register", version), ("retire", "v0-weak"),
                           ("promote", version), ("register", second["candidate"]), ("reject", second["candidate"])]
    finally:
        registry.close()


def test_too_little_feedback_trains_nothing_and_models_commands_manage_versions(
    shared_data: Path, weak_spam_family: Path, tmp_path: Path, sqlite_url: str, capsys: pytest.CaptureFixture[str],
) -> None:
    family = copy_family(weak_spam_family, tmp_path / "models")
    frozen = write_tsv(tmp_path / "frozen.tsv", sms_rows(shared_data, "test")[:50])
    pipeline = str(spam_pipeline(tmp_path / "lifecycle.yaml", family, sqlite_url, frozen))
    few = write_tsv(tmp_path / "few.tsv", sms_rows(shared_data, "train")[:8] + [("maybe", "not a label")])
    report = cli_json(capsys, "feedback", "import", str(few), "--pipeline", pipeline, "--stage", "spam")
    assert isinstance(report, dict) and report["inserted"] == 8
    assert [(r["line"], r["reason"]) for r in report["rejected"]] == [(9, "unknown_label")]
    result = cli_json(capsys, "finetune", pipeline, "--stage", "spam")
    assert isinstance(result, dict) and result["candidate"] is None and result["promoted"] is False
    assert "fewer than min_rows 10; nothing trained" in result["reason"]

    shutil.copytree(family / "v0-weak", family / "v1")
    meta = loading.read_metadata(family / "v1")
    loading.write_metadata(family / "v1", {**meta, "version": "v1"})
    db = ["--database-url", sqlite_url]
    promoted = cli_json(capsys, "models", "promote", "spam", "v1", "--dir", str(tmp_path / "models"), "--reason", "hand-picked", *db)
    assert isinstance(promoted, dict) and promoted["status"] == CHAMPION and promoted["model_version"] == "spam@v1"
    assert promoted["pointer_moved"] is False and (family / "current").read_text(encoding="utf-8").strip() == "v0-weak"
    capsys.readouterr()
    assert main(["models", "list", "--dir", str(tmp_path / "models"), *db]) == 0
    listing = capsys.readouterr()
    warning = ("warning: `spam`: the registry's champion is v1 but the on-disk `current` file names v0-weak; "
               "pipelines against this database load v1, others load v0-weak")
    assert warning in listing.out and warning in listing.err
    moved = cli_json(capsys, "models", "promote", "spam", "v1", "--pointer", "--dir", str(tmp_path / "models"), *db)
    assert isinstance(moved, dict) and moved["pointer_moved"] is True and moved["status"] == CHAMPION
    assert (family / "current").read_text(encoding="utf-8").strip() == "v1"
    listed = cli_json(capsys, "models", "list", "--dir", str(tmp_path / "models"), *db)
    assert isinstance(listed, list)
    assert {(r["version"], r["status"], r["current"]) for r in listed} == {("v0-weak", RETIRED, False), ("v1", CHAMPION, True)}
    capsys.readouterr()
    assert main(["models", "list", "--dir", str(tmp_path / "models"), *db]) == 0
    assert "warning" not in capsys.readouterr().err
    back = cli_json(capsys, "models", "rollback", "spam", "--reason", "v1 is no better", *db)
    assert isinstance(back, dict) and back["version"] == "v0-weak"
    shown = cli_json(capsys, "models", "show", "spam", "v1", *db)
    assert isinstance(shown, dict) and shown["status"] == RETIRED and shown["reason"] == "rolled back: v1 is no better"
    assert [e["action"] for e in shown["events"]] == ["register", "promote", "rollback"]
    assert main(["models", "rollback", "spam", *db]) == 2
    empty = write_tsv(tmp_path / "bad.tsv", [("eggs", "x")])
    capsys.readouterr()
    assert main(["feedback", "import", str(empty), "--pipeline", pipeline, "--stage", "spam"]) == 1
    assert "line 1: unknown_label" in capsys.readouterr().out


def test_schedule_loop_exits_cleanly_on_sigterm(tmp_path: Path, sqlite_url: str) -> None:
    import signal
    import subprocess
    import sys
    import time

    family = tmp_path / "models" / "spam"
    (family / "v0").mkdir(parents=True)
    (family / "v0" / "config.json").write_text("{}", encoding="utf-8")
    pipeline = spam_pipeline(tmp_path / "p.yaml", family, sqlite_url, tmp_path / "unused.tsv", schedule={"min_new_labels": 1000})
    log_path = tmp_path / "schedule.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "worker.cli", "schedule", str(pipeline), "--poll-seconds", "1",
                                    "--log-level", "INFO", "--json"], stdout=subprocess.PIPE, stderr=log_file)
    try:
        deadline = time.monotonic() + 180
        while "fine-tune not due" not in log_path.read_text(encoding="utf-8", errors="replace"):
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
            time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
    decisions = json.loads(out)
    assert decisions and all(d == {"stage": "spam", "model": "spam", "due": False, "why": "0 new labels, waiting for 1000",
                                   "new_labels": 0} for d in decisions)

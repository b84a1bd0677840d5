"""End to end: real documents through the demo pipeline's four stages into real SQL."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from worker.sinks.sql import normalise_url

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "pipelines" / "demo.yaml"


def textworker(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)


def counts(url: str) -> dict[str, object]:
    engine = sa.create_engine(normalise_url(url))
    with engine.connect() as conn:
        per_stage = dict(conn.execute(sa.text("SELECT stage, count(*) FROM results GROUP BY stage")).all())
        out = {
            "documents": conn.execute(sa.text("SELECT count(*) FROM documents")).scalar_one(),
            "results": conn.execute(sa.text("SELECT count(*) FROM results")).scalar_one(),
            "dead_letters": conn.execute(sa.text("SELECT count(*) FROM dead_letters")).scalar_one(),
            "per_stage": per_stage,
            "translate_dead": conn.execute(sa.text("SELECT count(*) FROM dead_letters WHERE stage = 'translate'")).scalar_one(),
            "ham": conn.execute(sa.text("SELECT count(*) FROM results WHERE stage = 'spam' AND label = 'ham'")).scalar_one(),
            "versions": dict(conn.execute(sa.text("SELECT stage, min(model_version) FROM results GROUP BY stage")).all()),
        }
    engine.dispose()
    return out


def valid_doc_ids(paths: list[Path]) -> set[str]:
    ids = set()
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            ids.add(json.loads(line)["id"])
    return ids


@pytest.mark.slow
@pytest.mark.postgres
def test_shared_docs_into_postgres_every_stage_once(shared_data: Path, models_dir: Path, postgres_url: str) -> None:
    docs = sorted((shared_data / "docs").glob("*.jsonl"))
    expected = valid_doc_ids(docs)
    run = textworker("run", str(DEMO), "--input", str(shared_data / "docs" / "*.jsonl"), "--database-url", postgres_url, "--json", "--quiet")
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout)
    first = counts(postgres_url)
    assert first["documents"] == len(expected) == summary["docs"]
    for stage in ("sentiment", "spam", "qa"):
        assert first["per_stage"][stage] == len(expected), stage
    # translate applies to ham only; documents it cannot read are dead letters with a reason
    assert first["per_stage"]["translate"] + first["translate_dead"] == first["ham"]
    assert first["translate_dead"] > 0  # the multilingual file has non-English text
    assert all(v.split("@")[1] == "v0-seed" for v in first["versions"].values())

    again = textworker("run", str(DEMO), "--input", str(shared_data / "docs" / "*.jsonl"), "--database-url", postgres_url, "--json", "--quiet")
    assert again.returncode == 0, again.stderr[-3000:]
    assert counts(postgres_url) == first


def test_sample_docs_into_sqlite_with_dead_letters(models_dir: Path, sqlite_url: str) -> None:
    sample = REPO / "worker" / "seed" / "sample_docs.jsonl"
    run = textworker("run", str(DEMO), "--input", str(sample), "--database-url", sqlite_url, "--json", "--quiet")
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout)
    assert summary["docs"] == 61
    assert Counter(summary["dead_letter_reasons"]) >= Counter({"empty_text": 2, "wrong_type": 2, "invalid_json": 1, "missing_text": 1, "not_an_object": 1})
    first = counts(sqlite_url)
    assert first["per_stage"]["sentiment"] == first["per_stage"]["spam"] == first["per_stage"]["qa"] == 61
    rerun = textworker("run", str(DEMO), "--input", str(sample), "--database-url", sqlite_url, "--quiet")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert counts(sqlite_url) == first


def test_bad_inputs_become_dead_letters_and_the_run_goes_on(models_dir: Path, sqlite_url: str, tmp_path: Path) -> None:
    good = "The hotel room was clean, the staff were friendly and breakfast was excellent."
    huge = "word " * (5 * 1024 * 1024 // 5)
    lines = [
        json.dumps({"id": "ok-1", "text": good}).encode(),
        b'{"id": "bad-json", "text": "unterminated',
        json.dumps({"id": "empty", "text": ""}).encode(),
        json.dumps({"id": "blank", "text": " \n\t "}).encode(),
        json.dumps({"id": "no-text"}).encode(),
        b'{"id": "latin1", "text": "caf\xe9 au lait"}',
        json.dumps({"id": "five-mb", "text": huge}).encode(),
        json.dumps({"id": "russian", "text": "Это предложение написано на русском языке и не может быть переведено этой моделью."}, ensure_ascii=False).encode(),
        json.dumps({"id": "ok-2", "text": "Call me when you get home, dinner is at eight."}).encode(),
    ]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    import yaml

    pipeline = yaml.safe_load(DEMO.read_text())
    pipeline["stages"][-1].pop("when")  # translate every document, whatever the spam model says
    every = tmp_path / "every.yaml"
    every.write_text(yaml.safe_dump(pipeline))
    run = textworker("run", str(every), "--input", str(path), "--database-url", sqlite_url, "--json", "--quiet")
    assert run.returncode == 0, run.stderr[-3000:]
    engine = sa.create_engine(sqlite_url)
    with engine.connect() as conn:
        letters = {(r.ref.rsplit(":", 1)[0] if r.ref.endswith(":2") else r.ref, r.stage): r.reason for r in conn.execute(sa.text("SELECT ref, stage, reason FROM dead_letters"))}
        docs = {r[0] for r in conn.execute(sa.text("SELECT doc_id FROM documents"))}
    assert letters[(str(path), "source")] == "invalid_json"
    assert letters[("empty", "source")] == "empty_text"
    assert letters[("blank", "source")] == "empty_text"
    assert letters[("no-text", "source")] == "missing_text"
    assert letters[("five-mb", "source")] == "too_large"
    assert letters[("russian", "translate")] == "unsupported_language"
    assert any(reason == "invalid_utf8" for reason in letters.values())
    assert docs == {"ok-1", "ok-2", "russian"}

"""The `embed` stage type: vectors in SQL, `textworker search` by cosine, near-duplicate flags.

Real documents (AG News from ../shared/data), the shipped MiniLM sentence encoder, a
real SQLite database and the CLI as users run it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[2]
PIPELINE = REPO / "pipelines" / "search.yaml"


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], cwd=REPO, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def searched(models_dir: Path, shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], list[dict[str, str]]]:
    from worker.stages.embed import build_default

    build_default(models_dir, lambda message: None)
    rows = [line.split("\t") for line in (shared_data / "ag_news" / "test.tsv").read_text(encoding="utf-8").splitlines()[:120]]
    docs = [{"id": f"ag-{i}", "text": row[1]} for i, row in enumerate(rows) if len(row) == 2]
    docs.append({"id": "ag-copy", "text": docs[5]["text"] + " "})  # the same story again: a near duplicate
    workdir = tmp_path_factory.mktemp("embed")
    data = workdir / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    env = {"TEXTWORKER_MODELS_DIR": str(models_dir), "TEXTWORKER_DATABASE_URL": f"sqlite:///{workdir / 'search.db'}",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    run = _cli("run", str(PIPELINE), "--input", str(data), "--json", env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout)["stages"]["embed"]["results"] == len(docs)
    return env, docs


def test_vectors_are_stored_normalised(searched: tuple[dict[str, str], list[dict[str, str]]]) -> None:
    env, docs = searched
    engine = sa.create_engine(env["TEXTWORKER_DATABASE_URL"])
    with engine.connect() as conn:
        outputs = [json.loads(o) if isinstance(o, str) else o
                   for (o,) in conn.execute(sa.text("SELECT output FROM results WHERE stage = 'embed'"))]
    engine.dispose()
    assert len(outputs) == len(docs)
    for output in outputs:
        vector = output["embedding"]
        assert output["dim"] == len(vector) == 384
        assert abs(sum(x * x for x in vector) - 1.0) < 1e-3


def test_search_finds_a_document_by_its_own_words(searched: tuple[dict[str, str], list[dict[str, str]]]) -> None:
    env, docs = searched
    target = docs[17]
    query = " ".join(target["text"].split()[:12])
    out = _cli("search", str(PIPELINE), query, "--k", "3", "--json", env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    hits = json.loads(out.stdout)
    assert len(hits) == 3
    assert hits[0]["doc_id"] == target["id"]
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    assert hits[0]["text"] and set(hits[0]) == {"doc_id", "score", "text"}
    text = _cli("search", str(PIPELINE), query, "--k", "2", env=env)
    assert text.returncode == 0 and target["id"] in text.stdout.splitlines()[0]


def test_a_repeated_story_is_a_near_duplicate_of_the_first(searched: tuple[dict[str, str], list[dict[str, str]]]) -> None:
    env, docs = searched
    engine = sa.create_engine(env["TEXTWORKER_DATABASE_URL"])
    with engine.connect() as conn:
        rows = {r.doc_id: (r.label, json.loads(r.output) if isinstance(r.output, str) else r.output)
                for r in conn.execute(sa.text("SELECT doc_id, label, output FROM results WHERE stage = 'embed'"))}
    engine.dispose()
    label, output = rows["ag-copy"]
    assert label == "near_duplicate" and output["near_duplicate_of"] == "ag-5" and output["near_duplicate_cosine"] >= 0.97
    flagged = {doc_id for doc_id, (label, _) in rows.items() if label == "near_duplicate"}
    assert "ag-5" not in flagged and len(flagged) < len(docs) // 10


def test_search_without_an_embed_stage_is_a_clear_error(searched: tuple[dict[str, str], list[dict[str, str]]]) -> None:
    env, _ = searched
    out = _cli("search", str(REPO / "pipelines" / "demo.yaml"), "anything", env=env)
    assert out.returncode == 2
    assert "no embed stage" in out.stderr and "Traceback" not in out.stderr

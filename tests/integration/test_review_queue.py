"""The review queue: low-confidence spam verdicts on real SMS messages are queued within the
budget, in the results' transaction, idempotently; labelling them feeds the feedback table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from schemas.documents import Document
from schemas.pipeline import PipelineSpec
from worker.assembly import run_source as run_pipeline
from worker.config import load_pipeline
from worker.engine.runs import RunSummary, new_run_id
from worker.lifecycle.review import confidence_of
from worker.sinks.sql import SqlResultSink, normalise_url

REPO = Path(__file__).resolve().parents[2]
BELOW = 0.995


class ListSource:
    def __init__(self, docs: list[Document]) -> None:
        self.docs = docs

    def read(self) -> Iterator[Document]:
        yield from self.docs

    def close(self) -> None:
        pass


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url"))


@pytest.fixture(scope="module")
def messages(shared_data: Path) -> list[Document]:
    lines = (shared_data / "sms_spam" / "test.tsv").read_text(encoding="utf-8").splitlines()[:120]
    return [Document(id=f"sms-{i:04d}", text=line.split("\t", 1)[1]) for i, line in enumerate(lines)]


def _pipeline(tmp_path: Path, models_dir: Path, url: str, review: dict[str, object]) -> Path:
    path = tmp_path / "review.yaml"
    path.write_text(yaml.safe_dump({
        "version": 1, "name": "reviewed", "source": {"type": "file", "path": "unused.jsonl"},
        "stages": [{"name": "spam", "type": "spam", "model": str(models_dir / "spam"), "batch_size": 32, "review": review}],
        "sink": {"url": url},
    }))
    return path


def _run(spec: PipelineSpec, docs: list[Document]) -> RunSummary:
    sink = SqlResultSink(spec.sink.url, spec.name, new_run_id()).open()
    try:
        return run_pipeline(spec, ListSource(docs), sink, chunk_size=16)
    finally:
        sink.close()


def _query(url: str, sql: str) -> list[tuple]:  # type: ignore[type-arg]
    engine = sa.create_engine(normalise_url(url))
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(sa.text(sql)).all()]
    engine.dispose()
    return rows


def _confidences(url: str, spec: PipelineSpec) -> dict[str, float]:
    from schemas.documents import StageResult

    stage = spec.stage("spam")
    rows = _query(url, "SELECT doc_id, label, score, output FROM results WHERE stage = 'spam'")
    out = {}
    for doc_id, label, score, output in rows:
        output = json.loads(output) if isinstance(output, str) else output
        result = StageResult(doc_id=doc_id, stage="spam", label=label, score=score, output=output)
        out[doc_id] = confidence_of(stage, result)[0]  # type: ignore[arg-type]
    return out


def _expected_queue(docs: list[Document], confidence: dict[str, float], max_open: int, chunk: int = 16) -> list[str]:
    """The budget rule, batch by batch: each batch queues its least confident candidates while there is room."""
    queued: list[str] = []
    for start in range(0, len(docs), chunk):
        batch = sorted((confidence[d.id], d.id) for d in docs[start:start + chunk] if confidence[d.id] < BELOW)
        queued += [d for _, d in batch[: max_open - len(queued)]]
    return queued


def textworker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], cwd=REPO, env=dict(os.environ),
                          capture_output=True, text=True, timeout=600)


def test_budget_idempotence_and_labelling(models_dir: Path, messages: list[Document], db_url: str, tmp_path: Path) -> None:
    pipeline = _pipeline(tmp_path, models_dir, db_url, {"below": BELOW, "max_open": 5})
    spec = load_pipeline(pipeline)
    _run(spec, messages[:60])
    confidence = _confidences(db_url, spec)
    candidates = sorted((c, d) for d, c in confidence.items() if c < BELOW)
    assert len(candidates) > 8, "the test needs more low-confidence verdicts than the budget"
    queued = _query(db_url, "SELECT doc_id, status, predicted, score, model_version FROM review_queue ORDER BY doc_id")
    assert len(queued) == 5  # the budget, not the number of candidates
    assert sorted(r[0] for r in queued) == sorted(_expected_queue(messages[:60], confidence, 5))
    assert all(r[1] == "open" and r[4] == "spam@v0-seed" for r in queued)

    _run(spec, messages[:60])  # the same input again: nothing new, nothing twice
    assert _query(db_url, "SELECT doc_id, status, predicted, score, model_version FROM review_queue ORDER BY doc_id") == queued

    listed = textworker("review", "list", str(pipeline), "--stage", "spam", "--json")
    assert listed.returncode == 0, listed.stderr
    items = json.loads(listed.stdout)
    assert [i["doc_id"] for i in items] == sorted((r[0] for r in queued), key=confidence.__getitem__)  # least confident first
    first = items[0]

    bad = textworker("review", "label", str(pipeline), "--stage", "spam", "--doc", first["doc_id"], "--label", "eggs")
    assert bad.returncode == 2 and "TW601" in bad.stderr and "ham, spam" in bad.stderr
    missing = textworker("review", "label", str(pipeline), "--stage", "spam", "--doc", "no-such-doc", "--label", "spam")
    assert missing.returncode == 2 and "no review item" in missing.stderr
    good = textworker("review", "label", str(pipeline), "--stage", "spam", "--doc", first["doc_id"], "--label", "spam", "--who", "ana")
    assert good.returncode == 0, good.stderr
    again = textworker("review", "label", str(pipeline), "--stage", "spam", "--doc", first["doc_id"], "--label", "spam", "--who", "ana")
    assert again.returncode == 0, again.stderr
    feedback = _query(db_url, "SELECT pipeline, stage, doc_id, text, label, source, who FROM feedback")
    text = next(d.text for d in messages if d.id == first["doc_id"])
    assert feedback == [("reviewed", "spam", first["doc_id"], text, "spam", "review", "ana")]  # once, though labelled twice

    _run(spec, messages[60:])  # new documents: the labelled item freed one slot, no more
    statuses = dict(_query(db_url, "SELECT status, count(*) FROM review_queue GROUP BY status"))
    assert statuses == {"open": 5, "labelled": 1}


def test_per_day_budget_and_label_filter(models_dir: Path, messages: list[Document], sqlite_url: str, tmp_path: Path) -> None:
    pipeline = _pipeline(tmp_path, models_dir, sqlite_url, {"below": BELOW, "max_open": None, "per_day": 3, "labels": ["ham"]})
    spec = load_pipeline(pipeline)
    _run(spec, messages[:40])
    _run(spec, messages[40:80])
    rows = _query(sqlite_url, "SELECT predicted, status FROM review_queue")
    assert len(rows) == 3 and all(r == ("ham", "open") for r in rows)
    skip = textworker("review", "skip", str(pipeline), "--stage", "spam", "--doc",
                      _query(sqlite_url, "SELECT doc_id FROM review_queue LIMIT 1")[0][0])
    assert skip.returncode == 0, skip.stderr
    _run(spec, messages[80:])  # skipping frees no daily budget
    assert len(_query(sqlite_url, "SELECT doc_id FROM review_queue")) == 3


def test_review_block_is_validated(tmp_path: Path) -> None:
    from worker.errors import PipelineFileError

    path = tmp_path / "bad.yaml"
    path.write_text("version: 1\nname: x\nsource: {type: file, path: a}\nstages:\n"
                    "  - {name: s, type: spam, model: m, review: {below: null, max_open: 3}}\n"
                    "  - {name: t, type: classify, model: m, labels: [a, b], review: {below: 0.5, labels: [c]}}\n")
    with pytest.raises(PipelineFileError) as err:
        load_pipeline(path)
    text = str(err.value)
    assert "needs `below`, `margin`, or both" in text and "names labels the stage does not have" in text

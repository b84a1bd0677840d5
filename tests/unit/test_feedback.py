"""Feedback validation (every reason), file formats, re-import as a no-op, and the HTTP router, on real SQLite."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient

from schemas.pipeline import ClassifyStage, PipelineSpec, QaStage, SpamStage, TranslateStage
from worker.errors import DataFileError
from worker.lifecycle.api import make_router
from worker.lifecycle.feedback import import_file, load_feedback, read_file, stage_labels, validate_rows
from worker.lifecycle.registry import open_engine

SPAM = SpamStage(name="spam", model="models/spam")
QA = QaStage(name="qa", model="models/qa", questions=["What?"])
TRANSLATE = TranslateStage(name="translate", model="models/translate")


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = open_engine(f"sqlite:///{tmp_path / 'fb.db'}")
    yield engine
    engine.dispose()


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _reasons(report_rejected: list) -> list[tuple[int | None, str]]:
    return [(r.line, r.reason) for r in report_rejected]


def test_spam_tsv_in_either_column_order_with_each_rejection(tmp_path: Path, engine: sa.Engine) -> None:
    path = _write(tmp_path / "fb.tsv", [
        "ham\tOk lar... Joking wif u oni...",
        "spam\tFree entry in 2 a wkly comp to win FA Cup final tkts",
        "spma\tWINNER!! claim your prize",
        "ham\t   ",
        "ham\ttoo\tmany columns",
        "spam\tURGENT! You have won a 1 week FREE membership",
    ])
    report = import_file(engine, "p", SPAM, path, who="ana")
    assert (report.received, report.inserted, report.duplicates) == (6, 3, 0)
    assert _reasons(report.rejected) == [(3, "unknown_label"), (4, "empty_text"), (5, "wrong_columns")]
    assert "`spma` is not one of the stage's labels: ham, spam" in report.rejected[0].detail
    rows = load_feedback(engine, "p", "spam")
    assert [(r.label, r.text[:8]) for r in rows] == [("ham", "Ok lar.."), ("spam", "Free ent"), ("spam", "URGENT! ")]

    swapped = _write(tmp_path / "swapped.tsv", ["text\tlabel", "Ok lar... Joking wif u oni...\tham", "Call now to claim\tspam"])
    again = import_file(engine, "p", SPAM, swapped)
    assert (again.inserted, again.duplicates, again.rejected) == (1, 1, [])


def test_reimport_is_a_no_op(tmp_path: Path, engine: sa.Engine) -> None:
    path = _write(tmp_path / "fb.jsonl", [json.dumps({"text": f"message {i}", "label": "ham" if i % 2 else "spam"}) for i in range(30)])
    first = import_file(engine, "p", SPAM, path)
    second = import_file(engine, "p", SPAM, path, source="import", who="someone else")
    assert (first.inserted, first.duplicates) == (30, 0)
    assert (second.inserted, second.duplicates) == (0, 30)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM feedback")).scalar() == 30


def test_jsonl_problems_have_line_numbers(tmp_path: Path) -> None:
    path = _write(tmp_path / "fb.jsonl", [
        json.dumps({"text": "fine", "label": "spam"}),
        "{not json",
        "[1, 2]",
        json.dumps({"label": "spam"}),
        json.dumps({"text": 5, "label": "spam"}),
        json.dumps({"text": "no label"}),
    ])
    good, bad = validate_rows(SPAM, read_file(path, SPAM))
    assert len(good) == 1
    assert _reasons(bad) == [(2, "invalid_json"), (3, "not_an_object"), (4, "missing_field"), (5, "wrong_type"), (6, "missing_field")]
    assert bad[0].render().startswith("line 2: invalid_json: not valid JSON")


def test_qa_rows(tmp_path: Path) -> None:
    context = "The Sunday Times was acquired by News International in February 1981."
    path = _write(tmp_path / "qa.jsonl", [
        json.dumps({"context": context, "question": "When was it acquired?", "answer": "February 1981"}),
        json.dumps({"context": context, "question": "Who bought it?", "answers": {"text": ["News International"], "answer_start": [37]}}),
        json.dumps({"context": context, "question": "Who bought it?", "answer": "Rupert Murdoch"}),
        json.dumps({"context": context, "question": " ", "answer": "1981"}),
        json.dumps({"context": context, "question": "Who?", "answers": {"text": [], "answer_start": []}}),
        json.dumps({"question": "Who?", "answer": "x"}),
    ])
    good, bad = validate_rows(QA, read_file(path, QA))
    assert [(g.question, g.answer) for g in good] == [("When was it acquired?", "February 1981"), ("Who bought it?", "News International")]
    assert _reasons(bad) == [(3, "answer_not_in_context"), (4, "empty_question"), (5, "empty_answer"), (6, "missing_field")]


def test_translation_rows_and_csv_headers(tmp_path: Path) -> None:
    path = _write(tmp_path / "tr.jsonl", [
        json.dumps({"en": "Two men are at the stove.", "de": "Zwei Männer stehen am Herd."}),
        json.dumps({"en": "A girl climbs.", "de": ""}),
        json.dumps({"source": "A dog runs.", "reference": "Ein Hund rennt."}),
        json.dumps({"en": "No reference here."}),
    ])
    good, bad = validate_rows(TRANSLATE, read_file(path, TRANSLATE))
    assert [g.reference for g in good] == ["Zwei Männer stehen am Herd.", "Ein Hund rennt."]
    assert _reasons(bad) == [(2, "empty_reference"), (4, "missing_field")]
    table = _write(tmp_path / "tr.csv", ["en,de", '"Hello, world",Hallo Welt', "only one"])
    good, bad = validate_rows(TRANSLATE, read_file(table, TRANSLATE))
    assert [(g.text, g.reference) for g in good] == [("Hello, world", "Hallo Welt")]
    assert _reasons(bad) == [(3, "wrong_columns")]
    with pytest.raises(DataFileError, match="needs a header row"):
        list(read_file(_write(tmp_path / "bad.csv", ["a,b"]), TRANSLATE))
    with pytest.raises(DataFileError, match="does not exist"):
        list(read_file(tmp_path / "missing.tsv", SPAM))


def test_classify_without_configured_labels_uses_the_models_id2label(tmp_path: Path) -> None:
    model = tmp_path / "topic"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"id2label": {"0": "World", "1": "Sports", "2": "Business"}}), encoding="utf-8")
    stage = ClassifyStage(name="topic", model=str(model))
    assert stage_labels(stage) == ["World", "Sports", "Business"]
    good, bad = validate_rows(stage, [(1, {"text": "Match report", "label": "Sports"}), (2, {"text": "x", "label": "Sci/Tech"})])
    assert len(good) == 1 and _reasons(bad) == [(2, "unknown_label")]


def test_a_correction_supersedes_the_earlier_label(engine: sa.Engine) -> None:
    from worker.lifecycle.feedback import import_rows

    import_rows(engine, "p", SPAM, [(1, {"text": "Call me later", "label": "spam"})], source="api")
    import_rows(engine, "p", SPAM, [(1, {"text": "Call me later", "label": "ham"})], source="review")
    assert [(r.text, r.label) for r in load_feedback(engine, "p", "spam")] == [("Call me later", "ham")]


def test_http_router(tmp_path: Path) -> None:
    spec = PipelineSpec.model_validate({"name": "p", "source": {"type": "file", "path": "x"},
                                        "stages": [SPAM.model_dump(), QA.model_dump(), TRANSLATE.model_dump()]})
    url = f"sqlite:///{tmp_path / 'api.db'}"
    app = FastAPI()
    app.include_router(make_router(spec, url))
    client = TestClient(app)
    one = client.post("/v1/feedback", json={"stage": "spam", "text": "WIN a prize now", "label": "spam", "who": "bo"})
    assert one.status_code == 200 and one.json() == {"received": 1, "inserted": 1, "duplicates": 0}
    many = client.post("/v1/feedback", json={"stage": "spam", "rows": [{"text": "WIN a prize now", "label": "spam"},
                                                                       {"text": "see you at 5", "label": "ham"}]})
    assert many.json() == {"received": 2, "inserted": 1, "duplicates": 1}
    mixed = client.post("/v1/feedback", json=[
        {"stage": "translate", "en": "A dog.", "de": "Ein Hund."},
        {"stage": "spam", "text": "hi", "label": "eggs"},
        {"stage": "nope", "text": "hi"},
        {"stage": "qa", "context": "abc", "question": "q", "answer": "zzz"},
    ])
    assert mixed.status_code == 422
    rejected = mixed.json()["detail"]["rejected"]
    assert [(r["index"], r["reason"]) for r in rejected] == [(1, "unknown_label"), (2, "unknown_stage"), (3, "answer_not_in_context")]
    engine = open_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT stage, label, source, who FROM feedback ORDER BY id")).all()
    finally:
        engine.dispose()
    assert [tuple(r) for r in rows] == [("spam", "spam", "api", "bo"), ("spam", "ham", "api", None)]
    assert client.post("/v1/feedback", json=[]).status_code == 422

"""Unit tests for worker.sinks.sql.SqlResultSink against a real SQLite file in tmp_path."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

from schemas.documents import DeadLetter, Document, StageResult
from worker.errors import SinkError
from worker.sinks import tables
from worker.sinks.sql import MIGRATIONS, Offset, SinkBatch, SqlResultSink, is_transient, normalise_url

TABLES = {"documents", "results", "dead_letters", "runs", "stream_offsets", "alembic_version"}


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'sub' / 'tw.db'}"


@pytest.fixture
def sink(db_url: str) -> Iterator[SqlResultSink]:
    s = SqlResultSink(db_url, "demo", "run-1", attempts=1).open()
    yield s
    s.close()


def rows(s: SqlResultSink, table: sa.Table) -> list[Any]:
    assert s.engine is not None
    with s.engine.connect() as conn:
        return conn.execute(sa.select(table)).all()


def counts(s: SqlResultSink) -> dict[str, int]:
    assert s.engine is not None
    with s.engine.connect() as conn:
        return {
            t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
            for t in (tables.documents, tables.results, tables.dead_letters, tables.stream_offsets)
        }


def make_batch(label: str = "positive", offset: int = 10) -> SinkBatch:
    return SinkBatch(
        documents=[
            Document(id="d1", text="first text", meta={"lang": "en"}, source_ref="in.jsonl:1"),
            Document(id="d2", text="second text", source_ref="in.jsonl:2"),
        ],
        results=[
            StageResult(doc_id="d1", stage="sentiment", label=label, score=0.9, output={"scores": {label: 0.9}}, model_version="m1"),
            StageResult(doc_id="d2", stage="sentiment", label=label, score=0.6, model_version="m1"),
            StageResult(doc_id="d1", stage="spam", label="ham", score=0.1),
        ],
        dead_letters=[DeadLetter(ref="in.jsonl:3", reason="invalid_json", detail="bad", payload="{x")],
        offsets=[Offset("g1", "docs", 0, offset), Offset("g1", "docs", 1, offset + 5)],
    )


# --------------------------------------------------------------------------- schema


def test_open_migrates_and_creates_tables(sink: SqlResultSink, tmp_path: Path) -> None:
    assert (tmp_path / "sub" / "tw.db").is_file(), "parent directory created"
    assert sink.engine is not None
    names = set(sa.inspect(sink.engine).get_table_names())
    assert TABLES <= names
    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    with sink.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all() == [head]


def test_migrated_columns_match_core_tables(sink: SqlResultSink) -> None:
    assert sink.engine is not None
    inspector = sa.inspect(sink.engine)
    for table in tables.metadata.sorted_tables:
        migrated = {c["name"]: c for c in inspector.get_columns(table.name)}
        assert set(migrated) == {c.name for c in table.columns}, table.name
        for column in table.columns:
            assert bool(migrated[column.name]["nullable"]) == bool(column.nullable), (table.name, column.name)


def test_open_twice_is_safe(db_url: str, sink: SqlResultSink) -> None:
    sink.write(make_batch())
    again = SqlResultSink(db_url, "demo", "run-2").open()
    try:
        assert counts(again)["documents"] == 2
    finally:
        again.close()


def test_write_before_open_raises(db_url: str) -> None:
    s = SqlResultSink(db_url, "demo", "r")
    with pytest.raises(RuntimeError):
        s.write(make_batch())
    s.write(SinkBatch())  # an empty batch touches nothing


def test_bad_url_is_sink_error() -> None:
    with pytest.raises(SinkError):
        SqlResultSink("notadialect://x/y", "demo", "r").open()


# --------------------------------------------------------------------------- writes


def test_write_stores_everything(sink: SqlResultSink) -> None:
    sink.write(make_batch())
    assert counts(sink) == {"documents": 2, "results": 3, "dead_letters": 1, "stream_offsets": 2}
    docs = {r.doc_id: r for r in rows(sink, tables.documents)}
    assert docs["d1"].text == "first text" and docs["d1"].chars == 10 and docs["d1"].meta == {"lang": "en"}
    assert docs["d1"].source_ref == "in.jsonl:1" and len(docs["d1"].sha256) == 64
    results = {(r.doc_id, r.stage): r for r in rows(sink, tables.results)}
    assert results[("d1", "sentiment")].label == "positive"
    assert results[("d1", "sentiment")].output == {"scores": {"positive": 0.9}}
    assert results[("d1", "sentiment")].pipeline == "demo" and results[("d1", "sentiment")].run_id == "run-1"
    (dead,) = rows(sink, tables.dead_letters)
    assert (dead.ref, dead.stage, dead.reason, dead.payload) == ("in.jsonl:3", "source", "invalid_json", "{x")


def test_store_text_false(db_url: str) -> None:
    s = SqlResultSink(db_url, "demo", "r", store_text=False).open()
    try:
        s.write(make_batch())
        docs = {r.doc_id: r for r in rows(s, tables.documents)}
        assert docs["d1"].text is None and docs["d1"].chars == 10
    finally:
        s.close()


def test_same_batch_twice_is_idempotent(sink: SqlResultSink) -> None:
    batch = make_batch()
    sink.write(batch)
    first = counts(sink)
    created = {(r.doc_id, r.stage): r.created_at for r in rows(sink, tables.results)}
    sink.write(batch)
    assert counts(sink) == first
    assert {(r.doc_id, r.stage): r.created_at for r in rows(sink, tables.results)} == created


def test_rewrite_updates_values(sink: SqlResultSink) -> None:
    sink.write(make_batch(label="positive", offset=10))
    sink.write(make_batch(label="negative", offset=20))
    assert counts(sink) == {"documents": 2, "results": 3, "dead_letters": 1, "stream_offsets": 2}
    labels = {(r.doc_id, r.stage): r.label for r in rows(sink, tables.results)}
    assert labels == {("d1", "sentiment"): "negative", ("d2", "sentiment"): "negative", ("d1", "spam"): "ham"}
    outputs = {(r.doc_id, r.stage): r.output for r in rows(sink, tables.results)}
    assert outputs[("d1", "sentiment")] == {"scores": {"negative": 0.9}}
    assert sink.load_offsets("g1") == {("docs", 0): 20, ("docs", 1): 25}


def test_other_pipeline_keeps_its_own_rows(db_url: str, sink: SqlResultSink) -> None:
    sink.write(make_batch())
    other = SqlResultSink(db_url, "other", "run-9").open()
    try:
        other.write(make_batch())
        c = counts(other)
        assert c["documents"] == 4, "documents are kept per (pipeline, doc_id)"
        assert c["results"] == 6 and c["dead_letters"] == 2
    finally:
        other.close()


def test_refused_row_is_dead_lettered_and_the_rest_of_the_batch_lands(sink: SqlResultSink) -> None:
    sink.write(make_batch(offset=10))
    bad_result = StageResult.model_construct(doc_id=None, stage="sentiment", label="x", score=None, output={}, model_version="")
    batch = SinkBatch(
        documents=[Document(id="d9", text="new doc"), Document(id="d1", text="changed text")],
        results=[StageResult(doc_id="d9", stage="sentiment", label="positive"), bad_result],
        dead_letters=[DeadLetter(ref="in.jsonl:99", reason="empty_text")],
        offsets=[Offset("g1", "docs", 0, 999)],
    )
    sink.write(batch)  # NOT NULL refuses the result without a doc_id: bisected out, the rest is stored
    docs = {r.doc_id: r.text for r in rows(sink, tables.documents)}
    assert docs["d9"] == "new doc" and docs["d1"] == "changed text"
    letters = {(r.ref, r.stage, r.reason) for r in rows(sink, tables.dead_letters)}
    assert ("in.jsonl:99", "source", "empty_text") in letters and ("None", "sink", "sink_rejected") in letters
    assert sink.load_offsets("g1") == {("docs", 0): 999, ("docs", 1): 15}


def test_duplicate_keys_in_one_batch_keep_last(sink: SqlResultSink) -> None:
    batch = SinkBatch(
        documents=[Document(id="d1", text="old"), Document(id="d1", text="new")],
        results=[
            StageResult(doc_id="d1", stage="s", label="first"),
            StageResult(doc_id="d1", stage="t", label="other"),
            StageResult(doc_id="d1", stage="s", label="last"),
        ],
        dead_letters=[DeadLetter(ref="r", reason="a"), DeadLetter(ref="r", reason="b")],
        offsets=[Offset("g", "t", 0, 1), Offset("g", "t", 0, 7)],
    )
    sink.write(batch)
    assert [r.text for r in rows(sink, tables.documents)] == ["new"]
    assert {r.stage: r.label for r in rows(sink, tables.results)} == {"s": "last", "t": "other"}
    assert [r.reason for r in rows(sink, tables.dead_letters)] == ["b"]
    assert sink.load_offsets("g") == {("t", 0): 7}


# --------------------------------------------------------------------------- offsets and runs


def test_offsets_upsert_and_load_per_group(sink: SqlResultSink) -> None:
    assert sink.load_offsets("g1") == {}
    sink.write(SinkBatch(offsets=[Offset("g1", "a", 0, 5), Offset("g1", "b", 3, 9), Offset("g2", "a", 0, 100)]))
    sink.write(SinkBatch(offsets=[Offset("g1", "a", 0, 6)]))
    assert sink.load_offsets("g1") == {("a", 0): 6, ("b", 3): 9}
    assert sink.load_offsets("g2") == {("a", 0): 100}
    assert sink.load_offsets("nobody") == {}
    assert counts(sink)["stream_offsets"] == 3


def test_start_and_finish_run(sink: SqlResultSink) -> None:
    sink.start_run({"stages": ["a", "b"]})
    (row,) = rows(sink, tables.runs)
    assert row.run_id == "run-1" and row.pipeline == "demo" and row.status == "running"
    assert row.finished_at is None and row.stats == {"stages": ["a", "b"]}
    sink.finish_run("ok", {"docs": 3, "dead_letters": 1})
    (row,) = rows(sink, tables.runs)
    assert row.status == "ok" and row.finished_at is not None and row.stats == {"docs": 3, "dead_letters": 1}
    assert row.finished_at >= row.started_at


def test_start_run_twice_is_an_error(sink: SqlResultSink) -> None:
    sink.start_run()
    with pytest.raises(sa.exc.IntegrityError):
        sink.start_run()


# --------------------------------------------------------------------------- unsafe values


def test_nan_and_nul_in_json_stored_safely(sink: SqlResultSink) -> None:
    output = {"score": float("nan"), "inf": [float("inf"), -float("inf"), 1.5], "text": "a\x00b", "nested": {"k": "v\x00", 3: "int key"}}
    sink.write(
        SinkBatch(
            documents=[Document(id="d1", text="t", meta={"x": float("nan"), "s": "\x00"})],
            results=[StageResult(doc_id="d1", stage="s", label="l", output=output)],
            dead_letters=[DeadLetter(ref="r:1", reason="invalid_json", payload="a\x00b")],
        )
    )
    assert sink.engine is not None
    with sink.engine.connect() as conn:
        raw_output = conn.execute(sa.text("SELECT output FROM results")).scalar_one()
        raw_meta = conn.execute(sa.text("SELECT meta FROM documents")).scalar_one()
    # strict JSON: no NaN/Infinity tokens, no NUL characters
    for raw in (raw_output, raw_meta):
        assert "\x00" not in raw and "\\u0000" not in raw
        json.loads(raw, parse_constant=lambda token: pytest.fail(f"non-standard JSON token {token}"))
    (result,) = rows(sink, tables.results)
    assert result.output == {"score": None, "inf": [None, None, 1.5], "text": "ab", "nested": {"k": "v", "3": "int key"}}
    (doc,) = rows(sink, tables.documents)
    assert doc.meta == {"x": None, "s": ""}
    (dead,) = rows(sink, tables.dead_letters)
    assert "\x00" not in dead.payload and dead.payload == "a\\x00b"


def test_nul_in_json_keys_stored_safely(sink: SqlResultSink) -> None:
    sink.write(
        SinkBatch(
            documents=[Document(id="d1", text="t", meta={"bad\x00key": 1})],
            results=[StageResult(doc_id="d1", stage="s", output={"nested": {"k\x00": "v"}})],
        )
    )
    assert sink.engine is not None
    with sink.engine.connect() as conn:
        raw_output = conn.execute(sa.text("SELECT output FROM results")).scalar_one()
        raw_meta = conn.execute(sa.text("SELECT meta FROM documents")).scalar_one()
    assert "\\u0000" not in raw_meta and "\x00" not in raw_meta
    assert "\\u0000" not in raw_output and "\x00" not in raw_output


def test_finite_values_untouched(sink: SqlResultSink) -> None:
    output = {"f": 0.25, "i": 3, "b": True, "n": None, "l": [1, "x"], "s": "ünïcode"}
    sink.write(SinkBatch(results=[StageResult(doc_id="d", stage="s", output=output)]))
    (result,) = rows(sink, tables.results)
    assert result.output == output
    assert not any(isinstance(v, float) and math.isnan(v) for v in result.output.values())


def test_long_label_and_ref_are_truncated(sink: SqlResultSink) -> None:
    sink.write(SinkBatch(
        results=[StageResult(doc_id="d", stage="s", label="L" * 1000, model_version="v" * 500)],
        dead_letters=[DeadLetter(ref="r" * 5000, reason="x", detail="d" * 10_000)],
    ))
    (result,) = rows(sink, tables.results)
    assert len(result.label) == 256 and len(result.model_version) == 128
    (dead,) = rows(sink, tables.dead_letters)
    assert len(dead.ref) == 1024 and len(dead.detail) == 4000


# --------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:p@h:5432/db", "postgresql+psycopg://u:p@h:5432/db"),
        ("postgres://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg2://u@h/db", "postgresql+psycopg2://u@h/db"),
        ("sqlite:///x.db", "sqlite:///x.db"),
        ("mysql+pymysql://u@h/db", "mysql+pymysql://u@h/db"),
    ],
)
def test_normalise_url(url: str, expected: str) -> None:
    assert normalise_url(url) == expected


def test_sink_normalises_its_url() -> None:
    assert SqlResultSink("postgresql://u@h/db", "p", "r").url == "postgresql+psycopg://u@h/db"


def test_sinkbatch_truthiness() -> None:
    assert not SinkBatch()
    assert SinkBatch(offsets=[Offset("g", "t", 0, 1)])
    assert SinkBatch(dead_letters=[DeadLetter(ref="r", reason="x")])


def test_is_transient() -> None:
    assert is_transient(sa.exc.OperationalError("stmt", {}, Exception("gone")))
    assert not is_transient(sa.exc.IntegrityError("stmt", {}, Exception("dup")))
    assert not is_transient(ValueError("x"))

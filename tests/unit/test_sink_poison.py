"""The SQL sink's last line of defence and its data-integrity rules, on real SQLite and PostgreSQL.

- a batch the database refuses is bisected: the good rows land, each refused row becomes a
  `sink_rejected` dead letter with the database's message, the offsets are stored;
- a failure that is no row's fault (a dropped table) is raised, not dead-lettered;
- a refused login, an unknown database, a host that does not resolve: fatal at once, one line;
- `documents` is keyed by (pipeline, doc_id); migration 0005 keeps every existing row;
- a `clipped` document (requeued from a clipped payload) never overwrites a stored one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from schemas.documents import DeadLetter, Document, StageResult
from worker.errors import SinkError
from worker.sinks.sql import MIGRATIONS, Offset, SinkBatch, SqlResultSink, make_engine, migrate, normalise_url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sink.db'}"
    return str(request.getfixturevalue("postgres_url"))


def _deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def _rows(url: str, sql: str) -> list[Any]:
    engine = make_engine(normalise_url(url))
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql)).all())
    finally:
        engine.dispose()


def test_a_refused_row_is_bisected_out_and_its_neighbours_land(db_url: str) -> None:
    sink = SqlResultSink(db_url, "p", "run-1").open()
    docs = [Document(id=f"d{i:02d}", text=f"text {i}") for i in range(40)]
    docs[5] = Document(id="d05", text="bad meta", meta={"x": "lone \udc80"})  # bypasses the source boundary on purpose
    docs[31] = Document(id="d31", text="too deep", meta={"x": _deep(3000)})
    results = [StageResult(doc_id=d.id, stage="s", label="ok") for d in docs]
    letters = [DeadLetter(ref="d05", stage="s", reason="stage_error"), DeadLetter(ref="src-1", reason="empty_text")]
    sink.write(SinkBatch(documents=docs, results=results, dead_letters=letters, offsets=[Offset("g", "t", 0, 42)]))
    sink.close()

    stored = {r[0] for r in _rows(db_url, "SELECT doc_id FROM documents WHERE pipeline = 'p'")}
    refused = {"d31"} if db_url.startswith("sqlite") else {"d05", "d31"}  # SQLite's JSON text keeps the escaped surrogate
    assert stored == {d.id for d in docs} - refused
    assert {r[0] for r in _rows(db_url, "SELECT doc_id FROM results")} == stored
    rejected = {r.ref: r for r in _rows(db_url, "SELECT ref, stage, detail, payload FROM dead_letters WHERE reason = 'sink_rejected'")}
    assert "d31" in rejected and "RecursionError" in rejected["d31"].detail
    if not db_url.startswith("sqlite"):  # SQLite's JSON column stores the escaped surrogate; PostgreSQL's JSONB refuses it
        assert set(rejected) == {"d05", "d31"} and "json" in rejected["d05"].detail.lower()
        assert '"text": "bad meta"' in rejected["d05"].payload and rejected["d05"].stage == "sink"
    assert {r[0] for r in _rows(db_url, "SELECT ref FROM dead_letters WHERE reason = 'empty_text'")} == {"src-1"}
    assert _rows(db_url, "SELECT next_offset FROM stream_offsets")[0][0] == 42


def test_a_batch_of_only_refused_rows_still_moves_the_offsets(db_url: str) -> None:
    sink = SqlResultSink(db_url, "p", "run-1").open()
    docs = [Document(id=f"deep-{i}", text="x", meta={"x": _deep(3000)}) for i in range(3)]
    sink.write(SinkBatch(documents=docs, offsets=[Offset("g", "t", 0, 3)]))
    sink.close()
    assert len(_rows(db_url, "SELECT ref FROM dead_letters WHERE reason = 'sink_rejected'")) == 3
    assert _rows(db_url, "SELECT next_offset FROM stream_offsets")[0][0] == 3


def test_a_failure_that_is_no_rows_fault_is_raised(db_url: str) -> None:
    sink = SqlResultSink(db_url, "p", "run-1").open()
    with sink._engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE results"))
    batch = SinkBatch(documents=[Document(id="a", text="a")], results=[StageResult(doc_id="a", stage="s")],
                      offsets=[Offset("g", "t", 0, 1)])
    with pytest.raises(sa.exc.DBAPIError):
        sink.write(batch)
    sink.close()
    assert _rows(db_url, "SELECT count(*) FROM dead_letters")[0][0] == 0
    assert _rows(db_url, "SELECT count(*) FROM stream_offsets")[0][0] == 0


@pytest.mark.parametrize(("change", "words"), [
    (lambda url: url.set(database="tw_no_such_database"), "does not exist"),
    (lambda url: url.set(username="tw_no_such_role"), "refused the login"),
    (lambda url: url.set(host="tw-no-such-host.invalid"), "does not resolve"),
])
def test_unfixable_connection_failures_are_fatal_at_once_in_one_line(postgres_url: str, change: Any, words: str) -> None:
    url = change(sa.engine.make_url(normalise_url(postgres_url)))
    sink = SqlResultSink(url.render_as_string(hide_password=False), "p", "run-1", attempts=1000)
    started = time.monotonic()
    with pytest.raises(SinkError) as caught:
        sink.open()
    assert time.monotonic() - started < 20, "retried instead of failing"
    assert words in caught.value.message and "\n" not in str(caught.value)


def test_a_refused_connection_is_retried(tmp_path: Path) -> None:
    sink = SqlResultSink("postgresql://postgres@127.0.0.1:1/test", "p", "run-1", attempts=2, max_backoff_s=0.1)
    with pytest.raises(SinkError) as caught:
        sink.open()
    assert "cannot reach the database" in caught.value.message


def test_documents_are_kept_per_pipeline(db_url: str) -> None:
    first = SqlResultSink(db_url, "one", "run-1").open()
    second = SqlResultSink(db_url, "two", "run-2").open()
    first.write(SinkBatch(documents=[Document(id="same", text="the first pipeline's text")]))
    second.write(SinkBatch(documents=[Document(id="same", text="the second pipeline's text", meta={"k": 1})]))
    first.close()
    second.close()
    rows = sorted(_rows(db_url, "SELECT pipeline, doc_id, text FROM documents"))
    assert [tuple(r) for r in rows] == [("one", "same", "the first pipeline's text"), ("two", "same", "the second pipeline's text")]


def test_a_clipped_document_never_overwrites_the_stored_one(db_url: str) -> None:
    sink = SqlResultSink(db_url, "p", "run-1", store_text=False).open()
    full = "full text " * 500
    sink.write(SinkBatch(documents=[Document(id="d", text=full, meta={"lang": "en"})]))
    sink.write(SinkBatch(documents=[Document(id="d", text=full[:2000], clipped=True), Document(id="new", text="abc", clipped=True)]))
    sink.close()
    rows = {r.doc_id: r for r in _rows(db_url, "SELECT doc_id, chars, text, meta FROM documents")}
    assert rows["d"].chars == len(full) and rows["d"].text is None
    assert rows["new"].chars == 3  # no stored row: the clipped copy is all there is


def _upgrade_to(url: str, revision: str) -> None:
    engine = make_engine(normalise_url(url))
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    engine.dispose()


def test_migration_0005_keeps_every_document_row(db_url: str) -> None:
    _upgrade_to(db_url, "0004")
    engine = make_engine(normalise_url(db_url))
    now = "2026-01-01 00:00:00"
    with engine.begin() as conn:
        for doc_id, text in [("shared", "read by two pipelines"), ("only-a", "a's"), ("letter-only", "dead"), ("orphan", "none")]:
            conn.execute(sa.text("INSERT INTO documents (doc_id, text, chars, sha256, meta, source_ref, created_at, updated_at) "
                                 "VALUES (:d, :t, 1, 'x', '{}', 'r', :n, :n)"), {"d": doc_id, "t": text, "n": now})
        for pipeline, doc_id in [("a", "shared"), ("b", "shared"), ("a", "only-a")]:
            conn.execute(sa.text("INSERT INTO results (pipeline, doc_id, stage, output, model_version, run_id, created_at, updated_at) "
                                 "VALUES (:p, :d, 's', '{}', 'v', 'r', :n, :n)"), {"p": pipeline, "d": doc_id, "n": now})
        conn.execute(sa.text("INSERT INTO dead_letters (pipeline, ref, stage, reason, detail, payload, run_id, created_at, updated_at) "
                             "VALUES ('c', 'letter-only', 's', 'stage_error', '', '', 'r', :n, :n)"), {"n": now})
    migrate(engine)
    with engine.connect() as conn:
        rows = sorted(tuple(r) for r in conn.execute(sa.text("SELECT pipeline, doc_id, text FROM documents")))
    assert rows == [("", "orphan", "none"), ("a", "only-a", "a's"), ("a", "shared", "read by two pipelines"),
                    ("b", "shared", "read by two pipelines"), ("c", "letter-only", "dead")]
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO documents (pipeline, doc_id, chars, sha256, meta, source_ref, created_at, updated_at) "
                             "VALUES ('a', 'shared', 1, 'x', '{}', 'r', :n, :n)"), {"n": now})
    engine.dispose()


def test_textworker_run_against_an_unknown_database_exits_with_one_line(postgres_url: str) -> None:
    import subprocess
    import sys

    from tests.conftest import REPO

    url = sa.engine.make_url(normalise_url(postgres_url)).set(database="tw_no_such_database")
    done = subprocess.run([sys.executable, "-m", "worker.cli", "run", "pipelines/demo.yaml", "--quiet",
                           "--database-url", url.render_as_string(hide_password=False)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: TW401 the database `tw_no_such_database` does not exist on {url.host}: create it or fix the database URL"]

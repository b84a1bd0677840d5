"""The requeue source on real SQLite and PostgreSQL: pages, one run per document, clipped payloads, resolve.

No model runs here: the source's items are checked and written with the real sink, as
`textworker requeue` does after the stages.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from schemas.documents import DeadLetter, Document
from schemas.pipeline import PipelineSpec
from worker.sinks import tables
from worker.sinks.sql import SinkBatch, SqlResultSink, make_engine, normalise_url
from worker.sources.requeue import RequeueSource, marked_pages


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'requeue.db'}"
    return str(request.getfixturevalue("postgres_url"))


def spec(store_text: bool = True) -> PipelineSpec:
    return PipelineSpec.model_validate({
        "version": 1, "name": "rq", "source": {"type": "file", "path": "in.jsonl"},
        "stages": [{"name": "spam", "type": "spam", "model": "models/spam"}], "sink": {"store_text": store_text},
    })


def mark(url: str, when: datetime | None = None) -> None:
    engine = make_engine(normalise_url(url))
    with engine.begin() as conn:
        conn.execute(tables.dead_letters.update().values(requeued_at=when or datetime.now(UTC)))
    engine.dispose()


def rows(url: str, sql: str) -> list[Any]:
    engine = make_engine(normalise_url(url))
    with engine.connect() as conn:
        found = list(conn.execute(sa.text(sql)).all())
    engine.dispose()
    return found


def test_letters_are_read_page_by_page_and_resolved(db_url: str) -> None:
    sink = SqlResultSink(db_url, "rq", "run-1").open()
    docs = [Document(id=f"doc-{i:03d}", text=f"full text {i} " * 300) for i in range(25)]
    letters = [DeadLetter(ref=d.id, stage=stage, reason="stage_error", payload=d.text[:2000]) for d in docs for stage in ("a", "b")]
    letters += [DeadLetter(ref=f"in.jsonl:{i}", reason="too_large", payload=f'{{"id": "big-{i}", "text": "now fine {i}"}}') for i in range(7)]
    letters.append(DeadLetter(ref="in.jsonl:99", reason="invalid_json", payload="{broken"))
    sink.write(SinkBatch(documents=docs, dead_letters=letters))
    mark(db_url, datetime.now(UTC) - timedelta(seconds=1))

    source = RequeueSource(spec(), db_url, page_size=4)
    pages = list(marked_pages(source.engine, "rq", source.marked_before, page_size=4))
    assert [len(p) for p in pages] == [4] * 14 + [2] and sum(len(p) for p in pages) == 58
    items = list(source.read())
    documents = [i for i in items if isinstance(i, Document)]
    assert len(source.taken) == 58
    assert sorted(d.id for d in documents) == sorted([d.id for d in docs] + [f"big-{i}" for i in range(7)])  # each document once
    stored = {d.id: d for d in documents}
    assert stored["doc-003"].text == docs[3].text and not stored["doc-003"].clipped  # the stored full text, not the payload
    (broken,) = [i for i in items if isinstance(i, DeadLetter)]
    assert broken.reason == "invalid_json" and broken.detail.startswith("still not JSON")

    sink.write(SinkBatch(documents=documents, dead_letters=[broken]))  # what the run stores: the broken one fails again
    assert source.resolve() == 57
    source.close()
    sink.close()
    assert [tuple(r) for r in rows(db_url, "SELECT ref, reason, requeued_at FROM dead_letters")] == [("in.jsonl:99", "invalid_json", None)]


def test_letters_marked_after_the_read_began_are_left_for_the_next_requeue(db_url: str) -> None:
    sink = SqlResultSink(db_url, "rq", "run-1").open()
    sink.write(SinkBatch(dead_letters=[DeadLetter(ref="early", reason="too_large", payload='{"text": "a"}')]))
    mark(db_url, datetime.now(UTC) - timedelta(seconds=5))
    source = RequeueSource(spec(), db_url)
    sink.write(SinkBatch(dead_letters=[DeadLetter(ref="late", reason="too_large", payload='{"text": "b"}')]))
    engine = make_engine(normalise_url(db_url))
    with engine.begin() as conn:
        conn.execute(tables.dead_letters.update().where(tables.dead_letters.c.ref == "late").values(requeued_at=datetime.now(UTC) + timedelta(seconds=5)))
    engine.dispose()
    assert [getattr(i, "text", None) for i in source.read()] == ["a"]
    assert source.resolve() == 1
    source.close()
    sink.close()
    assert [r[0] for r in rows(db_url, "SELECT ref FROM dead_letters")] == ["late"]


def test_without_stored_text_a_requeue_never_overwrites_the_document(db_url: str) -> None:
    sink = SqlResultSink(db_url, "rq", "run-1", store_text=False).open()
    full = "a long document " * 1000
    sink.write(SinkBatch(documents=[Document(id="long", text=full, meta={"lang": "en"})],
                         dead_letters=[DeadLetter(ref="long", stage="spam", reason="stage_error", payload=full[:2000])]))
    mark(db_url)
    source = RequeueSource(spec(store_text=False), db_url)
    (item,) = list(source.read())
    assert isinstance(item, Document) and item.clipped and item.text == full[:2000]
    sink.write(SinkBatch(documents=[item]))
    source.close()
    sink.close()
    (row,) = rows(db_url, "SELECT chars, sha256, meta FROM documents WHERE doc_id = 'long'")
    assert row.chars == len(full)  # still the stored document's size and hash, not the clipped payload's
    meta = row.meta if isinstance(row.meta, dict) else __import__("json").loads(row.meta)
    assert meta == {"lang": "en"}


def test_a_row_the_database_refused_is_validated_again_on_requeue(db_url: str) -> None:
    sink = SqlResultSink(db_url, "rq", "run-1").open()
    deep: Any = 1
    for _ in range(3000):
        deep = [deep]
    sink.write(SinkBatch(documents=[Document(id="refused", text="a fine text", meta={"x": deep}),
                                    Document(id="fine", text="another text")]))
    (letter,) = rows(db_url, "SELECT ref, stage, reason FROM dead_letters")
    assert tuple(letter) == ("refused", "sink", "sink_rejected")
    mark(db_url)
    source = RequeueSource(spec(), db_url)
    (item,) = list(source.read())
    assert isinstance(item, Document) and (item.id, item.text) == ("refused", "a fine text")  # the payload dropped the deep field
    source.close()
    sink.close()

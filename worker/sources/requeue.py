"""Requeued dead letters as a source: the second chance an operator gives them.

The life of a requeue:

1. someone marks dead letters (`requeued_at = now`) -- the dashboard's Requeue buttons,
   or `POST /api/dead-letters/requeue`; nothing else happens yet;
2. `textworker requeue PIPELINE` reads the marked letters of that pipeline (oldest
   first) through this source and runs them through the pipeline's stages into the
   same SQL tables, like any other run (its own `runs` row, the same upserts);
3. after the run, `resolve()` deletes the marked letters that did not fail again. A
   letter that fails again is rewritten by the sink, which clears its `requeued_at`:
   it is pending once more, with the new reason and detail.

A crash before step 3 leaves the marks in place, so the next `requeue` does the work
again (writes are upserts: no duplicates). How a letter becomes a document again:

- a stage's letter (a document a stage could not process): the stored document of the
  same pipeline (`documents` row with the same id: its full text and fields) when the
  text was stored, else the payload the letter kept (its first 2,000 characters). Such
  a document is marked `clipped`: the sink inserts it only when the pipeline has no
  row for that id, so a clipped payload never overwrites a stored document;
- an input letter (`stage = source`: unreadable JSON, a missing field...) and a row the
  database refused (`stage = sink`, `sink_rejected`, whose payload is the document as
  JSON): the payload is parsed again as the pipeline's source would (strict JSON ->
  `to_document` with the source's field names, the sink's `id`/`text` for `sink`
  letters; other text -> the same reason again). Input that was broken stays broken,
  but one rejected by a limit since raised, or by a bug since fixed, now goes through.

Memory stays bounded: letters are read a page at a time (`marked_pages`, keyset paging
on the `(ref, stage)` key, so the letters of one document are adjacent and it runs once);
what the run took is remembered as a count and the last key, not as a list. Only letters
marked no later than the newest mark seen when the source opened are taken (letters
marked meanwhile wait for the next requeue), and `resolve()` deletes exactly those.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from schemas.documents import Document
from schemas.pipeline import PipelineSpec
from worker.sinks import tables
from worker.sinks.sql import make_engine, migrate, normalise_url
from worker.sources.base import SourceItem
from worker.sources.validation import RecordProblem, dead_letter, decode_json, to_document

log = logging.getLogger(__name__)
PAGE_SIZE = 256


@dataclass
class Taken:
    """What a requeue read: how many letters, and the last `(ref, stage)` key (letters are read in key order)."""

    count: int = 0
    last: tuple[str, str] | None = None

    def __len__(self) -> int:
        return self.count


def marked_pages(engine: Engine, pipeline: str, marked_before: datetime, *, page_size: int = PAGE_SIZE,
                 limit: int | None = None) -> Iterator[list[Any]]:
    """The pipeline's letters marked for requeue (at or before `marked_before`), page by page in
    `(ref, stage)` order, each with its stored document (same pipeline) when it has one.

    One short query per page (keyset paging: no OFFSET scans, no open cursor between pages).
    """
    dl, docs = tables.dead_letters, tables.documents
    joined = dl.outerjoin(docs, sa.and_(dl.c.stage.not_in(["source", "sink"]), docs.c.pipeline == dl.c.pipeline,
                                        docs.c.doc_id == dl.c.ref))
    base = (sa.select(dl.c.id, dl.c.ref, dl.c.stage, dl.c.reason, dl.c.payload, docs.c.text, docs.c.meta, docs.c.source_ref)
            .select_from(joined)
            .where(dl.c.pipeline == pipeline, dl.c.requeued_at.is_not(None), dl.c.requeued_at <= marked_before)
            .order_by(dl.c.ref, dl.c.stage))
    after: tuple[str, str] | None = None
    left = limit
    while left is None or left > 0:
        size = page_size if left is None else min(page_size, left)
        query = base if after is None else base.where(sa.tuple_(dl.c.ref, dl.c.stage) > sa.tuple_(*after))
        with engine.connect() as conn:
            rows = list(conn.execute(query.limit(size)).all())
        if not rows:
            return
        yield rows
        after = (rows[-1].ref, rows[-1].stage)
        if left is not None:
            left -= len(rows)
        if len(rows) < size:
            return


class RequeueSource:
    """Marked dead letters of one pipeline as `SourceItem`s; `resolve()` clears the ones that went through."""

    def __init__(self, spec: PipelineSpec, database_url: str, *, limit: int | None = None, page_size: int = PAGE_SIZE) -> None:
        self.spec = spec
        self.engine = make_engine(normalise_url(database_url))
        migrate(self.engine)
        self.limit = limit
        self.page_size = page_size
        self.marked_before = self._newest_mark()
        self.taken = Taken()

    def _newest_mark(self) -> datetime | None:
        """When the newest letter was marked: letters marked later (by the marking host's clock, so
        clock skew between hosts does not matter) wait for the next requeue."""
        dl = tables.dead_letters
        query = sa.select(sa.func.max(dl.c.requeued_at)).where(dl.c.pipeline == self.spec.name, dl.c.requeued_at.is_not(None))
        with self.engine.connect() as conn:
            newest: datetime | None = conn.execute(query).scalar()
        return newest

    def read(self) -> Iterator[SourceItem]:
        if self.marked_before is None:
            return
        last_doc: str | None = None
        for page in marked_pages(self.engine, self.spec.name, self.marked_before, page_size=self.page_size, limit=self.limit):
            for row in page:
                self.taken.count += 1
                self.taken.last = (row.ref, row.stage)
                item = self._item(row)
                if isinstance(item, Document):
                    if item.id == last_doc:  # one document, several stage letters: run it once
                        continue
                    last_doc = item.id
                yield item

    def _item(self, row: Any) -> SourceItem:
        if row.stage not in ("source", "sink"):
            if row.text:
                return Document(id=row.ref, text=row.text, meta=row.meta or {}, source_ref=row.source_ref or f"requeue:{row.id}")
            return Document(id=row.ref, text=row.payload or " ", source_ref=f"requeue:{row.id}", clipped=True)
        source = self.spec.source
        try:
            record = decode_json(row.payload or "")
        except RecordProblem as problem:
            detail = f"still not JSON: {problem.detail}" if problem.reason == "invalid_json" else problem.detail
            return dead_letter(row.ref, problem.reason, detail, row.payload or "")
        if row.stage == "sink":
            return to_document(record, row.ref, payload=row.payload, max_chars=getattr(source, "max_chars", 1_000_000))
        return to_document(
            record, row.ref, id_field=getattr(source, "id_field", "id"), text_field=getattr(source, "text_field", "text"),
            fields=getattr(source, "fields", None), max_chars=getattr(source, "max_chars", 1_000_000), payload=row.payload,
        )

    def resolve(self) -> int:
        """Delete the letters this requeue took that are still marked (those that failed again were rewritten unmarked)."""
        if self.taken.last is None or self.marked_before is None:
            return 0
        dl = tables.dead_letters
        with self.engine.begin() as conn:
            result = conn.execute(dl.delete().where(
                dl.c.pipeline == self.spec.name, dl.c.requeued_at.is_not(None), dl.c.requeued_at <= self.marked_before,
                sa.tuple_(dl.c.ref, dl.c.stage) <= sa.tuple_(*self.taken.last),
            ))
            deleted = int(result.rowcount or 0)
        log.info("requeued dead letters resolved", extra={"pipeline": self.spec.name, "taken": self.taken.count, "resolved": deleted})
        return deleted

    def close(self) -> None:
        self.engine.dispose()

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

- a stage's letter (a document a stage could not process): the stored document
  (`documents` row with the same id: its full text and fields) when the text was
  stored, else the payload the letter kept (its first 2,000 characters);
- an input letter (`stage = source`: unreadable JSON, a missing field...): its payload
  is parsed again as the pipeline's source would (JSON object -> `to_document` with the
  source's field names; other text -> the same reason again). Input that was broken
  stays broken, but one rejected by a limit since raised, or by a bug since fixed,
  now goes through.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

from schemas.documents import DeadLetter, Document
from schemas.pipeline import PipelineSpec
from worker.sinks import tables
from worker.sinks.sql import make_engine, migrate, normalise_url
from worker.sources.base import SourceItem
from worker.sources.validation import to_document

log = logging.getLogger(__name__)


class RequeueSource:
    """Marked dead letters of one pipeline as `SourceItem`s; `resolve()` clears the ones that went through."""

    def __init__(self, spec: PipelineSpec, database_url: str, *, limit: int | None = None) -> None:
        self.spec = spec
        self.engine = make_engine(normalise_url(database_url))
        migrate(self.engine)
        self.limit = limit
        self.taken: list[int] = []

    def read(self) -> Iterator[SourceItem]:
        dl, docs = tables.dead_letters, tables.documents
        query = (sa.select(dl.c.id, dl.c.ref, dl.c.stage, dl.c.reason, dl.c.payload, docs.c.text, docs.c.meta, docs.c.source_ref)
                 .select_from(dl.outerjoin(docs, sa.and_(dl.c.stage != "source", docs.c.doc_id == dl.c.ref)))
                 .where(dl.c.pipeline == self.spec.name, dl.c.requeued_at.is_not(None)).order_by(dl.c.id))
        if self.limit is not None:
            query = query.limit(self.limit)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        seen: set[str] = set()
        for row in rows:
            self.taken.append(row.id)
            item = self._item(row)
            key = item.id if isinstance(item, Document) else f"{item.ref}\x00{item.stage}"
            if key in seen:  # one document, several stage letters: run it once
                continue
            seen.add(key)
            yield item

    def _item(self, row: Any) -> SourceItem:
        if row.stage != "source":
            if row.text:
                return Document(id=row.ref, text=row.text, meta=row.meta or {}, source_ref=row.source_ref or f"requeue:{row.id}")
            return Document(id=row.ref, text=row.payload or " ", source_ref=f"requeue:{row.id}")
        source = self.spec.source
        try:
            record = json.loads(row.payload)
        except (json.JSONDecodeError, TypeError) as exc:
            return DeadLetter(ref=row.ref, reason="invalid_json", detail=f"still not JSON: {exc}", payload=row.payload or "")
        return to_document(
            record, row.ref, id_field=getattr(source, "id_field", "id"), text_field=getattr(source, "text_field", "text"),
            fields=getattr(source, "fields", None), max_chars=getattr(source, "max_chars", 1_000_000), payload=row.payload,
        )

    def resolve(self) -> int:
        """Delete the taken letters still marked (those that failed again were rewritten unmarked)."""
        dl = tables.dead_letters
        deleted = 0
        with self.engine.begin() as conn:
            for start in range(0, len(self.taken), 1000):
                ids = self.taken[start:start + 1000]
                result = conn.execute(dl.delete().where(dl.c.id.in_(ids), dl.c.requeued_at.is_not(None)))
                deleted += int(result.rowcount or 0)
        log.info("requeued dead letters resolved", extra={"pipeline": self.spec.name, "taken": len(self.taken), "resolved": deleted})
        return deleted

    def close(self) -> None:
        self.engine.dispose()

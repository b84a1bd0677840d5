"""The review queue's storage: items are queued inside the sink's transaction for the same batch.

Routing (which results need a person) lives in `worker.lifecycle.review`, which hangs
on the engine's hooks and fills a chunk's `reviews`; this module only stores them:

- one item per (pipeline, stage, doc_id); a document that was queued before (open,
  labelled or skipped) is never queued again and costs no budget;
- the budget is checked in the transaction: open items never exceed `max_open`, items
  queued in a UTC day never exceed `per_day`. On PostgreSQL the stage's queue is locked
  (transaction advisory lock) while counting, so concurrent workers cannot overshoot;
  SQLite serialises writers anyway. When a batch brings more candidates than there is
  room for, the least confident are queued.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from schemas.pipeline import ReviewSpec
from worker.sinks import tables

_q = tables.review_queue
OPEN = "open"


@dataclass(frozen=True)
class ReviewItem:
    """A prediction the stage is unsure of, with the stage's budget."""

    stage: str
    doc_id: str
    text: str
    predicted: str | None
    confidence: float
    margin: float
    model_version: str
    budget: ReviewSpec




def _lock_queue(conn: Connection, pipeline: str, stage: str) -> None:
    if conn.dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(f"review:{pipeline}:{stage}".encode()).digest()[:8], "big", signed=True)
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def _room(conn: Connection, pipeline: str, stage: str, budget: ReviewSpec, now: datetime) -> int:
    room = None
    mine = (_q.c.pipeline == pipeline) & (_q.c.stage == stage)
    if budget.max_open is not None:
        open_now = conn.execute(sa.select(sa.func.count()).where(mine, _q.c.status == OPEN)).scalar_one()
        room = budget.max_open - int(open_now)
    if budget.per_day is not None:
        midnight = datetime.combine(now.date(), time(0), tzinfo=UTC)
        today = conn.execute(sa.select(sa.func.count()).where(mine, _q.c.created_at >= midnight)).scalar_one()
        room = min(room if room is not None else budget.per_day, budget.per_day - int(today))
    return max(0, room if room is not None else 0)


def _insert_new(dialect: str) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(_q).on_conflict_do_nothing(index_elements=["pipeline", "stage", "doc_id"])
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(_q).on_conflict_do_nothing(index_elements=["pipeline", "stage", "doc_id"])
    return _q.insert().prefix_with("IGNORE")


def enqueue(conn: Connection, pipeline: str, items: Sequence[ReviewItem]) -> int:
    """Queue what the budgets allow (see the module docstring); returns how many items were added."""
    by_stage: dict[str, dict[str, ReviewItem]] = {}
    for item in items:
        kept = by_stage.setdefault(item.stage, {}).get(item.doc_id)
        if kept is None or item.confidence < kept.confidence:
            by_stage[item.stage][item.doc_id] = item
    now = datetime.now(UTC)
    added = 0
    for stage, candidates in sorted(by_stage.items()):
        _lock_queue(conn, pipeline, stage)
        known = set(conn.execute(sa.select(_q.c.doc_id).where(
            _q.c.pipeline == pipeline, _q.c.stage == stage, _q.c.doc_id.in_(list(candidates)))).scalars())
        fresh = sorted((i for d, i in candidates.items() if d not in known), key=lambda i: (i.confidence, i.doc_id))
        if not fresh:
            continue
        chosen = fresh[: _room(conn, pipeline, stage, fresh[0].budget, now)]
        rows = [{"pipeline": pipeline, "stage": stage, "doc_id": i.doc_id, "text": i.text.replace("\x00", ""),
                 "predicted": i.predicted[:256] if i.predicted is not None else None, "score": round(i.confidence, 6),
                 "model_version": i.model_version[:128], "status": OPEN, "created_at": now} for i in chosen]
        if rows:
            conn.execute(_insert_new(conn.dialect.name), rows)
            added += len(rows)
    return added

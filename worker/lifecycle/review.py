"""Active learning: low-confidence predictions go to a review queue; people label them.

Routing (`review_items`) is a pure function of a batch's results and the stages'
`review:` blocks; `ReviewHook` applies it to every chunk the engine finishes. Queueing
runs inside the sink's transaction for the same batch, so an item is queued if and
only if its result is stored, within the stage's budget (`worker.sinks.review_queue`).

Labelling (`label_item`) validates the label against the stage's labels, stores it as
`feedback` (source `review`, the feedback module's fingerprint, so a label given twice
is stored once) and then marks the item labelled. A crash between the two leaves the
feedback stored and the item open; labelling again completes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from schemas.documents import Document, StageResult
from schemas.pipeline import PipelineSpec, ReviewSpec
from worker.engine.core import Chunk
from worker.engine.hooks import Hook
from worker.errors import TextworkerError
from worker.sinks import tables
from worker.sinks.review_queue import ReviewItem, enqueue  # noqa: F401 - re-exported: routing and storage meet here
from worker.stages import plugin_for

_q = tables.review_queue
OPEN, LABELLED, SKIPPED = "open", "labelled", "skipped"


class ReviewError(TextworkerError):
    """A review command that cannot be done (unknown item, label not in the stage's set...)."""

    code = "TW601"


def confidence_of(stage: Any, result: StageResult) -> tuple[float, float]:
    """(probability of the predicted label, top-1 minus top-2 probability) of one result (the plug-in's `confidence`)."""
    confidence = plugin_for(stage.type).confidence
    if confidence is None:
        raise ReviewError(f"a {stage.type} stage is not routed to review")
    return confidence(stage, result)


def _routed(review: ReviewSpec, label: str | None, confidence: float, margin: float) -> bool:
    if review.labels and label not in review.labels:
        return False
    return (review.below is not None and confidence < review.below) or (review.margin is not None and margin < review.margin)


def review_items(spec: PipelineSpec, docs: Sequence[Document], results: Iterable[StageResult]) -> list[ReviewItem]:
    """The results of a batch that the stages' `review:` blocks route to people."""
    stages: dict[str, tuple[Any, ReviewSpec]] = {
        s.name: (s, review) for s in spec.stages
        if (review := getattr(s, "review", None)) is not None and plugin_for(s.type).confidence is not None}
    if not stages:
        return []
    texts = {d.id: d.text for d in docs}
    items: list[ReviewItem] = []
    for result in results:
        found = stages.get(result.stage)
        if found is None or result.doc_id not in texts:
            continue
        stage, review = found
        confidence, margin = confidence_of(stage, result)
        if _routed(review, result.label, confidence, margin):
            items.append(ReviewItem(stage.name, result.doc_id, texts[result.doc_id], result.label, confidence, margin,
                                    result.model_version, review))
    return items


# --------------------------------------------------------------------------- reading and labelling


@dataclass(frozen=True)
class QueuedItem:
    """One `review_queue` row; `score` is the model's confidence in `predicted`."""

    doc_id: str
    stage: str
    text: str
    predicted: str | None
    score: float | None
    model_version: str
    status: str
    label: str | None
    who: str | None
    created_at: datetime
    labelled_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def list_items(engine: Engine, pipeline: str, stage: str, status: str | None = OPEN, limit: int | None = None) -> list[QueuedItem]:
    """Items of a stage, least confident first (`status=None`: every status)."""
    fields = [getattr(_q.c, name) for name in QueuedItem.__dataclass_fields__]
    query = sa.select(*fields).where(_q.c.pipeline == pipeline, _q.c.stage == stage)
    if status is not None:
        query = query.where(_q.c.status == status)
    query = query.order_by(_q.c.score.asc(), _q.c.id.asc()).limit(limit)
    with engine.connect() as conn:
        return [QueuedItem(**dict(r._mapping)) for r in conn.execute(query)]


def _get(engine: Engine, pipeline: str, stage: str, doc_id: str) -> QueuedItem:
    fields = [getattr(_q.c, name) for name in QueuedItem.__dataclass_fields__]
    query = sa.select(*fields).where(_q.c.pipeline == pipeline, _q.c.stage == stage, _q.c.doc_id == doc_id)
    with engine.connect() as conn:
        row = conn.execute(query).first()
    if row is None:
        raise ReviewError(f"stage `{stage}` of pipeline `{pipeline}` has no review item for document `{doc_id}`",
                          hint=f"`textworker review list PIPELINE --stage {stage}` shows the open items")
    return QueuedItem(**dict(row._mapping))


def label_item(engine: Engine, pipeline: str, stage: Any, doc_id: str, label: str,
               who: str | None = None) -> QueuedItem:
    """Label an item: store the label as feedback (source `review`), then mark the item labelled."""
    from worker.lifecycle.feedback import FeedbackRow, stage_labels, store_rows

    allowed = stage_labels(stage)
    label = label.strip()
    if allowed and label not in allowed:
        raise ReviewError(f"label `{label}` is not one of stage `{stage.name}`'s labels: {', '.join(allowed)}",
                          hint="use one of the stage's labels (its `labels`, or spam_label/ham_label)")
    item = _get(engine, pipeline, stage.name, doc_id)
    if item.status == LABELLED and item.label != label:
        raise ReviewError(f"document `{doc_id}` was already labelled `{item.label}` by {item.who or 'someone'}",
                          hint="a correction is new feedback: textworker feedback import")
    store_rows(engine, pipeline, [FeedbackRow(stage=stage.name, text=item.text, label=label, doc_id=doc_id, who=who)],
               source="review", who=who)
    return _set_status(engine, pipeline, stage.name, doc_id, LABELLED, label=label, who=who)


def skip_item(engine: Engine, pipeline: str, stage: str, doc_id: str, who: str | None = None) -> QueuedItem:
    """Close an open item without a label (it frees budget and is never queued again)."""
    item = _get(engine, pipeline, stage, doc_id)
    if item.status == LABELLED:
        raise ReviewError(f"document `{doc_id}` is already labelled `{item.label}`; it cannot be skipped")
    return _set_status(engine, pipeline, stage, doc_id, SKIPPED, label=None, who=who)


def _set_status(engine: Engine, pipeline: str, stage: str, doc_id: str, status: str, *, label: str | None, who: str | None) -> QueuedItem:
    where = (_q.c.pipeline == pipeline) & (_q.c.stage == stage) & (_q.c.doc_id == doc_id)
    with engine.begin() as conn:
        conn.execute(_q.update().where(where).values(status=status, label=label, who=who, labelled_at=datetime.now(UTC)))
    return _get(engine, pipeline, stage, doc_id)


class ReviewHook(Hook):
    """Engine hook: routes each chunk's unsure results to the review queue (stored with the chunk)."""

    def on_chunk(self, spec: PipelineSpec, chunk: Chunk) -> None:
        chunk.reviews.extend(review_items(spec, chunk.docs, chunk.results))

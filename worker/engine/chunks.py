"""Chunks: what the engine moves through the stages, and what comes out of each."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.documents import DeadLetter, Document, StageResult

Context = dict[str, dict[str, StageResult]]
Outcome = StageResult | DeadLetter


def stage_error_letters(docs: Sequence[Document], stage: str, exc: BaseException) -> list[DeadLetter]:
    """A failed stage call, as one `stage_error` dead letter per document of the call."""
    detail = f"{type(exc).__name__}: {str(exc)[:400]}"
    return [DeadLetter(ref=d.id, stage=stage, reason="stage_error", detail=detail, payload=d.text[:2000]) for d in docs]


@dataclass
class ChunkInput:
    """What a driver hands the engine: documents, the source's dead letters, and its own payload (offsets...)."""

    docs: list[Document]
    letters: list[DeadLetter] = field(default_factory=list)
    items: int = 0
    payload: Any = None

    @classmethod
    def of_items(cls, items: Sequence[Document | DeadLetter], payload: Any = None) -> ChunkInput:
        """A source's items (documents and its dead letters, in any mix) as one chunk."""
        docs = [i for i in items if isinstance(i, Document)]
        return cls(docs, [i for i in items if isinstance(i, DeadLetter)], len(items), payload)


@dataclass
class Chunk:
    """One chunk on its way through the stages, and what came of it."""

    seq: int
    docs: list[Document]
    letters: list[DeadLetter]
    items: int
    payload: Any = None
    context: Context = field(default_factory=dict)
    results: list[StageResult] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)
    reviews: list[Any] = field(default_factory=list)
    next_stage: int = 0

    @classmethod
    def of(cls, seq: int, given: ChunkInput) -> Chunk:
        docs, letters = unique_docs(given.docs, given.letters)
        return cls(seq, docs, letters, given.items or len(given.docs) + len(given.letters), given.payload,
                   context={d.id: {} for d in docs}, skipped={d.id: [] for d in docs})


def unique_docs(docs: Iterable[Document], letters: Iterable[DeadLetter] = ()) -> tuple[list[Document], list[DeadLetter]]:
    """A repeated id within one chunk keeps its last copy (one row per document and stage)."""
    unique: dict[str, Document] = {}
    for doc in docs:
        unique.pop(doc.id, None)
        unique[doc.id] = doc
    return list(unique.values()), list(letters)

"""The source protocol.

A source yields, in a deterministic order, either a validated `Document` or a
`DeadLetter` for input that cannot become one. It never raises for bad input; it
raises only when the input cannot be read at all (missing file, broker gone for good).

Delivery: file sources rely on idempotent sink writes (re-reading a file re-writes
the same rows); streaming sources add offsets, see `worker.sources.kafka`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from schemas.documents import DeadLetter, Document

SourceItem = Document | DeadLetter


class DocumentSource(Protocol):
    def read(self) -> Iterator[SourceItem]:
        """Every input item once, in order."""
        ...

    def close(self) -> None:
        """Release files or connections; safe to call twice."""
        ...

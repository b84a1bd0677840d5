"""Batch driver: a finite source (files, requeued dead letters, a list) -> engine -> sink, chunk by chunk.

Each chunk's documents, results, dead letters and review items are written in one
transaction. A crash loses at most the chunks in flight, and re-running is safe
because the sink upserts on natural keys.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from schemas.documents import DeadLetter, Document
from schemas.pipeline import PipelineSpec
from worker.engine.core import Chunk, ChunkInput, Engine
from worker.engine.runs import RunBook, RunSummary, chunks_of


def source_chunks(items: Iterable[Document | DeadLetter], size: int) -> Iterator[ChunkInput]:
    """A source's items as engine chunks of `size` input items."""
    for part in chunks_of(items, size):
        yield ChunkInput.of_items(part)


def run_pipeline(
    spec: PipelineSpec,
    source: Any,
    sink: Any,
    engine: Engine,
    *,
    limit: int | None = None,
    chunk_size: int = 256,
    on_chunk: Callable[[int, int], None] | None = None,
    meta: dict[str, Any] | None = None,
) -> RunSummary:
    """Drain `source` through `engine` into `sink`; returns the run's summary (also stored with the run)."""
    items: Iterable[Document | DeadLetter] = source.read()
    if limit is not None:
        items = itertools.islice(items, limit)
    book = RunBook(spec, sink, engine, meta or {}).start()

    def complete(chunk: Chunk) -> None:
        book.store(chunk)
        if on_chunk is not None:
            on_chunk(chunk.items, len(chunk.docs))

    status = "failed"
    try:
        engine.run(source_chunks(items, chunk_size), complete)
        status = "finished"
    finally:
        summary = book.finish(status)
    return summary

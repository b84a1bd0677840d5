"""Sources, keyed by a pipeline file's `source.type`. Adding one is a module plus a line in SOURCES.

Each entry names the module and class that read that type of source. A *batch*
source (`read()` yields every item once, then ends; see `base.DocumentSource`) is
driven by `worker.engine.batch`; a *stream* source (`poll`/`commit`, offsets stored
with the results) by `worker.engine.stream`. Requeued dead letters
(`worker.sources.requeue`) and HTTP requests (`worker.serving.payloads`) are sources
too, built by their commands rather than named in pipeline files.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from schemas.pipeline import FileSource


@dataclass(frozen=True)
class SourceEntry:
    """Where a source type's reader lives, and how it is driven (`batch` or `stream`)."""

    target: str  # "module:Class", imported on use (Kafka clients load only when a pipeline reads Kafka)
    kind: str


SOURCES: dict[str, SourceEntry] = {
    "file": SourceEntry("worker.sources.files:FileDocumentSource", "batch"),
    "kafka": SourceEntry("worker.sources.kafka:KafkaDocumentSource", "stream"),
}


def source_kind(spec: Any) -> str:
    """`batch` or `stream` for a validated source spec."""
    return SOURCES[spec.type].kind


def open_source(spec: Any, input_path: str | None = None) -> Any:
    """The reader for a pipeline's source spec; `input_path` (run --input) reads files instead, whatever the type."""
    if input_path:
        spec = spec if isinstance(spec, FileSource) else FileSource(path=input_path)
        from worker.sources.files import FileDocumentSource

        return FileDocumentSource(spec, input_path)
    module, _, name = SOURCES[spec.type].target.partition(":")
    return getattr(importlib.import_module(module), name)(spec)

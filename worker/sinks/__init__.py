"""Sinks, keyed by type. Adding one is a module plus a line in SINKS.

A sink has one of two roles:

- `store`: the store of record, named by a pipeline file's `sink.type`. It writes a
  batch's documents, results, dead letters, review items and stream offsets in one
  transaction (`write(SinkBatch)`), keeps run rows (`start_run`/`finish_run`) and reads
  offsets back (`load_offsets`). While it cannot take writes it raises `SinkUnavailable`,
  the backpressure signal the stream driver obeys (`worker.engine.stream`).
- `publisher`: publishes what the store committed to another system (`publish(docs,
  results, letters)`), at least once. The Kafka topics publisher is configured on the
  kafka source (`results_topic`, `dead_letter_topic`).

Each entry names its class as `module:Class`, imported on use (Kafka clients load only
when a pipeline publishes). A class is built with `Class.from_spec(spec, pipeline,
run_id, **options)`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SinkEntry:
    """Where a sink type's class lives, and its role (`store` or `publisher`)."""

    target: str
    role: str


SINKS: dict[str, SinkEntry] = {
    "sql": SinkEntry("worker.sinks.sql:SqlResultSink", "store"),
    "kafka_topics": SinkEntry("worker.sinks.kafka_topics:TopicPublisher", "publisher"),
}


def sink_class(kind: str) -> Any:
    """The class of sink type `kind`."""
    try:
        module, _, name = SINKS[kind].target.partition(":")
    except KeyError:
        raise KeyError(f"unknown sink type `{kind}` (known: {', '.join(sorted(SINKS))})") from None
    return getattr(importlib.import_module(module), name)


def build_sink(spec: Any, pipeline: str, run_id: str, **options: Any) -> Any:
    """The store for a pipeline's `sink:` spec (not opened yet); `options` go to its `from_spec`
    (for SQL: `url` to override the file's, `attempts`)."""
    return sink_class(spec.type).from_spec(spec, pipeline, run_id, **options)


def build_publisher(kind: str, spec: Any, pipeline: str) -> Any:
    """A publisher of sink type `kind` for the settings in `spec`."""
    if SINKS[kind].role != "publisher":
        raise TypeError(f"sink type `{kind}` is a {SINKS[kind].role}, not a publisher")
    return sink_class(kind).from_spec(spec, pipeline, "")

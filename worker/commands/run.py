"""`textworker run`: a pipeline over its source (files, or Kafka until stopped) into SQL, on an engine for `--runtime`."""

from __future__ import annotations

import argparse
from typing import Any

from schemas.pipeline import PipelineSpec
from worker.config import load_pipeline
from worker.console import database_url, emit, render_summary, run_with_bar
from worker.errors import TextworkerError
from worker.sources import open_source, source_kind


def make_source(spec: PipelineSpec, input_path: str | None) -> Any:
    """The pipeline's source from the sources registry; --input PATH reads files instead, whatever the source type."""
    return open_source(spec.source, input_path)


def cmd_run(args: argparse.Namespace) -> int:
    from worker.assembly import build_engine, run_source
    from worker.engine.runs import new_run_id
    from worker.sinks import build_sink

    spec = load_pipeline(args.pipeline)
    url = database_url(args, spec)
    runtime = getattr(args, "runtime", "local")
    engine = build_engine(spec, runtime, database_url=url, address=getattr(args, "address", None))
    if source_kind(spec.source) == "stream" and not args.input:
        from worker.engine.stream import StreamOptions, run_stream

        try:
            options = StreamOptions.from_args(args)
        except ValueError as exc:
            raise TextworkerError(f"bad replay range: {exc}", hint="offsets >= 0, ISO 8601 times, from before until") from exc
        stream_summary = run_stream(spec, url, options, engine, meta={"runtime": runtime})
        emit(args, stream_summary.as_dict(), render_summary(stream_summary.as_dict()))
        return 0
    source = make_source(spec, args.input)
    sink = build_sink(spec.sink, spec.name, new_run_id(), url=url).open()
    try:
        summary = run_with_bar(args, "documents", lambda on_chunk: run_source(
            spec, source, sink, engine=engine, runtime=runtime, limit=args.limit, chunk_size=args.chunk_size, on_chunk=on_chunk))
    finally:
        source.close()
        sink.close()
    emit(args, summary.as_dict(), render_summary(summary.as_dict()))
    return 0

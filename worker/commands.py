"""Command implementations behind `textworker run | validate | models | demo`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from schemas.pipeline import FileSource, KafkaSource, PipelineSpec
from worker.cli import default_database_url, emit
from worker.config import load_pipeline
from worker.errors import PipelineFileError, TextworkerError
from worker.models import loading


def database_url(args: argparse.Namespace, spec: PipelineSpec | None) -> str:
    """--database-url, then $TEXTWORKER_DATABASE_URL, then the pipeline's sink URL."""
    if getattr(args, "database_url", None):
        return str(args.database_url)
    if os.environ.get("TEXTWORKER_DATABASE_URL"):
        return os.environ["TEXTWORKER_DATABASE_URL"]
    return spec.sink.url if spec is not None else default_database_url()


def make_source(spec: PipelineSpec, input_path: str | None) -> Any:
    """The pipeline's source; --input PATH reads files instead, whatever the source type."""
    if isinstance(spec.source, FileSource):
        from worker.sources.files import FileDocumentSource

        return FileDocumentSource(spec.source, input_path)
    if input_path:
        from worker.sources.files import FileDocumentSource

        return FileDocumentSource(FileSource(path=input_path), input_path)
    if isinstance(spec.source, KafkaSource):
        from worker.sources.kafka import KafkaDocumentSource

        return KafkaDocumentSource(spec.source)
    raise TextworkerError(f"source type `{spec.source.type}` is not supported by `run` yet", hint="use a file source or --input PATH")


def cmd_run(args: argparse.Namespace) -> int:
    from worker.assembly import build_engine
    from worker.engine.batch import run_pipeline
    from worker.engine.runs import new_run_id
    from worker.sinks.sql import SqlResultSink

    spec = load_pipeline(args.pipeline)
    url = database_url(args, spec)
    runtime = getattr(args, "runtime", "local")
    engine = build_engine(spec, runtime, database_url=url, address=getattr(args, "address", None))
    if isinstance(spec.source, KafkaSource) and not args.input:
        from worker.engine.stream import StreamOptions, run_stream

        try:
            options = StreamOptions.from_args(args)
        except ValueError as exc:
            raise TextworkerError(f"bad replay range: {exc}", hint="offsets >= 0, ISO 8601 times, from before until") from exc
        stream_summary = run_stream(spec, url, options, engine, meta={"runtime": runtime})
        emit(args, stream_summary.as_dict(), render_summary(stream_summary.as_dict()))
        return 0
    source = make_source(spec, args.input)
    sink = SqlResultSink(url, spec.name, new_run_id(), store_text=spec.sink.store_text).open()
    bar = _progress_bar(args, "documents")
    try:
        summary = run_pipeline(
            spec, source, sink, engine, limit=args.limit, chunk_size=args.chunk_size,
            on_chunk=(lambda items, docs: bar.update(items)) if bar is not None else None, meta={"runtime": runtime},
        )
    finally:
        if bar is not None:
            bar.close()
        engine.close()
        source.close()
        sink.close()
    emit(args, summary.as_dict(), render_summary(summary.as_dict()))
    return 0


def _progress_bar(args: argparse.Namespace, unit: str) -> Any:
    if args.quiet or args.json:
        return None
    from tqdm import tqdm

    return tqdm(unit=f" {unit}", dynamic_ncols=True, file=sys.stderr)


def render_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"run {summary['run_id']} of pipeline `{summary['pipeline']}`",
        f"  documents: {summary['docs']}   dead letters: {summary['dead_letters']}   "
        f"time: {summary['seconds']:.1f}s   throughput: {summary['docs_per_s']:.1f} docs/s",
        "  stage            results  skipped  failed  tokens/s  padding  model",
    ]
    for name, st in summary["stages"].items():
        lines.append(
            f"  {name:<16} {st['results']:>7}  {st['skipped']:>7}  {st['failed']:>6}  "
            f"{st['tokens_per_s']:>8.0f}  {st['padding_waste']:>6.1%}  {st['model_version']}"
        )
        if st.get("labels") and len(st["labels"]) <= 12:
            labels = ", ".join(f"{k}: {v}" for k, v in sorted(st["labels"].items(), key=lambda kv: -kv[1]))
            lines.append(f"  {'':<16} labels: {labels}")
    if summary["dead_letter_reasons"]:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(summary["dead_letter_reasons"].items()))
        lines.append(f"  dead-letter reasons: {reasons}")
    return "\n".join(lines)


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        spec = load_pipeline(args.pipeline)
    except PipelineFileError as exc:
        payload = {"valid": False, "problems": [p.__dict__ for p in exc.problems]}
        if args.json:
            emit(args, payload, "")
        else:
            print(str(exc), file=sys.stderr)
        return 1
    stages = [f"{s.name} ({s.type}, model {s.model})" for s in spec.stages]
    text = f"{args.pipeline}: valid pipeline `{spec.name}`: source {spec.source.type}, {len(stages)} stage(s): " + "; ".join(stages)
    emit(args, {"valid": True, "pipeline": spec.name, "stages": [s.name for s in spec.stages]}, text)
    return 0


def list_models(models_dir: Path) -> list[dict[str, Any]]:
    """Every version of every model family under `models_dir`, with its metadata."""
    rows: list[dict[str, Any]] = []
    if not models_dir.is_dir():
        return rows
    for family in sorted(p for p in models_dir.iterdir() if p.is_dir()):
        current = loading.current_version_dir(family)
        versions = loading.family_versions(family) or ([family] if loading.is_model_dir(family) else [])
        for version in versions:
            meta = loading.read_metadata(version)
            rows.append({
                "family": family.name, "version": meta.get("version", version.name), "task": meta.get("task"),
                "current": version == current or version == family, "path": str(version),
                "base_model": meta.get("base_model"), "created_at": meta.get("created_at"),
                "metrics": meta.get("metrics") or {}, "train_seconds": meta.get("train_seconds"),
            })
    return rows


def _headline(metrics: dict[str, Any]) -> str:
    keys = ("accuracy", "macro_f1", "f1", "exact_match", "bleu", "chrf")
    return " ".join(f"{k}={metrics[k]}" for k in keys if k in metrics)


def cmd_models(args: argparse.Namespace) -> int:
    if args.models_command in ("list", "show", "promote", "rollback"):
        from worker.lifecycle.commands import cmd_models_registry

        return cmd_models_registry(args)
    if args.models_command == "build-defaults":
        from worker.models.defaults import DEFAULT_NAMES, build_defaults
        from worker.stages import STAGE_TYPES

        names = tuple(args.only) if args.only else DEFAULT_NAMES
        say = (lambda m: None) if args.quiet else print
        build_defaults(args.dir, force=args.force, names=tuple(n for n in names if n in DEFAULT_NAMES), log_step=say)
        for kind, plugin in STAGE_TYPES.items():  # stage types that bring a default model of their own
            if plugin.build_default is not None and (not args.only or kind in args.only):
                plugin.build_default(Path(args.dir), say)
        return 0
    from worker.models.roberta import build_roberta
    from worker.training.commands import read_texts

    texts = [t for path in args.data for t in read_texts(Path(path))]
    out = build_roberta(texts, args.out, size=args.size, vocab_size=args.vocab_size)
    emit(args, {"out": str(out), "texts": len(texts)}, f"built RoBERTa ({args.size}) from {len(texts)} texts -> {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from worker.models.defaults import SEED_DIR, build_defaults
    from worker.resources import pipeline_path

    os.environ.setdefault("TEXTWORKER_MODELS_DIR", args.models_dir)
    build_defaults(args.models_dir, log_step=(lambda m: None) if args.quiet else print)
    demo = pipeline_path("demo.yaml")
    run_args = argparse.Namespace(
        pipeline=str(demo), input=str(SEED_DIR / "sample_docs.jsonl"), database_url=args.database_url,
        limit=None, chunk_size=64, quiet=args.quiet, json=args.json,
    )
    code = cmd_run(run_args)
    if code == 0 and not (args.quiet or args.json):
        from worker.demo_report import print_report

        print_report(args.database_url, "demo")
    return code


def cmd_bench(args: argparse.Namespace) -> int:
    from worker.bench import render_bench, run_bench

    spec = load_pipeline(args.pipeline)
    if args.quiet:
        result = run_bench(spec, args.stage, args.data, args.limit, list(args.only), lambda message: None)
    else:
        from tqdm import tqdm

        # One step per contender; each contender's docs/s is printed above the bar as it finishes.
        with tqdm(total=len(args.only), unit=" contenders", dynamic_ncols=True, file=sys.stderr) as bar:
            def say(message: str) -> None:
                bar.write(message, file=sys.stderr)
                if message.startswith("  "):
                    bar.update(1)

            result = run_bench(spec, args.stage, args.data, args.limit, list(args.only), say)
    emit(args, result, render_bench(result))
    return 0

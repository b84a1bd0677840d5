"""`textworker feedback | finetune | schedule` and the registry side of `textworker models`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from worker.config import load_pipeline
from worker.console import default_database_url, default_models_dir, emit
from worker.errors import TextworkerError
from worker.lifecycle.registry import ModelRecord, ModelRegistry, RegistryError
from worker.models import loading


def add_parsers(sub: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    """The lifecycle commands' arguments (the `models` ones are added by `add_models_parsers`)."""
    p = sub.add_parser("feedback", help="labelled feedback for fine-tuning")
    fsub = p.add_subparsers(dest="feedback_command", required=True)
    f = fsub.add_parser("import", help="store labelled rows (CSV/TSV/JSONL) for a stage; bad rows are listed and skipped")
    f.add_argument("path")
    f.add_argument("--pipeline", required=True, help="the pipeline file")
    f.add_argument("--stage", required=True)
    f.add_argument("--source", default="import", help="where the labels came from (default: import)")
    f.add_argument("--who", help="who labelled them")
    f.add_argument("--database-url", help="default: $TEXTWORKER_DATABASE_URL, then the pipeline's sink")
    add_common(f)

    p = sub.add_parser("finetune", help="train a candidate from the champion on the stage's feedback; the gate decides")
    p.add_argument("pipeline")
    p.add_argument("--stage", required=True)
    p.add_argument("--database-url", help="default: $TEXTWORKER_DATABASE_URL, then the pipeline's sink")
    p.add_argument("--base-data", help="original training data mixed in (overrides finetune.base_data)")
    p.add_argument("--max-minutes", type=float)
    p.add_argument("--epochs", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--address", help="Ray cluster address (default $RAY_ADDRESS; none starts a local Ray)")
    add_common(p)

    p = sub.add_parser("schedule", help="fine-tune stages when their finetune.schedule is due, until SIGTERM")
    p.add_argument("pipeline")
    p.add_argument("--database-url", help="default: $TEXTWORKER_DATABASE_URL, then the pipeline's sink")
    p.add_argument("--once", action="store_true", help="check every stage once and exit")
    p.add_argument("--poll-seconds", type=float, default=60.0)
    p.add_argument("--address", help="Ray cluster address (default $RAY_ADDRESS; none starts a local Ray)")
    add_common(p)


def add_models_parsers(msub: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    """`models show | promote | rollback`."""
    m = msub.add_parser("show", help="a registered model's versions, or one version, with its history")
    m.add_argument("name")
    m.add_argument("version", nargs="?")
    m.add_argument("--database-url", default=default_database_url())
    add_common(m)
    m = msub.add_parser("promote", help="make a version the champion (registers a version directory found on disk)")
    m.add_argument("name")
    m.add_argument("version")
    m.add_argument("--reason", default="promoted by hand")
    m.add_argument("--dir", default=default_models_dir(), help="where model families live")
    m.add_argument("--database-url", default=default_database_url())
    m.add_argument("--pointer", action="store_true",
                   help="also move the family's on-disk `current` file (what pipelines without this database load)")
    add_common(m)
    m = msub.add_parser("rollback", help="retire the champion and restore the one before it")
    m.add_argument("name")
    m.add_argument("--reason", default="rolled back by hand")
    m.add_argument("--pointer", action="store_true", help="also move the family's on-disk `current` file")
    m.add_argument("--database-url", default=default_database_url())
    add_common(m)


# --------------------------------------------------------------------------- feedback, finetune, schedule


def _database_url(args: argparse.Namespace, spec: Any) -> str:
    from worker.console import database_url

    return database_url(args, spec)


def cmd_feedback(args: argparse.Namespace) -> int:
    from worker.lifecycle.feedback import import_file
    from worker.lifecycle.registry import open_engine

    spec = load_pipeline(args.pipeline)
    stage = spec.stage(args.stage)
    engine = open_engine(_database_url(args, spec))
    try:
        report = import_file(engine, spec.name, stage, args.path, source=args.source, who=args.who)
    finally:
        engine.dispose()
    lines = [f"{args.path}: {report.received} rows read, {report.inserted} stored, {report.duplicates} already stored, "
             f"{len(report.rejected)} rejected"]
    lines += [f"  {r.render()}" for r in report.rejected[:50]]
    if len(report.rejected) > 50:
        lines.append(f"  ... and {len(report.rejected) - 50} more (--json lists all)")
    emit(args, report.as_dict(), "\n".join(lines))
    if not report.valid:
        print(f"error: no valid rows in {args.path}", file=sys.stderr)
        return 1
    return 0


def _open_registry(url: str) -> ModelRegistry:
    return ModelRegistry.open(url)


def cmd_finetune(args: argparse.Namespace) -> int:
    from worker.lifecycle.finetune import FinetuneOptions, finetune

    spec = load_pipeline(args.pipeline)
    spec.stage(args.stage)
    options = FinetuneOptions(epochs=args.epochs, max_minutes=args.max_minutes, seed=args.seed, base_data=args.base_data,
                              ray_address=args.address)
    registry = _open_registry(_database_url(args, spec))
    try:
        result = finetune(spec, args.stage, registry, options)
    finally:
        registry.close()
    text = f"{result.model}: {'candidate ' + result.candidate if result.candidate else 'no candidate'} — "
    text += ("PROMOTED" if result.promoted else "not promoted") + f": {result.reason}"
    for attempt in result.attempts:
        replay = attempt.get("replay") or {}
        text += (f"\n  attempt {replay.get('attempt')}: {attempt['candidate']} replay {replay.get('rows')} rows "
                 f"(mix {replay.get('mix')}, from {replay.get('from')}) -> {'promoted' if attempt['promoted'] else 'rejected'}")
        text += "".join(f"\n    {'ok  ' if line['ok'] else 'FAIL'} {line['reason']}" for line in attempt["gate"].get("sets", []))
    emit(args, result.as_dict(), text)
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    import threading

    from worker.engine.stream import install_signal_handlers
    from worker.lifecycle.schedule import Scheduler

    spec = load_pipeline(args.pipeline)
    if not any(s.finetune is not None and s.finetune.schedule is not None for s in spec.stages):
        raise TextworkerError(f"no stage of `{spec.name}` has a `finetune.schedule`", hint="add one, e.g. schedule: {min_new_labels: 500}")
    stop = threading.Event()
    restore = install_signal_handlers(stop)
    registry = _open_registry(_database_url(args, spec))
    try:
        decisions = Scheduler(spec, registry, ray_address=args.address, stop=stop).run(once=args.once, poll_seconds=args.poll_seconds)
    finally:
        registry.close()
        restore()
    text = "\n".join(f"{d['stage']}: {'due' if d['due'] else 'not due'} ({d['why']})"
                     + (f" -> {d['result'].get('candidate')} promoted={d['result'].get('promoted')}: {d['result'].get('reason')}"
                        if d.get("result") else "") for d in decisions)
    emit(args, decisions, text or "stopped")
    return 0


# --------------------------------------------------------------------------- models


def _registry_if_present(url: str) -> ModelRegistry | None:
    """The registry when the database exists and holds the registry table (listing never creates a database)."""
    from worker.sinks.sql import make_engine, normalise_url

    engine = make_engine(normalise_url(url))
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:") \
            and not Path(str(engine.url.database)).is_file():
        engine.dispose()
        return None
    try:
        if sa.inspect(engine).has_table("model_registry"):
            return ModelRegistry(engine)
    except sa.exc.OperationalError:
        pass
    engine.dispose()
    return None


def registry_rows(disk: list[dict[str, Any]], records: list[ModelRecord]) -> list[dict[str, Any]]:
    """On-disk versions annotated with their registry status, then registered versions not found on disk."""
    by_path = {str(Path(r.artifact_path).resolve()): r for r in records}
    rows, seen = [], set()
    for row in disk:
        record = by_path.get(str(Path(row["path"]).resolve()))
        rows.append({**row, "status": record.status if record else None, "registered": record is not None,
                     "reason": record.reason if record else None})
        if record is not None:
            seen.add((record.name, record.version))
    for r in records:
        if (r.name, r.version) not in seen:
            rows.append({"family": r.name, "version": r.version, "task": r.task, "current": False, "path": r.artifact_path,
                         "base_model": r.base_model, "created_at": r.created_at, "metrics": r.metrics.get("eval", {}).get("all", r.metrics),
                         "train_seconds": r.train_config.get("train_seconds"), "status": r.status, "registered": True,
                         "reason": r.reason})
    return rows


def _models_list(args: argparse.Namespace) -> int:
    from worker.models.catalog import _headline, int8_summary, list_models

    disk = list_models(Path(args.dir))
    registry = _registry_if_present(args.database_url)
    try:
        records = registry.versions() if registry is not None else []
    finally:
        if registry is not None:
            registry.close()
    rows = registry_rows(disk, records)
    lines = [f"{'family':<12} {'version':<22} {'task':<10} {'status':<10} cur  {'int8 check (drop)':<30} metrics"]
    lines += [f"{r['family']:<12} {r['version']:<22} {str(r['task']):<10} {r['status'] or '-':<10} {'*' if r['current'] else ' ':<4} "
              f"{int8_summary(r.get('int8')):<30} {_headline(r['metrics'] or {})}" for r in rows]
    warnings = pointer_disagreements(rows)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    lines += [f"warning: {w}" for w in warnings]
    emit(args, rows, "\n".join(lines) if rows else f"no models under {args.dir} (build them: textworker models build-defaults)")
    return 0


def pointer_disagreements(rows: list[dict[str, Any]]) -> list[str]:
    """Families whose registry champion is not the version their on-disk `current` file names."""
    out = []
    for family in sorted({r["family"] for r in rows}):
        mine = [r for r in rows if r["family"] == family]
        champion = next((r["version"] for r in mine if r.get("status") == "champion"), None)
        pointer = next((r["version"] for r in mine if r.get("current")), None)
        if champion is not None and pointer is not None and champion != pointer:
            out.append(f"`{family}`: the registry's champion is {champion} but the on-disk `current` file names {pointer}; "
                       f"pipelines against this database load {champion}, others load {pointer} "
                       f"(move the pointer: textworker models promote {family} {champion} --pointer)")
    return out


def _models_show(args: argparse.Namespace) -> int:
    registry = _open_registry(args.database_url)
    try:
        records = registry.versions(args.name)
        if not records:
            raise RegistryError(f"no registered model `{args.name}`", hint="`textworker models list` shows families and versions")
        if args.version:
            record = registry.require(args.name, args.version)
            payload: dict[str, Any] = {**record.as_dict(), "events": registry.events(args.name, args.version)}
            text = json.dumps(payload, indent=2, default=str)
        else:
            payload = {"name": args.name, "versions": [r.as_dict() for r in records], "events": registry.events(args.name)}
            text = "\n".join(f"{r.version:<24} {r.status:<10} {r.model_version:<32} {r.reason or ''}" for r in records)
            text += "\n\nhistory:\n" + "\n".join(f"  {e['created_at']}  {e['action']:<9} {e['version']:<24} {e['reason'] or ''}"
                                                for e in payload["events"])
    finally:
        registry.close()
    emit(args, payload, text)
    return 0


def _models_promote(args: argparse.Namespace) -> int:
    from worker.lifecycle.registry import CHAMPION, move_current_pointer

    registry = _open_registry(args.database_url)
    try:
        existing = registry.get(args.name, args.version)
        if existing is None:
            _register_from_disk(registry, Path(args.dir) / args.name, args.version)
        if existing is not None and existing.status == CHAMPION and args.pointer:
            move_current_pointer(args.name, Path(existing.artifact_path))  # already the champion: move the pointer only
            record = existing
        else:
            record = registry.promote(args.name, args.version, args.reason, move_pointer=args.pointer)
    finally:
        registry.close()
    where = "; the on-disk `current` file names it too" if args.pointer else "; the on-disk `current` file is unchanged (--pointer moves it)"
    emit(args, {**record.as_dict(), "pointer_moved": bool(args.pointer)},
         f"{args.name}: {args.version} is the champion ({record.model_version}){where}")
    return 0


def _register_from_disk(registry: ModelRegistry, family: Path, version: str) -> None:
    """A version directory `textworker train` wrote: register it (and, in a new family, the current one as champion)."""
    version_dir = family / version
    if not loading.is_model_dir(version_dir):
        raise RegistryError(f"`{family.name}` has no version `{version}` in the registry nor at {version_dir}",
                            hint="`textworker models list` shows what exists")
    meta = loading.read_metadata(version_dir)
    stage, task = str(meta.get("name") or family.name), str(meta.get("task") or "classify")
    if not registry.versions(family.name):
        current = loading.current_version_dir(family)
        if current is not None and current != version_dir:
            first = registry.register_directory(family.name, current, stage=stage, task=task, reason="the family's on-disk current version")
            registry.promote(family.name, first.version, "the family's on-disk current version")
    registry.register_directory(family.name, version_dir, stage=stage, task=task)


def _models_rollback(args: argparse.Namespace) -> int:
    registry = _open_registry(args.database_url)
    try:
        record = registry.rollback(args.name, args.reason, move_pointer=args.pointer)
    finally:
        registry.close()
    emit(args, record.as_dict(), f"{args.name}: rolled back to {record.version} ({record.model_version})")
    return 0


def cmd_models_registry(args: argparse.Namespace) -> int:
    return {"list": _models_list, "show": _models_show, "promote": _models_promote, "rollback": _models_rollback}[args.models_command](args)

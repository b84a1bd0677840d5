"""`textworker models list | build-defaults | build-roberta` (registry verbs: `worker.commands.lifecycle`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from worker.console import emit
from worker.models import loading


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
        from worker.commands.lifecycle import cmd_models_registry

        return cmd_models_registry(args)
    if args.models_command == "build-defaults":
        from worker.lifecycle.defaults import DEFAULT_NAMES, build_defaults
        from worker.stages import STAGE_TYPES

        names = tuple(args.only) if args.only else DEFAULT_NAMES
        say = (lambda m: None) if args.quiet else print
        build_defaults(args.dir, force=args.force, names=tuple(n for n in names if n in DEFAULT_NAMES), log_step=say)
        for kind, plugin in STAGE_TYPES.items():  # stage types that bring a default model of their own
            if plugin.build_default is not None and (not args.only or kind in args.only):
                plugin.build_default(Path(args.dir), say)
        return 0
    from worker.models.roberta import build_roberta
    from worker.training.data import read_texts

    texts = [t for path in args.data for t in read_texts(Path(path))]
    out = build_roberta(texts, args.out, size=args.size, vocab_size=args.vocab_size)
    emit(args, {"out": str(out), "texts": len(texts)}, f"built RoBERTa ({args.size}) from {len(texts)} texts -> {out}")
    return 0

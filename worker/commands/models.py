"""`textworker models list | build-defaults | build-roberta` (registry verbs: `worker.commands.lifecycle`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from worker.console import emit
from worker.models.catalog import _headline, list_models  # noqa: F401 - re-exported


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
    if args.models_command == "quantize":
        return _quantize(args)
    from worker.models.roberta import build_roberta
    from worker.training.data import read_texts

    texts = [t for path in args.data for t in read_texts(Path(path))]
    out = build_roberta(texts, args.out, size=args.size, vocab_size=args.vocab_size)
    emit(args, {"out": str(out), "texts": len(texts)}, f"built RoBERTa ({args.size}) from {len(texts)} texts -> {out}")
    return 0


def _quantize(args: argparse.Namespace) -> int:
    """`models quantize`: the int8 build and its quality check for one stage's model version."""
    from worker.commands.training import configured_labels
    from worker.config import load_pipeline
    from worker.errors import TextworkerError
    from worker.lifecycle import precision
    from worker.models import loading
    from worker.stages import plugin_for

    spec = load_pipeline(args.pipeline)
    stage = spec.stage(args.stage)
    stage = stage.model_copy(update={"precision": "int8"})
    if not precision.applies(stage):
        raise TextworkerError(f"stage `{stage.name}` ({stage.type}) has no int8 version (classify, spam and qa models have one, "
                              "with onnxruntime installed)")
    location = loading.resolve(args.model or stage.model).location
    labels = configured_labels(stage)
    sets, what = None, None
    if args.data:
        sets = {args.data: plugin_for(stage.type).load_trainer().read(args.data, stage, labels, args.limit)}
        what = args.data
    try:
        verdict = precision.check(stage, location, sets=sets, what=what, labels=labels, force=args.force)
    except ValueError as exc:
        raise TextworkerError(str(exc), hint="give --data FILE") from exc
    emit(args, {"stage": stage.name, "model": location, **verdict}, f"{stage.name}: {location}\n  {precision.describe(verdict)}")
    return 0

"""`textworker pretrain`: continued masked-LM pretraining of a stage's encoder on unlabelled text."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from worker.errors import DataFileError
from worker.training.pretrain import load_masked_lm, pretrain_mlm, split_texts  # noqa: F401


def _default_out(stage: Any) -> tuple[Path, str, str]:
    """(version dir, family name, version): a new version of `<family>-mlm` beside the stage's model family."""
    from worker.console import default_models_dir
    from worker.models import loading

    version = "v" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    model = Path(stage.model).expanduser()
    if model.is_dir():
        family = model if not loading.is_model_dir(model) else model.parent
        root, name = family.parent, family.name
    else:
        root, name = Path(default_models_dir()), stage.name
    return root / f"{name}-mlm" / version, f"{name}-mlm", version


def cmd_pretrain(args: argparse.Namespace) -> int:
    from worker.commands.training import _progress
    from worker.config import load_pipeline
    from worker.console import emit
    from worker.lifecycle.defaults import finish_version
    from worker.models import loading
    from worker.training.data import read_texts

    spec = load_pipeline(args.pipeline)
    stage = spec.stage(args.stage)
    paths = [Path(p) for p in args.data]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataFileError(f"data file(s) not found: {', '.join(missing)}")
    texts = [t for path in paths for t in read_texts(path)][: args.limit]
    if args.out:
        out, name, version = Path(args.out), Path(args.out).parent.name, Path(args.out).name
    else:
        out, name, version = _default_out(stage)
    base = args.base or stage.model
    progress, close = _progress(args, f"pretrain {stage.name}")
    try:
        info = pretrain_mlm(texts, out, base=base, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                            max_length=args.max_length, mlm_probability=args.mlm_probability, holdout=args.holdout,
                            max_minutes=args.max_minutes, seed=args.seed, progress=progress)
    finally:
        close()
    info["data_files"] = [str(p) for p in paths]
    held = split_texts(texts, args.holdout, args.seed)[1]  # the texts perplexity was measured on (same split)
    finish_version(out, name=name, task="mlm", base=loading.resolve(base).location, data=paths[0], info=info, version=version,
                   evals=[("eval", "held-out texts", held)], train_examples=split_texts(texts, args.holdout, args.seed)[0])
    if not args.out:
        loading.set_current_version(out.parent, out)
    m = info["metrics"]
    text = (f"pretrained {stage.name}'s encoder on {info['train_texts']} texts in {info['train_seconds']:.0f}s -> {out}\n"
            f"  held-out perplexity ({info['heldout_texts']} texts): {m['perplexity_before']} -> {m['perplexity_after']}\n"
            f"  fine-tune from it: textworker train {args.pipeline} --stage {stage.name} --base {out} --data FILE")
    emit(args, {"out": str(out), "version": version, **info}, text)
    return 0

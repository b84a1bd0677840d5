"""Score a model directory for a stage on named evaluation sets, predicting each row once.

The gate compares candidate and champion on exactly the same rows, so both go through
`score_model` with the same `sets` (the frozen set from the pipeline file, the
held-out feedback slice and the champion's reference sets, named `ref:<set>`). The
result has one metric dictionary per set plus `all` (every set but the `ref:` ones
together: the target the gate's margin applies to), each in the shape the stage type's trainer
(`StagePlugin.trainer`, a `worker.training.task.StageTrainer`) returns: accuracy /
macro-F1 / per-label P/R/F1 (0..1) for classify and spam stages (spam with the stage's
threshold, as the running stage decides), SQuAD EM/F1 (0..100) for QA, sacrebleu
BLEU/chrF for translation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from worker.stages import plugin_for

Example = Any  # (text, label) | SQuAD dict | (source, reference)


def _slices(sets: Mapping[str, Sequence[Example]]) -> tuple[list[Example], dict[str, slice]]:
    """Rows of every set, target sets first; `all` spans the target sets (none: every set)."""
    rows: list[Example] = []
    where: dict[str, slice] = {}
    ordered = sorted(sets.items(), key=lambda item: item[0].startswith("ref:"))
    for name, examples in ordered:
        where[name] = slice(len(rows), len(rows) + len(examples))
        rows.extend(examples)
    target = sum(len(examples) for name, examples in ordered if not name.startswith("ref:"))
    where["all"] = slice(0, target or len(rows))
    return rows, where


def load_model(stage: Any, trainer: Any, model_dir: str) -> tuple[Any, Any]:
    """The model at the stage's `precision`; `auto` scores the weights as they are (fp32), so the gate
    compares candidate and champion alike; `eval --precision` sets it explicitly."""
    import transformers

    from worker.models import loading, precision

    ref = loading.resolve(model_dir)
    tokenizer = loading.load_pretrained(transformers.AutoTokenizer, ref)
    device = loading.pick_device(stage.resources.device)
    requested = getattr(stage, "precision", "auto")
    choice = precision.choose("fp32" if requested == "auto" else requested, device, precision.local_dir(ref), trainer.auto_model)
    model = precision.load(getattr(transformers, trainer.auto_model), trainer.auto_model, ref, None, device, choice,
                           threads=stage.resources.threads)
    return model, tokenizer


def score_model(stage: Any, model_dir: str, sets: Mapping[str, Sequence[Example]],
                labels: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Metrics per set name and for `all`; empty sets are left out. Every row is predicted once."""
    sets = {name: rows for name, rows in sets.items() if rows}
    rows, where = _slices(sets)
    if not rows:
        return {}
    trainer = plugin_for(stage.type).load_trainer()
    model, tokenizer = load_model(stage, trainer, model_dir)
    predictions = trainer.predict(stage, model, tokenizer, rows)
    return {name: trainer.metrics(stage, rows[s], predictions[s], labels) for name, s in where.items()}

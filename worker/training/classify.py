"""Fine-tune and evaluate sequence classifiers (classification and spam stages).

Training is plain PyTorch: length-bucketed batches (little padding), AdamW with
linear warmup and decay, an optional wall-clock budget. Deterministic for a seed.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from worker.errors import TextworkerError
from worker.training import bf16_autocast, training_device
from worker.training.metrics import classification_metrics
from worker.training.task import StageTrainer, pick

Progress = Callable[[int, int, dict[str, float]], None]


def _bucketed_batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffle, sort within windows of 50 batches by length, then shuffle the batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        part = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


def _pad(encoded: dict[str, list[list[int]]], indices: list[int], pad_id: int) -> dict[str, Any]:
    import torch

    width = max(len(encoded["input_ids"][i]) for i in indices)
    batch: dict[str, Any] = {}
    for key, values in encoded.items():
        fill = pad_id if key == "input_ids" else 0
        batch[key] = torch.tensor([values[i] + [fill] * (width - len(values[i])) for i in indices])
    return batch


def load_for_training(base: str | Path, labels: Sequence[str]) -> tuple[Any, Any]:
    """Base model with a head for exactly `labels` (a new head if the base has others)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from worker.models import loading

    ref = loading.resolve(str(base))
    tokenizer = loading.load_pretrained(AutoTokenizer, ref)
    id2label = dict(enumerate(labels))
    model = loading.load_pretrained(
        AutoModelForSequenceClassification, ref, num_labels=len(labels), id2label=id2label,
        label2id={v: k for k, v in id2label.items()}, ignore_mismatched_sizes=True,
    )
    return model, tokenizer


def train_classifier(
    texts: Sequence[str], golds: Sequence[str], out_dir: str | Path, *, base: str | Path,
    labels: Sequence[str] | None = None, epochs: float = 2.0, lr: float = 1e-4, batch_size: int = 32,
    max_length: int = 128, warmup: float = 0.06, weight_decay: float = 0.01, max_minutes: float | None = None,
    seed: int = 0, eval_data: tuple[Sequence[str], Sequence[str]] | None = None, progress: Progress | None = None,
) -> dict[str, Any]:
    """Fine-tune `base` on (texts, golds); save model+tokenizer (safetensors) to out_dir."""
    import torch

    torch.manual_seed(seed)
    rng = random.Random(seed)
    labels = list(labels) if labels else sorted(set(golds))
    model, tokenizer = load_for_training(base, labels)
    device = training_device()
    model.to(device)
    bf16 = device == "cuda"  # bf16 autocast on a GPU; fp32 on CPUs, as measured there
    label2id = {label: i for i, label in enumerate(labels)}
    encoded = dict(tokenizer([t[: max_length * 12] for t in texts], truncation=True, max_length=max_length))
    encoded.pop("offset_mapping", None)
    lengths = [len(ids) for ids in encoded["input_ids"]]
    targets = [label2id[g] for g in golds]
    steps_per_epoch = math.ceil(len(texts) / batch_size)
    total = max(1, int(steps_per_epoch * epochs))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warm = max(1, int(total * warmup))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm)))
    )
    model.train()
    started = time.perf_counter()
    step, loss_avg = 0, 0.0
    pad_id = tokenizer.pad_token_id or 0
    while step < total:
        for indices in _bucketed_batches(lengths, batch_size, rng):
            batch = {k: v.to(device) for k, v in _pad(encoded, indices, pad_id).items()}
            with bf16_autocast(device, bf16):
                out = model(**batch, labels=torch.tensor([targets[i] for i in indices], device=device))
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss_avg = 0.9 * loss_avg + 0.1 * out.loss.item() if step > 1 else out.loss.item()
            if progress and (step % 10 == 0 or step == total):
                progress(step, total, {"loss": round(loss_avg, 4)})
            over_time = max_minutes is not None and time.perf_counter() - started > max_minutes * 60
            if step >= total or over_time:
                total = step
                break
    seconds = time.perf_counter() - started
    model.eval()
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    info: dict[str, Any] = {
        "train_seconds": round(seconds, 1), "steps": step, "epochs": round(step / steps_per_epoch, 3),
        "train_examples": len(texts), "seed": seed, "labels": labels, "device": device, "bf16_autocast": bf16,
        "params": {"lr": lr, "batch_size": batch_size, "max_length": max_length, "epochs": epochs, "warmup": warmup},
    }
    if eval_data is not None:
        info["metrics"] = evaluate_classifier(model, tokenizer, eval_data[0], eval_data[1], labels=labels, max_length=max_length)
    return info


def predict_labels(model: Any, tokenizer: Any, texts: Sequence[str], *, max_length: int = 256, batch_size: int = 64) -> tuple[list[str], list[list[float]]]:
    from worker.stages.classify import classify_texts, model_labels

    probs, _ = classify_texts(model, tokenizer, list(texts), max_length=max_length, max_tokens=batch_size * max_length, max_batch=batch_size)
    names = model_labels(model)
    return [names[max(range(len(p)), key=p.__getitem__)] for p in probs], probs


def evaluate_classifier(
    model: Any, tokenizer: Any, texts: Sequence[str], golds: Sequence[str], *, labels: Sequence[str] | None = None,
    max_length: int = 256, positive: str | None = None, threshold: float | None = None,
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-label P/R/F1; with `positive`+`threshold`, a thresholded binary decision."""
    preds, probs = predict_labels(model, tokenizer, texts, max_length=max_length)
    if positive is not None and threshold is not None:
        from worker.stages.classify import model_labels

        names = model_labels(model)
        other = next(n for n in names if n != positive) if len(names) == 2 else None
        if other is not None:
            index = names.index(positive)
            preds = [positive if p[index] >= threshold else other for p in probs]
    return classification_metrics(list(golds), preds, labels)


# --------------------------------------------------------------------------- the classify/spam StageTrainer


class ClassifyTrainer(StageTrainer):
    """Training and evaluation of classify and spam stages: examples are (text, label) pairs."""

    auto_model = "AutoModelForSequenceClassification"

    def read(self, path: str | Path, stage: Any = None, labels: Sequence[str] | None = None, limit: int | None = None) -> list[Any]:
        from worker.training.data import load_labelled

        texts, golds = load_labelled(path, labels, limit)
        return list(zip(texts, golds, strict=True))

    def stratum(self, example: Any) -> str:
        return str(example[1])

    def encode(self, example: Any) -> dict[str, Any]:
        return {"text": example[0], "label": example[1]}

    def decode(self, row: dict[str, Any]) -> Any:
        return (row["text"], row["label"])

    def train(self, stage: Any, examples: list[Any], out: str | Path, *, base: str | None, labels: Sequence[str] | None = None,
              eval_examples: list[Any] | None = None, progress: Progress | None = None, **params: Any) -> dict[str, Any]:
        if base is None:
            raise TextworkerError("a classifier is fine-tuned from a base model; `--base scratch` is for translation")
        texts, golds = [t for t, _ in examples], [g for _, g in examples]
        eval_data = ([t for t, _ in eval_examples], [g for _, g in eval_examples]) if eval_examples else None
        return train_classifier(texts, golds, out, base=base, labels=labels, eval_data=eval_data, progress=progress,
                                **pick(params, "epochs", "lr", "batch_size", "max_length", "max_minutes", "seed"))

    def predict(self, stage: Any, model: Any, tokenizer: Any, examples: list[Any]) -> list[Any]:
        """Predicted labels; a spam stage says its spam label when P(spam) >= its threshold, as it does when it runs."""
        from worker.stages.classify import model_labels

        preds, probs = predict_labels(model, tokenizer, [t for t, _ in examples], max_length=stage.max_length)
        positive, threshold = getattr(stage, "spam_label", None), getattr(stage, "threshold", None)
        names = model_labels(model)
        if positive is not None and threshold is not None and positive in names and len(names) == 2:
            index = names.index(positive)
            preds = [positive if p[index] >= threshold else names[1 - index] for p in probs]
        return preds

    def metrics(self, stage: Any, examples: list[Any], predictions: list[Any], labels: Sequence[str] | None) -> dict[str, Any]:
        return classification_metrics([g for _, g in examples], list(predictions), labels)


TRAINER = ClassifyTrainer()

"""Extractive question answering: SQuAD-style data loading, fine-tuning, inference and evaluation.

Architecture-agnostic: any ``AutoModelForQuestionAnswering`` checkpoint with a fast tokenizer
(WordPiece/BERT, byte-level BPE/RoBERTa, with or without token_type_ids).
"""

from __future__ import annotations

import collections
import json
import math
import random
import re
import string
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForQuestionAnswering, AutoTokenizer

from worker.errors import TextworkerError
from worker.stages.qa_windows import (  # noqa: F401 - answer_questions re-exported (evaluation imports it from here)
    Window,
    _forward,
    _input_plan,
    _max_positions,
    answer_questions,
    bucket_batches,
    build_windows,
    collate,
    label_window,
)
from worker.training import bf16_autocast, default_bf16, training_device
from worker.training.task import StageTrainer, pick

Progress = Callable[[int, int, dict], None]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def load_squad(path: str | Path, limit: int | None = None) -> list[dict]:
    """Rows of a SQuAD-layout JSONL file (blank lines skipped), at most ``limit``.

    Each row needs ``id``, ``context``, ``question`` (strings) and ``answers`` = {"text": [str], "answer_start": [int]}
    of equal length with starts inside the context; ``title`` is optional. Raises ValueError naming the line otherwise.
    """
    rows: list[dict] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if limit is not None and len(rows) >= limit:
                break
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
            problem = _row_problem(row)
            if problem:
                raise ValueError(f"{path}:{lineno}: {problem}")
            rows.append(row)
    return rows


def _row_problem(row: Any) -> str | None:
    """Why ``row`` is not a valid SQuAD row, or None."""
    if not isinstance(row, dict):
        return "row is not a JSON object"
    for key in ("id", "context", "question"):
        if not isinstance(row.get(key), str):
            return f"field {key!r} missing or not a string"
    if "title" in row and not isinstance(row["title"], str):
        return "field 'title' is not a string"
    answers = row.get("answers")
    if not isinstance(answers, dict) or not isinstance(answers.get("text"), list) or not isinstance(answers.get("answer_start"), list):
        return "field 'answers' must be {'text': [...], 'answer_start': [...]}"
    if len(answers["text"]) != len(answers["answer_start"]):
        return "answers.text and answers.answer_start differ in length"
    for text, start in zip(answers["text"], answers["answer_start"]):
        if not isinstance(text, str) or not isinstance(start, int) or isinstance(start, bool):
            return "answers must be strings with integer starts"
        if start < 0 or start + len(text) > len(row["context"]):
            return f"answer_start {start} out of range for the context"
    return None


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lower-case, drop punctuation and articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def squad_em_f1(prediction: str, golds: list[str]) -> tuple[float, float]:
    """(exact match, F1) in 0..1, maxed over gold answers; no golds means the empty answer is gold."""
    pred = normalize_answer(prediction)
    best_em, best_f1 = 0.0, 0.0
    for gold in golds or [""]:
        ref = normalize_answer(gold)
        best_em = max(best_em, float(pred == ref))
        p_tok, r_tok = pred.split(), ref.split()
        if not p_tok or not r_tok:
            best_f1 = max(best_f1, float(p_tok == r_tok))
            continue
        common = sum((collections.Counter(p_tok) & collections.Counter(r_tok)).values())
        if common:
            precision, recall = common / len(p_tok), common / len(r_tok)
            best_f1 = max(best_f1, 2 * precision * recall / (precision + recall))
    return best_em, best_f1


def _golds(example: dict) -> list[tuple[str, int]]:
    answers = example.get("answers") or {}
    return list(zip(answers.get("text", []), answers.get("answer_start", [])))


def evaluate_qa(
    model_or_dir: Any,
    examples: list[dict],
    *,
    tokenizer: Any = None,
    batch_size: int = 32,
    max_length: int = 384,
    stride: int = 128,
) -> dict:
    """SQuAD v1.1 {"exact_match", "f1"} (0-100) and "n" of a model (or a saved model directory) on ``examples``."""
    model = model_or_dir
    if isinstance(model_or_dir, (str, Path)):
        model = AutoModelForQuestionAnswering.from_pretrained(model_or_dir, use_safetensors=True)
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_or_dir)
    if tokenizer is None:
        raise ValueError("tokenizer is required when passing a model object")
    preds = answer_questions(
        model,
        tokenizer,
        [(ex["question"], ex["context"]) for ex in examples],
        max_length=max_length,
        stride=stride,
        batch_size=batch_size,
    )
    scores = [squad_em_f1(p["answer"], [t for t, _ in _golds(ex)]) for p, ex in zip(preds, examples)]
    n = len(scores)
    return {
        "exact_match": 100.0 * sum(s[0] for s in scores) / n if n else 0.0,
        "f1": 100.0 * sum(s[1] for s in scores) / n if n else 0.0,
        "n": n,
    }


def training_windows(
    tokenizer: Any, examples: list[dict], *, max_length: int, stride: int, negative_fraction: float, rng: random.Random
) -> tuple[list[Window], int]:
    """Labelled training windows (all positives plus about ``negative_fraction`` of negatives) and the number
    of examples contributing a window. Windows whose gold answer does not align to tokens are dropped."""
    windows, _ = build_windows(
        tokenizer, [ex["question"] for ex in examples], [ex["context"] for ex in examples], max_length=max_length, stride=stride
    )
    kept: list[Window] = []
    used: set[int] = set()
    for w in windows:
        ex = examples[w.item]
        kind = label_window(w, ex["context"], _golds(ex))
        if kind == "positive" or (kind == "negative" and rng.random() < negative_fraction):
            kept.append(w)
            used.add(w.item)
    return kept, len(used)


def train_qa(
    examples: list[dict],
    out_dir: str | Path,
    *,
    base: str | Path,
    epochs: float = 3.0,
    lr: float = 1e-4,
    batch_size: int = 16,
    max_length: int = 384,
    stride: int = 128,
    max_minutes: float | None = None,
    seed: int = 0,
    eval_examples: list[dict] | None = None,
    progress: Progress | None = None,
    warmup_ratio: float = 0.1,
    weight_decay: float = 0.01,
    negative_fraction: float = 0.1,
    bf16: bool | None = None,
) -> dict:
    """Fine-tune ``base`` for extractive QA on SQuAD-layout ``examples``; save model + tokenizer (safetensors) to ``out_dir``.

    AdamW with linear warmup/decay over ``epochs`` (may be fractional) of length-bucketed batches; with
    ``max_minutes`` the schedule also decays by wall time and training stops at the deadline (then the run is
    no longer bit-reproducible). Training runs on a GPU when torch sees one (``worker.training.training_device``).
    ``bf16`` enables bfloat16 autocast (fp32 weights; None = on a GPU, and on a CPU with native bf16, where it
    is ~1.4x faster with the same loss curve). On a CPU, deterministic for a given seed and thread count
    otherwise. Returns timings, counts, params and, with ``eval_examples``, metrics.
    """
    if not examples:
        raise ValueError("no training examples")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForQuestionAnswering.from_pretrained(base, use_safetensors=True)
    windows, used = training_windows(
        tokenizer, examples, max_length=_max_positions(model, max_length), stride=stride, negative_fraction=negative_fraction, rng=rng
    )
    if not windows:
        raise ValueError("no training windows: no gold answer aligns with the tokenizer")
    lengths = [len(w.input_ids) for w in windows]
    per_epoch = math.ceil(len(windows) / batch_size)
    total = max(1, math.ceil(epochs * per_epoch))
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "LayerNorm" not in n and "layer_norm" not in n]
    ids = {id(p) for p in decay}
    rest = [p for p in model.parameters() if id(p) not in ids]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}], lr=lr
    )
    pad_id, use_types = _input_plan(model, tokenizer)
    device = training_device()
    model.to(device)
    autocast = default_bf16(device) if bf16 is None else bf16
    budget = max_minutes * 60.0 if max_minutes is not None else None
    log_every = max(1, min(50, total // 20))
    model.train()
    start_time = time.monotonic()
    step, running = 0, 0.0
    batches: list[Any] = []
    while step < total:
        if not batches:
            batches = bucket_batches(lengths, batch_size, rng)
        chunk = [windows[i] for i in batches.pop(0)]
        elapsed = time.monotonic() - start_time
        if budget is not None and elapsed >= budget:
            break
        frac = max(step / total, elapsed / budget if budget else 0.0)
        scale = frac / warmup_ratio if frac < warmup_ratio else max(0.0, (1 - frac) / (1 - warmup_ratio))
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, scale)
        batch = {k: v.to(device) for k, v in collate(chunk, pad_id, use_types(chunk), labels=True).items()}
        with bf16_autocast(device, autocast):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        running += loss.item()
        if progress is not None and (step % log_every == 0 or step == total):
            n = step % log_every or log_every
            progress(step, total, {"loss": running / n, "lr": optimizer.param_groups[0]["lr"], "elapsed": time.monotonic() - start_time})
        if step % log_every == 0:
            running = 0.0
    train_seconds = time.monotonic() - start_time
    model.eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    result: dict[str, Any] = {
        "train_seconds": round(train_seconds, 2),
        "steps": step,
        "epochs": round(step / per_epoch, 3),
        "train_examples": used,
        "train_features": len(windows),
        "seed": seed,
        "device": device,
        "params": {
            "base": str(base), "epochs": epochs, "lr": lr, "batch_size": batch_size, "max_length": max_length,
            "stride": stride, "max_minutes": max_minutes, "warmup_ratio": warmup_ratio, "weight_decay": weight_decay,
            "negative_fraction": negative_fraction, "bf16": autocast, "torch_threads": torch.get_num_threads(),
        },
    }
    if eval_examples:
        metrics = evaluate_qa(model, eval_examples, tokenizer=tokenizer, max_length=max_length, stride=stride)
        result["metrics"] = {"exact_match": metrics["exact_match"], "f1": metrics["f1"]}
    return result


# --------------------------------------------------------------------------- the QA StageTrainer


class QaTrainer(StageTrainer):
    """Training and evaluation of QA stages: examples are SQuAD rows."""

    auto_model = "AutoModelForQuestionAnswering"
    unit = "windows"

    def read(self, path: str | Path, stage: Any = None, labels: Any = None, limit: int | None = None) -> list[Any]:
        return list(load_squad(path, limit))

    def encode(self, example: Any) -> dict[str, Any]:
        return dict(example)

    def decode(self, row: dict[str, Any]) -> Any:
        return row

    def train(self, stage: Any, examples: list[Any], out: str | Path, *, base: str | None, labels: Any = None,
              eval_examples: list[Any] | None = None, progress: Progress | None = None, **params: Any) -> dict[str, Any]:
        if base is None:
            raise TextworkerError("a QA model is fine-tuned from a base model; `--base scratch` is for translation")
        return train_qa(examples, out, base=base, eval_examples=eval_examples, progress=progress,
                        **pick(params, "epochs", "lr", "batch_size", "max_length", "stride", "max_minutes", "seed"))

    def predict(self, stage: Any, model: Any, tokenizer: Any, examples: list[Any]) -> list[Any]:
        """Answers as the running stage finds them (its window length, stride and longest answer)."""
        return answer_questions(model, tokenizer, [(r["question"], r["context"]) for r in examples], max_length=stage.max_length,
                                stride=stage.stride, max_answer_length=stage.max_answer_length)

    def metrics(self, stage: Any, examples: list[Any], predictions: list[Any], labels: Any) -> dict[str, Any]:
        scores = [squad_em_f1(a["answer"], list(r["answers"]["text"])) for a, r in zip(predictions, examples, strict=True)]
        return {"exact_match": round(100 * sum(e for e, _ in scores) / len(scores), 2),
                "f1": round(100 * sum(f for _, f in scores) / len(scores), 2), "n": len(scores)}

    def evaluate(self, stage: Any, model: Any, tokenizer: Any, examples: list[Any], labels: Any) -> dict[str, Any]:
        return evaluate_qa(model, examples, tokenizer=tokenizer, max_length=stage.max_length, stride=stage.stride)


TRAINER = QaTrainer()

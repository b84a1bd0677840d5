"""Extractive question answering: SQuAD-style data loading, fine-tuning, inference and evaluation.

Architecture-agnostic: any ``AutoModelForQuestionAnswering`` checkpoint with a fast tokenizer
(WordPiece/BERT, byte-level BPE/RoBERTa, with or without token_type_ids).
"""

from __future__ import annotations

import collections
import inspect
import json
import math
import random
import re
import string
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForQuestionAnswering, AutoTokenizer

from worker.training import cpu_has_bf16
from worker.training.qa_windows import Window, best_span, bucket_batches, build_windows, collate, label_window

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


def _input_plan(model: Any, tokenizer: Any) -> tuple[int, Callable[[Sequence[Window]], bool]]:
    """Pad id, and a predicate telling whether a batch may be fed token_type_ids."""
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = getattr(model.config, "pad_token_id", None) or 0
    accepts = "token_type_ids" in inspect.signature(model.forward).parameters
    type_vocab = getattr(model.config, "type_vocab_size", 0) or 0

    def use_types(windows: Sequence[Window]) -> bool:
        types = [t for w in windows if w.token_type_ids is not None for t in w.token_type_ids]
        return accepts and bool(types) and max(types) < type_vocab

    return pad_id, use_types


def _max_positions(model: Any, max_length: int) -> int:
    """``max_length`` capped by the model's position embeddings (RoBERTa-style models reserve two)."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if not limit:
        return max_length
    if getattr(model.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        limit -= 2
    return min(max_length, int(limit))


def _forward(
    model: Any, tokenizer: Any, windows: list[Window], batch_size: int, max_tokens: int | None = None,
    stats: dict[str, int] | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Start/end logits (float32, trimmed to each window's length) for every window, in input order.

    Windows are grouped by a token budget (``max_tokens`` positions per batch, at most ``batch_size``
    windows) over length-sorted windows, so short windows are not padded to long ones. ``stats``
    (when given) accumulates ``real_tokens``, ``padded_tokens`` and ``batches``.
    """
    from worker.stages.batching import plan_batches

    pad_id, use_types = _input_plan(model, tokenizer)
    lengths = [len(w.input_ids) for w in windows]
    budget = max_tokens or batch_size * max(lengths, default=1)
    plan = plan_batches(lengths, budget, batch_size)
    out: list[tuple[np.ndarray, np.ndarray]] = [None] * len(windows)  # type: ignore[list-item]
    for idx in plan.batches:
        chunk = [windows[i] for i in idx]
        batch = collate(chunk, pad_id, use_types(chunk), labels=False)
        result = model(**{k: v.to(model.device) for k, v in batch.items()})
        starts = result.start_logits.float().cpu().numpy()
        ends = result.end_logits.float().cpu().numpy()
        for r, i in enumerate(idx):
            n = lengths[i]
            out[i] = (starts[r, :n], ends[r, :n])
    if stats is not None:
        stats["real_tokens"] = stats.get("real_tokens", 0) + plan.real_tokens
        stats["padded_tokens"] = stats.get("padded_tokens", 0) + plan.padded_tokens
        stats["batches"] = stats.get("batches", 0) + len(plan.batches)
    return out


def answer_questions(
    model: Any,
    tokenizer: Any,
    items: list[tuple[str, str]],
    *,
    max_length: int = 384,
    stride: int = 128,
    max_answer_length: int = 30,
    batch_size: int = 32,
    max_windows: int = 64,
    no_answer_threshold: float | None = None,
    max_tokens: int | None = None,
    stats: dict[str, int] | None = None,
) -> list[dict]:
    """Answer (question, context) items; one dict per item, in input order.

    Keys: answer (exact context substring), start/end (char offsets, -1 when no answer), score (0..1),
    no_answer, windows (windows scored), truncated (context cut to fit ``max_windows`` windows).
    With ``no_answer_threshold`` set, no_answer is True when the null (CLS) score beats the best span
    score by more than the threshold. Blank contexts always give no_answer.
    """
    questions = [q for q, _ in items]
    contexts = [c for _, c in items]
    windows, truncated = build_windows(
        tokenizer, questions, contexts, max_length=_max_positions(model, max_length), stride=stride, max_windows=max_windows
    )
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            logits = _forward(model, tokenizer, windows, batch_size, max_tokens, stats)
    finally:
        model.train(was_training)
    best: dict[int, tuple[float, int, int, float]] = {}
    null: dict[int, float] = {}
    count: dict[int, int] = collections.Counter()
    for w, (start, end) in zip(windows, logits):
        count[w.item] += 1
        null[w.item] = min(null.get(w.item, math.inf), float(start[w.cls_index] + end[w.cls_index]))
        span = best_span(w, start, end, max_answer_length)
        if span is not None and (w.item not in best or span[0] > best[w.item][0]):
            best[w.item] = (span[0], w.offsets[span[1]][0], w.offsets[span[2]][1], span[3])  # type: ignore[index]
    results = []
    for i, context in enumerate(contexts):
        res = {"answer": "", "start": -1, "end": -1, "score": 0.0, "no_answer": True, "windows": count[i], "truncated": truncated[i]}
        if i in best:
            score, a, b, prob = best[i]
            while a < b and context[a].isspace():
                a += 1
            while b > a and context[b - 1].isspace():
                b -= 1
            abstain = no_answer_threshold is not None and null[i] - score > no_answer_threshold
            if a < b and not abstain:
                res.update(answer=context[a:b], start=a, end=b, score=min(1.0, max(0.0, prob)), no_answer=False)
        results.append(res)
    return results


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
    no longer bit-reproducible). ``bf16`` enables bfloat16 autocast on CPU (fp32 weights; None = when the CPU
    has native bf16, where it is ~1.4x faster with the same loss curve). Deterministic for a given seed and
    thread count otherwise. Returns timings, counts, params and, with ``eval_examples``, metrics.
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
    autocast = model.device.type == "cpu" and (cpu_has_bf16() if bf16 is None else bf16)
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
        batch = {k: v.to(model.device) for k, v in collate(chunk, pad_id, use_types(chunk), labels=True).items()}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
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

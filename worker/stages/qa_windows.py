"""Extractive QA inference: long contexts cut into overlapping question+context windows, scored in
token-budget batches, the best span per item. Used by the `qa` stage, its training and its evaluation.
"""

from __future__ import annotations

import collections
import inspect
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

MAX_QUESTION_TOKENS = 64


@dataclass
class Window:
    """One tokenized (question, context) window of item ``item``; ``offsets[i]`` is None outside the context."""

    item: int
    input_ids: list[int]
    token_type_ids: list[int] | None
    offsets: list[tuple[int, int] | None]
    cls_index: int = 0
    start_position: int = 0
    end_position: int = 0
    meta: dict[str, Any] = field(default_factory=dict)


def effective_max_length(tokenizer: Any, max_length: int) -> int:
    """``max_length`` capped by the tokenizer's ``model_max_length`` when that is a real limit."""
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 100_000:
        return min(max_length, limit)
    return max_length


def question_budget(max_length: int) -> int:
    """Most question tokens kept in a window of ``max_length`` tokens."""
    return max(1, min(MAX_QUESTION_TOKENS, max_length // 4))


def effective_stride(tokenizer: Any, max_length: int, stride: int) -> int:
    """Overlap in tokens, clamped so that consecutive windows always advance."""
    room = max_length - question_budget(max_length) - tokenizer.num_special_tokens_to_add(pair=True)
    if room < 2:
        raise ValueError(f"max_length={max_length} leaves no room for context tokens")
    return max(0, min(stride, room // 2))


def clip_question(tokenizer: Any, question: str, max_tokens: int) -> str:
    """The question cut (by characters, at a token boundary) to at most ``max_tokens`` tokens."""
    enc = tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)
    if len(enc["input_ids"]) <= max_tokens:
        return question
    return question[: enc["offset_mapping"][max_tokens - 1][1]]


def cut_context(tokenizer: Any, context: str, max_tokens: int) -> int:
    """Character length of the longest context prefix of about ``max_tokens`` tokens (``len(context)`` if shorter)."""
    if len(context) <= max_tokens // 4:
        return len(context)
    chars = max_tokens * 8 + 64
    while True:
        prefix = context[:chars]
        enc = tokenizer(prefix, add_special_tokens=False, return_offsets_mapping=True)
        if len(enc["input_ids"]) > max_tokens:
            return max(1, enc["offset_mapping"][max_tokens - 1][1])
        if chars >= len(context):
            return len(context)
        chars *= 2


def build_windows(
    tokenizer: Any,
    questions: Sequence[str],
    contexts: Sequence[str],
    *,
    max_length: int,
    stride: int,
    max_windows: int | None = None,
) -> tuple[list[Window], list[bool]]:
    """Windows for every item whose context is not blank, plus a per-item ``truncated`` flag.

    With ``max_windows`` set, long contexts are first cut by characters so that at most ``max_windows``
    windows are tokenized per item, and any extra window is dropped.
    """
    max_length = effective_max_length(tokenizer, max_length)
    stride = effective_stride(tokenizer, max_length, stride)
    q_budget = question_budget(max_length)
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    truncated = [False] * len(questions)
    keep: list[int] = []
    qs: list[str] = []
    cs: list[str] = []
    for i, (question, context) in enumerate(zip(questions, contexts)):
        if not context or not context.strip():
            continue
        question = clip_question(tokenizer, question, q_budget)
        if max_windows is not None:
            q_len = len(tokenizer(question, add_special_tokens=False)["input_ids"])
            per_window = max_length - q_len - specials
            max_tokens = per_window + (max_windows - 1) * (per_window - stride)
            cut = cut_context(tokenizer, context, max_tokens)
            if cut < len(context):
                truncated[i] = True
                context = context[:cut]
        keep.append(i)
        qs.append(question)
        cs.append(context)
    if not keep:
        return [], truncated
    enc = tokenizer(
        qs,
        cs,
        truncation="only_second",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
    )
    mapping = enc.get("overflow_to_sample_mapping", list(range(len(enc["input_ids"]))))
    types = enc.get("token_type_ids")
    cls_id = getattr(tokenizer, "cls_token_id", None)
    per_item: dict[int, int] = {}
    windows: list[Window] = []
    for k, sample in enumerate(mapping):
        item = keep[sample]
        per_item[item] = per_item.get(item, 0) + 1
        if max_windows is not None and per_item[item] > max_windows:
            truncated[item] = True
            continue
        ids = list(enc["input_ids"][k])
        seq = enc.sequence_ids(k)
        offsets = [
            (int(o[0]), int(o[1])) if s == 1 and o[1] > o[0] else None
            for s, o in zip(seq, enc["offset_mapping"][k])
        ]
        cls_index = ids.index(cls_id) if cls_id is not None and cls_id in ids else 0
        windows.append(Window(item, ids, list(types[k]) if types is not None else None, offsets, cls_index))
    return windows, truncated


def _aligned(context: str, token_start: int, token_end: int, start_char: int, end_char: int) -> bool:
    """True when the token span covers the answer and adds only non-alphanumeric characters around it."""
    if token_start > start_char or token_end < end_char:
        return False
    extra = context[token_start:start_char] + context[end_char:token_end]
    return not any(ch.isalnum() for ch in extra)


def label_window(window: Window, context: str, golds: Sequence[tuple[str, int]]) -> str:
    """Set start/end labels from the first gold answer inside the window; return "positive", "negative" or "drop".

    "drop" means a gold answer lies in the window but does not align with token boundaries.
    """
    spans = [(i, o) for i, o in enumerate(window.offsets) if o is not None]
    if not spans:
        window.start_position = window.end_position = window.cls_index
        return "negative"
    first, last = spans[0][1][0], spans[-1][1][1]
    misaligned = False
    for text, start_char in golds:
        end_char = start_char + len(text)
        if not text or start_char < first or end_char > last:
            continue
        starts = [i for i, o in spans if o[0] <= start_char < o[1] or o[0] >= start_char]
        ends = [i for i, o in spans if o[0] < end_char <= o[1] or o[1] <= end_char]
        if not starts or not ends:
            misaligned = True
            continue
        s, e = starts[0], ends[-1]
        if e < s or not _aligned(context, window.offsets[s][0], window.offsets[e][1], start_char, end_char):  # type: ignore[index]
            misaligned = True
            continue
        window.start_position, window.end_position = s, e
        return "positive"
    window.start_position = window.end_position = window.cls_index
    return "drop" if misaligned else "negative"


def bucket_batches(lengths: Sequence[int], batch_size: int, rng: random.Random, pool: int = 50) -> list[list[int]]:
    """Shuffled batches of indices; each pool of ``pool`` batches is length-sorted to limit padding."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches: list[list[int]] = []
    chunk = batch_size * pool
    for c in range(0, len(order), chunk):
        part = sorted(order[c : c + chunk], key=lambda i: lengths[i])
        batches.extend(part[b : b + batch_size] for b in range(0, len(part), batch_size))
    rng.shuffle(batches)
    return batches


def collate(windows: Sequence[Window], pad_id: int, use_token_types: bool, labels: bool) -> dict[str, torch.Tensor]:
    """Right-padded tensors for a batch of windows (labels included when ``labels``)."""
    width = max(len(w.input_ids) for w in windows)
    ids = torch.full((len(windows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(windows), width), dtype=torch.long)
    types = torch.zeros((len(windows), width), dtype=torch.long)
    for r, w in enumerate(windows):
        n = len(w.input_ids)
        ids[r, :n] = torch.tensor(w.input_ids)
        mask[r, :n] = 1
        if w.token_type_ids is not None:
            types[r, :n] = torch.tensor(w.token_type_ids)
    batch = {"input_ids": ids, "attention_mask": mask}
    if use_token_types:
        batch["token_type_ids"] = types
    if labels:
        batch["start_positions"] = torch.tensor([w.start_position for w in windows])
        batch["end_positions"] = torch.tensor([w.end_position for w in windows])
    return batch


def best_span(window: Window, start: np.ndarray, end: np.ndarray, max_answer_length: int) -> tuple[float, int, int, float] | None:
    """Best (logit score, start token, end token, probability) inside the context, or None if no valid span.

    Probability is softmax(start)[s] * softmax(end)[e] over all tokens of the window.
    """
    idx = np.array([i for i, o in enumerate(window.offsets) if o is not None], dtype=np.int64)
    if idx.size == 0:
        return None
    s, e = start[idx].astype(np.float64), end[idx].astype(np.float64)
    scores = s[:, None] + e[None, :]
    gap = idx[None, :] - idx[:, None]
    scores[(gap < 0) | (gap >= max_answer_length)] = -np.inf
    flat = int(np.argmax(scores))
    a, b = divmod(flat, idx.size)
    if not np.isfinite(scores[a, b]):
        return None
    log_ps = start.astype(np.float64) - np.logaddexp.reduce(start.astype(np.float64))
    log_pe = end.astype(np.float64) - np.logaddexp.reduce(end.astype(np.float64))
    prob = float(np.exp(log_ps[idx[a]] + log_pe[idx[b]]))
    return float(scores[a, b]), int(idx[a]), int(idx[b]), prob


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

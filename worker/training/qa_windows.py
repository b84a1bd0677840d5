"""Token windows for extractive QA: overlapping (question, context) windows, labels, batching, span decoding.

Works with any fast tokenizer that supports ``return_offsets_mapping`` (WordPiece, byte-level BPE, ...).
Offsets are character offsets into the (possibly cut) context, which is always a prefix of the original
context, so they are valid for the original string too.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
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

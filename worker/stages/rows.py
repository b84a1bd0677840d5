"""Checked fields of a labelled feedback row, for the stage plug-ins' `feedback_row`.

Whatever a row holds (any JSON: nesting, numbers, lone surrogates, NULs, huge strings),
these helpers answer a clean string or raise `RowProblem` with a reason code; the
lifecycle turns a RowProblem into a rejected row (`worker.lifecycle.feedback`).
"""

from __future__ import annotations

from typing import Any

MAX_TEXT_CHARS = 1_000_000  # text, context, question, answer, reference
MAX_SHORT_CHARS = {"label": 256, "who": 256, "doc_id": 512}


class RowProblem(Exception):
    """Raised inside validation; becomes a `Rejected`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def clean(value: str, key: str, limit: int) -> str:
    """A storable copy of a string field: no lone surrogates (refused), no NULs (removed), at most `limit` characters."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RowProblem("invalid_utf8", f"`{key}` holds a lone surrogate (not UTF-8)") from None
    value = value.replace("\x00", "")
    if len(value) > limit:
        raise RowProblem("too_large", f"`{key}` has {len(value)} characters (limit {limit})")
    return value


def text_field(raw: dict[str, Any], *keys: str, what: str, empty_reason: str = "empty_text") -> str:
    """The first of `keys` present: a non-empty string."""
    key = next((k for k in keys if k in raw and raw[k] is not None), None)
    if key is None:
        raise RowProblem("missing_field", f"no `{keys[0]}` field" + (f" (or {', '.join(keys[1:])})" if keys[1:] else ""))
    value = raw[key]
    if not isinstance(value, str):
        raise RowProblem("wrong_type", f"`{key}` must be a string, not {type(value).__name__}")
    value = clean(value, key, MAX_TEXT_CHARS)
    if not value.strip():
        raise RowProblem(empty_reason, f"the {what} is empty")
    return value


def short_field(raw: dict[str, Any], key: str, *fallbacks: str) -> str | None:
    """An optional short field (label, who, doc_id): a string or a 64-bit integer, or None (also for an empty one)."""
    name = next((k for k in (key, *fallbacks) if raw.get(k) is not None), None)
    if name is None:
        return None
    value = raw[name]
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise RowProblem("wrong_type", f"`{name}` must be a string or an integer, not {type(value).__name__}")
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise RowProblem("number_out_of_range", f"`{name}` is outside the signed 64-bit range")
        value = str(value)
    return clean(value, name, MAX_SHORT_CHARS[key]) or None  # an empty id, label or name is no value


def answer_field(raw: dict[str, Any]) -> str:
    """`answer` as a string, or SQuAD's `answers: {"text": [...]}` (its first answer)."""
    if "answer" not in raw and isinstance(raw.get("answers"), dict):
        texts = raw["answers"].get("text")
        if isinstance(texts, str):
            texts = [texts]
        if texts is not None and not isinstance(texts, list):
            raise RowProblem("wrong_type", f"`answers.text` must be a list of strings, not {type(texts).__name__}")
        if not texts:
            raise RowProblem("empty_answer", "`answers.text` is empty (unanswerable questions cannot train the model)")
        raw = {"answer": texts[0]}
    return text_field(raw, "answer", what="answer", empty_reason="empty_answer")

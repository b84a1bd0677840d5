"""Turn a raw record (parsed JSON, a CSV row, a file's text) into a `Document` or a `DeadLetter`.

Shared by every source so the same input gets the same verdict wherever it comes from.
Reason codes: invalid_json, invalid_utf8, not_an_object, missing_text, wrong_type,
empty_text, too_large, invalid_id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from schemas.documents import DeadLetter, Document

PAYLOAD_LIMIT = 64 * 1024


def clip_payload(payload: str | bytes) -> str:
    """The payload kept in a dead letter: at most 64 KiB, with a note of the full size."""
    if isinstance(payload, bytes):
        size = len(payload)
        text = payload[:PAYLOAD_LIMIT].decode("utf-8", errors="backslashreplace")
    else:
        size = len(payload)
        text = payload[:PAYLOAD_LIMIT]
    if size > PAYLOAD_LIMIT:
        text += f"... [clipped, {size} in all]"
    return text


def generated_id(text: str) -> str:
    """A stable id for a document that came without one (same text -> same id)."""
    return "auto-" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def to_document(
    record: Any,
    ref: str,
    *,
    id_field: str = "id",
    text_field: str = "text",
    fields: Mapping[str, str] | None = None,
    max_chars: int = 1_000_000,
    payload: str | bytes | None = None,
) -> Document | DeadLetter:
    """Validate one record; never raises for bad data."""
    raw = payload if payload is not None else repr(record)

    def dead(reason: str, detail: str, doc_ref: str = ref) -> DeadLetter:
        return DeadLetter(ref=doc_ref, reason=reason, detail=detail, payload=clip_payload(raw))

    if not isinstance(record, Mapping):
        return dead("not_an_object", f"expected an object with a `{text_field}` field, got {type(record).__name__}")
    doc_id = record.get(id_field)
    if isinstance(doc_id, bool) or (doc_id is not None and not isinstance(doc_id, str | int)):
        return dead("invalid_id", f"`{id_field}` must be a string or an integer, got {type(doc_id).__name__}")
    doc_ref = str(doc_id).replace("\x00", "") if doc_id is not None and str(doc_id).strip() else ref
    if text_field not in record:
        return dead("missing_text", f"no `{text_field}` field", doc_ref)
    text = record[text_field]
    if not isinstance(text, str):
        kind = "null" if text is None else type(text).__name__
        return dead("wrong_type", f"`{text_field}` must be a string, got {kind}", doc_ref)
    if _has_surrogates(text) or (doc_id is not None and _has_surrogates(str(doc_id))):
        return dead("invalid_utf8", "the text holds bytes that are not valid UTF-8", doc_ref)
    text = text.replace("\x00", "")
    if not text.strip():
        return dead("empty_text", "the text is empty or only whitespace", doc_ref)
    if len(text) > max_chars:
        return dead("too_large", f"{len(text)} characters, over the limit of {max_chars}", doc_ref)
    doc_id = str(doc_id).replace("\x00", "") if doc_id is not None else generated_id(text)
    if not doc_id.strip() or len(doc_id) > 512:
        return dead("invalid_id", "the id is empty or longer than 512 characters", doc_ref)
    if fields:
        meta = {name: record[key] for name, key in fields.items() if key in record}
    else:
        meta = {k: v for k, v in record.items() if k not in (id_field, text_field)}
    return Document(id=doc_id, text=text, meta=meta, source_ref=ref)

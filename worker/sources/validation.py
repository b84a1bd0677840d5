"""Turn a raw record (parsed JSON, a CSV row, a file's text) into a `Document` or a `DeadLetter`.

Shared by every source (files, Kafka, `POST /v1/documents`, requeue) so the same input
gets the same verdict wherever it comes from. Nothing here raises for bad data.

The source boundary: what a record may hold
-------------------------------------------
A document that passes `to_document` can be stored by every supported database: its
text, id and every other field (keys included) hold only storable characters, numbers
in range and bounded sizes. Reason codes:

- invalid_json: not JSON, or JSON with the non-standard constants NaN / Infinity;
- invalid_utf8: bytes that are not UTF-8, or a lone surrogate (`"\\ud800"`) in any
  string or key (no database can store one);
- not_an_object, missing_text, wrong_type (also: a field value that is not JSON data),
  empty_text, invalid_id (not a string/integer, empty, or over 512 characters);
- too_large: text over `max_chars`, a key over 256 characters, fields over 1 MiB as
  JSON or over 10,000 values;
- too_deep: objects/arrays nested deeper than 64 levels (checked without recursion);
- duplicate_key: an object naming the same key twice (JSON parsers silently keep the
  last one; this boundary refuses to guess);
- number_out_of_range: an integer outside the signed 64-bit range, a float that
  overflows to infinity, or an integer literal of more than 4,300 digits.

Canonical strings: NUL characters are removed from the text, the id, every string and
every key (PostgreSQL stores none). A key that collides with another after that is a
duplicate_key. References and details of dead letters are made storable the same way
(lone surrogates are written as `\\udXXX` escapes).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

from schemas.documents import DeadLetter, Document

PAYLOAD_LIMIT = 64 * 1024
MAX_DEPTH = 64
MAX_KEY_CHARS = 256
MAX_VALUES = 10_000
MAX_FIELDS_BYTES = 1024 * 1024
MAX_ID_CHARS = 512
INT_LIMIT = 2**63
REF_LIMIT = 1024


class RecordProblem(Exception):
    """Why a record cannot become a document: a reason code and a detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def storable(text: str, limit: int | None = None) -> str:
    """`text` as every database stores it: NULs dropped, lone surrogates as `\\udXXX` escapes."""
    if limit is not None and len(text) > limit:
        text = text[:limit]
    text = text.replace("\x00", "")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def clip_payload(payload: str | bytes) -> str:
    """The payload kept in a dead letter: at most 64 KiB, storable, with a note of the full size."""
    if isinstance(payload, bytes):
        size = len(payload)
        text = payload[:PAYLOAD_LIMIT].decode("utf-8", errors="backslashreplace")
    else:
        size = len(payload)
        text = payload[:PAYLOAD_LIMIT]
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    text = text.replace("\x00", "\\x00")
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


# --------------------------------------------------------------------------- JSON decoding


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise RecordProblem("duplicate_key", f"the key `{storable(key, 80)}` occurs twice in one object")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise RecordProblem("invalid_json", f"`{name}` is not JSON (NaN and Infinity are not numbers JSON knows)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise RecordProblem("number_out_of_range", f"the number {text[:40]} is out of the range of a float")
    return value


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_pairs, parse_constant=_no_constants, parse_float=_finite_float)


def decode_json(data: str | bytes) -> Any:
    """Strict JSON: the parsed value, or RecordProblem (invalid_utf8, invalid_json, too_deep,
    duplicate_key, number_out_of_range)."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RecordProblem("invalid_utf8", f"the value is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        value, end = _DECODER.raw_decode(data, _skip_space(data, 0))
    except RecursionError:
        raise RecordProblem("too_deep", f"nested deeper than the parser allows (the limit is {MAX_DEPTH} levels)") from None
    except json.JSONDecodeError as exc:
        raise RecordProblem("invalid_json", f"the value is not JSON: {exc.msg} (line {exc.lineno} column {exc.colno})") from None
    except ValueError as exc:  # an integer literal over Python's digit limit
        raise RecordProblem("number_out_of_range", f"a number is out of range: {str(exc)[:120]}") from None
    if _skip_space(data, end) != len(data):
        raise RecordProblem("invalid_json", f"the value is not JSON: extra data at character {end}")
    return value


def _skip_space(text: str, start: int) -> int:
    while start < len(text) and text[start] in " \t\r\n\ufeff":
        start += 1
    return start


# --------------------------------------------------------------------------- structure


def check_structure(value: Any, what: str = "the fields") -> None:
    """Raise RecordProblem unless `value` is JSON data every database can store.

    Iterative (a record nested 100,000 levels deep costs no stack): depth, value count,
    key length, lone surrogates in strings and keys, integer range, finite floats, types.
    """
    stack: list[tuple[Any, int, str]] = [(value, 0, "")]
    seen = 0
    while stack:
        node, depth, path = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise RecordProblem("too_large", f"{what} hold more than {MAX_VALUES} values")
        if node is None or isinstance(node, bool):
            continue
        if isinstance(node, str):
            if _has_surrogates(node):
                raise RecordProblem("invalid_utf8", f"`{path or what}` holds a lone surrogate (not UTF-8)")
            continue
        if isinstance(node, int):
            if not -INT_LIMIT <= node < INT_LIMIT:
                raise RecordProblem("number_out_of_range", f"`{path or what}` is outside the signed 64-bit range")
            continue
        if isinstance(node, float):
            if not math.isfinite(node):
                raise RecordProblem("number_out_of_range", f"`{path or what}` is not a finite number")
            continue
        if isinstance(node, Mapping | list | tuple):
            if depth >= MAX_DEPTH:
                raise RecordProblem("too_deep", f"{what} are nested deeper than {MAX_DEPTH} levels")
            if isinstance(node, Mapping):
                for key, child in node.items():
                    if not isinstance(key, str):
                        raise RecordProblem("wrong_type", f"a key in `{path or what}` is not a string")
                    if _has_surrogates(key):
                        raise RecordProblem("invalid_utf8", f"a key in `{path or what}` holds a lone surrogate (not UTF-8)")
                    if len(key) > MAX_KEY_CHARS:
                        raise RecordProblem("too_large", f"a key in `{path or what}` has {len(key)} characters (limit {MAX_KEY_CHARS})")
                    stack.append((child, depth + 1, f"{path}.{key[:40]}" if path else key[:40]))
            else:
                stack.extend((child, depth + 1, f"{path}[{i}]") for i, child in enumerate(node))
            continue
        raise RecordProblem("wrong_type", f"`{path or what}` is a {type(node).__name__}, not JSON data")


def canonical(value: Any) -> Any:
    """A copy with NULs removed from every string and key; call after `check_structure` (depth is bounded)."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, child in value.items():
            clean = key.replace("\x00", "")
            if clean in out:
                raise RecordProblem("duplicate_key", f"the key `{clean[:80]}` occurs twice once NUL characters are removed")
            out[clean] = canonical(child)
        return out
    if isinstance(value, list | tuple):
        return [canonical(child) for child in value]
    return value


def checked_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """`fields` checked (`check_structure`), canonical, and at most 1 MiB as JSON; raises RecordProblem."""
    check_structure(fields)
    clean: dict[str, Any] = canonical(fields)
    size = len(json.dumps(clean, ensure_ascii=False).encode("utf-8"))
    if size > MAX_FIELDS_BYTES:
        raise RecordProblem("too_large", f"the fields take {size} bytes as JSON (limit {MAX_FIELDS_BYTES})")
    return clean


# --------------------------------------------------------------------------- documents


def dead_letter(ref: str, reason: str, detail: str, payload: str | bytes) -> DeadLetter:
    """A source dead letter whose every string can be stored and sent as JSON."""
    return DeadLetter(ref=storable(ref, REF_LIMIT) or "?", reason=reason, detail=storable(detail, 4000), payload=clip_payload(payload))


def _ref_of(doc_id: Any, ref: str) -> str:
    """The reference a dead letter gets: the record's id when it has a usable one, else its position."""
    if isinstance(doc_id, bool) or not isinstance(doc_id, str | int):
        return ref
    if isinstance(doc_id, int):
        return str(doc_id) if -INT_LIMIT <= doc_id < INT_LIMIT else ref
    text = storable(doc_id, REF_LIMIT)
    return text if text.strip() else ref


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

    def dead(reason: str, detail: str, doc_ref: str = ref) -> DeadLetter:
        raw = payload if payload is not None else _short_repr(record)
        return dead_letter(doc_ref, reason, detail, raw)

    if not isinstance(record, Mapping):
        return dead("not_an_object", f"expected an object with a `{text_field}` field, got {type(record).__name__}")
    doc_id = record.get(id_field)
    if isinstance(doc_id, bool) or (doc_id is not None and not isinstance(doc_id, str | int)):
        return dead("invalid_id", f"`{id_field}` must be a string or an integer, got {type(doc_id).__name__}")
    doc_ref = _ref_of(doc_id, ref)
    if text_field not in record:
        return dead("missing_text", f"no `{text_field}` field", doc_ref)
    text = record[text_field]
    if not isinstance(text, str):
        kind = "null" if text is None else type(text).__name__
        return dead("wrong_type", f"`{text_field}` must be a string, got {kind}", doc_ref)
    if isinstance(doc_id, int) and not -INT_LIMIT <= doc_id < INT_LIMIT:
        return dead("invalid_id", f"`{id_field}` is an integer outside the signed 64-bit range", doc_ref)
    if _has_surrogates(text) or (isinstance(doc_id, str) and _has_surrogates(doc_id)):
        return dead("invalid_utf8", "the text holds bytes that are not valid UTF-8", doc_ref)
    text = text.replace("\x00", "")
    if not text.strip():
        return dead("empty_text", "the text is empty or only whitespace", doc_ref)
    if len(text) > max_chars:
        return dead("too_large", f"{len(text)} characters, over the limit of {max_chars}", doc_ref)
    doc_id = str(doc_id).replace("\x00", "") if doc_id is not None else generated_id(text)
    if not doc_id.strip() or len(doc_id) > MAX_ID_CHARS:
        return dead("invalid_id", f"the id is empty or longer than {MAX_ID_CHARS} characters", doc_ref)
    if fields:
        meta = {name: record[key] for name, key in fields.items() if key in record}
    else:
        meta = {k: v for k, v in record.items() if k not in (id_field, text_field)}
    try:
        meta = checked_fields(meta)
    except RecordProblem as problem:
        return dead(problem.reason, problem.detail, doc_ref)
    return Document(id=doc_id, text=text, meta=meta, source_ref=storable(ref, REF_LIMIT))


def _short_repr(record: Any) -> str:
    """A payload for a record that came without one; never recursive (deep records have no repr)."""
    if isinstance(record, str | int | float | bool) or record is None:
        return repr(record)[:PAYLOAD_LIMIT]
    try:
        check_structure(record, "the record")
        return json.dumps(canonical(record), ensure_ascii=False)[:PAYLOAD_LIMIT * 2]
    except (RecordProblem, TypeError, ValueError, RecursionError):
        return f"<{type(record).__name__} that is not storable JSON>"

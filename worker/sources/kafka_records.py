"""Kafka records -> `Document` or `DeadLetter`, without a broker.

`parse_record` never raises for bad data. Reasons are `worker.sources.validation`'s codes
(invalid_json, invalid_utf8, not_an_object, missing_text, wrong_type, empty_text,
too_large, too_deep, duplicate_key, number_out_of_range, invalid_id) plus `null_value`
for a tombstone. Values are decoded with the strict decoder of the source boundary
(`validation.decode_json`). Every item carries its position
`topic/partition/offset`: a document's `source_ref`; a dead letter's `ref` when the record
has no usable id, else the end of its detail `(at topic/partition/offset)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from schemas.documents import DeadLetter
from schemas.pipeline import KafkaSource
from worker.sources.base import SourceItem
from worker.sources.validation import RecordProblem, checked_fields, dead_letter, decode_json, storable, to_document


def position_ref(topic: str, partition: int, offset: int) -> str:
    return f"{topic}/{partition}/{offset}"


def header_fields(headers: list[tuple[str, bytes | None]] | None, mapping: Mapping[str, str]) -> dict[str, str]:
    """Document fields taken from record headers (`field -> header name`); the last header wins."""
    by_name = {name: value for name, value in headers or []}
    return {
        doc_field: storable((by_name[header] or b"").decode("utf-8", errors="backslashreplace"))
        for doc_field, header in mapping.items()
        if header in by_name
    }


def _dead(reason: str, detail: str, ref: str, payload: bytes | str) -> DeadLetter:
    return dead_letter(ref, reason, detail, payload)


def _decode_json(value: bytes, ref: str) -> Any:
    """The parsed value, or a DeadLetter (invalid_utf8, invalid_json, too_deep, duplicate_key, number_out_of_range)."""
    try:
        return decode_json(value)
    except RecordProblem as problem:
        return _dead(problem.reason, problem.detail, ref, value)


def _text_record(key: bytes | None, value: bytes, ref: str) -> dict[str, Any] | DeadLetter:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _dead("invalid_utf8", f"the value is not UTF-8 ({exc.reason} at byte {exc.start})", ref, value)
    if key is None:
        return {"text": text}
    try:
        return {"id": key.decode("utf-8"), "text": text}
    except UnicodeDecodeError:
        return _dead("invalid_id", "the key (the document id) is not UTF-8", ref, value)


def parse_record(record: Any, spec: KafkaSource) -> SourceItem:
    """One consumer record -> Document or DeadLetter; never raises for bad data.

    `record` needs topic, partition, offset, key, value and headers (a kafka-python
    `ConsumerRecord`). json: the value is an object; a missing id falls back to the key,
    then to an id generated from the text. text: the value is the text, the key the id.
    """
    ref = position_ref(record.topic, record.partition, record.offset)
    value: bytes | None = record.value
    if value is None:
        return _dead("null_value", "the record has no value (a tombstone)", ref, record.key or b"")
    if len(value) > spec.max_value_bytes:
        return _dead("too_large", f"{len(value)} bytes, over the limit of {spec.max_value_bytes}", ref, value)
    if spec.format == "text":
        parsed: Any = _text_record(record.key, value, ref)
        id_field, text_field = "id", "text"
    else:
        parsed = _decode_json(value, ref)
        id_field, text_field = spec.id_field, spec.text_field
        if isinstance(parsed, dict) and id_field not in parsed and record.key is not None:
            parsed = {**parsed, id_field: record.key.decode("utf-8", errors="surrogateescape")}
    if isinstance(parsed, DeadLetter):
        return parsed
    item = to_document(parsed, ref, id_field=id_field, text_field=text_field, max_chars=spec.max_chars, payload=value)
    if isinstance(item, DeadLetter):
        return item if item.ref == ref else item.model_copy(update={"detail": f"{item.detail} (at {ref})"})
    extra = header_fields(record.headers, spec.headers)
    if not extra:
        return item
    try:
        meta = checked_fields({**item.meta, **extra})
    except RecordProblem as problem:
        return _dead(problem.reason, f"{problem.detail} (at {ref})", item.id, value)
    return item.model_copy(update={"meta": meta})

"""The source boundary (`worker.sources.validation`) and file streaming, against generated hostile input.

Every hostile record becomes a Document or a DeadLetter with a known reason code; a
Document that passes can be stored by SQLite as it is (no `sink_rejected`).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka.consumer.fetcher import ConsumerRecord

from schemas.documents import DeadLetter, Document
from schemas.pipeline import FileSource, KafkaSource
from tests.hostile import REASONS, hostile_feedback, hostile_object, hostile_record, json_values
from worker.sinks.sql import SinkBatch, SqlResultSink
from worker.sources import files
from worker.sources.files import FileDocumentSource
from worker.sources.kafka_records import parse_record
from worker.sources.validation import MAX_DEPTH, RecordProblem, check_structure, decode_json, to_document

SPEC = KafkaSource(bootstrap_servers="b:9092", topics=["docs"], group="g")
PROPERTY = settings(max_examples=300, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])


def rec(key: bytes | None, value: bytes | None, offset: int = 0) -> Any:
    return ConsumerRecord("docs", 0, 0, offset, 0, 0, key, value, [], None, -1, -1, -1)


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 0)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(node, dict):
            stack += [(v, depth + 1) for v in node.values()]
        elif isinstance(node, list):
            stack += [(v, depth + 1) for v in node]
    return deepest


def assert_storable(doc: Document) -> None:
    for text in (doc.id, doc.text, doc.source_ref, json.dumps(doc.meta, ensure_ascii=False, allow_nan=False)):
        text.encode("utf-8")  # no lone surrogate anywhere, keys included
        assert "\x00" not in text
    assert _depth(doc.meta) <= MAX_DEPTH and len(doc.id) <= 512


def test_every_hostile_kafka_record_is_a_document_or_a_dead_letter_sqlite_stores(tmp_path: Path) -> None:
    sink = SqlResultSink(f"sqlite:///{tmp_path / 'b.db'}", "boundary", "run-1").open()
    offsets = itertools.count()
    documents: list[str] = []

    @PROPERTY
    @given(record=hostile_record())
    def check(record: tuple[bytes | None, bytes | None]) -> None:
        item = parse_record(rec(*record, offset=next(offsets)), SPEC)
        if isinstance(item, DeadLetter):
            assert item.reason in REASONS, item
            for text in (item.ref, item.detail, item.payload):
                text.encode("utf-8")
        else:
            assert_storable(item)
            documents.append(item.id)
        sink.write(SinkBatch(documents=[item] if isinstance(item, Document) else [],
                             dead_letters=[item] if isinstance(item, DeadLetter) else []))

    check()
    with sink.engine.connect() as conn:
        reasons = dict(conn.execute(sa.text("SELECT reason, count(*) FROM dead_letters GROUP BY reason")).all())
        stored = set(conn.execute(sa.text("SELECT doc_id FROM documents")).scalars())
    sink.close()
    assert "sink_rejected" not in reasons, reasons
    assert stored == set(documents)
    assert sum(reasons.values()) > 150 and len(documents) > 10, (reasons, len(documents))  # the generator reaches both outcomes
    assert {"too_deep", "invalid_utf8", "invalid_json", "number_out_of_range", "duplicate_key"} <= set(reasons), reasons


@PROPERTY
@given(record=st.dictionaries(st.text(max_size=8), json_values, max_size=5), text=st.text(max_size=30))
def test_to_document_never_raises_on_parsed_records(record: dict[str, Any], text: str) -> None:
    item = to_document({**record, "text": text}, "http:x/documents[0]")
    if isinstance(item, Document):
        assert_storable(item)
    else:
        assert item.reason in REASONS
        json.dumps(item.model_dump(mode="json"), ensure_ascii=False).encode("utf-8")  # an HTTP answer can carry it


@pytest.mark.parametrize(("text", "reason"), [
    ('{"text": "a", "x": ' + "[" * 65 + "]" * 65 + "}", "too_deep"),
    ("[" * 5000 + "]" * 5000, "too_deep"),
    ('{"text": "a", "text": "b"}', "duplicate_key"),
    ('{"text": "a", "n": NaN}', "invalid_json"),
    ('{"text": "a", "n": 1e999}', "number_out_of_range"),
    ('{"text": "a", "n": ' + "7" * 5000 + "}", "number_out_of_range"),
    ('{"text": "a"} trailing', "invalid_json"),
])
def test_strict_decoder(text: str, reason: str) -> None:
    with pytest.raises(RecordProblem) as caught:
        check_structure(decode_json(text))
    assert caught.value.reason == reason


@pytest.mark.parametrize(("fields", "reason"), [
    ({"x": 2**63}, "number_out_of_range"),
    ({"x": float("nan")}, "number_out_of_range"),
    ({"x": "\udc80"}, "invalid_utf8"),
    ({"\ud800": 1}, "invalid_utf8"),
    ({"k" * 257: 1}, "too_large"),
    ({"x": list(range(10_001))}, "too_large"),
    ({"x": {1, 2}}, "wrong_type"),
    ({"a\x00": 1, "a": 2}, "duplicate_key"),
    ({"x": "y" * (1024 * 1024 + 10)}, "too_large"),
])
def test_fields_every_database_cannot_store_are_refused(fields: dict[str, Any], reason: str) -> None:
    item = to_document({"id": "d", "text": "fine", **fields}, "ref")
    assert isinstance(item, DeadLetter) and item.reason == reason and item.ref == "d"


def test_nul_characters_are_removed_from_keys_and_values() -> None:
    doc = to_document({"id": "d\x00", "text": "a\x00b", "k\x00": ["v\x00"]}, "ref")
    assert isinstance(doc, Document) and (doc.id, doc.text, doc.meta) == ("d", "ab", {"k": ["v"]})


def test_a_surrogate_id_gives_a_storable_reference() -> None:
    letter = to_document({"id": "x\udc80", "text": "fine"}, "ref")
    assert isinstance(letter, DeadLetter) and letter.reason == "invalid_utf8" and letter.ref == "x\\udc80"


@settings(PROPERTY, max_examples=100)
@given(values=st.lists(hostile_object(), min_size=1, max_size=12))
def test_hostile_jsonl_file_gives_one_item_per_line(values: list[bytes], tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("jsonl") / "hostile.jsonl"
    lines = [v.replace(b"\n", b" ").replace(b"\r", b" ") for v in values]
    path.write_bytes(b"\n".join(lines) + b"\n")
    items = list(FileDocumentSource(FileSource(path=str(path))).read())
    assert len(items) == sum(1 for line in lines if line.strip())
    for item in items:
        assert isinstance(item, Document) or item.reason in REASONS


# --------------------------------------------------------------------------- streaming files


def test_json_array_is_read_element_by_element_across_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files, "CHUNK_CHARS", 7)
    path = tmp_path / "a.json"
    elements = [{"id": f"d{i}", "text": f"text number {i} é"} for i in range(50)] + [{"id": "bad", "text": "x", "x": [[[1]]] * 3}]
    path.write_text(" [ " + " , ".join(json.dumps(e, ensure_ascii=False) for e in elements) + " ] ", encoding="utf-8")
    items = list(FileDocumentSource(FileSource(path=str(path))).read())
    assert [i.id for i in items if isinstance(i, Document)] == [e["id"] for e in elements]
    assert items[3].source_ref == f"{path}#3"
    empty = tmp_path / "empty.json"
    empty.write_text("[ ]", encoding="utf-8")
    assert list(FileDocumentSource(FileSource(path=str(empty))).read()) == []


def test_over_long_jsonl_line_is_skipped_without_holding_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files, "MIN_LINE_LIMIT", 1000)
    monkeypatch.setattr(files, "CHUNK_CHARS", 100)
    path = tmp_path / "long.jsonl"
    limit = files.line_limit(10)
    path.write_bytes(json.dumps({"id": "a", "text": "ok"}).encode() + b"\n" + b"x" * (limit * 5) + b"\n"
                     + json.dumps({"id": "b", "text": "ok"}).encode() + b"\n")
    items = list(FileDocumentSource(FileSource(path=str(path), max_chars=10)).read())
    assert [getattr(i, "id", None) or i.reason for i in items] == ["a", "too_large", "b"]
    assert items[1].ref == f"{path}:2" and str(limit * 5 + 1) in items[1].detail


def test_text_file_over_the_limit_is_refused_unread(tmp_path: Path) -> None:
    (tmp_path / "big.txt").write_text("w" * 5000, encoding="utf-8")
    (item,) = FileDocumentSource(FileSource(path=str(tmp_path / "big.txt"), max_chars=100)).read()
    assert isinstance(item, DeadLetter) and item.reason == "too_large"


def test_a_large_json_array_is_read_in_bounded_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tracemalloc

    monkeypatch.setattr(files, "CHUNK_CHARS", 64 * 1024)  # memory is bounded by the chunk and one element, not the file
    path = tmp_path / "large.json"
    element = {"id": "", "text": "a review that is long enough to matter " * 20}
    with path.open("w", encoding="utf-8") as handle:
        handle.write("[")
        for index in range(8_000):  # about 6.5 MB
            handle.write(("," if index else "") + json.dumps({**element, "id": f"d{index}"}))
        handle.write("]")
    tracemalloc.start()
    count = sum(1 for _ in FileDocumentSource(FileSource(path=str(path))).read())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 8_000
    assert peak < 2 * 1024 * 1024, f"{peak / 1024**2:.1f} MiB held while reading a {path.stat().st_size / 1024**2:.0f} MB array"


@settings(PROPERTY, max_examples=150)
@given(value=hostile_feedback())
def test_any_feedback_record_is_a_storable_row_or_a_reason(value: bytes) -> None:
    from schemas.pipeline import QaStage, SpamStage
    from worker.lifecycle.feedback import RowProblem, validate_any
    from worker.sources.validation import decode_json

    stages = {"spam": SpamStage(name="spam", model="unused"), "qa": QaStage(name="qa", model="unused", questions=["q?"])}
    try:
        raw = decode_json(value)
        for name in stages:
            row = validate_any(stages, {"spam": ["ham", "spam"], "qa": None}, {**raw, "stage": name} if isinstance(raw, dict) else raw)
            for text in (row.text, row.label, row.question, row.answer, row.who, row.doc_id):
                assert text is None or ("\x00" not in text and text.encode("utf-8"))
            assert len(row.label or "") <= 256 and len(row.who or "") <= 256 and len(row.doc_id or "") <= 512
    except RowProblem as problem:
        assert problem.reason in REASONS | {"unknown_stage", "missing_field", "unknown_label", "empty_answer", "empty_question",
                                            "answer_not_in_context"}, problem.reason
    except RecordProblem as problem:
        assert problem.reason in REASONS


@PROPERTY
@given(extra=st.dictionaries(st.text(max_size=8).filter(lambda k: k not in ("id", "text")), json_values, max_size=4),
       text=st.text(max_size=20), depth=st.integers(0, 900))
def test_http_documents_always_get_an_entry(extra: dict[str, Any], text: str, depth: int) -> None:
    from worker.serving.payloads import DocumentsRequest, document_out, read_documents

    nested: Any = "leaf"
    for _ in range(depth):
        nested = [nested]
    request = DocumentsRequest.model_validate({"documents": [{"text": text, **extra}, {"id": "n", "text": "ok", "deep": nested}]})
    items = read_documents(request, "req", max_chars=1000)
    assert len(items) == 2
    for item in items:
        entry = document_out(item.id, [], [], []) if isinstance(item, Document) else document_out(item.ref, [], [item], [], rejected=True)
        entry.model_dump_json().encode("utf-8")  # the response can always be sent
    assert isinstance(items[1], Document) if depth < MAX_DEPTH else items[1].reason == "too_deep"

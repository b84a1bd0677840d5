"""Unit tests for worker.sources.validation and worker.sources.files on real files in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from schemas.documents import DeadLetter, Document
from schemas.pipeline import FileSource
from worker.errors import DataFileError
from worker.sources.files import FileDocumentSource, expand_paths
from worker.sources.validation import PAYLOAD_LIMIT, clip_payload, generated_id, to_document


def read(path: Path | str, **spec: Any) -> list[Document | DeadLetter]:
    return list(FileDocumentSource(FileSource(path=str(path), **spec)).read())


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


# --------------------------------------------------------------------------- validation


def test_to_document_good_record_keeps_other_keys_as_meta() -> None:
    doc = to_document({"id": "a1", "text": "hello", "lang": "en", "n": 3}, "f:1")
    assert isinstance(doc, Document)
    assert doc.id == "a1" and doc.text == "hello" and doc.source_ref == "f:1"
    assert doc.meta == {"lang": "en", "n": 3}


def test_to_document_fields_mapping_selects_meta() -> None:
    doc = to_document({"key": 7, "body": "hi", "src": "web", "junk": 1}, "f:1", id_field="key", text_field="body", fields={"source": "src", "absent": "nope"})
    assert isinstance(doc, Document)
    assert doc.id == "7" and doc.text == "hi" and doc.meta == {"source": "web"}


def test_generated_id_is_stable_and_text_dependent() -> None:
    assert generated_id("abc") == generated_id("abc")
    assert generated_id("abc") != generated_id("abd")
    assert generated_id("abc").startswith("auto-") and len(generated_id("abc")) == len("auto-") + 16


def test_to_document_never_raises_for_long_id() -> None:
    out = to_document({"id": "x" * 600, "text": "hi"}, "f:1")
    assert isinstance(out, DeadLetter) and out.reason == "invalid_id"


def test_clip_payload_small_unchanged_and_big_clipped() -> None:
    assert clip_payload("abc") == "abc"
    assert clip_payload(b"caf\xe9") == "caf\\xe9"
    big = "y" * (PAYLOAD_LIMIT * 3)
    clipped = clip_payload(big)
    assert clipped.startswith("y" * PAYLOAD_LIMIT)
    assert len(clipped) < PAYLOAD_LIMIT + 100
    assert f"{len(big)} in all" in clipped


# --------------------------------------------------------------------------- JSONL


@pytest.fixture
def mixed_jsonl(tmp_path: Path) -> Path:
    lines = [
        json.dumps({"id": "good-1", "text": "A fine document.", "lang": "en"}).encode(),  # 1
        b"{not json",  # 2
        b'{"id": "x", "text": "caf\xe9"}',  # 3 non-UTF-8 byte
        b"[1, 2, 3]",  # 4 not an object
        json.dumps({"body": "no text field"}).encode(),  # 5
        json.dumps({"text": None}).encode(),  # 6
        json.dumps({"text": 12}).encode(),  # 7
        json.dumps({"text": ""}).encode(),  # 8
        json.dumps({"text": " \t\n "}).encode(),  # 9
        json.dumps({"text": "x" * 50}).encode(),  # 10 too large with max_chars=40
        json.dumps({"text": "no id given here"}).encode(),  # 11
        json.dumps({"id": 42, "text": "integer id"}).encode(),  # 12
        json.dumps({"id": True, "text": "bool id"}).encode(),  # 13
        json.dumps({"id": "nul", "text": "a\u0000b\u0000c"}).encode(),  # 14
        b"",  # 15 blank: skipped
        json.dumps({"id": 1.5, "text": "float id"}).encode(),  # 16
        json.dumps({"text": "lone \udc80 surrogate"}).encode(),  # 17 escaped lone surrogate
        b'"just a string"',  # 18
    ]
    return write_lines(tmp_path / "docs.jsonl", lines)


def test_jsonl_good_and_bad_lines(mixed_jsonl: Path) -> None:
    items = read(mixed_jsonl, max_chars=40)
    p = str(mixed_jsonl)
    docs = {i.source_ref: i for i in items if isinstance(i, Document)}
    dead = {i.ref: i for i in items if isinstance(i, DeadLetter)}
    assert len(items) == 17  # the blank line yields nothing

    expected_dead = {
        f"{p}:2": "invalid_json",
        f"{p}:3": "invalid_utf8",
        f"{p}:4": "not_an_object",
        f"{p}:5": "missing_text",
        f"{p}:6": "wrong_type",
        f"{p}:7": "wrong_type",
        f"{p}:8": "empty_text",
        f"{p}:9": "empty_text",
        f"{p}:10": "too_large",
        f"{p}:13": "invalid_id",
        f"{p}:16": "invalid_id",
        f"{p}:17": "invalid_utf8",
        f"{p}:18": "not_an_object",
    }
    assert {ref: d.reason for ref, d in dead.items()} == expected_dead
    assert all(d.stage == "source" for d in dead.values())
    assert "null" in dead[f"{p}:6"].detail and "int" in dead[f"{p}:7"].detail
    assert "40" in dead[f"{p}:10"].detail
    assert dead[f"{p}:2"].payload == "{not json"
    assert "\\xe9" in dead[f"{p}:3"].payload

    assert set(docs) == {f"{p}:1", f"{p}:11", f"{p}:12", f"{p}:14"}
    assert docs[f"{p}:1"].id == "good-1" and docs[f"{p}:1"].meta == {"lang": "en"}
    auto = docs[f"{p}:11"]
    assert auto.id == generated_id("no id given here") and auto.id.startswith("auto-")
    assert docs[f"{p}:12"].id == "42"
    assert docs[f"{p}:14"].text == "abc"


def test_dead_letter_ref_is_the_id_when_known(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "d.jsonl", [json.dumps({"id": "doc-9", "text": ""}).encode()])
    (item,) = read(path)
    assert isinstance(item, DeadLetter) and item.reason == "empty_text" and item.ref == "doc-9"


def test_text_of_only_nul_chars_is_a_dead_letter(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "nul.jsonl", [json.dumps({"text": "\u0000\u0000"}).encode(), json.dumps({"text": "ok"}).encode()])
    items = read(path)
    assert len(items) == 2
    assert isinstance(items[0], DeadLetter) and items[0].reason == "empty_text" and items[0].ref == f"{path}:1"
    assert isinstance(items[1], Document)


def test_empty_id_dead_letter_keeps_input_position(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "e.jsonl", [json.dumps({"id": "", "text": "x"}).encode()])
    (item,) = read(path)
    assert isinstance(item, DeadLetter) and item.reason == "invalid_id"
    assert item.ref == f"{path}:1"


def test_nul_in_id_never_reaches_a_document(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "n.jsonl", [json.dumps({"id": "a\u0000b", "text": "fine text"}).encode()])
    (item,) = read(path)
    if isinstance(item, Document):
        assert "\x00" not in item.id
    else:
        assert item.reason == "invalid_id"


def test_auto_id_is_stable_across_reads(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "a.jsonl", [json.dumps({"text": "same"}).encode(), json.dumps({"text": "other"}).encode()])
    first = [d.id for d in read(path)]
    second = [d.id for d in read(path)]
    assert first == second and first[0] != first[1]


def test_ten_megabyte_line_is_too_large_and_payload_clipped(tmp_path: Path) -> None:
    text = "a" * (10 * 1024 * 1024)
    path = write_lines(tmp_path / "big.jsonl", [json.dumps({"text": text}).encode(), json.dumps({"text": "small"}).encode()])
    items = read(path)
    assert len(items) == 2
    big = items[0]
    assert isinstance(big, DeadLetter) and big.reason == "too_large" and big.ref == f"{path}:1"
    assert len(big.payload) <= PAYLOAD_LIMIT + 100
    assert "clipped" in big.payload
    assert isinstance(items[1], Document)


def test_ten_megabyte_invalid_json_payload_clipped(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "big.jsonl", [b"{" + b"z" * (10 * 1024 * 1024)])
    (item,) = read(path)
    assert isinstance(item, DeadLetter) and item.reason == "invalid_json"
    assert len(item.payload) <= PAYLOAD_LIMIT + 100


def test_crlf_lines_and_ndjson_suffix(tmp_path: Path) -> None:
    path = tmp_path / "x.ndjson"
    path.write_bytes(b'{"id": "1", "text": "one"}\r\n{"id": "2", "text": "two"}\r\n')
    items = read(path)
    assert [(i.id, i.text, i.source_ref) for i in items] == [("1", "one", f"{path}:1"), ("2", "two", f"{path}:2")]


def test_jsonl_custom_fields(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "c.jsonl", [json.dumps({"key": "k1", "body": "hello", "src": "web", "other": 1}).encode()])
    (doc,) = read(path, id_field="key", text_field="body", fields={"source": "src"})
    assert isinstance(doc, Document)
    assert doc.id == "k1" and doc.text == "hello" and doc.meta == {"source": "web"}


def test_json_array_file(tmp_path: Path) -> None:
    path = tmp_path / "arr.json"
    path.write_text(json.dumps([{"id": "a", "text": "first"}, {"text": ""}, 5, {"id": "b", "text": "second"}]), encoding="utf-8")
    items = read(path)
    assert len(items) == 4
    assert isinstance(items[0], Document) and items[0].id == "a" and items[0].source_ref == f"{path}#0"
    assert isinstance(items[1], DeadLetter) and items[1].reason == "empty_text" and items[1].ref == f"{path}#1"
    assert isinstance(items[2], DeadLetter) and items[2].reason == "not_an_object" and items[2].ref == f"{path}#2"
    assert isinstance(items[3], Document) and items[3].id == "b"


def test_broken_json_array_file_keeps_the_elements_before_the_break(tmp_path: Path) -> None:
    path = tmp_path / "arr.json"
    path.write_text('[{"text": "a"}, {"text": "b"', encoding="utf-8")
    first, rest = read(path)  # the array is read element by element: what comes before the break is kept
    assert isinstance(first, Document) and first.text == "a"
    assert isinstance(rest, DeadLetter) and rest.reason == "invalid_json" and rest.ref == f"{path}#1"


# --------------------------------------------------------------------------- CSV / TSV


def test_csv_with_header_and_mapping(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('doc,body,source,extra\n1,"Hello, world",web,x\n2,"multi\nline",mail,y\n3,,web,z\n', encoding="utf-8")
    items = read(path, id_field="doc", text_field="body", fields={"src": "source"})
    assert len(items) == 3
    a, b, c = items
    assert isinstance(a, Document) and a.id == "1" and a.text == "Hello, world" and a.meta == {"src": "web"}
    assert a.source_ref == f"{path}:2"
    assert isinstance(b, Document) and b.text == "multi\nline" and b.meta == {"src": "mail"}
    assert isinstance(c, DeadLetter) and c.reason == "empty_text" and c.ref == "3"


def test_csv_without_mapping_keeps_other_columns(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("id,text,lang\nx1,bonjour,fr\n\n", encoding="utf-8")
    (doc,) = read(path)
    assert isinstance(doc, Document) and doc.id == "x1" and doc.meta == {"lang": "fr"}


def test_tsv_with_header(tmp_path: Path) -> None:
    path = tmp_path / "d.tsv"
    path.write_text("id\ttext\tlabel\nt1\tfirst, with comma\tpos\nt2\tsecond\tneg\n", encoding="utf-8")
    items = read(path, fields={"label": "label"})
    assert [(d.id, d.text, d.meta) for d in items] == [("t1", "first, with comma", {"label": "pos"}), ("t2", "second", {"label": "neg"})]
    assert items[1].source_ref == f"{path}:3"


def test_csv_missing_text_column_raises(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("id,body\n1,hello\n", encoding="utf-8")
    with pytest.raises(DataFileError) as info:
        read(path)
    assert "text" in str(info.value) and "body" in str(info.value)


def test_csv_missing_mapped_field_column_raises(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("id,text\n1,hello\n", encoding="utf-8")
    with pytest.raises(DataFileError) as info:
        read(path, fields={"src": "source"})
    assert "source" in str(info.value)


def test_csv_without_header_uses_column_numbers(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a1,first text,en\na2,second text,de\n", encoding="utf-8")
    items = read(path, has_header=False, id_field="0", text_field="1", fields={"lang": "2"})
    assert [(d.id, d.text, d.meta, d.source_ref) for d in items] == [
        ("a1", "first text", {"lang": "en"}, f"{path}:1"),
        ("a2", "second text", {"lang": "de"}, f"{path}:2"),
    ]


def test_csv_short_row_is_missing_text(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("id,text\nonly-id\n", encoding="utf-8")
    (item,) = read(path)
    assert isinstance(item, DeadLetter) and item.reason == "missing_text"


def test_csv_invalid_utf8_cell_is_dead_letter(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"text\ncaf\xe9\nfine\n")
    items = read(path)
    assert isinstance(items[0], DeadLetter) and items[0].reason == "invalid_utf8" and items[0].ref == f"{path}:2"
    assert "\\xe9" in items[0].payload
    assert isinstance(items[1], Document) and items[1].text == "fine"


def test_forced_format_overrides_suffix(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("text\nrow one\nrow two\n", encoding="utf-8")
    items = read(path, format="csv")
    assert [d.text for d in items] == ["row one", "row two"]


# --------------------------------------------------------------------------- plain text and paths


@pytest.fixture
def text_dir(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "b.txt").write_text("Second file.", encoding="utf-8")
    (root / "a.txt").write_text("First file.", encoding="utf-8")
    (root / "c.md").write_text("# Markdown", encoding="utf-8")
    (root / "sub" / "d.txt").write_text("Nested file.", encoding="utf-8")
    (root / ".hidden.txt").write_text("hidden", encoding="utf-8")
    (root / "empty.txt").write_text("   \n", encoding="utf-8")
    return root


def test_text_directory_one_doc_per_file_sorted(text_dir: Path) -> None:
    items = read(text_dir)
    ids = [i.id if isinstance(i, Document) else i.ref for i in items]
    assert ids == ["a.txt", "b.txt", "c.md", "empty.txt"]
    assert items[0].text == "First file." and items[0].source_ref == str(text_dir / "a.txt")
    assert isinstance(items[3], DeadLetter) and items[3].reason == "empty_text"


def test_text_directory_recursive(text_dir: Path) -> None:
    items = read(text_dir, recursive=True)
    ids = [i.id if isinstance(i, Document) else i.ref for i in items]
    assert ids == ["a.txt", "b.txt", "c.md", "empty.txt", "sub/d.txt"]
    assert items[-1].text == "Nested file."


def test_glob_pattern(text_dir: Path) -> None:
    items = read(text_dir / "*.txt")
    assert [i.id if isinstance(i, Document) else i.ref for i in items] == ["a.txt", "b.txt", "empty.txt"]
    deep = read(str(text_dir) + "/**/*.txt")
    assert [i.text for i in deep if isinstance(i, Document)] == ["First file.", "Second file.", "Nested file."]


def test_expand_paths_single_file_and_sorted(text_dir: Path) -> None:
    assert expand_paths(str(text_dir / "a.txt")) == [text_dir / "a.txt"]
    found = expand_paths(str(text_dir), recursive=True)
    assert found == sorted(found)
    assert text_dir / ".hidden.txt" not in found


@pytest.mark.parametrize("pattern", ["missing-dir", "missing-dir/*.txt", "*.nothing"])
def test_no_match_raises(tmp_path: Path, pattern: str) -> None:
    with pytest.raises(DataFileError) as info:
        FileDocumentSource(FileSource(path=str(tmp_path / pattern)))
    assert "no input files" in str(info.value)


def test_empty_directory_raises(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFileError):
        expand_paths(str(tmp_path / "empty"))


def test_text_file_not_utf8_is_dead_letter(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"caf\xe9 au lait")
    (item,) = read(path)
    assert isinstance(item, DeadLetter) and item.reason == "invalid_utf8" and item.ref == str(path)
    # the right encoding reads it
    (doc,) = read(path, encoding="latin-1")
    assert isinstance(doc, Document) and doc.text == "café au lait" and doc.id == "latin1.txt"


def test_mixed_directory_follows_each_suffix(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"id": "j", "text": "from jsonl"}\n', encoding="utf-8")
    (tmp_path / "b.csv").write_text("id,text\nc,from csv\n", encoding="utf-8")
    (tmp_path / "c.txt").write_text("from text", encoding="utf-8")
    items = read(tmp_path)
    assert [(i.id, i.text) for i in items] == [("j", "from jsonl"), ("c", "from csv"), ("c.txt", "from text")]

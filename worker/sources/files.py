"""Documents from files: JSONL/JSON, CSV/TSV with a column mapping, and plain-text files.

A path may name a file, a directory or a glob. Files are read in sorted order and
each line/row/file has a reference `path:line` that dead letters keep.
"""

from __future__ import annotations

import csv
import glob
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from schemas.documents import DeadLetter
from schemas.pipeline import FileSource
from worker.errors import DataFileError
from worker.sources.base import SourceItem
from worker.sources.validation import clip_payload, to_document

JSON_SUFFIXES = {".jsonl", ".ndjson", ".json"}
TABLE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv"}
TEXT_SUFFIXES = {".txt", ".text", ".md", ""}

csv.field_size_limit(sys.maxsize)


def expand_paths(pattern: str, recursive: bool = False) -> list[Path]:
    """Files named by a path, a directory or a glob, sorted; raises if there are none."""
    path = Path(pattern).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        walker = path.rglob("*") if recursive else path.glob("*")
        found = sorted(p for p in walker if p.is_file() and not p.name.startswith("."))
    else:
        found = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    if not found:
        raise DataFileError(f"no input files match `{pattern}`", hint="check the source `path` or --input")
    return found


def _format_of(path: Path, spec: FileSource) -> str:
    if spec.format != "auto":
        return spec.format
    suffix = path.suffix.lower()
    if suffix in JSON_SUFFIXES:
        return "jsonl"
    return TABLE_SUFFIXES.get(suffix, "text")


class FileDocumentSource:
    """Reads every file the spec names; one `SourceItem` per line, row or text file."""

    def __init__(self, spec: FileSource, path_override: str | None = None) -> None:
        self.spec = spec
        self.root = Path(path_override or spec.path).expanduser()
        self.paths = expand_paths(str(self.root), spec.recursive)

    def read(self) -> Iterator[SourceItem]:
        for path in self.paths:
            kind = _format_of(path, self.spec)
            if kind == "jsonl":
                yield from self._read_jsonl(path)
            elif kind in ("csv", "tsv"):
                yield from self._read_table(path, "," if kind == "csv" else "\t")
            else:
                yield self._read_text(path)

    def close(self) -> None:
        return None

    def _doc(self, record: object, ref: str, payload: str | bytes) -> SourceItem:
        s = self.spec
        return to_document(
            record, ref, id_field=s.id_field, text_field=s.text_field,
            fields=s.fields, max_chars=s.max_chars, payload=payload,
        )

    def _read_jsonl(self, path: Path) -> Iterator[SourceItem]:
        with path.open("rb") as handle:
            head = handle.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
            handle.seek(0)
            if path.suffix.lower() == ".json" and head == b"[":
                yield from self._read_json_array(path, handle.read())
                return
            for number, raw in enumerate(handle, start=1):
                ref = f"{path}:{number}"
                line = raw.rstrip(b"\r\n")
                if not line.strip():
                    continue
                try:
                    text = line.decode(self.spec.encoding)
                except UnicodeDecodeError as exc:
                    yield DeadLetter(ref=ref, reason="invalid_utf8", detail=str(exc), payload=clip_payload(line))
                    continue
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as exc:
                    yield DeadLetter(ref=ref, reason="invalid_json", detail=str(exc), payload=clip_payload(text))
                    continue
                yield self._doc(record, ref, text)

    def _read_json_array(self, path: Path, data: bytes) -> Iterator[SourceItem]:
        try:
            records = json.loads(data.decode("utf-8-sig" if self.spec.encoding.lower() in ("utf-8", "utf8") else self.spec.encoding))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            yield DeadLetter(ref=str(path), reason="invalid_json", detail=str(exc), payload=clip_payload(data))
            return
        for index, record in enumerate(records):
            yield self._doc(record, f"{path}#{index}", json.dumps(record, ensure_ascii=False))

    def _read_table(self, path: Path, delimiter: str) -> Iterator[SourceItem]:
        with path.open("r", encoding=self.spec.encoding, errors="surrogateescape", newline="") as handle:
            reader = csv.reader(handle, delimiter=delimiter)
            header: list[str] | None = None
            for row in reader:
                number = reader.line_num
                if header is None and self.spec.has_header:
                    header = row
                    self._check_columns(path, header)
                    continue
                if not row or not any(cell.strip() for cell in row):
                    continue
                names = header or [str(i) for i in range(len(row))]
                record = dict(zip(names, row, strict=False))
                payload = delimiter.join(row).encode("utf-8", "surrogateescape")
                yield self._doc(record, f"{path}:{number}", payload)

    def _check_columns(self, path: Path, header: list[str]) -> None:
        wanted = [self.spec.text_field, *self.spec.fields.values()]
        missing = [c for c in wanted if c not in header]
        if missing:
            raise DataFileError(
                f"{path}: columns {missing} not in the header {header}",
                hint="set the source's `text_field`/`fields` to the file's column names, or `has_header: false` and use column numbers",
            )

    def _read_text(self, path: Path) -> SourceItem:
        raw = path.read_bytes()
        try:
            text = raw.decode(self.spec.encoding)
        except UnicodeDecodeError as exc:
            return DeadLetter(ref=str(path), reason="invalid_utf8", detail=str(exc), payload=clip_payload(raw))
        doc_id = str(path.relative_to(self.root)) if self.root.is_dir() else path.name
        record = {self.spec.id_field: doc_id, self.spec.text_field: text}
        return self._doc(record, str(path), text)

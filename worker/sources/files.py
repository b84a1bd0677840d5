"""Documents from files: JSONL/JSON, CSV/TSV with a column mapping, and plain-text files.

A path may name a file, a directory or a glob. Files are read in sorted order and
each line/row/file has a reference `path:line` (`path#index` in a JSON array) that
dead letters keep.

Memory stays bounded whatever the file size: JSONL is read line by line (a line over
`line_limit` bytes becomes a `too_large` dead letter and is skipped without being held
in memory), a JSON array element by element, CSV row by row, and a plain-text file
over the size its `max_chars` allows is refused (`too_large`) without being read.
Records pass the source boundary of `worker.sources.validation` (strict JSON, depth,
sizes, storable strings).
"""

from __future__ import annotations

import codecs
import csv
import glob
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from schemas.documents import DeadLetter
from schemas.pipeline import FileSource
from worker.errors import DataFileError
from worker.sources.base import SourceItem
from worker.sources.validation import PAYLOAD_LIMIT, RecordProblem, clip_payload, dead_letter, decode_json, to_document

JSON_SUFFIXES = {".jsonl", ".ndjson", ".json"}
TABLE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv"}
TEXT_SUFFIXES = {".txt", ".text", ".md", ""}

csv.field_size_limit(sys.maxsize)
CHUNK_CHARS = 1024 * 1024
MIN_LINE_LIMIT = 64 * 1024 * 1024
_PLAIN_JSON = json.JSONDecoder()


def line_limit(max_chars: int) -> int:
    """Longest JSONL line read into memory: room for `max_chars` of 4-byte UTF-8 plus fields, at least 64 MiB."""
    return max(MIN_LINE_LIMIT, 4 * max_chars + 1024 * 1024)


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
        limit = line_limit(self.spec.max_chars)
        with path.open("rb") as handle:
            head = handle.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
            handle.seek(0)
            if path.suffix.lower() == ".json" and head == b"[":
                yield from self._read_json_array(path, handle)
                return
            number = 0
            while raw := handle.readline(limit + 1):
                number += 1
                ref = f"{path}:{number}"
                if len(raw) > limit and not raw.endswith(b"\n"):
                    skipped = _skip_rest_of_line(handle)
                    yield dead_letter(ref, "too_large", f"the line has more than {limit} bytes ({len(raw) + skipped} in all)", raw[:PAYLOAD_LIMIT])
                    continue
                line = raw.rstrip(b"\r\n")
                if not line.strip():
                    continue
                try:
                    text = line.decode(self.spec.encoding)
                except UnicodeDecodeError as exc:
                    yield dead_letter(ref, "invalid_utf8", str(exc), line)
                    continue
                try:
                    record = decode_json(text)
                except RecordProblem as problem:
                    yield dead_letter(ref, problem.reason, problem.detail, text)
                    continue
                yield self._doc(record, ref, text)

    def _read_json_array(self, path: Path, handle: IO[bytes]) -> Iterator[SourceItem]:
        """A JSON array file, one element at a time: the buffer holds one element (up to the line limit), never the file.

        A syntax error, an element over the limit or bytes that are not text end the file: its
        remaining elements become one dead letter at the position where reading stopped.
        """
        encoding = "utf-8-sig" if self.spec.encoding.lower() in ("utf-8", "utf8") else self.spec.encoding
        decoder = codecs.getincrementaldecoder(encoding)()
        limit = line_limit(self.spec.max_chars)
        buf, pos, index, eof = "", 0, 0, False

        def fill() -> bool:
            nonlocal buf, pos, eof
            if eof:
                return False
            data = handle.read(CHUNK_CHARS)
            buf = buf[pos:] + decoder.decode(data, final=not data)
            pos = 0
            eof = not data
            return True

        def rest(reason: str, detail: str) -> DeadLetter:
            return dead_letter(f"{path}#{index}", reason, detail, buf[pos:pos + PAYLOAD_LIMIT])

        try:
            while (pos := _skip_space(buf, pos)) >= len(buf) and fill():
                pass
            pos += 1  # the `[` the caller saw
            while True:
                pos = _skip_space(buf, pos)
                if pos >= len(buf):
                    if not fill():
                        yield rest("invalid_json", "the array is not closed")
                        return
                    continue
                if buf[pos] == "]" and index == 0:
                    return
                try:
                    _, end = _PLAIN_JSON.raw_decode(buf, pos)
                    if end >= len(buf) and not eof:
                        raise json.JSONDecodeError("incomplete", buf, end)
                except json.JSONDecodeError as exc:
                    if len(buf) - pos > limit:
                        yield rest("too_large", f"an element has more than {limit} characters; the rest of the file is not read")
                        return
                    if fill():
                        continue
                    yield rest("invalid_json", f"the array is not valid JSON: {exc.msg}; the rest of the file is not read")
                    return
                except RecursionError:
                    yield rest("too_deep", "an element is nested too deep to parse; the rest of the file is not read")
                    return
                except ValueError as exc:
                    yield rest("number_out_of_range", f"{str(exc)[:120]}; the rest of the file is not read")
                    return
                element = buf[pos:end]
                try:
                    yield self._doc(decode_json(element), f"{path}#{index}", element)
                except RecordProblem as problem:
                    yield dead_letter(f"{path}#{index}", problem.reason, problem.detail, element)
                index += 1
                pos = _skip_space(buf, end)
                while pos >= len(buf) and fill():
                    pos = _skip_space(buf, pos)
                if pos < len(buf) and buf[pos] == ",":
                    pos += 1
                elif pos < len(buf) and buf[pos] == "]":
                    return
                else:
                    yield rest("invalid_json", "expected `,` or `]` after an element; the rest of the file is not read")
                    return
        except UnicodeDecodeError as exc:
            yield dead_letter(f"{path}#{index}", "invalid_utf8", f"{exc}; the rest of the file is not read", b"")

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
        limit = 4 * self.spec.max_chars + 4
        size = path.stat().st_size
        if size > limit:
            with path.open("rb") as handle:
                head = handle.read(PAYLOAD_LIMIT)
            return dead_letter(str(path), "too_large", f"{size} bytes, more than {self.spec.max_chars} characters can take", head)
        raw = path.read_bytes()
        try:
            text = raw.decode(self.spec.encoding)
        except UnicodeDecodeError as exc:
            return DeadLetter(ref=str(path), reason="invalid_utf8", detail=str(exc), payload=clip_payload(raw))
        doc_id = str(path.relative_to(self.root)) if self.root.is_dir() else path.name
        record = {self.spec.id_field: doc_id, self.spec.text_field: text}
        return self._doc(record, str(path), text)


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _skip_rest_of_line(handle: IO[bytes]) -> int:
    """Read past the end of the current line in bounded chunks; returns the bytes skipped."""
    skipped = 0
    while chunk := handle.readline(CHUNK_CHARS):
        skipped += len(chunk)
        if chunk.endswith(b"\n"):
            break
    return skipped

"""Reading labelled TSV files whose text and label columns come in either order."""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from worker.errors import DataFileError

csv.field_size_limit(sys.maxsize)
MAX_LABELS = 100


def _label_column(rows: list[list[str]], known: Sequence[str] | None) -> int:
    """Index of the label column: the one matching known labels, else the one with few short values."""
    scores: list[tuple[float, float]] = []
    for col in (0, 1):
        values = Counter(r[col] for r in rows)
        if known:
            hit = sum(n for v, n in values.items() if v in known) / len(rows)
            scores.append((hit, -len(values)))
        else:
            mean_len = sum(len(v) * n for v, n in values.items()) / len(rows)
            scores.append((float(len(values) <= MAX_LABELS), -mean_len))
    return 0 if scores[0] >= scores[1] else 1


def load_labelled(path: str | Path, labels: Sequence[str] | None = None, limit: int | None = None) -> tuple[list[str], list[str]]:
    """(texts, labels) from a two-column TSV (either order, no header needed).

    A header row (`text<TAB>label` or `label<TAB>text`) is skipped. Rows that do not
    have exactly two columns or have an empty text raise DataFileError with the line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"data file `{path}` does not exist")
    rows: list[list[str]] = []
    numbers: list[int] = []
    with path.open(encoding="utf-8", newline="") as handle:
        for number, row in enumerate(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != 2:
                raise DataFileError(f"{path}:{number}: expected 2 tab-separated columns, found {len(row)}")
            if number == 1 and {c.strip().lower() for c in row} == {"text", "label"}:
                continue
            rows.append(row)
            numbers.append(number)
            if limit is not None and len(rows) >= limit:
                break
    if not rows:
        raise DataFileError(f"{path}: no rows")
    col = _label_column(rows[:2000], labels)
    texts = [r[1 - col] for r in rows]
    for number, text in zip(numbers, texts, strict=True):
        if not text.strip():
            raise DataFileError(f"{path}:{number}: the text is empty")
    golds = [r[col].strip() for r in rows]
    if labels:
        unknown = sorted(set(golds) - set(labels))
        if unknown:
            raise DataFileError(f"{path}: labels {unknown[:10]} are not among the stage's labels {list(labels)}")
    if len(set(golds)) > MAX_LABELS:
        raise DataFileError(f"{path}: {len(set(golds))} distinct labels; is this a text<TAB>label file?")
    return texts, golds


def read_texts(path: Path) -> list[str]:
    """Texts from a TSV (longest column), JSONL (`text`/`context`/`en`) or plain-text file."""
    texts: list[str] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        if path.suffix in (".jsonl", ".json"):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            value = next((row[k] for k in ("text", "context", "en", "de") if isinstance(row, dict) and k in row), None)
            if isinstance(value, str):
                texts.append(value)
        elif path.suffix == ".tsv":
            texts.append(max(line.split("\t"), key=len))
        else:
            texts.append(line)
    return texts

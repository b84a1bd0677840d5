"""Labelled feedback: validate rows for a stage and store them in the `feedback` table.

A row is what a person (or a system) says the right output is: a class label for
classify/spam stages, an answer found in the context for QA, a reference translation
for translate. Rows come from files (`textworker feedback import`), the HTTP API
(`worker.lifecycle.api`) and a Kafka topic (`worker.lifecycle.feedback_topic`); all
three go through `validate_row` and `store_rows`.

Contract: a bad row is data, never an exception — it becomes a `Rejected` with its
line (or position), a reason code and a detail, and the good rows are kept. Whatever a
row holds (any JSON: nesting, numbers, lone surrogates, NULs, huge strings), `validate_row`
answers a FeedbackRow or a RowProblem, and a FeedbackRow can be stored: its strings are
UTF-8 without NULs and within the columns' sizes. Reason codes: not_an_object,
unknown_stage, missing_field, wrong_type, empty_text, empty_answer, empty_question,
empty_reference, unknown_label, answer_not_in_context, invalid_utf8, too_large, no_feedback,
invalid_json (and too_deep, duplicate_key, number_out_of_range from the strict decoder
of `worker.sources.validation`). Each
stored row has a `fingerprint` (sha256 over pipeline, stage and the labelled content,
not who sent it or how), unique in the table: storing the same row again, from any
source, adds nothing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from worker.errors import DataFileError
from worker.models import loading
from worker.sinks import tables
from worker.sources.validation import RecordProblem, decode_json
from worker.stages import plugin_for
from worker.stages.rows import MAX_SHORT_CHARS, MAX_TEXT_CHARS, RowProblem, short_field  # noqa: F401 - re-exported

csv.field_size_limit(sys.maxsize)
StageSpec = Any  # a stage spec of any registered type
_fb = tables.feedback
CHUNK = 500
FIELD_NAMES = ("text", "label", "context", "question", "answer", "answers", "source", "reference", "id", "doc_id", "who")


@dataclass(frozen=True)
class FeedbackRow:
    """One validated row, ready to store."""

    stage: str
    text: str
    label: str | None = None
    question: str | None = None
    answer: str | None = None
    reference: str | None = None
    doc_id: str | None = None
    who: str | None = None

    def fingerprint(self, pipeline: str) -> str:
        content = [pipeline, self.stage, self.text, self.question, self.label, self.answer, self.reference]
        return hashlib.sha256(json.dumps(content, ensure_ascii=False).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Rejected:
    """A row that was not stored: where it was (file line or list position), a reason code, what to fix."""

    line: int | None
    reason: str
    detail: str

    def render(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        return f"{where}{self.reason}: {self.detail}"


@dataclass
class ImportReport:
    """Counts of one import: rows read, newly stored, already stored, and every rejected row."""

    received: int = 0
    inserted: int = 0
    duplicates: int = 0
    rejected: list[Rejected] = field(default_factory=list)

    @property
    def valid(self) -> int:
        return self.inserted + self.duplicates

    def as_dict(self) -> dict[str, Any]:
        return {"received": self.received, "inserted": self.inserted, "duplicates": self.duplicates,
                "rejected": [asdict(r) for r in self.rejected]}


# --------------------------------------------------------------------------- validation


def stage_labels(stage: Any) -> list[str] | None:
    """The labels a row of a label-set stage (classify, spam) may carry: the configured ones, else the model's id2label."""
    plugin = plugin_for(stage.type)
    configured = plugin.labels(stage)
    if configured is not None or not plugin.label_set:
        return configured
    try:
        location = loading.resolve(stage.model).location
    except (OSError, ValueError, loading.ModelNotFoundError):
        return None
    return loading.config_labels(location) or None


def stage_of(stages: Mapping[str, StageSpec], raw: Any) -> StageSpec:
    """The stage a row names in its `stage` field, or RowProblem (not_an_object, unknown_stage)."""
    if not isinstance(raw, dict):
        raise RowProblem("not_an_object", f"expected a JSON object, got {type(raw).__name__}")
    name = raw.get("stage")
    if not isinstance(name, str) or name not in stages:
        raise RowProblem("unknown_stage", f"`stage` must name one of the pipeline's stages: {', '.join(stages)}")
    return stages[name]


def validate_any(stages: Mapping[str, StageSpec], labels: Mapping[str, Sequence[str] | None], raw: Any) -> FeedbackRow:
    """A row that names its stage (the topic's and the HTTP API's rows): a FeedbackRow or RowProblem, whatever `raw` is."""
    stage = stage_of(stages, raw)
    return validate_row(stage, raw, labels.get(stage.name))


def validate_row(stage: StageSpec, raw: Any, labels: Sequence[str] | None) -> FeedbackRow:
    """A stored-to-be row for `stage`, or RowProblem naming what is wrong (never another exception).

    The fields a row needs are the stage type's (its plug-in's `feedback_row`)."""
    if not isinstance(raw, dict):
        raise RowProblem("not_an_object", f"expected a JSON object, got {type(raw).__name__}")
    ident = short_field(raw, "doc_id", "id")
    who = short_field(raw, "who")
    plugin = plugin_for(stage.type)
    if plugin.feedback_row is None:
        raise RowProblem("no_feedback", f"a {stage.type} stage takes no labelled feedback")
    return FeedbackRow(stage=stage.name, doc_id=ident, who=who, **plugin.feedback_row(stage, raw, labels))


def validate_rows(stage: StageSpec, raws: Iterable[tuple[int | None, Any]], labels: Sequence[str] | None = None,
                  ) -> tuple[list[FeedbackRow], list[Rejected]]:
    """Split (position, raw) pairs into valid rows and rejections."""
    labels = labels if labels is not None else stage_labels(stage)
    good: list[FeedbackRow] = []
    bad: list[Rejected] = []
    for line, raw in raws:
        if isinstance(raw, RowProblem):
            bad.append(Rejected(line, raw.reason, raw.detail))
            continue
        try:
            good.append(validate_row(stage, raw, labels))
        except RowProblem as problem:
            bad.append(Rejected(line, problem.reason, problem.detail))
    return good, bad


# --------------------------------------------------------------------------- files


def read_file(path: str | Path, stage: StageSpec) -> Iterator[tuple[int, Any]]:
    """(line number, raw row) for each row of a CSV/TSV/JSONL file; unparsable lines yield a RowProblem."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"feedback file `{path}` does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFileError(f"cannot read feedback file `{path}`: {exc}", hint="feedback files are UTF-8 CSV, TSV or JSONL") from exc
    if path.suffix.lower() in (".tsv", ".csv"):
        yield from _read_table(text, path, stage)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, decode_json(line)
        except RecordProblem as problem:
            detail = problem.detail.replace("the value is not JSON: ", "not valid JSON: ")
            yield number, RowProblem(problem.reason, detail)


def _read_table(text: str, path: Path, stage: StageSpec) -> Iterator[tuple[int, Any]]:
    """Rows of a CSV/TSV: by header names when the first row names fields, else text/label in either order."""
    tsv = path.suffix.lower() == ".tsv"
    handle = io.StringIO(text, newline="")
    reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE) if tsv else csv.reader(handle)
    rows = [(reader.line_num, row) for row in reader if row and any(cell.strip() for cell in row)]
    if not rows:
        return
    header = [cell.strip().lower() for cell in rows[0][1]]
    plugin = plugin_for(stage.type)
    names = set(FIELD_NAMES) | plugin.table_fields(stage)
    if names & set(header):
        for number, row in rows[1:]:
            yield number, (dict(zip(header, row)) if len(row) == len(header)
                           else RowProblem("wrong_columns", f"expected {len(header)} columns, found {len(row)}"))
        return
    if not plugin.text_label_table:
        raise DataFileError(f"{path}: a {stage.type} feedback table needs a header row naming its fields",
                            hint="e.g. context, question, answer (qa) or en, de (translate); or use JSONL")
    yield from _text_label_rows(rows, stage)


def _text_label_rows(rows: list[tuple[int, list[str]]], stage: StageSpec) -> Iterator[tuple[int, Any]]:
    from worker.training.data import _label_column

    pairs = [row for _, row in rows if len(row) == 2]
    col = _label_column(pairs[:2000], stage_labels(stage)) if pairs else 1
    for number, row in rows:
        if len(row) != 2:
            yield number, RowProblem("wrong_columns", f"expected 2 columns (text and label), found {len(row)}")
        else:
            yield number, {"text": row[1 - col], "label": row[col]}


# --------------------------------------------------------------------------- storage


def store_rows(engine: Engine, pipeline: str, rows: Sequence[FeedbackRow], *, source: str, who: str | None = None) -> tuple[int, int]:
    """Insert rows not stored yet; returns (inserted, duplicates). Safe to repeat and to run concurrently."""
    now = datetime.now(UTC)
    unique: dict[str, dict[str, Any]] = {}
    for row in rows:
        unique.setdefault(row.fingerprint(pipeline), {
            "pipeline": pipeline, "stage": row.stage, "doc_id": row.doc_id, "text": row.text, "question": row.question,
            "label": row.label, "answer": row.answer, "reference": row.reference, "source": source,
            "who": row.who or who, "fingerprint": row.fingerprint(pipeline), "created_at": now,
        })
    inserted = 0
    keys = list(unique)
    with engine.begin() as conn:
        for start in range(0, len(keys), CHUNK):
            chunk = keys[start:start + CHUNK]
            known = set(conn.execute(sa.select(_fb.c.fingerprint).where(_fb.c.fingerprint.in_(chunk))).scalars())
            new = [unique[k] for k in chunk if k not in known]
            if new:
                conn.execute(_insert_ignoring_duplicates(conn.dialect.name), new)
                inserted += len(new)
    return inserted, len(rows) - inserted


def store_rows_isolating(engine: Engine, pipeline: str, rows: Sequence[FeedbackRow], *, source: str,
                         ) -> tuple[int, int, list[tuple[FeedbackRow, str]]]:
    """`store_rows`, but a row the database refuses (which validation should make impossible) is
    set aside with the database's message instead of failing the others: (inserted, duplicates, refused)."""
    from worker.sinks.sql import first_line, is_poison

    try:
        inserted, duplicates = store_rows(engine, pipeline, rows, source=source)
        return inserted, duplicates, []
    except Exception as exc:
        if not is_poison(exc):
            raise
    inserted = duplicates = 0
    refused: list[tuple[FeedbackRow, str]] = []
    for row in rows:
        try:
            one, dup = store_rows(engine, pipeline, [row], source=source)
        except Exception as exc:
            if not is_poison(exc):
                raise
            refused.append((row, first_line(exc)))
            continue
        inserted, duplicates = inserted + one, duplicates + dup
    return inserted, duplicates, refused


def _insert_ignoring_duplicates(dialect: str) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(_fb).on_conflict_do_nothing(index_elements=["fingerprint"])
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(_fb).on_conflict_do_nothing(index_elements=["fingerprint"])
    return _fb.insert().prefix_with("IGNORE")


def import_rows(engine: Engine, pipeline: str, stage: StageSpec, raws: Iterable[tuple[int | None, Any]], *,
                source: str, who: str | None = None) -> ImportReport:
    """Validate and store; the report lists every rejected row."""
    raws = list(raws)
    good, bad = validate_rows(stage, raws)
    inserted, duplicates = store_rows(engine, pipeline, good, source=source, who=who) if good else (0, 0)
    return ImportReport(received=len(raws), inserted=inserted, duplicates=duplicates, rejected=bad)


def import_file(engine: Engine, pipeline: str, stage: StageSpec, path: str | Path, *, source: str = "import",
                who: str | None = None) -> ImportReport:
    return import_rows(engine, pipeline, stage, read_file(path, stage), source=source, who=who)


# --------------------------------------------------------------------------- reading back


@dataclass(frozen=True)
class StoredFeedback:
    fingerprint: str
    text: str
    label: str | None
    question: str | None
    answer: str | None
    reference: str | None
    created_at: datetime


def load_feedback(engine: Engine, pipeline: str, stage: str) -> list[StoredFeedback]:
    """Every feedback row of a stage, oldest first; a later row for the same input supersedes earlier ones."""
    query = sa.select(_fb.c.fingerprint, _fb.c.text, _fb.c.label, _fb.c.question, _fb.c.answer, _fb.c.reference,
                      _fb.c.created_at).where(_fb.c.pipeline == pipeline, _fb.c.stage == stage).order_by(_fb.c.id)
    with engine.connect() as conn:
        rows = [StoredFeedback(**dict(r._mapping)) for r in conn.execute(query)]
    latest: dict[tuple[str, str | None], StoredFeedback] = {}
    for row in rows:
        latest.pop((row.text, row.question), None)
        latest[(row.text, row.question)] = row
    return list(latest.values())


def count_since(engine: Engine, pipeline: str, stage: str, since: datetime | None) -> int:
    query = sa.select(sa.func.count()).select_from(_fb).where(_fb.c.pipeline == pipeline, _fb.c.stage == stage)
    if since is not None:
        query = query.where(_fb.c.created_at > since)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())

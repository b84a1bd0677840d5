"""HTTP request and response bodies of `POST /v1/documents`, and the request's documents.

Two kinds of bad input, answered differently:

- A request that does not fit the schema (no `documents` list, `text` not a string,
  a repeated id, an unknown top-level key) is refused whole: 422 with the field path.
- A document that fits the schema but cannot be processed (empty text, over the size
  limit, invalid UTF-8 or a lone surrogate in any field or key, fields nested deeper
  than 64 levels, a number out of range, an unusable id) gets a per-document error with
  the same reason code a file or Kafka source gives it (see `worker.sources.validation`);
  the other documents of the request are processed. Building a document's entry never
  raises, whatever its fields hold.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from schemas.documents import DeadLetter, Document, StageResult
from worker.sources.validation import RecordProblem, check_structure, to_document


class DocumentIn(BaseModel):
    """One document. Fields other than `id` and `text` are kept as the document's fields
    (a QA stage's `question_field`, for example)."""

    model_config = ConfigDict(extra="allow")

    id: StrictStr | StrictInt | None = Field(
        default=None, description="Stable document id; without one an id is derived from the text."
    )
    text: StrictStr = Field(description="The document's text.")


class DocumentsRequest(BaseModel):
    """One or many documents to run through every stage of the pipeline."""

    model_config = ConfigDict(extra="forbid")

    documents: list[DocumentIn] = Field(min_length=1, description="The documents; at most the server's `max_documents`.")


class StageOutput(BaseModel):
    label: str | None = None
    score: float | None = None
    output: dict[str, Any] = Field(default_factory=dict)
    model_version: str = ""


class DocumentError(BaseModel):
    stage: str = Field(description="`source` when the document itself was refused, else the stage that failed.")
    reason: str = Field(description="A reason code: empty_text, too_large, invalid_utf8, invalid_id, stage_error, ...")
    detail: str = ""


class DocumentOut(BaseModel):
    id: str = Field(description="The document's id (or its position in the request when it was refused without one).")
    status: Literal["ok", "partial", "rejected"] = Field(
        description="ok: no errors; partial: some stage failed; rejected: the document was not processed."
    )
    results: dict[str, StageOutput] = Field(default_factory=dict, description="Stage name -> its result.")
    skipped: list[str] = Field(default_factory=list, description="Stages whose `when` condition did not hold.")
    errors: list[DocumentError] = Field(default_factory=list)


class DocumentsResponse(BaseModel):
    pipeline: str
    request_id: str
    stored: bool = Field(description="Whether the results were written to the SQL database.")
    documents: list[DocumentOut]


class ErrorBody(BaseModel):
    detail: Any


def read_documents(request: DocumentsRequest, request_id: str, max_chars: int) -> list[Document | DeadLetter]:
    """Each request document as a `Document`, or a `DeadLetter` with its reason code."""
    items: list[Document | DeadLetter] = []
    for position, entry in enumerate(request.documents):
        record = entry.model_dump()
        if record.get("id") is None:
            record.pop("id", None)
        ref = f"http:{request_id}/documents[{position}]"
        items.append(to_document(record, ref, max_chars=max_chars, payload=_payload(record)))
    return items


def _payload(record: dict[str, Any]) -> str:
    """The document as ASCII JSON for a dead letter (lone surrogates stay escaped); never raises,
    whatever the body held (nesting beyond the encoder's stack, numbers JSON cannot write)."""
    try:
        check_structure(record, "the document")
        return json.dumps(record, default=str)
    except (RecordProblem, ValueError, TypeError, RecursionError) as exc:
        reason = exc.reason if isinstance(exc, RecordProblem) else type(exc).__name__
        text = record.get("text")
        return json.dumps({"id": str(record.get("id", ""))[:512], "text": text if isinstance(text, str) else None,
                           "note": f"other fields left out ({reason})"})


def duplicate_ids(items: list[Document | DeadLetter]) -> list[dict[str, Any]]:
    """422 error entries for every document whose id an earlier document of the request already has."""
    first: dict[str, int] = {}
    errors: list[dict[str, Any]] = []
    for position, item in enumerate(items):
        if not isinstance(item, Document):
            continue
        if item.id in first:
            errors.append({
                "loc": ["body", "documents", position, "id"], "type": "duplicate_id",
                "msg": f"id `{item.id}` is also the id of documents[{first[item.id]}]; ids must be unique within a request",
            })
        else:
            first[item.id] = position
    return errors


def document_out(
    doc_id: str, results: list[StageResult], letters: list[DeadLetter], skipped: list[str], *, rejected: bool = False
) -> DocumentOut:
    """The response entry for one document."""
    errors = [DocumentError(stage=d.stage, reason=d.reason, detail=d.detail) for d in letters]
    status: Literal["ok", "partial", "rejected"] = "rejected" if rejected else ("partial" if errors else "ok")
    return DocumentOut(
        id=doc_id, status=status, skipped=skipped, errors=errors,
        results={r.stage: StageOutput(label=r.label, score=r.score, output=r.output, model_version=r.model_version) for r in results},
    )

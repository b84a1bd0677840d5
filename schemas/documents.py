"""Documents as they enter the pipeline, and the results and dead letters they leave."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Document(BaseModel):
    """A validated document: non-empty text and a stable id.

    `source_ref` says where it came from (file:line, topic/partition/offset) so a
    dead letter or a result can be traced back to its input.
    """

    model_config = ConfigDict(frozen=True)

    id: str = Field(min_length=1, max_length=512)
    text: str = Field(min_length=1)
    meta: dict[str, Any] = Field(default_factory=dict)
    source_ref: str = ""
    clipped: bool = Field(
        default=False,
        description="The text is a clipped copy (a requeued dead letter's payload): the sink never writes it over a stored document.",
    )


class StageResult(BaseModel):
    """One stage's output for one document."""

    model_config = ConfigDict(frozen=True)

    doc_id: str
    stage: str
    label: str | None = None
    score: float | None = None
    output: dict[str, Any] = Field(default_factory=dict)
    model_version: str = ""


class DeadLetter(BaseModel):
    """Input that could not be processed, with a reason code and the payload kept."""

    model_config = ConfigDict(frozen=True)

    ref: str = Field(description="Document id, or the input position when no id is known.")
    stage: str = Field(default="source", description="`source` for input errors.")
    reason: str = Field(description="A short code, e.g. invalid_json, empty_text, too_large.")
    detail: str = ""
    payload: str = ""
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

"""What the Python API returns per document: every stage's result, what was skipped, what failed."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.documents import DeadLetter, StageResult


class DocumentResult(BaseModel):
    """One document after the pipeline.

    `results` maps stage name to its `StageResult` (label, score, output, model_version);
    `skipped` lists the stages whose `when` did not admit the document; `errors` holds
    its dead letters (a reason code each). `status` is `ok` (no errors), `partial`
    (some stage failed) or `rejected` (the input never became a document).
    """

    model_config = ConfigDict(frozen=True)

    id: str
    status: Literal["ok", "partial", "rejected"]
    results: dict[str, StageResult] = Field(default_factory=dict)
    skipped: list[str] = Field(default_factory=list)
    errors: list[DeadLetter] = Field(default_factory=list)

    def __getitem__(self, stage: str) -> StageResult:
        """`doc["spam"]` is `doc.results["spam"]`."""
        return self.results[stage]

"""Stage types, keyed by the `type:` string of a pipeline file's stage."""

from __future__ import annotations

from typing import Any

from worker.stages.base import HFStage, Stage
from worker.stages.classify import ClassifyTextStage, SpamDetectStage
from worker.stages.qa import QuestionAnswerStage
from worker.stages.translate import TranslateTextStage

STAGE_TYPES: dict[str, type[HFStage]] = {
    "classify": ClassifyTextStage,
    "spam": SpamDetectStage,
    "qa": QuestionAnswerStage,
    "translate": TranslateTextStage,
}


def build_stage(spec: Any) -> Stage:
    """The stage object for a validated stage spec (model not loaded yet)."""
    return STAGE_TYPES[spec.type](spec)


__all__ = ["STAGE_TYPES", "build_stage", "Stage"]

"""Evaluate a stage's `when` condition against earlier results for one document."""

from __future__ import annotations

from typing import Any

from schemas.documents import StageResult
from schemas.pipeline import Condition


def _field(result: StageResult, name: str) -> Any:
    if name == "label":
        return result.label
    if name == "score":
        return result.score
    return result.output.get(name)


def _compare(op: str, actual: Any, expected: Any) -> bool:
    if op == "exists":
        return actual is not None
    if actual is None:
        return False
    if op == "eq":
        return bool(actual == expected)
    if op == "ne":
        return bool(actual != expected)
    if op == "in":
        return actual in expected
    if op == "not_in":
        return actual not in expected
    if not isinstance(actual, int | float):
        return False
    return {"gt": actual > expected, "gte": actual >= expected, "lt": actual < expected, "lte": actual <= expected}[op]


def holds(condition: Condition | None, results: dict[str, StageResult]) -> bool:
    """True when the document should go through the stage (no condition: always)."""
    if condition is None:
        return True
    if condition.all is not None:
        return all(holds(c, results) for c in condition.all)
    if condition.any is not None:
        return any(holds(c, results) for c in condition.any)
    if condition.not_ is not None:
        return not holds(condition.not_, results)
    assert condition.stage is not None
    result = results.get(condition.stage)
    if condition.op == "missing":
        return result is None or _field(result, condition.field) is None
    if result is None:
        return False
    return _compare(condition.op, _field(result, condition.field), condition.value)

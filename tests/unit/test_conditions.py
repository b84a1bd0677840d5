"""Unit tests for worker.engine.conditions.holds: every op, every field kind, combinators."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.documents import StageResult
from schemas.pipeline import Condition
from worker.engine.conditions import holds

RESULTS = {
    "spam": StageResult(doc_id="d", stage="spam", label="ham", score=0.2, output={"p_spam": 0.2}),
    "sentiment": StageResult(
        doc_id="d", stage="sentiment", label="positive", score=0.9,
        output={"scores": {"positive": 0.9}, "lang": "en", "words": 120, "flag": False, "none_key": None},
    ),
    "qa": StageResult(doc_id="d", stage="qa", label=None, score=None, output={"answer": "Paris"}),
}


def leaf(stage: str, op: str, value: Any = None, field: str = "label") -> Condition:
    data: dict[str, Any] = {"stage": stage, "op": op, "field": field}
    if value is not None:
        data["value"] = value
    return Condition.model_validate(data)


def test_no_condition_always_holds() -> None:
    assert holds(None, {}) is True
    assert holds(None, RESULTS) is True


@pytest.mark.parametrize(
    ("op", "value", "expected"),
    [
        ("eq", "ham", True),
        ("eq", "spam", False),
        ("ne", "spam", True),
        ("ne", "ham", False),
        ("in", ["ham", "other"], True),
        ("in", ["spam"], False),
        ("not_in", ["spam"], True),
        ("not_in", ["ham", "spam"], False),
        ("exists", None, True),
        ("missing", None, False),
    ],
)
def test_label_ops(op: str, value: Any, expected: bool) -> None:
    assert holds(leaf("spam", op, value), RESULTS) is expected


@pytest.mark.parametrize(
    ("op", "value", "expected"),
    [
        ("gt", 0.1, True),
        ("gt", 0.2, False),
        ("gte", 0.2, True),
        ("gte", 0.21, False),
        ("lt", 0.3, True),
        ("lt", 0.2, False),
        ("lte", 0.2, True),
        ("lte", 0.19, False),
        ("eq", 0.2, True),
        ("ne", 0.2, False),
        ("gt", 0, True),
    ],
)
def test_score_ops(op: str, value: Any, expected: bool) -> None:
    assert holds(leaf("spam", op, value, field="score"), RESULTS) is expected


@pytest.mark.parametrize(
    ("field", "op", "value", "expected"),
    [
        ("lang", "eq", "en", True),
        ("lang", "in", ["de", "fr"], False),
        ("words", "gte", 100, True),
        ("words", "lt", 100, False),
        ("scores", "exists", None, True),
        ("nope", "exists", None, False),
        ("nope", "missing", None, True),
        ("none_key", "missing", None, True),
        ("none_key", "exists", None, False),
        ("flag", "eq", False, True),
        ("flag", "exists", None, True),
    ],
)
def test_output_key_ops(field: str, op: str, value: Any, expected: bool) -> None:
    assert holds(leaf("sentiment", op, value, field=field), RESULTS) is expected


def test_numeric_op_on_text_field_is_false() -> None:
    assert holds(leaf("sentiment", "gt", 1, field="lang"), RESULTS) is False
    assert holds(leaf("sentiment", "lt", 1, field="lang"), RESULTS) is False


def test_field_none_in_result() -> None:
    # qa has no label and no score: only `missing` holds, every comparison is false
    assert holds(leaf("qa", "missing"), RESULTS) is True
    assert holds(leaf("qa", "exists"), RESULTS) is False
    assert holds(leaf("qa", "ne", "x"), RESULTS) is False
    assert holds(leaf("qa", "not_in", ["x"]), RESULTS) is False
    assert holds(leaf("qa", "lt", 1.0, field="score"), RESULTS) is False
    assert holds(leaf("qa", "eq", "Paris", field="answer"), RESULTS) is True


@pytest.mark.parametrize(
    ("op", "value"),
    [("eq", "ham"), ("ne", "ham"), ("in", ["ham"]), ("not_in", ["ham"]), ("gt", 0), ("gte", 0), ("lt", 1), ("lte", 1), ("exists", None)],
)
def test_missing_earlier_result_only_missing_holds(op: str, value: Any) -> None:
    assert holds(leaf("ghost", op, value), RESULTS) is False
    assert holds(leaf("ghost", op, value, field="score"), {}) is False


def test_missing_op_on_missing_result() -> None:
    assert holds(leaf("ghost", "missing"), RESULTS) is True
    assert holds(leaf("spam", "missing"), {}) is True


def _c(data: dict[str, Any]) -> Condition:
    return Condition.model_validate(data)


def test_all_combinator() -> None:
    yes = {"stage": "spam", "op": "eq", "value": "ham"}
    no = {"stage": "spam", "op": "eq", "value": "spam"}
    assert holds(_c({"all": [yes, {"stage": "sentiment", "op": "exists"}]}), RESULTS) is True
    assert holds(_c({"all": [yes, no]}), RESULTS) is False
    assert holds(_c({"all": []}), RESULTS) is True


def test_any_combinator() -> None:
    yes = {"stage": "spam", "op": "eq", "value": "ham"}
    no = {"stage": "spam", "op": "eq", "value": "spam"}
    assert holds(_c({"any": [no, yes]}), RESULTS) is True
    assert holds(_c({"any": [no, no]}), RESULTS) is False
    assert holds(_c({"any": []}), RESULTS) is False


def test_not_combinator() -> None:
    assert holds(_c({"not": {"stage": "spam", "op": "eq", "value": "spam"}}), RESULTS) is True
    assert holds(_c({"not": {"stage": "spam", "op": "eq", "value": "ham"}}), RESULTS) is False
    # not(missing) on a skipped stage
    assert holds(_c({"not": {"stage": "ghost", "op": "eq", "value": "x"}}), RESULTS) is True


def test_nested_combinators() -> None:
    cond = _c(
        {
            "all": [
                {"stage": "spam", "op": "eq", "value": "ham"},
                {
                    "any": [
                        {"stage": "sentiment", "op": "eq", "value": "negative"},
                        {"not": {"stage": "sentiment", "field": "score", "op": "lt", "value": 0.8}},
                    ]
                },
            ]
        }
    )
    assert holds(cond, RESULTS) is True
    lower = dict(RESULTS)
    lower["sentiment"] = StageResult(doc_id="d", stage="sentiment", label="positive", score=0.5)
    assert holds(cond, lower) is False
    negative = dict(lower)
    negative["sentiment"] = StageResult(doc_id="d", stage="sentiment", label="negative", score=0.5)
    assert holds(cond, negative) is True
    spam = dict(negative)
    spam["spam"] = StageResult(doc_id="d", stage="spam", label="spam", score=0.99)
    assert holds(cond, spam) is False

"""The `finetune:` stage block and the `feedback:` topic in pipeline files: defaults and errors with lines."""

from __future__ import annotations

import pytest

from worker.config import parse_pipeline
from worker.errors import PipelineFileError

HEAD = """version: 1
name: p
source: {type: file, path: x}
stages:
  - name: spam
    type: spam
    model: models/spam
"""


def _problems(text: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(PipelineFileError) as info:
        parse_pipeline(text, "p.yaml", env={})
    return [(p.line, p.path, p.message) for p in info.value.problems]


def test_full_block_parses_with_defaults() -> None:
    spec = parse_pipeline(HEAD + """    finetune:
      eval_data: data/test.tsv
      base_data: data/train.tsv
      base_mix: 0.5
      epochs: 1
      gate: {metric: "f1:spam", margin: 0.02}
      schedule: {cron: "0 3 * * *", min_new_labels: 200}
""", env={})
    ft = spec.stage("spam").finetune
    assert ft is not None and ft.schedule is not None
    assert (ft.eval_data, ft.base_mix, ft.epochs, ft.holdout, ft.seed) == ("data/test.tsv", 0.5, 1, 0.2, 0)
    assert (ft.gate.metric, ft.gate.margin, ft.gate.max_recall_drop) == ("f1:spam", 0.02, 0.05)
    assert (ft.schedule.cron, ft.schedule.min_new_labels) == ("0 3 * * *", 200)
    assert parse_pipeline(HEAD, env={}).stage("spam").finetune is None


def test_field_errors_carry_paths_and_lines() -> None:
    problems = _problems(HEAD + """    finetune:
      epochs: 0
      gate: {metric: rouge, margin: -1}
      schedule: {cron: "every night"}
      shedule: {}
""")
    assert problems == [
        (9, "stages[0].finetune.epochs", "Input should be greater than 0"),
        (10, "stages[0].finetune.gate.metric", "String should match pattern '^(macro_f1|accuracy|f1|exact_match|bleu|chrf|f1:.+)$'"),
        (10, "stages[0].finetune.gate.margin", "Input should be greater than or equal to 0"),
        (11, "stages[0].finetune.schedule.cron", "`every night` is not a cron expression (e.g. `0 3 * * *`: every day at 03:00 UTC)"),
        (12, "stages[0].finetune.shedule", "unknown field (check its spelling and indentation)"),
    ]


def test_metric_must_fit_the_stage() -> None:
    assert _problems(HEAD + "    finetune: {gate: {metric: bleu}}\n") == [
        (5, "stages[0]", "`finetune.gate.metric: bleu` does not fit a spam stage (use one of: macro_f1, accuracy, f1:<label>)")]
    assert "names a label the stage does not have" in _problems(HEAD + "    finetune: {gate: {metric: 'f1:eggs'}}\n")[0][2]
    assert _problems(HEAD + "    finetune: {schedule: {}}\n")[0][1:] == (
        "stages[0].finetune.schedule", "a schedule needs `cron`, `min_new_labels`, or both")


def test_feedback_topic_needs_servers_without_a_kafka_source() -> None:
    assert "`feedback.bootstrap_servers` is needed" in _problems(HEAD + "feedback: {topic: labels}\n")[0][2]
    spec = parse_pipeline(HEAD + "feedback: {topic: labels, bootstrap_servers: 'localhost:9092'}\n", env={})
    assert spec.feedback is not None and spec.feedback.topic == "labels" and spec.feedback.api_version == (2, 5, 0)

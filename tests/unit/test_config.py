"""Unit tests for worker.config (YAML -> interpolation -> PipelineSpec) and schemas.pipeline."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas.pipeline import (
    ClassifyStage,
    Condition,
    FileSource,
    KafkaSource,
    PipelineSpec,
    QaStage,
    SpamStage,
    SqlSink,
    TranslateStage,
)
from worker.config import interpolate, load_pipeline, parse_pipeline
from worker.errors import PipelineFileError

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "pipelines").glob("*.yaml"))

VALID = textwrap.dedent(
    """\
    version: 1
    name: reviews
    description: test pipeline
    source:
      type: file
      path: docs.jsonl
    stages:
      - name: sentiment
        type: classify
        model: models/sentiment
        labels: [negative, positive]
      - name: spam
        type: spam
        model: models/spam
      - name: qa
        type: qa
        model: models/qa
        questions: ["What is this about?"]
      - name: translate
        type: translate
        model: models/translate
        when:
          stage: spam
          op: eq
          value: ham
    """
)


def _problems(text: str, env: dict[str, str] | None = None) -> list:
    with pytest.raises(PipelineFileError) as info:
        parse_pipeline(text, "p.yaml", env=env or {})
    return info.value.problems


def _by_path(problems: list) -> dict[str, list]:
    found: dict[str, list] = {}
    for p in problems:
        found.setdefault(p.path, []).append(p)
    return found


def _line_of(text: str, needle: str) -> int:
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in text")


# --------------------------------------------------------------------------- valid files


def test_valid_pipeline_parses_into_typed_stages_with_defaults() -> None:
    spec = parse_pipeline(VALID, env={})
    assert isinstance(spec, PipelineSpec)
    assert spec.name == "reviews" and spec.version == 1 and spec.description == "test pipeline"
    assert isinstance(spec.source, FileSource)
    assert spec.source.path == "docs.jsonl"
    assert spec.source.format == "auto" and spec.source.text_field == "text" and spec.source.id_field == "id"
    assert spec.source.max_chars == 1_000_000 and spec.source.has_header is True

    kinds = [type(s) for s in spec.stages]
    assert kinds == [ClassifyStage, SpamStage, QaStage, TranslateStage]
    assert [s.name for s in spec.stages] == ["sentiment", "spam", "qa", "translate"]

    sentiment, spam, qa, translate = spec.stages
    assert sentiment.labels == ["negative", "positive"]
    assert sentiment.multi_label is False and sentiment.threshold == 0.5
    assert sentiment.batch_size == 32 and sentiment.max_tokens == 8192 and sentiment.max_length == 256
    assert sentiment.retries == 1 and sentiment.resources.device == "auto" and sentiment.resources.replicas == 1
    assert sentiment.when is None
    assert spam.spam_label == "spam" and spam.ham_label == "ham" and spam.threshold == 0.5
    assert qa.questions == ["What is this about?"]
    assert qa.max_length == 384 and qa.stride == 128 and qa.max_windows == 64
    assert translate.source_lang == "en" and translate.target_lang == "de"
    assert translate.source_scripts == ["LATIN"] and translate.max_chars == 2000
    assert translate.when is not None
    assert translate.when.stage == "spam" and translate.when.op == "eq" and translate.when.value == "ham"
    assert translate.when.field == "label"

    assert isinstance(spec.sink, SqlSink)
    assert spec.sink.url == "sqlite:///textworker.db" and spec.sink.store_text is True


def test_kafka_source_parses() -> None:
    text = VALID.replace(
        "  type: file\n  path: docs.jsonl\n",
        "  type: kafka\n  bootstrap_servers: localhost:9092\n  topics: [docs]\n  group: g1\n",
    )
    spec = parse_pipeline(text, env={})
    assert isinstance(spec.source, KafkaSource)
    assert spec.source.topics == ["docs"] and spec.source.group == "g1" and spec.source.start == "earliest"


def test_spec_is_frozen() -> None:
    spec = parse_pipeline(VALID, env={})
    with pytest.raises(ValidationError):
        spec.name = "other"  # type: ignore[misc]


def test_stage_lookup_and_keyerror_lists_stages() -> None:
    spec = parse_pipeline(VALID, env={})
    assert isinstance(spec.stage("qa"), QaStage)
    assert spec.stage("spam").name == "spam"
    with pytest.raises(KeyError) as info:
        spec.stage("nope")
    message = str(info.value)
    assert "nope" in message and "reviews" in message
    assert "sentiment, spam, qa, translate" in message


def test_load_pipeline_reads_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(VALID.replace("docs.jsonl", "${INPUT}"), encoding="utf-8")
    spec = load_pipeline(path, env={"INPUT": "in/data.csv"})
    assert spec.source.path == "in/data.csv"


def test_load_pipeline_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PipelineFileError) as info:
        load_pipeline(tmp_path / "absent.yaml", env={})
    assert info.value.problems[0].path == "<file>"
    assert "cannot read" in info.value.problems[0].message
    assert info.value.code == "TW101"


def test_load_pipeline_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(PipelineFileError) as info:
        load_pipeline(path, env={})
    assert "cannot read" in info.value.problems[0].message


# --------------------------------------------------------------------------- interpolation


def test_interpolate_var_and_default() -> None:
    env = {"A": "alpha", "EMPTY": ""}
    data = {
        "plain": "${A}",
        "inline": "x-${A}-y",
        "default_unused": "${A:-zzz}",
        "default_unset": "${UNSET:-fallback}",
        "default_empty": "${EMPTY:-fallback}",
        "url_default": "${DB:-sqlite:///x.db}",
        "empty_default": "${UNSET:-}",
        "list": ["${A}", 3, None],
        "nested": {"k": "${A}/m"},
        "number": 5,
    }
    problems: list = []
    out = interpolate(data, env, (), problems)
    assert problems == []
    assert out == {
        "plain": "alpha",
        "inline": "x-alpha-y",
        "default_unused": "alpha",
        "default_unset": "fallback",
        "default_empty": "fallback",
        "url_default": "sqlite:///x.db",
        "empty_default": "",
        "list": ["alpha", 3, None],
        "nested": {"k": "alpha/m"},
        "number": 5,
    }


def test_interpolate_escaped_is_literal() -> None:
    problems: list = []
    out = interpolate({"a": "$${X}", "b": "cost $${X:-1} and ${X}"}, {"X": "v"}, (), problems)
    assert out == {"a": "${X}", "b": "cost ${X:-1} and v"}
    assert problems == []


def test_interpolate_missing_var_reports_path() -> None:
    problems: list = []
    out = interpolate({"stages": [{"model": "m/${NOPE}"}]}, {}, (), problems)
    assert out == {"stages": [{"model": "m/"}]}
    assert len(problems) == 1
    path, message = problems[0]
    assert path == ("stages", 0, "model")
    assert "NOPE" in message and "not set" in message


def test_interpolated_value_is_coerced_to_field_type() -> None:
    text = VALID.replace("    model: models/spam\n", "    model: models/spam\n    batch_size: ${BS:-16}\n")
    assert parse_pipeline(text, env={}).stage("spam").batch_size == 16
    assert parse_pipeline(text, env={"BS": "4"}).stage("spam").batch_size == 4


def test_missing_var_is_a_problem_with_path_and_line() -> None:
    text = VALID.replace("model: models/spam", "model: ${MODELS}/spam")
    problems = _problems(text)
    hits = [p for p in problems if "MODELS" in p.message]
    assert len(hits) == 1
    assert hits[0].path == "stages[1].model"
    assert hits[0].line == _line_of(text, "${MODELS}")
    # the same variable set: the file validates
    assert parse_pipeline(text, env={"MODELS": "/m"}).stage("spam").model == "/m/spam"


def test_missing_var_in_otherwise_valid_string_field_still_fails() -> None:
    # description may be empty, so only the interpolation problem is left
    text = VALID.replace("description: test pipeline", "description: ${DESC}")
    problems = _problems(text)
    assert [p.path for p in problems] == ["description"]
    assert problems[0].line == _line_of(text, "${DESC}")


# --------------------------------------------------------------------------- problems


def test_every_problem_reported_at_once() -> None:
    text = textwrap.dedent(
        """\
        name: p
        source: {type: file, path: x.jsonl}
        stages:
          - name: a
            type: classify
            model: m
            labls: [x]
          - name: a
            type: qa
            model: m
          - name: c
            type: spam
            model: ${NOPE}
            batch_size: many
            when: {stage: later, op: eq, value: x}
          - name: later
            type: spam
            model: m
        """
    )
    problems = _problems(text)
    by_path = _by_path(problems)

    unknown = by_path["stages[0].labls"][0]
    assert "unknown field" in unknown.message and unknown.line == 7

    assert any("duplicate stage name `a`" in p.message for p in by_path["stages[1].name"])
    assert by_path["stages[1].name"][0].line == 8
    assert any("questions" in p.message for p in by_path["stages[1]"])

    assert any("NOPE" in p.message for p in by_path["stages[2].model"])
    assert by_path["stages[2].model"][0].line == 13

    batch = by_path["stages[2].batch_size"][0]
    assert "integer" in batch.message and batch.line == 14

    when = by_path["stages[2].when"][0]
    assert "later" in when.message and "not an earlier stage" in when.message and when.line == 15

    error = PipelineFileError("p.yaml", problems)
    assert f"{len(problems)} problem(s)" in str(error)
    assert "p.yaml:7: [stages[0].labls]" in str(error)


def test_unknown_top_level_field_with_line() -> None:
    text = VALID + "sinkk:\n  url: sqlite:///x.db\n"
    problems = _problems(text)
    assert [(p.path, p.line) for p in problems] == [("sinkk", _line_of(text, "sinkk"))]
    assert "unknown field" in problems[0].message


def test_unknown_nested_field_in_source_with_line() -> None:
    text = VALID.replace("  path: docs.jsonl\n", "  path: docs.jsonl\n  txt_field: body\n")
    problems = _problems(text)
    assert [(p.path, p.line) for p in problems] == [("source.txt_field", _line_of(text, "txt_field"))]


def test_wrong_types_reported_per_field() -> None:
    text = VALID.replace("    labels: [negative, positive]\n", "    labels: [negative, positive]\n    threshold: high\n    multi_label: maybe\n")
    paths = {p.path for p in _problems(text)}
    assert paths == {"stages[0].threshold", "stages[0].multi_label"}


def test_qa_without_questions() -> None:
    text = VALID.replace('    questions: ["What is this about?"]\n', "")
    problems = _problems(text)
    assert len(problems) == 1
    assert problems[0].path == "stages[2]"
    assert "questions" in problems[0].message
    assert problems[0].line == _line_of(text, "- name: qa")


def test_qa_stride_too_large() -> None:
    text = VALID.replace('    questions: ["What is this about?"]\n', '    questions: ["q"]\n    max_length: 64\n    stride: 32\n')
    problems = _problems(text)
    assert len(problems) == 1 and "stride" in problems[0].message


def test_unknown_stage_type() -> None:
    text = VALID.replace("type: spam", "type: sentiment")
    problems = _problems(text)
    assert len(problems) == 1 and problems[0].path == "stages[1]"


def test_when_unknown_stage_is_a_problem() -> None:
    text = VALID.replace("stage: spam", "stage: nosuch")
    problems = _problems(text)
    assert len(problems) == 1
    assert "nosuch" in problems[0].message and "not an earlier stage" in problems[0].message


def test_when_later_stage_is_a_problem() -> None:
    text = VALID.replace("    labels: [negative, positive]\n", "    labels: [negative, positive]\n    when: {stage: qa, op: exists}\n")
    problems = _problems(text)
    assert len(problems) == 1
    assert "['qa']" in problems[0].message and "not an earlier stage" in problems[0].message


def test_when_self_reference_is_a_problem() -> None:
    text = VALID.replace("stage: spam", "stage: translate")
    problems = _problems(text)
    assert any("translate" in p.message and "not an earlier stage" in p.message for p in problems)


def test_when_inside_combinator_checked() -> None:
    text = VALID.replace(
        "    when:\n      stage: spam\n      op: eq\n      value: ham\n",
        "    when:\n      all:\n        - {stage: spam, op: eq, value: ham}\n        - not: {stage: ghost, op: exists}\n",
    )
    problems = _problems(text)
    assert len(problems) == 1 and "ghost" in problems[0].message


def test_duplicate_stage_names_is_a_problem() -> None:
    text = VALID.replace("name: qa", "name: spam")
    problems = _problems(text)
    assert len(problems) == 1
    assert "duplicate stage name `spam`" in problems[0].message


def test_duplicate_stage_name_in_valid_file_has_field_path_and_line() -> None:
    text = VALID.replace("name: qa", "name: spam")
    problems = _problems(text)
    second = [n for n, line in enumerate(text.splitlines(), start=1) if "- name: spam" in line][1]
    assert [(p.path, p.line) for p in problems] == [("stages[2].name", second)]


def test_when_unknown_stage_in_valid_file_has_field_path_and_line() -> None:
    text = VALID.replace("stage: spam", "stage: nosuch")
    problems = _problems(text)
    assert [(p.path, p.line) for p in problems] == [("stages[3].when", _line_of(text, "when:"))]


def test_invalid_yaml_reports_line() -> None:
    text = "name: p\nsource:\n  type: file\n   path: x\nstages: []\n"
    problems = _problems(text)
    assert len(problems) == 1
    assert problems[0].path == "<file>"
    assert "not valid YAML" in problems[0].message
    assert problems[0].line == 4


def test_unclosed_flow_sequence_reports_line() -> None:
    text = "name: p\nstages: [a, b\nsink: {}\n"
    problems = _problems(text)
    assert "not valid YAML" in problems[0].message
    assert problems[0].line is not None and problems[0].line >= 2


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "", "42\n"])
def test_non_mapping_file(text: str) -> None:
    problems = _problems(text)
    assert len(problems) == 1
    assert problems[0].path == "<file>" and "mapping" in problems[0].message


def test_empty_stage_list_and_bad_name() -> None:
    text = "name: 'bad name!'\nsource: {type: file, path: x}\nstages: []\n"
    paths = {p.path for p in _problems(text)}
    assert paths == {"name", "stages"}


def test_missing_required_fields() -> None:
    problems = _problems("name: p\n")
    paths = {p.path for p in problems}
    assert paths == {"source", "stages"}
    assert all("required" in p.message.lower() for p in problems)


def test_kafka_without_topics_is_a_problem() -> None:
    text = VALID.replace("  type: file\n  path: docs.jsonl\n", "  type: kafka\n  bootstrap_servers: b:9092\n  group: g\n")
    problems = _problems(text)
    assert len(problems) == 1 and "topics" in problems[0].message and problems[0].path == "source"


# --------------------------------------------------------------------------- conditions


def test_condition_leaf_defaults() -> None:
    cond = Condition.model_validate({"stage": "spam", "value": "ham"})
    assert cond.op == "eq" and cond.field == "label" and cond.stages() == {"spam"}


def test_condition_combinators_parse() -> None:
    cond = Condition.model_validate(
        {
            "all": [
                {"stage": "a", "op": "eq", "value": "x"},
                {"any": [{"stage": "b", "op": "gt", "field": "score", "value": 0.5}, {"not": {"stage": "c", "op": "exists"}}]},
            ]
        }
    )
    assert cond.all is not None and len(cond.all) == 2
    inner = cond.all[1]
    assert inner.any is not None
    assert inner.any[1].not_ is not None and inner.any[1].not_.stage == "c"
    assert cond.stages() == {"a", "b", "c"}


@pytest.mark.parametrize(
    "data",
    [
        {"all": [{"stage": "a", "op": "exists"}], "stage": "b", "op": "exists"},
        {"all": [{"stage": "a", "op": "exists"}], "any": [{"stage": "b", "op": "exists"}]},
        {"not": {"stage": "a", "op": "exists"}, "stage": "b", "op": "exists"},
        {},
        {"op": "exists"},
    ],
    ids=["all+stage", "all+any", "not+stage", "empty", "no-stage"],
)
def test_condition_rejects_zero_or_two_kinds(data: dict) -> None:
    with pytest.raises(ValidationError) as info:
        Condition.model_validate(data)
    assert "exactly one of" in str(info.value)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"stage": "a", "op": "in", "value": "x"}, "list"),
        ({"stage": "a", "op": "not_in", "value": 3}, "list"),
        ({"stage": "a", "op": "gt", "value": "x"}, "number"),
        ({"stage": "a", "op": "lte"}, "number"),
        ({"stage": "a", "op": "eq"}, "value"),
        ({"stage": "a", "op": "ne"}, "value"),
        ({"stage": "a", "op": "like", "value": "x"}, "op"),
        ({"stage": "a", "op": "eq", "value": "x", "extra": 1}, "extra"),
    ],
)
def test_condition_rejects_bad_leaf(data: dict, needle: str) -> None:
    with pytest.raises(ValidationError) as info:
        Condition.model_validate(data)
    assert needle in str(info.value)


def test_condition_two_kinds_in_pipeline_file_reports_when_path() -> None:
    text = VALID.replace(
        "      value: ham\n",
        "      value: ham\n      all: [{stage: spam, op: exists}]\n",
    )
    problems = _problems(text)
    assert any(p.path == "stages[3].when" and "exactly one of" in p.message for p in problems)


# --------------------------------------------------------------------------- shipped files


def _env_for(text: str) -> dict[str, str]:
    """Values for every `${VAR}` without a default (the ones with defaults stay unset)."""
    names = re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text)
    return {name: f"placeholder-{name.lower()}" for name in names}


def test_pipelines_directory_is_not_empty() -> None:
    assert SHIPPED, "no pipelines/*.yaml found"


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_pipeline_validates(path: Path) -> None:
    env = _env_for(path.read_text(encoding="utf-8"))
    spec = load_pipeline(path, env=env)
    assert spec.stages
    names = [s.name for s in spec.stages]
    assert len(names) == len(set(names))
    for stage in spec.stages:
        assert "${" not in stage.model
    assert "${" not in spec.sink.url


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_pipeline_validates_with_env_overrides(path: Path, tmp_path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    env = _env_for(text)
    env.update({"TEXTWORKER_MODELS_DIR": str(tmp_path / "models"), "TEXTWORKER_DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
                "TEXTWORKER_INPUT": str(tmp_path / "in.jsonl")})
    spec = load_pipeline(path, env=env)
    if "TEXTWORKER_MODELS_DIR" in text:
        assert any(s.model.startswith(str(tmp_path / "models")) for s in spec.stages)
    if "TEXTWORKER_DATABASE_URL" in text:
        assert spec.sink.url == f"sqlite:///{tmp_path}/x.db"

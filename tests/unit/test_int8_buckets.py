"""Length buckets of the OpenVINO int8 build: every document is padded to the next multiple of eight tokens, never past
the model's positions unless the document itself is longer."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from worker.models import int8, int8_openvino


def test_bucket_edges() -> None:
    assert [int8_openvino.bucket(n, 512) for n in (0, 1, 7, 8, 9, 16, 17)] == [8, 8, 8, 8, 16, 16, 24]
    assert int8_openvino.bucket(509, 510) == 510 and int8_openvino.bucket(600, 512) == 600


@given(tokens=st.integers(min_value=0, max_value=2048), limit=st.integers(min_value=1, max_value=1024))
def test_bucket_never_cuts_and_stays_within_positions(tokens: int, limit: int) -> None:
    width = int8_openvino.bucket(tokens, limit)
    assert width >= tokens
    assert width <= max(tokens, limit)
    assert width - max(tokens, 1) < int8_openvino.LENGTH_BUCKET or width == tokens


def test_runtime_override_and_model_kind() -> None:
    assert int8.runtime_for("AutoModelForQuestionAnswering", env={}) == "onnxruntime"
    assert int8.runtime_for(int8.SEQ_CLASS, env={"TEXTWORKER_INT8_RUNTIME": "ONNXRuntime"}) == "onnxruntime"
    assert int8.runtime_for(int8.SEQ_CLASS, env={"TEXTWORKER_INT8_RUNTIME": "openvino"}) == "openvino"
    assert int8.runtime_for(int8.SEQ_CLASS, env={}) == "onnxruntime"  # the default

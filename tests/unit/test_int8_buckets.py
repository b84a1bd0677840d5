"""Length buckets of the OpenVINO int8 build: every document is padded to the next multiple of eight tokens, never past
the model's positions unless the document itself is longer."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.errors import ModelFormatError
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


def test_row_sizes_are_powers_of_two_within_the_limit() -> None:
    assert int8_openvino.row_sizes(13) == [8, 4, 1]
    assert int8_openvino.row_sizes(37) == [16, 16, 4, 1]
    assert int8_openvino.row_sizes(0) == []
    assert int8_openvino.row_sizes(7, limit_rows=5) == [4, 2, 1]  # a limit that is no power of two: the one below it


@given(lengths=st.lists(st.integers(min_value=0, max_value=600), max_size=300), limit=st.sampled_from([128, 510, 512]),
       max_rows=st.one_of(st.none(), st.integers(min_value=1, max_value=64)), workers=st.integers(min_value=1, max_value=4))
def test_calls_hold_every_document_once_in_a_shape_prepared_at_load(lengths: list[int], limit: int, max_rows: int | None,
                                                                   workers: int) -> None:
    calls = int8_openvino.plan_calls(lengths, limit, max_rows, workers)
    members = sorted(row for chunk, _ in calls for row in chunk)
    assert members == list(range(len(lengths)))  # each document in exactly one call
    rows_limit = min(max_rows or int8_openvino.CHUNK_ROWS, int8_openvino.CHUNK_ROWS)
    warm = set(int8_openvino.warm_shapes(limit, 10_000, rows_limit))
    for chunk, width in calls:
        assert {int8_openvino.bucket(lengths[row], limit) for row in chunk} == {width}  # one bucket per call
        assert 1 <= len(chunk) <= rows_limit
        if width <= limit and width % int8_openvino.LENGTH_BUCKET == 0:  # past the positions: the documents' own widths
            assert (len(chunk), width) in warm
    assert len(calls) >= min(workers, len(lengths))  # a few documents still spread over the streams
    sizes = [len(chunk) * width for chunk, width in calls]
    assert sizes == sorted(sizes, reverse=True)  # largest first


def test_warm_shapes_and_their_setting() -> None:
    shapes = int8_openvino.warm_shapes(512, 128)
    assert len(shapes) == 16 * 5 and (16, 128) in shapes and (1, 8) in shapes and (3, 8) not in shapes
    assert int8_openvino.warm_shapes(60, 128) == [(s, w) for w in range(8, 57, 8) for s in (1, 2, 4, 8, 16)]
    assert {s for s, _ in int8_openvino.warm_shapes(512, 16, max_rows=5)} == {1, 2, 4}
    assert int8_openvino.warm_tokens({}) == int8_openvino.WARM_TOKENS
    assert int8_openvino.warm_tokens({"TEXTWORKER_OPENVINO_WARM_TOKENS": "0"}) == 0
    assert int8_openvino.warm_tokens({"TEXTWORKER_OPENVINO_WARM_TOKENS": " 256 "}) == 256
    for bad in ("-1", "lots", "1.5"):
        with pytest.raises(ModelFormatError, match="TEXTWORKER_OPENVINO_WARM_TOKENS"):
            int8_openvino.warm_tokens({"TEXTWORKER_OPENVINO_WARM_TOKENS": bad})

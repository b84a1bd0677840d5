"""`benchmarks/int8_profile.py`: how a profile of an int8 build is split, and the bound it prints."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from tests.conftest import benchmark_script


def _script() -> ModuleType:
    return benchmark_script("int8_profile")


def _node(op: str, ts: int, dur: int, inputs: list[list[int]], outputs: list[list[int]]) -> dict[str, Any]:
    return {"cat": "Node", "name": f"{op}_{ts}_kernel_time", "ts": ts, "dur": dur,
            "args": {"op_name": op, "input_type_shape": [{"float": shape} for shape in inputs],
                     "output_type_shape": [{"float": shape} for shape in outputs]}}


def _events(docs: int, warmup: int = 0) -> list[dict[str, Any]]:
    """Per run: a 10 x 64 by 64 x 128 product (100 us), a fused attention on 10 x 64 (200 us), a GELU (50 us)."""
    events: list[dict[str, Any]] = []
    for run in range(warmup + docs):
        ts = run * 1000
        events.append({"cat": "Session", "name": "model_run", "ts": ts, "dur": 500})
        events.append(_node("DynamicQuantizeMatMul", ts + 1, 100, [[1, 10, 64], [128]], [[1, 10, 128]]))
        events.append(_node("QAttention", ts + 200, 200, [[1, 10, 64], [192]], [[1, 10, 64]]))
        events.append(_node("BiasGelu", ts + 400, 50, [[1, 10, 128]], [[1, 10, 128]]))
    return events


def test_products_attention_and_the_rest_are_split_and_the_bound_follows() -> None:
    script = _script()
    product = 2 * 10 * 64 * 128  # 163,840 FLOPs in 100 us: 1.6384 GOP/s
    projection = 2 * 10 * 64 * 3 * 64  # 245,760 FLOPs inside the QAttention: 150 us at that rate
    assert script.gemm_flops("DynamicQuantizeMatMul", [{"float": [1, 10, 64]}], [{"float": [1, 10, 128]}]) == product
    assert script.gemm_flops("QAttention", [{"uint8": [1, 10, 64]}, {"float": [192]}], [{"float": [1, 10, 64]}]) == projection
    assert script.gemm_flops("BiasGelu", [{"float": [1, 10, 128]}], [{"float": [1, 10, 128]}]) == 0.0
    peak = 3.2768  # GOP/s: the ideal time of the 409,600 FLOPs is 125 us
    result = script.summarise(_events(2), 2, 500e-6, 500e-6, product + projection, peak)
    assert result["int8_product_rate_gops"] == pytest.approx(1.6, abs=0.05)
    assert result["int8_product_share_of_peak"] == pytest.approx(0.5, abs=0.01)
    assert result["int8_products_us_per_doc"] == pytest.approx(250.0)  # 100 + the projection's 150
    assert result["fp32_operators_us_per_doc"] == pytest.approx(100.0)  # the attention's other 50 + the GELU's 50
    assert result["between_operators_us_per_doc"] == pytest.approx(150.0)  # 500 wall - 350 in kernels
    assert result["ideal_us_per_doc"] == pytest.approx(125.0)
    assert result["roofline_fraction"] == pytest.approx(0.25)
    assert result["bound_if_products_at_peak"] == pytest.approx(125 / (125 + 100 + 150), abs=1e-3)
    assert [row["op"] for row in result["operators"]] == ["QAttention", "DynamicQuantizeMatMul", "BiasGelu"]


def test_a_slower_profiled_pass_is_scaled_to_the_timed_one_and_warmup_runs_are_dropped() -> None:
    script = _script()
    events = script.after_warmup(_events(2, warmup=3), 3)
    assert sum(1 for event in events if event.get("cat") == "Node") == 6
    fast = script.summarise(_events(2), 2, 500e-6, 500e-6, 409_600, 3.2768)
    slow = script.summarise(events, 2, 1000e-6, 500e-6, 409_600, 3.2768)  # the profiled pass took twice as long
    assert slow["wall_us_per_doc"] == 500.0
    assert slow["int8_products_us_per_doc"] == pytest.approx(fast["int8_products_us_per_doc"] / 2)
    assert slow["int8_product_rate_gops"] == pytest.approx(2 * fast["int8_product_rate_gops"], rel=0.05)
    total = slow["int8_products_us_per_doc"] + slow["fp32_operators_us_per_doc"] + slow["between_operators_us_per_doc"]
    assert total == pytest.approx(500.0, abs=0.5)

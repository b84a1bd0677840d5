"""`benchmarks/openvino_ceiling.py`: how the OpenVINO build's operator time is split, and the bound it prints."""

from __future__ import annotations

from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import benchmark_script


def _script() -> ModuleType:
    return benchmark_script("openvino_ceiling")


def test_products_attention_and_the_rest_are_split_by_node_type() -> None:
    split = _script().operator_split([
        ("FullyConnected", "brgemm_avx512_I8", 0.006), ("Subgraph", "jit_avx512_i8", 0.002),
        ("FullyConnected", "brgemm_avx512_I8", 0.000), ("FullyConnectedQuantizedLegacy", "brgemm_avx512_i8", 0.001),
        ("Add", "jit_avx512_f32", 0.0005), ("MVN", "jit_avx512_f32", 0.0005),
    ])
    assert split["products"] == pytest.approx(0.7) and split["attention"] == pytest.approx(0.2) and split["other"] == pytest.approx(0.1)
    assert split["operators"][0] == {"op": "FullyConnected", "kernel": "brgemm_avx512_I8", "share": 0.6}
    assert [row["op"] for row in split["operators"]] == ["FullyConnected", "Subgraph", "FullyConnectedQuantizedLegacy", "Add", "MVN"]
    assert _script().operator_split([]) == {"products": 0.0, "attention": 0.0, "other": 0.0, "operators": []}


def test_the_bound_puts_the_products_at_the_peak_and_keeps_the_rest() -> None:
    script = _script()
    # 1 GFLOP counted, 1.1 computed (padding), a 100 GOP/s peak: 10 ms ideal, 11 ms for the padded products at the peak
    assert script.bound(1e9, 1.1e9, 0.020, 0.5, 100.0) == pytest.approx(0.010 / (0.011 + 0.010))
    assert script.bound(1e9, 1e9, 0.010, 1.0, 100.0) == pytest.approx(1.0)  # all products, already at the peak
    assert script.bound(1e9, 1.25e9, 0.050, 1.0, 100.0) == pytest.approx(0.8)  # only padding stands between it and the roofline


@given(real=st.floats(1e6, 1e10), padding=st.floats(1.0, 2.0), slowdown=st.floats(1.0, 50.0), share=st.floats(0.01, 1.0),
       peak=st.floats(1.0, 1e4))
def test_the_bound_lies_between_what_runs_now_and_the_padding_limit(real: float, padding: float, slowdown: float, share: float,
                                                                      peak: float) -> None:
    """Where the products run at or below the peak, the bound is no lower than the runtime's fraction now, and no
    higher than the share of the computed work that counts."""
    padded = real * padding
    products_s = padded / (peak * 1e9) * slowdown
    runtime_s = products_s / share
    now = real / (peak * 1e9) / runtime_s
    value = _script().bound(real, padded, runtime_s, share, peak)
    assert now * (1 - 1e-9) <= value <= real / padded * (1 + 1e-9)

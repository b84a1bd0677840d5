"""Which int8 weight range a build uses: 7 bits where the x86 int8 kernels add in 16 bits (no VNNI), 8 elsewhere."""

from __future__ import annotations

from worker.models import int8

AVX2 = {"sse4_2", "avx", "avx2", "fma"}


def test_seven_bit_weights_on_x86_without_vnni_only() -> None:
    assert int8.reduce_range(AVX2, "x86_64", {}) is True
    assert int8.reduce_range(AVX2 | {"avx512f", "avx512bw"}, "x86_64", {}) is True  # AVX-512 without VNNI still saturates
    for vnni in ("avx512_vnni", "avx_vnni", "amx_int8"):
        assert int8.reduce_range(AVX2 | {vnni}, "x86_64", {}) is False
    assert int8.reduce_range(set(), "aarch64", {}) is False  # other kernels altogether


def test_the_environment_decides_when_set() -> None:
    assert int8.reduce_range(AVX2, "x86_64", {"TEXTWORKER_INT8_REDUCE_RANGE": "0"}) is False
    assert int8.reduce_range(AVX2 | {"avx512_vnni"}, "x86_64", {"TEXTWORKER_INT8_REDUCE_RANGE": "1"}) is True
    assert int8.reduce_range(AVX2, "x86_64", {"TEXTWORKER_INT8_REDUCE_RANGE": "maybe"}) is True  # not a yes/no: the machine decides


def test_kernel_kinds() -> None:
    assert int8.kernels(AVX2, "x86_64") == "avx2"
    assert int8.kernels(AVX2 | {"avx512f", "avx512bw"}, "x86_64") == "avx512"
    assert int8.kernels(AVX2 | {"avx512f", "avx512bw", "avx512_vnni"}, "x86_64") == "vnni"
    assert int8.kernels(AVX2 | {"avx_vnni"}, "x86_64") == "vnni"
    assert int8.kernels(AVX2 | {"avx512_vnni", "amx_int8", "amx_tile"}, "x86_64") == "amx"
    assert int8.kernels({"sse4_2"}, "x86_64") == "x86"
    assert int8.kernels(set(), "aarch64") == "aarch64"

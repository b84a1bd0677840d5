"""What the CPU offers: its ISA flags, read once from `/proc/cpuinfo` (empty where there is none).

Several parts decide by them: the int8 build (`worker.models.int8`: weight range and kernel
kind), training (`worker.training`: bf16 autocast) and the benchmarks' machine label
(`worker.bench`).
"""

from __future__ import annotations

import functools
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


@functools.cache
def _cpuinfo() -> str:
    try:
        return CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def cpu_field(name: str) -> str | None:
    """The first `name : value` line's value (`model name`, `flags`), or None."""
    for line in _cpuinfo().splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == name:
            return value.strip()
    return None


def cpu_flags() -> frozenset[str]:
    """The CPU's ISA flags (`avx2`, `avx512_vnni`, `amx_int8`, ...)."""
    return frozenset((cpu_field("flags") or "").split())

"""Training and evaluation for every stage type."""

from __future__ import annotations

import hashlib
from pathlib import Path

from worker.machine import cpu_flags


def data_fingerprint(path: str | Path | None) -> str | None:
    """sha256 of a data file's bytes (recorded with each trained model version)."""
    if path is None or not Path(path).is_file():
        return None
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 matmul (AVX512-BF16 or AMX), where bf16 autocast speeds training up."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})

"""Training and evaluation for every stage type."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Any

from worker.errors import TextworkerError
from worker.machine import cpu_flags

TRAIN_DEVICES = ("auto", "cpu", "cuda")


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


def training_device() -> str:
    """Where a training run goes: `cuda` when torch sees a GPU, else `cpu`.

    `TEXTWORKER_TRAIN_DEVICE` (auto | cpu | cuda) overrides it, e.g. to keep a GPU for the
    stages serving traffic; `cuda` without a GPU falls back to the CPU with a warning, as a stage does.
    """
    from worker.models.loading import pick_device

    wanted = os.environ.get("TEXTWORKER_TRAIN_DEVICE", "").strip().lower() or "auto"
    if wanted not in TRAIN_DEVICES:
        raise TextworkerError(f"TEXTWORKER_TRAIN_DEVICE is `{wanted}`", hint=f"one of: {', '.join(TRAIN_DEVICES)}")
    return pick_device(wanted, who="TEXTWORKER_TRAIN_DEVICE=cuda")


def default_bf16(device: str) -> bool:
    """bf16 autocast by default: always on CUDA; on a CPU only where it has native bf16 matmul."""
    return device.startswith("cuda") or cpu_has_bf16()


def bf16_autocast(device: str, enabled: bool) -> Any:
    """bf16 autocast on `device` (`cuda...` or `cpu`) when `enabled`; a no-op context otherwise."""
    import torch

    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)

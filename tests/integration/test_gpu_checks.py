"""The GPU checks stay runnable: `tests/gpu` and `benchmarks/gpu_check.sh`, dry-run on the CPU.

A lent GPU machine is rare and its time short, so what `benchmarks/gpu_device.sh` runs there is
run here on every CI build, on the CPU (bf16 standing in for the GPU's `precision: auto`), so
a broken import, fixture or script shows up here rather than there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TEXTWORKER_TRAIN_DEVICE"}
    return {**env, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", **extra}


def test_the_gpu_tests_pass_as_a_dry_run_on_the_cpu() -> None:
    done = subprocess.run([sys.executable, "-m", "pytest", "tests/gpu", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-rA"],
                          cwd=REPO, env=_env(TEXTWORKER_GPU_TESTS_DEVICE="cpu"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "7 passed" in done.stdout, done.stdout[-2000:]
    assert "skipped" not in done.stdout


def test_without_a_gpu_they_skip_and_say_why() -> None:
    if _cuda():
        pytest.skip("this machine has a GPU")
    done = subprocess.run([sys.executable, "-m", "pytest", "tests/gpu", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-rs"],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:]
    assert "7 skipped" in done.stdout and "needs a CUDA GPU" in done.stdout


def test_gpu_check_sh_dry_run_reports_a_roofline_fraction(tmp_path: Path, shared_data: Path) -> None:
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=_env(GPU_CHECK_ALLOW_CPU="1", DOCS="24", OUT=str(tmp_path), NAME="dry", PY=sys.executable,
                                   TEXTS=str(shared_data / "ag_news" / "test.tsv")))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "dry.json").read_text())
    assert result["docs"] == 24 and result["parameters"] > 120e6  # RoBERTa-base-sized
    assert result["peak_dtype"] == ("bf16" if _cuda() else "fp32")
    assert set(result["docs_per_s"]) == {"roofline", "textworker", "hf_batched"}
    assert 0 < result["roofline_fraction"] < 1.5
    assert "textworker reaches" in done.stdout and "ag_news/test.tsv" in done.stderr


def test_gpu_check_sh_refuses_to_run_on_a_cpu_unless_asked(tmp_path: Path) -> None:
    if _cuda():
        pytest.skip("this machine has a GPU")
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=_env(OUT=str(tmp_path), PY=sys.executable))
    assert done.returncode == 2
    assert "no CUDA device visible" in done.stderr
    assert not list(tmp_path.glob("*.json"))


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())

"""Where training runs: `worker.training.training_device`, and every trainer saying where it ran.

On a machine without a GPU everything trains on the CPU and says so; `tests/gpu/` checks
the same trainers on a GPU (`benchmarks/gpu_device.sh`).
"""

from __future__ import annotations

import logging

import pytest
import torch

from worker.errors import TextworkerError
from worker.training import bf16_autocast, default_bf16, training_device

needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")


@needs_no_gpu
@pytest.mark.parametrize("setting", ["", "auto", "AUTO", " cpu ", "cuda"])
def test_without_a_gpu_training_runs_on_the_cpu(monkeypatch: pytest.MonkeyPatch, setting: str) -> None:
    monkeypatch.setenv("TEXTWORKER_TRAIN_DEVICE", setting)
    assert training_device() == "cpu"


@needs_no_gpu
def test_asking_for_cuda_without_one_says_so(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("TEXTWORKER_TRAIN_DEVICE", "cuda")
    with caplog.at_level(logging.WARNING, logger="worker.models.loading"):
        assert training_device() == "cpu"
    assert "no GPU" in caplog.text


def test_cpu_is_honoured_even_beside_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEXTWORKER_TRAIN_DEVICE", "cpu")
    assert training_device() == "cpu"


def test_an_unknown_setting_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEXTWORKER_TRAIN_DEVICE", "tpu")
    with pytest.raises(TextworkerError, match="TEXTWORKER_TRAIN_DEVICE is `tpu`") as caught:
        training_device()
    assert "auto, cpu, cuda" in str(caught.value.hint)


def test_bf16_is_the_default_on_a_gpu_and_optional_on_a_cpu() -> None:
    assert default_bf16("cuda") is True
    assert default_bf16("cuda:1") is True
    with bf16_autocast("cpu", True):
        assert torch.matmul(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    with bf16_autocast("cpu", False):
        assert torch.matmul(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32


@needs_no_gpu
def test_each_trainer_records_where_it_trained(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.unit.test_translation_training import make_pairs
    from worker.training.translation import train_translation

    monkeypatch.setenv("TEXTWORKER_TRAIN_DEVICE", "auto")
    info = train_translation(make_pairs(40), tmp_path / "mt", size="tiny", epochs=0.2, batch_tokens=256)
    assert info["device"] == "cpu"
    monkeypatch.setenv("TEXTWORKER_TRAIN_DEVICE", "gpu0")
    with pytest.raises(TextworkerError, match="TEXTWORKER_TRAIN_DEVICE"):
        train_translation(make_pairs(40), tmp_path / "mt2", size="tiny", epochs=0.2, batch_tokens=256)

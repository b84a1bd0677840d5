"""`textworker bench` end to end on a few real documents: the JSON its scripts rely on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import missing
from worker.bench import machine_line, render_bench

REPO = Path(__file__).resolve().parents[2]


def test_bench_json_names_model_docs_and_rates(models_dir: Path, shared_data: Path, tmp_path: Path) -> None:
    data = shared_data / "ag_news" / "test.tsv"
    reviews = shared_data / "docs" / "amazon_reviews.jsonl"
    if not data.is_file() or not reviews.is_file():
        missing(f"{data} and {reviews} (part of ../shared/data)")
    env_models = {"TEXTWORKER_MODELS_DIR": str(models_dir)}
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "bench", "pipelines/demo.yaml", "--stage", "sentiment", "--data", str(data), str(reviews),
         "--limit", "24", "--only", "textworker", "hf_per_doc", "hf_batched", "--precision", "fp32", "--json"],
        cwd=REPO, env={**os.environ, **env_models}, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["docs"] == 24
    assert Path(result["model"]).is_dir() and str(models_dir) in result["model"]
    rates = result["docs_per_s"]
    assert set(rates) == {"textworker", "hf_per_doc", "hf_batched", "roofline"}
    assert all(rate > 0 for rate in rates.values())
    assert result["textworker_over"]["hf_per_doc"] == pytest.approx(rates["textworker"] / rates["hf_per_doc"], rel=0.01)
    assert 0 < result["roofline_fraction"] == pytest.approx(rates["textworker"] / rates["roofline"], rel=0.01)
    assert "textworker:" in done.stderr and "docs/s" in done.stderr  # each contender reported as it finishes
    assert result["precision"] == "fp32" and result["peak_dtype"] == "fp32" and set(result["peaks"]) == {"fp32", "int8"}
    assert len(result["peak_samples"]) == 2 and result["matmul_peak_gflops"] == max(result["peak_samples"])  # before and after
    assert result["rounds"] == 1 and all(len(values) == 1 for values in result["samples"].values())
    assert len(result["textworker_load_s"]) == 1 and result["textworker_load_s"][0] > 0
    assert "textworker's model load, outside the timing:" in render_bench(result)
    assert result["machine"]["cpu"] and result["machine"]["cores"] >= 1
    if Path("/proc/cpuinfo").is_file() and "cpu family" in Path("/proc/cpuinfo").read_text():  # x86: the label tells generations apart
        assert isinstance(result["machine"]["family"], int) and isinstance(result["machine"]["model"], int)
        assert f"(family {result['machine']['family']} model {result['machine']['model']})" in machine_line(result["machine"])


def test_bench_int8_runs_the_baselines_on_the_int8_model_too(models_dir: Path, shared_data: Path) -> None:
    data = shared_data / "ag_news" / "test.tsv"
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "bench", "pipelines/demo.yaml", "--stage", "sentiment", "--data", str(data),
         "--limit", "16", "--only", "textworker", "hf_per_doc", "--precision", "int8", "--rounds", "2", "--json"],
        cwd=REPO, env={**os.environ, "TEXTWORKER_MODELS_DIR": str(models_dir)}, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["precision"] == "int8" and result["peak_dtype"] == "int8"
    assert set(result["docs_per_s"]) == {"textworker", "hf_per_doc", "hf_per_doc_int8", "roofline"}
    assert result["matmul_peak_gflops"] == result["peaks"]["int8"] > 0 and result["peaks"]["fp32"] > 0
    assert result["last_layer_first_token_only"] is True
    # two rounds, interleaved: every contender measured twice, the best of each counts; the peak before, between and after
    assert result["rounds"] == 2 and set(result["samples"]) == {"textworker", "hf_per_doc", "hf_per_doc_int8"}
    for name, values in result["samples"].items():
        assert len(values) == 2 and result["docs_per_s"][name] == pytest.approx(max(values), abs=0.01)
    assert len(result["peak_samples"]) == 3
    assert len(result["textworker_load_s"]) == 2 and all(seconds > 0 for seconds in result["textworker_load_s"])


def test_bench_refuses_zero_rounds(models_dir: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "bench", "pipelines/demo.yaml", "--stage", "sentiment", "--data", "x.tsv", "--rounds", "0"],
        cwd=REPO, env={**os.environ, "TEXTWORKER_MODELS_DIR": str(models_dir)}, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode != 0 and "--rounds must be at least 1" in done.stderr


@pytest.mark.slow
def test_ray_data_contender_stops_the_ray_it_started_and_keeps_one_it_found(models_dir: Path) -> None:
    """Left running, an idle Ray takes CPU from every contender timed after the Ray Data one."""
    script = f"""
import ray
from worker.bench import bench_ray_data
from worker.engine.executors.ray import ensure_ray
texts = ["great phone", "awful service, never again", "it works"] * 4
model = {str(models_dir / "sentiment" / "v0-seed")!r}
assert bench_ray_data(model, texts, 64, actors=1) > 0
print("after a Ray it started:", ray.is_initialized())
ensure_ray(num_cpus=2)
assert bench_ray_data(model, texts, 64, actors=1) > 0
print("after a Ray it found:", ray.is_initialized())
ray.shutdown()
"""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "after a Ray it started: False" in done.stdout
    assert "after a Ray it found: True" in done.stdout

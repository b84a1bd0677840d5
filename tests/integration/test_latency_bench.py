"""`textworker bench --latency` end to end: a real broker, a worker process, SQL timestamps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.kafka
def test_latency_bench_reports_percentiles_and_rates(models_dir: Path, kafka_bootstrap: str, tmp_path: Path) -> None:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "TEXTWORKER_MODELS_DIR": str(models_dir),
           "TEXTWORKER_DATABASE_URL": f"sqlite:///{tmp_path}/latency.db"}
    done = subprocess.run([sys.executable, "-m", "worker.cli", "bench", "pipelines/stream.yaml", "--latency", "--rate", "4", "8",
                           "--seconds", "3", "--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    for key in ("p50", "p95", "p99", "offered_rate", "achieved_rate"):
        assert isinstance(result[key], int | float), key
    assert result["offered_rate"] == 4 and [row["offered_rate"] for row in result["rates"]] == [4, 8]
    assert [row["docs"] for row in result["rates"]] == [12, 24]
    for row in result["rates"]:
        assert 0 < row["p50"] <= row["p95"] <= row["p99"] <= row["max"] < 60_000
        assert 0 < row["achieved_rate"] <= row["offered_rate"] * 2
    assert result["stages"] == ["sentiment", "spam"] and result["database"] == "sqlite"
    assert "p95" in result["p95_crosses_1s"]["text"] and result["machine"]["cpu"]

    # a second run into the same database: the first run's rows must not stand in for its documents
    again = subprocess.run([sys.executable, "-m", "worker.cli", "bench", "pipelines/stream.yaml", "--latency", "--rate", "4",
                            "--seconds", "3", "--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    row = json.loads(again.stdout)["rates"][0]
    assert row["docs"] == 12 and 0 < row["p50"] <= row["p95"] <= row["max"] < 60_000 and row["achieved_rate"]


def test_latency_needs_a_stream_pipeline(models_dir: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "worker.cli", "bench", "pipelines/demo.yaml", "--latency", "--rate", "5"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "kafka source" in done.stderr

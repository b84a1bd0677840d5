"""A real pipeline run scraped over HTTP (/metrics parsed by the Prometheus parser), and the requeue path."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from tests.http_server import free_port
from worker.dashboard.queries import DashboardStore

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "worker" / "seed" / "sample_docs.jsonl"
TOKEN = "metrics-token-9d2e"


def pipeline_file(tmp_path: Path, models_dir: Path, database_url: str, max_chars: int, name: str = "obs.yaml") -> Path:
    path = tmp_path / name
    path.write_text(f"""
version: 1
name: obs
source: {{type: file, path: {SAMPLE}, max_chars: {max_chars}}}
stages:
  - name: spam
    type: spam
    model: {models_dir / "spam"}
    threshold: 0.5
    max_length: 128
  - name: sentiment
    type: classify
    model: {models_dir / "sentiment"}
    labels: [negative, positive]
    max_length: 128
    when: {{stage: spam, op: eq, value: ham}}
sink: {{url: "{database_url}"}}
""", encoding="utf-8")
    return path


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = requests.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}


def pick(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


def rows(url: str, query: str) -> list[sa.Row]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        out = conn.execute(sa.text(query)).all()
    engine.dispose()
    return out


@pytest.mark.slow
def test_metrics_endpoint_matches_the_run_and_sql(models_dir: Path, sqlite_url: str, tmp_path: Path) -> None:
    spec = pipeline_file(tmp_path, models_dir, sqlite_url, max_chars=1_000_000)
    port = free_port()
    env = {**os.environ, "TEXTWORKER_TOKEN": TOKEN, "TEXTWORKER_METRICS_SQL_INTERVAL_S": "0"}
    process = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "run", str(spec), "--json", "--chunk-size", "16", "--log-level", "INFO",
         "--metrics-port", str(port), "--metrics-linger", "300"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 900
        found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        while time.monotonic() < deadline:
            assert process.poll() is None, process.stderr.read()[-3000:] if process.stderr else ""
            try:
                found = scrape(url)
            except requests.ConnectionError:
                found = {}
            if pick(found, "textworker_runs_total", pipeline="obs", status="finished"):
                break
            time.sleep(1)
        assert requests.get(url, timeout=10).status_code == 401
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr[-3000:]
    assert TOKEN not in stderr and TOKEN not in stdout
    summary = json.loads(stdout)

    def metric(name: str, **labels: str) -> float | None:
        return pick(found, name, pipeline="obs", **labels)

    per_stage = dict(rows(sqlite_url, "SELECT stage, count(*) FROM results GROUP BY stage"))
    for stage in ("spam", "sentiment"):
        assert metric("textworker_stage_documents_out_total", stage=stage) == summary["stages"][stage]["results"] == per_stage[stage]
        assert metric("textworker_stage_documents_failed_total", stage=stage) == summary["stages"][stage]["failed"] == 0
        assert metric("textworker_stage_tokens_total", stage=stage) > 0
        assert metric("textworker_stage_padded_tokens_total", stage=stage) >= metric("textworker_stage_tokens_total", stage=stage)
        calls = metric("textworker_stage_batch_seconds_count", stage=stage)
        assert calls == metric("textworker_stage_batch_documents_count", stage=stage) and calls >= 1
        assert metric("textworker_stage_batch_documents_sum", stage=stage) == metric("textworker_stage_documents_in_total", stage=stage)
        version = rows(sqlite_url, f"SELECT DISTINCT model_version FROM results WHERE stage = '{stage}'")[0][0]
        assert metric("textworker_model_info", stage=stage, model_version=version) == 1
    ham = rows(sqlite_url, "SELECT count(*) FROM results WHERE stage = 'spam' AND label = 'ham'")[0][0]
    for stage, label, count in rows(sqlite_url, "SELECT stage, label, count(*) FROM results GROUP BY stage, label"):
        assert metric("textworker_stage_labels_total", stage=stage, label=label) == count  # e.g. the spam count
    assert metric("textworker_stage_documents_in_total", stage="sentiment") == ham
    assert metric("textworker_stage_documents_skipped_total", stage="sentiment") == summary["docs"] - ham
    assert metric("textworker_documents_stored_total") == summary["docs"] == rows(sqlite_url, "SELECT count(*) FROM documents")[0][0]
    assert metric("textworker_source_items_total") == summary["docs"] + summary["dead_letters"] == 68
    reasons = dict(rows(sqlite_url, "SELECT reason, count(*) FROM dead_letters GROUP BY reason"))
    assert reasons == summary["dead_letter_reasons"]
    for reason, count in reasons.items():
        assert metric("textworker_dead_letters_total", stage="source", reason=reason) == count
        assert metric("textworker_dead_letters_pending", reason=reason) == count  # the SQL gauges, same endpoint
    assert metric("textworker_chunk_documents_sum") == summary["docs"]
    assert metric("textworker_chunk_documents_count") == 5  # 68 input lines in chunks of 16
    assert metric("textworker_stage_documents_in_total", stage="spam") == summary["docs"]
    assert metric("textworker_run_info", run_id=summary["run_id"]) == 1 and metric("textworker_run_active") == 0
    assert pick(found, "textworker_sql_up") == 1
    # the run's stored summary carries the per-stage latency quantiles the dashboard charts
    stored = json.loads(rows(sqlite_url, "SELECT stats FROM runs")[0][0])
    assert 0 < stored["stages"]["spam"]["latency_p50_ms"] <= stored["stages"]["spam"]["latency_p95_ms"]
    # structured logs: every dead letter line names the run, the stage and the document
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    dead = [line for line in lines if line.get("msg") == "dead letter"]
    assert len(dead) == summary["dead_letters"]
    assert all(line["run_id"] == summary["run_id"] and line["stage"] == "source" and line["doc_id"] for line in dead)


@pytest.mark.slow
def test_requeue_sends_marked_letters_through_again(models_dir: Path, sqlite_url: str, tmp_path: Path) -> None:
    from worker.commands.dashboard import cmd_requeue
    from worker.commands.run import cmd_run

    strict = pipeline_file(tmp_path, models_dir, sqlite_url, max_chars=300, name="strict.yaml")
    common = {"database_url": sqlite_url, "quiet": True, "json": True, "runtime": "local", "address": None, "chunk_size": 64, "limit": None}
    assert cmd_run(argparse.Namespace(pipeline=str(strict), input=None, **common)) == 0
    too_large = {r[0] for r in rows(sqlite_url, "SELECT ref FROM dead_letters WHERE reason = 'too_large'")}
    assert len(too_large) == 15
    assert not rows(sqlite_url, "SELECT 1 FROM results WHERE doc_id IN ({})".format(",".join(f"'{r}'" for r in too_large)))

    store = DashboardStore(sqlite_url)
    assert store.requeue("obs", reason="too_large") == 15
    assert store.requeue("obs", reason="invalid_json") == 1
    relaxed = pipeline_file(tmp_path, models_dir, sqlite_url, max_chars=1_000_000, name="relaxed.yaml")
    assert cmd_requeue(argparse.Namespace(pipeline=str(relaxed), **common)) == 0

    letters = Counter(r[0] for r in rows(sqlite_url, "SELECT reason FROM dead_letters"))
    assert "too_large" not in letters  # every one went through and was removed
    assert letters["invalid_json"] == 1  # still broken: pending again, no longer marked
    assert rows(sqlite_url, "SELECT requeued_at FROM dead_letters WHERE reason = 'invalid_json'")[0][0] is None
    spam_results = {r[0] for r in rows(sqlite_url, "SELECT doc_id FROM results WHERE stage = 'spam'")}
    assert too_large <= spam_results
    runs = rows(sqlite_url, "SELECT status FROM runs")
    assert [r[0] for r in runs] == ["finished", "finished"]
    store.close()


@pytest.mark.slow
def test_ray_driver_metrics_cover_the_actors_work(ray_session: None, models_dir: Path, sqlite_url: str, tmp_path: Path) -> None:
    from worker.assembly import run_source as run_pipeline
    from worker.config import load_pipeline
    from worker.engine.runs import new_run_id
    from worker.observability import metrics
    from worker.sinks.sql import SqlResultSink
    from worker.sources.files import FileDocumentSource

    spec = load_pipeline(pipeline_file(tmp_path, models_dir, sqlite_url, max_chars=1_000_000))

    def figures() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = metrics.render().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}

    before = figures()
    sink = SqlResultSink(sqlite_url, spec.name, new_run_id()).open()
    try:
        summary = run_pipeline(spec, FileDocumentSource(spec.source), sink, chunk_size=16, runtime="ray")
    finally:
        sink.close()
    after = figures()

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted({"pipeline": "obs", **labels}.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    ham = rows(sqlite_url, "SELECT count(*) FROM results WHERE stage = 'spam' AND label = 'ham'")[0][0]
    for stage in ("spam", "sentiment"):
        assert delta("textworker_stage_documents_out_total", stage=stage) == summary.stage_counts[stage] > 0
        assert delta("textworker_stage_tokens_total", stage=stage) > 0
        assert delta("textworker_stage_padded_tokens_total", stage=stage) >= delta("textworker_stage_tokens_total", stage=stage)
        assert delta("textworker_stage_batch_seconds_count", stage=stage) >= 1
    assert delta("textworker_stage_documents_in_total", stage="sentiment") == ham
    assert delta("textworker_stage_documents_skipped_total", stage="sentiment") == summary.docs - ham
    for stage, label, count in rows(sqlite_url, "SELECT stage, label, count(*) FROM results GROUP BY stage, label"):
        assert delta("textworker_stage_labels_total", stage=stage, label=label) == count
    assert delta("textworker_documents_stored_total") == summary.docs == 61
    assert after[("textworker_model_info", (("model_version", "spam@v0-seed"), ("pipeline", "obs"), ("stage", "spam")))] == 1
    assert summary.stage_stats["spam"]["latency_p95_ms"] >= summary.stage_stats["spam"]["latency_p50_ms"] > 0


def test_eval_reports_progress_row_by_row(models_dir: Path) -> None:
    from worker.commands.training import evaluate_stage
    from worker.config import load_pipeline

    spec = load_pipeline(REPO / "pipelines" / "demo.yaml", env={"TEXTWORKER_MODELS_DIR": str(models_dir)})
    seen: list[int] = []
    result = evaluate_stage(spec, spec.stage("spam"), str(REPO / "worker" / "seed" / "spam.tsv"), None, 30, progress=seen.append)
    assert sum(seen) == result["metrics"]["n"] == 30 and len(seen) >= 1

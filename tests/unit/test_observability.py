"""Metrics helpers, SQL lifecycle gauges, bearer auth, the /metrics server and JSON log context."""

from __future__ import annotations

import io
import json
import logging
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from schemas.documents import DeadLetter
from worker.dashboard.live import histogram_quantile, summarise
from worker.errors import TextworkerError
from worker.logs import ContextFilter, JsonFormatter, log_context
from worker.observability import metrics
from worker.observability.auth import BearerAuth, check_bind, is_loopback
from worker.observability.server import MetricsServer
from worker.observability.sql_metrics import SqlLifecycleCollector
from worker.sinks import tables
from worker.sinks.sql import SinkBatch, SqlResultSink


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(text: str, metric: str, **labels: str) -> float | None:
    return samples(text).get((metric, tuple(sorted(labels.items()))))


def test_stage_deltas_become_counters_histograms_and_gauges() -> None:
    pipeline = f"p{uuid.uuid4().hex[:8]}"
    metrics.observe_stage_delta(pipeline, "spam", "spam@v1", skipped=3, docs_in=10, results=9, failed=1, seconds=0.2,
                                delta={"batches": 2, "real_tokens": 300, "padded_tokens": 400})
    metrics.observe_stage_delta(pipeline, "spam", "spam@v2", docs_in=6, results=6, failed=0, seconds=3.0,
                                delta={"batches": 1, "real_tokens": 100, "padded_tokens": 100})
    text = metrics.render().decode()
    stage = {"pipeline": pipeline, "stage": "spam"}
    assert value(text, "textworker_stage_documents_in_total", **stage) == 16
    assert value(text, "textworker_stage_documents_out_total", **stage) == 15
    assert value(text, "textworker_stage_documents_failed_total", **stage) == 1
    assert value(text, "textworker_stage_documents_skipped_total", **stage) == 3
    assert value(text, "textworker_stage_model_batches_total", **stage) == 3
    assert value(text, "textworker_stage_tokens_total", **stage) == 400
    assert value(text, "textworker_stage_padded_tokens_total", **stage) == 500
    assert value(text, "textworker_stage_padding_waste_ratio", **stage) == pytest.approx(0.2)
    assert value(text, "textworker_stage_tokens_per_second", **stage) == pytest.approx(100 / 3.0)
    assert value(text, "textworker_stage_batch_seconds_count", **stage) == 2
    assert value(text, "textworker_stage_batch_seconds_bucket", le="0.25", **stage) == 1
    assert value(text, "textworker_stage_batch_documents_sum", **stage) == 16
    # one model version per stage: the swap replaced the old series
    assert value(text, "textworker_model_info", model_version="spam@v2", **stage) == 1
    assert value(text, "textworker_model_info", model_version="spam@v1", **stage) is None
    assert metrics.latency_quantiles(pipeline, "spam") == {"latency_p50_ms": 200.0, "latency_p95_ms": 3000.0}


def test_chunks_runs_and_lag() -> None:
    pipeline = f"p{uuid.uuid4().hex[:8]}"
    metrics.run_started(pipeline, "run-1")
    letters = [DeadLetter(ref="a", reason="invalid_json"), DeadLetter(ref="b", stage="qa", reason="stage_error"),
               DeadLetter(ref="c", reason="invalid_json")]
    metrics.observe_sink(pipeline, 0.01)
    metrics.observe_chunk(pipeline, items=12, docs=9, letters=letters)
    metrics.observe_lag(pipeline, "g", {("t", 0): 5, ("t", 1): 0})
    text = metrics.render().decode()
    assert value(text, "textworker_run_active", pipeline=pipeline) == 1
    assert value(text, "textworker_run_info", pipeline=pipeline, run_id="run-1") == 1
    assert value(text, "textworker_source_items_total", pipeline=pipeline) == 12
    assert value(text, "textworker_documents_stored_total", pipeline=pipeline) == 9
    assert value(text, "textworker_dead_letters_total", pipeline=pipeline, stage="source", reason="invalid_json") == 2
    assert value(text, "textworker_dead_letters_total", pipeline=pipeline, stage="qa", reason="stage_error") == 1
    assert value(text, "textworker_sink_write_seconds_count", pipeline=pipeline) == 1
    assert value(text, "textworker_consumer_lag", pipeline=pipeline, group="g", topic="t", partition="0") == 5
    # partition 0 was revoked: its series goes; a new run replaces the run id
    metrics.observe_lag(pipeline, "g", {("t", 1): 7})
    metrics.run_finished(pipeline, "finished")
    metrics.run_started(pipeline, "run-2")
    text = metrics.render().decode()
    assert value(text, "textworker_consumer_lag", pipeline=pipeline, group="g", topic="t", partition="0") is None
    assert value(text, "textworker_consumer_lag", pipeline=pipeline, group="g", topic="t", partition="1") == 7
    assert value(text, "textworker_runs_total", pipeline=pipeline, status="finished") == 1
    assert value(text, "textworker_run_info", pipeline=pipeline, run_id="run-1") is None
    assert value(text, "textworker_run_info", pipeline=pipeline, run_id="run-2") == 1


def test_labels_are_counted_for_classifiers_only() -> None:
    from schemas.documents import StageResult

    pipeline = f"p{uuid.uuid4().hex[:8]}"
    spam = [StageResult(doc_id=str(i), stage="spam", label="spam" if i % 4 == 0 else "ham", output={"spam_probability": 0.5}) for i in range(12)]
    answers = [StageResult(doc_id=str(i), stage="qa", label=f"answer {i}", output={"answers": []}) for i in range(5)]
    metrics.observe_labels(pipeline, "spam", spam)
    metrics.observe_labels(pipeline, "qa", answers)
    many = [StageResult(doc_id=str(i), stage="topic", label=f"t{i}", output={"scores": {}}) for i in range(metrics.MAX_LABELS + 5)]
    metrics.observe_labels(pipeline, "topic", many)
    text = metrics.render().decode()
    assert value(text, "textworker_stage_labels_total", pipeline=pipeline, stage="spam", label="spam") == 3
    assert value(text, "textworker_stage_labels_total", pipeline=pipeline, stage="spam", label="ham") == 9
    assert not [k for k in samples(text) if k[0] == "textworker_stage_labels_total" and ("stage", "qa") in k[1] and ("pipeline", pipeline) in k[1]]
    assert value(text, "textworker_stage_labels_total", pipeline=pipeline, stage="topic", label="(other)") == 5


def test_histogram_quantile_interpolates_like_promql() -> None:
    buckets = [(0.1, 10.0), (0.5, 30.0), (1.0, 40.0), (float("inf"), 40.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1 + 0.4 * (20 - 10) / 20)
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.5 + 0.5 * (38 - 30) / 10)
    assert histogram_quantile(0.5, [(float("inf"), 0.0)]) is None


def test_live_summary_reads_an_exposition() -> None:
    pipeline = f"p{uuid.uuid4().hex[:8]}"
    for seconds in (0.02, 0.03, 0.04, 2.0):
        metrics.observe_stage_delta(pipeline, "qa", "qa@v0", docs_in=4, results=4, failed=0, seconds=seconds, delta={})
    rows = [r for r in summarise(metrics.render().decode())["stages"] if r["pipeline"] == pipeline]
    assert len(rows) == 1 and rows[0]["docs_out"] == 16 and rows[0]["model_version"] == "qa@v0"
    assert 25 <= rows[0]["latency_p50_ms"] <= 50
    assert rows[0]["latency_p95_ms"] > 1000


def test_sql_gauges_come_from_the_tables_and_are_throttled(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tw.db'}"
    sink = SqlResultSink(url, "pipe", "run-1").open()
    sink.write(SinkBatch(dead_letters=[DeadLetter(ref="x", reason="empty_text"), DeadLetter(ref="y", reason="empty_text")]))
    now = datetime.now(UTC)
    engine = sink._engine
    with engine.begin() as conn:
        conn.execute(tables.feedback.insert(), [
            {"pipeline": "pipe", "stage": "spam", "text": f"t{i}", "label": "spam", "source": "import", "fingerprint": f"f{i}", "created_at": now}
            for i in range(3)])
        conn.execute(tables.model_registry.insert(), [
            {"name": "spam", "version": v, "stage": "spam", "task": "spam", "artifact_path": "/m", "train_config": {}, "metrics": {},
             "status": s, "created_at": now, "updated_at": now} for v, s in (("v1", "retired"), ("v2", "champion"), ("v3", "candidate"))])
        conn.execute(tables.model_events.insert(), [
            {"name": "spam", "version": v, "action": a, "details": {}, "created_at": now}
            for v, a in (("v1", "register"), ("v2", "register"), ("v2", "promote"), ("v3", "register"), ("v3", "reject"))])
    collector = SqlLifecycleCollector(url, min_interval_s=3600)
    text = _expose(collector)
    assert value(text, "textworker_sql_up") == 1
    assert value(text, "textworker_feedback_items", pipeline="pipe", stage="spam", source="import") == 3
    assert value(text, "textworker_model_versions", name="spam", status="champion") == 1
    assert value(text, "textworker_model_events", name="spam", action="register") == 3
    assert value(text, "textworker_model_events", name="spam", action="reject") == 1
    assert value(text, "textworker_model_champion_info", name="spam", version="v2") == 1
    assert value(text, "textworker_dead_letters_pending", pipeline="pipe", reason="empty_text") == 2
    with engine.begin() as conn:
        conn.execute(tables.feedback.insert().values(pipeline="pipe", stage="spam", text="t9", label="ham", source="api", fingerprint="f9", created_at=now))
    assert value(_expose(collector), "textworker_feedback_items", pipeline="pipe", stage="spam", source="api") is None  # cached
    collector.min_interval_s = 0
    assert value(_expose(collector), "textworker_feedback_items", pipeline="pipe", stage="spam", source="api") == 1
    collector.close()
    sink.close()


def _expose(collector: SqlLifecycleCollector) -> str:
    from prometheus_client.exposition import generate_latest

    return generate_latest(collector).decode()  # type: ignore[arg-type]


def test_sql_gauges_report_down_when_the_database_is_unreadable(tmp_path: Path) -> None:
    collector = SqlLifecycleCollector("postgresql+psycopg://nobody@127.0.0.1:1/none", min_interval_s=0)
    assert value(_expose(collector), "textworker_sql_up") == 0


def test_bearer_auth_and_bind_rules() -> None:
    auth = BearerAuth("s3cret-token")
    assert "s3cret" not in repr(auth)
    assert auth.check_header("Bearer s3cret-token") and auth.check_header("bearer s3cret-token")
    assert not auth.check_header("Bearer wrong") and not auth.check_header(None) and not auth.check_header("s3cret-token")
    cookie = auth.session_value()
    assert cookie and "s3cret" not in cookie and auth.check_cookie(cookie) and not auth.check_cookie("x")
    assert BearerAuth(None).check_header(None) and not BearerAuth(None).enabled
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and not is_loopback("0.0.0.0")
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "t")
    with pytest.raises(TextworkerError, match="without a token"):
        check_bind("0.0.0.0", None)


def test_metrics_server_needs_the_token_and_never_echoes_it() -> None:
    pipeline = f"p{uuid.uuid4().hex[:8]}"
    metrics.observe_chunk(pipeline, items=4, docs=4, letters=[])
    server = MetricsServer("127.0.0.1", 0, token="tok-123").start()
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        denied = requests.get(url, timeout=5)
        assert denied.status_code == 401 and "tok-123" not in denied.text
        ok = requests.get(url, headers={"Authorization": "Bearer tok-123"}, timeout=5)
        assert ok.status_code == 200 and ok.headers["Content-Type"].startswith("text/plain")
        assert value(ok.text, "textworker_documents_stored_total", pipeline=pipeline) == 4
        assert "tok-123" not in ok.text
    finally:
        server.stop()


def test_log_context_adds_run_stage_and_model_version() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    logger = logging.getLogger(f"test.{uuid.uuid4().hex}")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    with log_context(run_id="r1", pipeline="p"), log_context(stage="spam", model_version="spam@v1"):
        logger.info("inside", extra={"doc_id": "d7"})
    logger.info("outside")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["run_id"] == "r1" and first["stage"] == "spam" and first["model_version"] == "spam@v1" and first["doc_id"] == "d7"
    assert "run_id" not in second and "stage" not in second

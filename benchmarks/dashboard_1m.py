"""Benchmark: every dashboard endpoint over a PostgreSQL store holding 1,000,000 result rows.

    python benchmarks/dashboard_1m.py [--admin-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres]
                                      [--documents 250000] [--repeat 5] [--keep]

Creates a throwaway database, migrates it (so the dashboard's indexes from migration
0003 exist), fills it in SQL with generate_series -- 250,000 documents x 4 stages =
1,000,000 results spread over 7 days, 20,000 dead letters, 200 runs, 50,000 feedback
rows, a model history -- then VACUUM ANALYZE, serves the dashboard over real HTTP and
times each route (one warm-up call, then the median and the slowest of `--repeat`
calls). The database is dropped at the end unless `--keep`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.dashboard.app import make_app  # noqa: E402
from worker.sinks.sql import make_engine, migrate  # noqa: E402

FILL = [
    ("documents", """
INSERT INTO documents (doc_id, text, chars, sha256, meta, source_ref, created_at, updated_at)
SELECT 'doc-' || i, 'Generated document number ' || i || '. It talks about shipping, prices and the weather in port ' || (i % 97) || '.',
       80, md5(i::text) || md5((i + 1)::text), '{}'::jsonb, 'bench.jsonl:' || i,
       now() - (i * interval '7 days' / :n), now() - (i * interval '7 days' / :n)
FROM generate_series(1, :n) AS i"""),
    ("results", """
INSERT INTO results (pipeline, doc_id, stage, label, score, output, model_version, run_id, created_at, updated_at)
SELECT 'bench', 'doc-' || i, s.stage,
       CASE s.stage WHEN 'sentiment' THEN (CASE WHEN i % 3 = 0 THEN 'negative' ELSE 'positive' END)
                    WHEN 'spam' THEN (CASE WHEN i % 7 = 0 THEN 'spam' ELSE 'ham' END)
                    WHEN 'qa' THEN 'port ' || (i % 97)
                    ELSE 'de' END,
       (i % 1000) / 1000.0,
       CASE s.stage WHEN 'sentiment' THEN '{"scores": {"positive": 0.7, "negative": 0.3}}'::jsonb
                    WHEN 'spam' THEN jsonb_build_object('spam_probability', (i % 100) / 100.0, 'is_spam', i % 7 = 0)
                    WHEN 'qa' THEN jsonb_build_object('answers', jsonb_build_array(jsonb_build_object(
                         'question', 'What is this about?', 'answer', 'port ' || (i % 97), 'score', 0.5, 'no_answer', false)))
                    ELSE jsonb_build_object('translation', 'Erzeugtes Dokument Nummer ' || i, 'target_lang', 'de') END,
       s.stage || '@v0-seed', 'run-' || (i % 200),
       now() - (i * interval '7 days' / :n), now() - (i * interval '7 days' / :n)
FROM generate_series(1, :n) AS i CROSS JOIN (VALUES ('sentiment'), ('spam'), ('qa'), ('translate')) AS s(stage)"""),
    ("dead_letters", """
INSERT INTO dead_letters (pipeline, ref, stage, reason, detail, payload, run_id, created_at, updated_at, requeued_at)
SELECT 'bench', 'bad-' || i, CASE WHEN i % 5 = 0 THEN 'translate' ELSE 'source' END,
       (ARRAY['invalid_json', 'empty_text', 'too_large', 'wrong_type', 'missing_text', 'unsupported_language'])[1 + i % 6],
       'generated detail ' || i, '{"id": "bad-' || i || '"}', 'run-' || (i % 200),
       now() - (i * interval '7 days' / 20000), now() - (i * interval '7 days' / 20000),
       CASE WHEN i % 50 = 0 THEN now() END
FROM generate_series(1, 20000) AS i"""),
    ("runs", """
INSERT INTO runs (run_id, pipeline, status, started_at, finished_at, stats)
SELECT 'run-' || i, 'bench', 'finished', now() - (i * interval '50 minutes'), now() - (i * interval '50 minutes') + interval '20 minutes',
       jsonb_build_object('docs', 1250, 'dead_letters', 100, 'seconds', 1200, 'docs_per_s', 1.04, 'stages', jsonb_build_object(
         'sentiment', jsonb_build_object('results', 1250, 'model_version', 'sentiment@v0-seed', 'latency_p50_ms', 900 + i, 'latency_p95_ms', 1500 + i),
         'spam', jsonb_build_object('results', 1250, 'model_version', 'spam@v0-seed', 'latency_p50_ms', 800 + i, 'latency_p95_ms', 1400 + i),
         'qa', jsonb_build_object('results', 1250, 'model_version', 'qa@v0-seed', 'latency_p50_ms', 2000 + i, 'latency_p95_ms', 3100 + i),
         'translate', jsonb_build_object('results', 1000, 'model_version', 'translate@v0-seed', 'latency_p50_ms', 2500 + i, 'latency_p95_ms', 4000 + i)))
FROM generate_series(1, 200) AS i"""),
    ("feedback", """
INSERT INTO feedback (pipeline, stage, doc_id, text, label, source, fingerprint, created_at)
SELECT 'bench', 'spam', 'doc-' || i, 'text ' || i, CASE WHEN i % 4 = 0 THEN 'spam' ELSE 'ham' END,
       (ARRAY['import', 'api', 'review', 'kafka'])[1 + i % 4], md5('fb' || i), now() - (i * interval '1 minute')
FROM generate_series(1, 50000) AS i"""),
    ("review_queue", """
INSERT INTO review_queue (pipeline, stage, doc_id, text, predicted, score, model_version, status, created_at)
SELECT 'bench', 'spam', 'doc-' || i, 'text ' || i, 'ham', 0.5, 'spam@v0-seed', (ARRAY['open', 'labelled', 'skipped'])[1 + i % 3], now()
FROM generate_series(1, 5000) AS i"""),
    ("model_registry", """
INSERT INTO model_registry (name, version, pipeline, stage, task, artifact_path, train_config, metrics, status, reason, created_at, updated_at)
SELECT 'spam', 'v' || i, 'bench', 'spam', 'spam', '/models/spam/v' || i, '{}'::jsonb,
       jsonb_build_object('f1_spam', 0.90 + i / 100.0, 'accuracy', 0.95), CASE WHEN i = 5 THEN 'champion' ELSE 'retired' END,
       'generated', now() - ((10 - i) * interval '1 day'), now()
FROM generate_series(1, 5) AS i"""),
    ("model_events", """
INSERT INTO model_events (name, version, action, reason, details, created_at)
SELECT 'spam', 'v' || (1 + i / 2), (ARRAY['register', 'promote'])[1 + i % 2], 'generated', '{}'::jsonb, now() - ((10 - i) * interval '1 day')
FROM generate_series(0, 9) AS i"""),
]

ROUTES = [
    "", "api/pipelines", "api/overview", "api/labels", "api/throughput?window=24h", "api/throughput?window=7d",
    "api/spam-rate?window=7d", "api/runs", "api/samples?stage=qa&limit=20", "api/samples?stage=translate&limit=20&before=600000",
    "api/dead-letters/reasons", "api/dead-letters?limit=50", "api/dead-letters?reason=too_large&status=pending&limit=50",
    "api/models", "api/feedback", "api/live", "metrics",
]


def fill(url: str, documents: int) -> dict[str, float]:
    engine = make_engine(url)
    migrate(engine)
    seconds: dict[str, float] = {}
    with engine.begin() as conn:
        for table, statement in FILL:
            started = time.perf_counter()
            conn.execute(sa.text(statement), {"n": documents})
            seconds[table] = time.perf_counter() - started
            print(f"  filled {table:<15} {seconds[table]:7.1f} s", flush=True)
    started = time.perf_counter()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE"))
    seconds["vacuum_analyze"] = time.perf_counter() - started
    with engine.connect() as conn:
        count = conn.execute(sa.text("SELECT count(*) FROM results")).scalar_one()
    engine.dispose()
    print(f"  results rows: {count:,}", flush=True)
    return seconds


def serve(app: Any) -> tuple[str, Any]:
    import socket

    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, log_level="warning", access_log=False))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}/", server


def time_routes(base: str, repeat: int) -> list[dict[str, Any]]:
    figures = []
    for route in ROUTES:
        first = time.perf_counter()
        response = requests.get(base + route, timeout=60)
        first_s = time.perf_counter() - first
        response.raise_for_status()
        runs = []
        for _ in range(repeat):
            started = time.perf_counter()
            requests.get(base + route, timeout=60).raise_for_status()
            runs.append(time.perf_counter() - started)
        figures.append({"route": "/" + route.lstrip("/"), "first_ms": round(first_s * 1000, 1), "median_ms": round(statistics.median(runs) * 1000, 1),
                        "max_ms": round(max(runs) * 1000, 1), "bytes": len(response.content)})
        print(f"  {figures[-1]['route']:<62} first {figures[-1]['first_ms']:8.1f} ms   median {figures[-1]['median_ms']:8.1f} ms"
              f"   max {figures[-1]['max_ms']:8.1f} ms", flush=True)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--admin-url", default=os.environ.get("TEXTWORKER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--documents", type=int, default=250_000, help="documents; results are 4x this")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    name = f"tw_dash_1m_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(args.admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = args.admin_url.rsplit("/", 1)[0] + f"/{name}"
    print(f"database {name}: filling {args.documents:,} documents x 4 stages", flush=True)
    try:
        fill_seconds = fill(url, args.documents)
        base, server = serve(make_app(None, url, token=None))
        print("timing routes:", flush=True)
        figures = time_routes(base, args.repeat)
        server.should_exit = True
        slowest = max(f["median_ms"] for f in figures)
        print(f"slowest median: {slowest} ms ({'under' if slowest < 1000 else 'OVER'} 1 s)")
        if args.json:
            Path(args.json).write_text(json.dumps({"documents": args.documents, "results": 4 * args.documents, "fill_s": fill_seconds,
                                                   "routes": figures}, indent=2), encoding="utf-8")
    finally:
        if not args.keep:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The dashboard's JSON API and auth over real HTTP, on a SQLite store written by the real sink."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from schemas.documents import DeadLetter, Document, StageResult
from tests.http_server import app_routes, serve_app
from worker.dashboard.app import make_app
from worker.dashboard.queries import bucket_for, window_seconds
from worker.sinks.sql import SinkBatch, SqlResultSink

TOKEN = "dash-token-4f1c"
DOCS = 30


def _results(i: int) -> list[StageResult]:
    spam = i % 3 == 0
    out = [
        StageResult(doc_id=f"d{i}", stage="sentiment", label="positive" if i % 2 else "negative", score=0.9,
                    output={"scores": {"positive": 0.9, "negative": 0.1}}, model_version="sentiment@v0"),
        StageResult(doc_id=f"d{i}", stage="spam", label="spam" if spam else "ham", score=0.8 if spam else 0.1,
                    output={"spam_probability": 0.8 if spam else 0.1, "is_spam": spam}, model_version="spam@v0"),
        StageResult(doc_id=f"d{i}", stage="qa", label=f"answer {i}", score=0.5,
                    output={"answers": [{"question": "What?", "answer": f"answer {i}", "no_answer": False}]}, model_version="qa@v0"),
    ]
    if not spam:
        out.append(StageResult(doc_id=f"d{i}", stage="translate", label="de", output={"translation": f"Satz {i}", "target_lang": "de"},
                               model_version="translate@v0"))
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('dash') / 'tw.db'}"
    sink = SqlResultSink(url, "reviews", "run-1").open()
    sink.start_run({"stages": ["sentiment", "spam", "qa", "translate"]})
    for start in range(0, DOCS, 10):
        docs = [Document(id=f"d{i}", text=f"document number {i} <script>alert(1)</script>") for i in range(start, start + 10)]
        results = [r for i in range(start, start + 10) for r in _results(i)]
        letters = [DeadLetter(ref=f"bad{start}-{k}", reason="invalid_json" if k else "empty_text", payload="{oops") for k in range(3)]
        sink.write(SinkBatch(documents=docs, results=results, dead_letters=letters))
    sink.write(SinkBatch(dead_letters=[DeadLetter(ref="d1", stage="translate", reason="stage_error", payload="text")]))
    sink.finish_run("finished", {"docs": DOCS, "docs_per_s": 3.0, "stages": {
        "spam": {"results": DOCS, "model_version": "spam@v0", "latency_p50_ms": 12.5, "latency_p95_ms": 40.0}}})
    sink.close()
    return url


@pytest.fixture(scope="module")
def base(store: str) -> Iterator[str]:
    with serve_app(make_app(None, store, token=TOKEN)) as url:
        yield url


def get(base: str, path: str, **params: Any) -> Any:
    response = requests.get(f"{base}/{path}", params=params, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def sql(url: str, query: str) -> Any:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text(query)).all()
    engine.dispose()
    return rows


def test_every_route_needs_the_token_and_no_page_shows_it(base: str, store: str) -> None:
    routes = app_routes(make_app(None, store, token=TOKEN))  # the app's own route table, not a list kept by hand
    assert {("GET", "/api/overview"), ("POST", "/api/dead-letters/requeue"), ("GET", "/metrics")} <= set(routes)
    for method, path in routes:
        if path in ("/", "/login", "/logout"):
            continue  # the page and the sign-in form: below
        response = requests.request(method, f"{base}{path}", json={}, headers={"X-Textworker": "1"}, timeout=30)
        assert response.status_code == 401, (method, path)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    page = requests.get(f"{base}/", timeout=30)
    assert page.status_code == 401 and 'name="token"' in page.text and TOKEN not in page.text
    assert requests.get(f"{base}/api/overview", headers={"Authorization": "Bearer nope"}, timeout=30).status_code == 401
    signed_in = requests.get(f"{base}/", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert signed_in.status_code == 200 and "<svg" not in signed_in.text and TOKEN not in signed_in.text
    assert "default-src 'none'" in signed_in.headers["Content-Security-Policy"]
    assert "http://" not in signed_in.text.replace("http://www.w3.org/2000/svg", "") and "https://" not in signed_in.text  # nothing from elsewhere


def test_the_sign_in_form_sets_a_session_cookie_and_posts_need_the_header(base: str, store: str) -> None:
    session = requests.Session()
    wrong = session.post(f"{base}/login", data={"token": "guess"}, allow_redirects=False, timeout=30)
    assert wrong.status_code == 401 and not session.cookies
    right = session.post(f"{base}/login", data={"token": TOKEN}, allow_redirects=False, timeout=30)
    assert right.status_code == 303
    cookie = right.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict") and TOKEN not in cookie
    assert session.get(f"{base}/api/overview", timeout=30).status_code == 200
    letter_id = sql(store, "SELECT id FROM dead_letters WHERE reason = 'empty_text' ORDER BY id LIMIT 1")[0][0]
    forged = session.post(f"{base}/api/dead-letters/requeue", json={"ids": [letter_id]}, timeout=30)
    assert forged.status_code == 403
    assert sql(store, f"SELECT requeued_at FROM dead_letters WHERE id = {letter_id}")[0][0] is None
    session.post(f"{base}/logout", allow_redirects=False, timeout=30)
    session.cookies.clear()
    assert session.get(f"{base}/api/overview", timeout=30).status_code == 401


def test_overview_labels_and_spam_match_sql(base: str, store: str) -> None:
    overview = get(base, "api/overview")
    assert overview["pipeline"] == "reviews"
    assert overview["documents"] == sql(store, "SELECT count(*) FROM documents")[0][0] == DOCS
    assert overview["results"] == sql(store, "SELECT count(*) FROM results")[0][0]
    assert [(s["name"], s["kind"]) for s in overview["stages"]] == [("sentiment", "classify"), ("spam", "spam"), ("qa", "qa"), ("translate", "translate")]
    spam_sql = sql(store, "SELECT count(*) FROM results WHERE stage = 'spam' AND label = 'spam'")[0][0]
    assert overview["spam"]["spam"] == spam_sql == 10 and overview["spam"]["total"] == DOCS
    assert overview["dead_letters"] == sql(store, "SELECT count(*) FROM dead_letters")[0][0]
    labels = {s["name"]: {x["label"]: x["count"] for x in s["labels"]} for s in get(base, "api/labels")["stages"]}
    assert set(labels) == {"sentiment", "spam"}  # QA answers are not a label distribution
    assert labels["spam"] == {"spam": 10, "ham": 20}
    assert labels["sentiment"] == dict(sql(store, "SELECT label, count(*) FROM results WHERE stage = 'sentiment' GROUP BY label"))


def test_time_series_add_up_to_the_counts(base: str, store: str) -> None:
    throughput = get(base, "api/throughput", window="1h")
    assert throughput["bucket_s"] == 60
    per_stage = {stage: sum(p[1] for p in points) for stage, points in throughput["series"].items()}
    assert per_stage == dict(sql(store, "SELECT stage, count(*) FROM results GROUP BY stage"))
    for points in throughput["series"].values():
        assert all(p[0] % 60 == 0 and throughput["start"] <= p[0] < throughput["end"] for p in points)
    spam = get(base, "api/spam-rate", window="1h")
    assert spam["stage"] == "spam" and sum(p[2] for p in spam["points"]) == 10 and sum(p[1] for p in spam["points"]) == DOCS
    runs = get(base, "api/runs")["runs"]
    assert runs[0]["status"] == "finished" and runs[0]["stages"]["spam"]["latency_p95_ms"] == 40.0


def test_samples_page_by_keyset(base: str, store: str) -> None:
    first = get(base, "api/samples", stage="qa", limit=7)
    second = get(base, "api/samples", stage="qa", limit=7, before=first["next_before"])
    ids = [r["id"] for r in first["items"] + second["items"]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 14
    assert first["items"][0]["answer"].startswith("answer ") and first["items"][0]["question"] == "What?"
    assert first["items"][0]["text"].startswith("document number")
    everything = []
    before = None
    while True:
        page = get(base, "api/samples", stage="translate", limit=9, before=before)
        everything += page["items"]
        if page["next_before"] is None:
            break
        before = page["next_before"]
    assert len(everything) == sql(store, "SELECT count(*) FROM results WHERE stage = 'translate'")[0][0] == 20
    assert everything[0]["translation"].startswith("Satz ")


def test_dead_letters_filter_and_requeue(base: str, store: str) -> None:
    reasons = {(r["reason"], r["stage"]): r["count"] for r in get(base, "api/dead-letters/reasons")["reasons"]}
    assert reasons == {("invalid_json", "source"): 6, ("empty_text", "source"): 3, ("stage_error", "translate"): 1}
    page = get(base, "api/dead-letters", reason="invalid_json", limit=4)
    assert len(page["items"]) == 4 and all(item["reason"] == "invalid_json" for item in page["items"])
    rest = get(base, "api/dead-letters", reason="invalid_json", limit=4, before=page["next_before"])
    assert len(rest["items"]) == 2 and rest["next_before"] is None
    auth = {"Authorization": f"Bearer {TOKEN}"}
    marked = requests.post(f"{base}/api/dead-letters/requeue", json={"ids": [page["items"][0]["id"]]}, headers=auth, timeout=30).json()
    assert marked["marked"] == 1 and "textworker requeue" in marked["next"]
    again = requests.post(f"{base}/api/dead-letters/requeue", json={"ids": [page["items"][0]["id"]]}, headers=auth, timeout=30).json()
    assert again["marked"] == 0
    by_reason = requests.post(f"{base}/api/dead-letters/requeue", json={"reason": "invalid_json"}, headers=auth, timeout=30).json()
    assert by_reason["marked"] == 5
    assert sql(store, "SELECT count(*) FROM dead_letters WHERE requeued_at IS NOT NULL")[0][0] == 6
    assert len(get(base, "api/dead-letters", status="requeued")["items"]) == 6
    assert len(get(base, "api/dead-letters", status="pending")["items"]) == 4
    bad = requests.post(f"{base}/api/dead-letters/requeue", json={"ids": "all"}, headers=auth, timeout=30)
    assert bad.status_code == 422


def test_metrics_route_serves_the_sql_gauges(base: str) -> None:
    text = requests.get(f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).text
    names = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    assert {"textworker_sql_up", "textworker_dead_letters_pending"} <= names


def test_models_and_feedback_are_empty_lists_on_a_fresh_store(base: str) -> None:
    assert get(base, "api/models") == {"versions": [], "events": []}
    assert get(base, "api/feedback") == {"pipeline": "reviews", "feedback": [], "review": []}


def test_window_and_bucket_parsing() -> None:
    assert window_seconds("24h") == 86400 and window_seconds("7d") == 7 * 86400 and window_seconds("90m") == 5400
    assert window_seconds(None) == 86400 and window_seconds("1s") == 60
    for bad in ("nonsense", "nan", "inf", "-1h", "0", "1e400d", "h"):
        with pytest.raises(ValueError, match="not a positive duration"):
            window_seconds(bad)
    assert bucket_for(3600) == 60 and bucket_for(86400) == 1800 and bucket_for(30 * 86400) == 43200


def test_a_token_is_required_off_loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.commands.dashboard import cmd_dashboard
    from worker.errors import TextworkerError

    monkeypatch.delenv("TEXTWORKER_TOKEN", raising=False)
    args = argparse.Namespace(pipeline=None, token=None, host="0.0.0.0", port=0, database_url=f"sqlite:///{tmp_path / 'x.db'}",
                              metrics_url=[], quiet=True, json=False, log_level="WARNING")
    with pytest.raises(TextworkerError, match="without a token"):
        cmd_dashboard(args)


def test_pipelines_with_results_but_no_run_row_are_listed(tmp_path: Path) -> None:
    from worker.dashboard.queries import DashboardStore

    url = f"sqlite:///{tmp_path / 'two.db'}"
    with_run = SqlResultSink(url, "batch", "run-a").open()
    with_run.start_run({"stages": ["spam"]})
    with_run.write(SinkBatch(results=[_results(1)[1]]))
    with_run.close()
    served = SqlResultSink(url, "served", "run-b").open()  # results written without a runs row
    served.write(SinkBatch(results=_results(2)[:2]))
    served.close()
    store = DashboardStore(url)
    assert store.pipelines() == ["batch", "served"]
    assert {s["name"] for s in store.overview("served")["stages"]} == {"sentiment", "spam"}
    store.close()


def test_the_middleware_puts_a_whole_app_behind_the_token(store: str) -> None:
    from fastapi import FastAPI

    from worker.dashboard.app import make_router
    from worker.observability.auth import BearerAuth, BearerAuthMiddleware

    app = FastAPI()

    @app.get("/v1/thing")
    def thing() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(make_router(None, store, token=TOKEN))
    app.add_middleware(BearerAuthMiddleware, auth=BearerAuth(TOKEN))
    with serve_app(app) as url:
        assert requests.get(f"{url}/v1/thing", timeout=30).status_code == 401
        assert requests.get(f"{url}/v1/thing", headers={"Authorization": "Bearer wrong"}, timeout=30).status_code == 401
        assert requests.get(f"{url}/v1/thing", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).json() == {"ok": "yes"}
        assert requests.get(f"{url}/healthz", timeout=30).status_code == 200
        session = requests.Session()
        assert session.get(f"{url}/", timeout=30).status_code == 401  # the sign-in form, reachable
        assert session.post(f"{url}/login", data={"token": TOKEN}, allow_redirects=False, timeout=30).status_code == 303
        assert session.get(f"{url}/v1/thing", timeout=30).status_code == 200
        assert session.get(f"{url}/api/overview", timeout=30).status_code == 200
        assert requests.get(f"{url}/metrics", timeout=30).status_code == 401

"""HTTP hardening over real sockets: Host allow-list, the body limit before auth, the CSRF rule,
the token on every route of the real route tables, 422 for bad numbers, 503 bodies without
database errors, and the dashboard's --metrics-url rules.

The apps are the real ones: the dashboard's `make_app` on a SQLite store written by the real
sink, and the `serve` ingress app (`DocumentsIngress.build_api`, no Ray needed for refusals)
with the feedback and dashboard routers mounted.
"""

from __future__ import annotations

import contextvars
import http.server
import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from schemas.documents import DeadLetter, Document
from schemas.pipeline import FileSource, PipelineSpec, SpamStage
from tests.http_server import app_routes, serve_app
from worker.dashboard.app import make_app
from worker.observability.auth import OPEN_PATHS
from worker.sinks.sql import SinkBatch, SqlResultSink

TOKEN = "harden-token-9d2e"
MIB = 1024 * 1024
BIG = 40 * MIB


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('harden') / 'tw.db'}"
    sink = SqlResultSink(url, "reviews", "run-1").open()
    sink.start_run({"stages": ["spam"]})
    sink.write(SinkBatch(documents=[Document(id="d1", text="hello")],
                         dead_letters=[DeadLetter(ref=f"bad-{i}", reason="empty_text", payload="") for i in range(3)]))
    sink.finish_run("finished", {"docs": 1})
    sink.close()
    return url


@pytest.fixture(scope="module")
def open_dashboard(store: str, monkeypatch_module: pytest.MonkeyPatch) -> Iterator[str]:
    """The dashboard as `textworker dashboard` runs it on loopback without a token."""
    with serve_app(make_app(None, store, token=None, allowed=["dash.internal"])) as url:
        yield url


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("TEXTWORKER_TOKEN", raising=False)
        patch.delenv("TEXTWORKER_ALLOWED_HOSTS", raising=False)
        yield patch


def _ingress_app(models_dir: Path, database_url: str, token: str | None, max_body_bytes: int = 8 * MIB) -> Any:
    from pydantic import SecretStr

    from worker.serving.ingress import DocumentsIngress
    from worker.serving.settings import ServeSettings

    spec = PipelineSpec(name="reviews", source=FileSource(path="unused"),
                        stages=[SpamStage(name="spam", model=str(models_dir / "spam"))])
    settings = ServeSettings(database_url=database_url, token=SecretStr(token) if token else None, max_body_bytes=max_body_bytes)
    return DocumentsIngress(spec, [], settings).build_api()


@pytest.fixture(scope="module")
def served_app(models_dir: Path, store: str, monkeypatch_module: pytest.MonkeyPatch) -> Any:
    """The `serve --token` app: /v1/documents, /v1/feedback and the dashboard, one token. Built in a
    context of its own, as in its Serve replica, so the run's log context stays out of other tests."""
    return contextvars.copy_context().run(_ingress_app, models_dir, store, TOKEN)


@pytest.fixture(scope="module")
def served(served_app: Any) -> Iterator[str]:
    with serve_app(served_app) as url:
        yield url


def _pending(store: str) -> int:
    engine = sa.create_engine(store)
    with engine.connect() as conn:
        count = conn.execute(sa.text("SELECT count(*) FROM dead_letters WHERE requeued_at IS NULL")).scalar_one()
    engine.dispose()
    return int(count)


def _raw(base: str, head: str, body: bytes = b"", wait_s: float = 10.0) -> tuple[int, bytes, float]:
    """Send raw request bytes; (status, response bytes, seconds until the first response byte)."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait_s) as sock:
        start = time.monotonic()
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        data = sock.recv(65536)
        elapsed = time.monotonic() - start
        while b"\r\n\r\n" in data and len(data) < 65536:
            more = sock.recv(65536)
            if not more:
                break
            data += more
    return int(data.split(b" ", 2)[1]), data, elapsed


# --------------------------------------------------------------------------- CSRF


def test_a_cross_site_post_without_a_token_changes_nothing(open_dashboard: str, store: str) -> None:
    url = f"{open_dashboard}/api/dead-letters/requeue"
    before = _pending(store)
    # what a hostile page can send without a CORS preflight: a "simple" text/plain (or form) POST
    plain = requests.post(url, data='{"reason": "empty_text"}', headers={"Content-Type": "text/plain"}, timeout=30)
    assert plain.status_code == 415 and "application/json" in plain.json()["detail"]
    form = requests.post(url, data={"reason": "empty_text"}, timeout=30)
    assert form.status_code == 415
    no_header = requests.post(url, json={"reason": "empty_text"}, timeout=30)
    assert no_header.status_code == 403 and "X-Textworker" in no_header.json()["detail"]
    assert _pending(store) == before == 3
    ok = requests.post(url, json={"ids": [1]}, headers={"X-Textworker": "1"}, timeout=30)
    assert ok.status_code == 200 and ok.json()["marked"] == 1
    assert _pending(store) == 2


def test_feedback_and_documents_need_json_and_the_header_too(served: str) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for path in ("/v1/feedback", "/v1/documents"):
        assert requests.post(served + path, data="{}", headers={**auth, "Content-Type": "text/plain"}, timeout=30).status_code == 415
    bad = requests.post(served + "/v1/feedback", json=[{"stage": "nope", "text": "x", "label": "spam"}], headers=auth, timeout=30)
    assert bad.status_code == 422  # JSON with the Authorization header passes the rule and reaches the route


# --------------------------------------------------------------------------- Host


def test_a_foreign_host_is_refused(open_dashboard: str, served: str) -> None:
    for base in (open_dashboard, served):
        for host in ("evil.example", "evil.example:8050", "127.0.0.1.evil.example", "localhost.evil.example"):
            response = requests.get(f"{base}/healthz" if base == served else f"{base}/api/pipelines", headers={"Host": host}, timeout=30)
            assert response.status_code == 400, (base, host)
            assert "--allowed-host" in response.json()["detail"]
    for host in ("localhost", "127.0.0.1:8050", "[::1]:8050", "10.1.2.3", "dash.internal", "DASH.internal."):
        assert requests.get(f"{open_dashboard}/api/pipelines", headers={"Host": host}, timeout=30).status_code == 200, host
    status, _, _ = _raw(open_dashboard, "GET /api/pipelines HTTP/1.0\n")  # HTTP/1.0 without a Host header
    assert status == 400


# --------------------------------------------------------------------------- body limit


@pytest.mark.parametrize("path", ["/login", "/v1/feedback", "/api/dead-letters/requeue", "/v1/documents"])
def test_a_40_mib_body_is_refused_before_auth_and_before_it_is_read(served: str, path: str) -> None:
    head = (f"POST {path} HTTP/1.1\nHost: 127.0.0.1\nContent-Type: application/json\nX-Textworker: 1\n"
            f"Content-Length: {BIG}\n")
    status, data, elapsed = _raw(served, head)  # not one byte of the body is sent: the answer cannot wait for it
    assert status == 413, data[:300]
    assert b"limit" in data and elapsed < 5


def test_a_streamed_body_is_cut_off_at_the_limit(open_dashboard: str) -> None:
    host, port = open_dashboard.removeprefix("http://").split(":")
    chunk = b"x" * (64 * 1024)
    sent = 0
    response = b""
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        try:
            while sent < BIG and not select.select([sock], [], [], 0)[0]:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
            response = sock.recv(65536)
        except (BrokenPipeError, ConnectionResetError):
            pass
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert sent < 16 * MIB  # the server stopped reading a little past its 1 MiB limit


# --------------------------------------------------------------------------- the token on every route


def _every_route(app: Any) -> list[tuple[str, str]]:
    return app_routes(app)


def test_every_route_of_the_served_app_needs_the_token(served_app: Any, served: str) -> None:
    routes = _every_route(served_app)
    paths = {path for _, path in routes}
    assert {"/v1/documents", "/v1/feedback", "/api/dead-letters/requeue", "/api/overview", "/metrics", "/login"} <= paths
    checked = 0
    for method, path in routes:
        response = requests.request(method, served + path, json={}, headers={"X-Textworker": "1"}, allow_redirects=False, timeout=30)
        if path in OPEN_PATHS:
            assert path in ("/", "/login", "/logout", "/healthz", "/readyz"), path
            continue
        assert response.status_code == 401, (method, path, response.status_code)
        assert TOKEN not in response.text
        checked += 1
    assert checked >= 15


def test_every_route_of_the_dashboard_needs_the_token(store: str) -> None:
    app = make_app(None, store, token=TOKEN)
    with serve_app(app) as base:
        for method, path in _every_route(app):
            body: dict[str, Any] = {"data": {"token": ""}} if path in ("/login", "/logout") else {"json": {}}
            response = requests.request(method, base + path, headers={"X-Textworker": "1"}, allow_redirects=False, timeout=30, **body)
            if path in ("/", "/login"):
                assert response.status_code == 401 and 'name="token"' in response.text  # the sign-in form
            elif path == "/logout":
                assert response.status_code == 303  # signing out needs nothing
            else:
                assert response.status_code == 401, (method, path)


def test_serve_token_signs_the_dashboard_in(served: str) -> None:
    session = requests.Session()
    assert session.get(served + "/api/overview", timeout=30).status_code == 401
    assert session.post(served + "/login", data={"token": "guess"}, allow_redirects=False, timeout=30).status_code == 401
    signed = session.post(served + "/login", data={"token": TOKEN}, allow_redirects=False, timeout=30)
    assert signed.status_code == 303 and TOKEN not in signed.headers["Set-Cookie"]
    assert session.get(served + "/api/overview", timeout=30).json()["pipeline"] == "reviews"
    assert session.get(served + "/", timeout=30).status_code == 200
    forged = session.post(served + "/api/dead-letters/requeue", json={"reason": "empty_text"}, timeout=30)
    assert forged.status_code == 403  # a cookie alone is not enough for a POST


# --------------------------------------------------------------------------- bad numbers, database errors


@pytest.mark.parametrize("query", ["window=nan", "window=inf", "window=-1h", "window=1e400", "window=soon", "window=0"])
def test_a_window_that_is_not_a_duration_is_422(open_dashboard: str, query: str) -> None:
    for route in ("throughput", "spam-rate"):
        response = requests.get(f"{open_dashboard}/api/{route}?{query}", timeout=30)
        assert response.status_code == 422, (route, query, response.text)


@pytest.mark.parametrize("query", ["limit=-1", "limit=0", "limit=nan", "before=99999999999999999999999", "before=-5", "limit=1e3"])
def test_numbers_out_of_range_are_422(open_dashboard: str, query: str) -> None:
    assert requests.get(f"{open_dashboard}/api/dead-letters?{query}", timeout=30).status_code == 422


@pytest.mark.parametrize("body", [{"ids": [2**70]}, {"ids": [-1]}, {"ids": ["1"]}, {"ids": [True]}, {"reason": "x", "stage": ["qa"]}])
def test_requeue_refuses_bad_ids_with_422(open_dashboard: str, body: dict[str, Any]) -> None:
    response = requests.post(f"{open_dashboard}/api/dead-letters/requeue", json=body, headers={"X-Textworker": "1"}, timeout=30)
    assert response.status_code == 422, response.text


def test_a_database_error_is_503_without_its_message() -> None:
    url = "postgresql+psycopg://textworker_probe:pw-7f3a@127.0.0.1:1/nowhere"  # nothing listens on port 1
    with serve_app(make_app(None, url, token=None)) as base:
        response = requests.get(f"{base}/api/overview?pipeline=reviews", timeout=60)
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"]
    for leak in ("textworker_probe", "pw-7f3a", "nowhere", "127.0.0.1", "refused", "psycopg"):
        assert leak not in response.text


# --------------------------------------------------------------------------- --metrics-url


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[tuple[str, str | None]] = []
    redirect_to = ""

    def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
        type(self).seen.append((self.path, self.headers.get("Authorization")))
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", type(self).redirect_to)
            self.end_headers()
            return
        body = b"# TYPE textworker_run_active gauge\ntextworker_run_active{pipeline=\"p\"} 1.0\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the http.server signature
        pass


def test_metrics_urls_get_the_token_only_on_our_host_and_redirects_are_not_followed() -> None:
    from worker.dashboard.live import gets_token, snapshot
    from worker.observability.http_guard import allowed_hosts

    own = allowed_hosts(["dash.internal"])
    assert gets_token("http://127.0.0.1:9400/metrics", own) and gets_token("http://[::1]:9400/metrics", own)
    assert gets_token("http://localhost:9400/metrics", own) and gets_token("http://DASH.internal/metrics", own)
    assert not gets_token("http://worker.example:9400/metrics", own) and not gets_token("http://10.0.0.7/metrics", own)
    assert not gets_token("http://127.0.0.1.nip.example/metrics", own)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    _Recorder.redirect_to = f"http://localhost:{server.server_address[1]}/elsewhere"
    try:
        sources = snapshot([f"{base}/metrics", f"{base}/redirect", "file:///etc/passwd"], TOKEN, own)
    finally:
        server.shutdown()
        server.server_close()
    assert sources[1]["error"] is None and sources[1]["runs"] == [{"pipeline": "p", "active": True}]
    assert "not followed" in sources[2]["error"]
    assert "http" in sources[3]["error"]
    assert _Recorder.seen == [("/metrics", f"Bearer {TOKEN}"), ("/redirect", f"Bearer {TOKEN}")]  # never /elsewhere


def test_json_refusals_say_what_to_do(open_dashboard: str) -> None:
    response = requests.post(f"{open_dashboard}/api/dead-letters/requeue", data=b"x", headers={"Content-Type": "text/plain"}, timeout=30)
    assert response.headers["content-type"] == "application/json" and json.loads(response.content)["detail"]


def test_the_metrics_endpoint_refuses_a_foreign_host(monkeypatch_module: pytest.MonkeyPatch) -> None:
    from worker.observability.server import MetricsServer

    server = MetricsServer("127.0.0.1", 0).start()
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        assert requests.get(url, headers={"Host": "rebound.example"}, timeout=10).status_code == 400
        assert requests.get(url, headers={"Host": f"localhost:{server.port}"}, timeout=10).status_code == 200
        assert requests.get(url, timeout=10).status_code == 200
    finally:
        server.stop()

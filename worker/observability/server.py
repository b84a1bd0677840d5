"""The `/metrics` endpoint of `textworker run --metrics-port N`: a small threaded HTTP server.

It answers `GET /metrics` (the Prometheus text format) and `GET /healthz`, on its own
daemon thread, so scrapes never wait on the pipeline. With a token, both need
`Authorization: Bearer <token>`; without one it may only listen on loopback. A `Host`
header that is not a loopback name, an IP address or a $TEXTWORKER_ALLOWED_HOSTS name
gets 400 (DNS rebinding), as on the HTTP apps.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from worker.observability import metrics
from worker.observability.auth import BearerAuth, check_bind, resolve_token
from worker.observability.http_guard import allowed_hosts, host_allowed

log = logging.getLogger(__name__)


class MetricsServer:
    """Serve this process's metrics (and the SQL gauges of `database_url`) until `stop()`."""

    def __init__(self, host: str, port: int, *, token: str | None = None, database_url: str | None = None) -> None:
        check_bind(host, token)
        self.auth = BearerAuth(token)
        self.hosts = allowed_hosts()
        self.database_url = database_url
        handler = _handler_class(self)
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="textworker-metrics", daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> MetricsServer:
        self.thread.start()
        log.info("metrics endpoint listening", extra={"host": self.httpd.server_address[0], "port": self.port, "auth": self.auth.enabled})
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler_class(server: MetricsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
            if not host_allowed(self.headers.get("Host"), server.hosts):  # DNS rebinding: see http_guard
                self._send(400, b"this server does not answer to that Host name\n", "text/plain")
                return
            if not server.auth.check_header(self.headers.get("Authorization")):
                self._send(401, b"unauthorized\n", "text/plain", {"WWW-Authenticate": 'Bearer realm="textworker"'})
                return
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, metrics.render(server.database_url), CONTENT_TYPE_PLAIN_0_0_4)
            elif path == "/healthz":
                self._send(200, b"ok\n", "text/plain")
            else:
                self._send(404, b"not found: try /metrics\n", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the http.server signature
            log.debug("metrics request", extra={"client": self.client_address[0], "request": self.requestline[:200], "status": args[1] if len(args) > 1 else None})

    return Handler


def run_with_metrics(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Wrap a command: with `--metrics-port N`, serve /metrics while it runs (and `--metrics-linger` seconds after)."""

    def wrapped(args: argparse.Namespace) -> int:
        port = getattr(args, "metrics_port", None)
        if port is None:
            return handler(args)
        server = MetricsServer(args.metrics_host, port, token=resolve_token(getattr(args, "token", None)),
                               database_url=_database_url(args)).start()
        try:
            code = handler(args)
            linger(float(getattr(args, "metrics_linger", 0) or 0))
            return code
        finally:
            server.stop()

    return wrapped


def _database_url(args: argparse.Namespace) -> str | None:
    from worker.config import load_pipeline
    from worker.console import database_url

    try:
        return database_url(args, load_pipeline(args.pipeline))
    except Exception as exc:  # noqa: BLE001 - the command itself reports a bad pipeline file
        log.debug("metrics: no database URL", extra={"error": str(exc)[:200]})
        return None


def linger(seconds: float) -> None:
    """Keep the process (and its /metrics) up for a final scrape; SIGTERM/SIGINT end the wait."""
    if seconds <= 0:
        return
    sys.stdout.flush()
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        stop.wait(seconds)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)

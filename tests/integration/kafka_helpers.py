"""Helpers for the Kafka integration tests: real documents, topics, producers, worker processes, SQL counts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from worker.sinks.sql import normalise_url

REPO = Path(__file__).resolve().parents[2]
STREAM_PIPELINE = REPO / "pipelines" / "stream.yaml"
CODECS = ("gzip", "snappy", "lz4", "zstd", "none")
STAGES = ("sentiment", "spam")


def pipeline_variant(tmp_path: Path, name: str, **source: Any) -> Path:
    """A copy of pipelines/stream.yaml with some source settings changed (placeholders kept)."""
    import yaml

    spec: dict[str, Any] = yaml.safe_load(STREAM_PIPELINE.read_text(encoding="utf-8"))
    spec["source"].update(source)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def shared_documents(shared_data: Path, count: int) -> list[dict[str, str]]:
    """`count` real documents with unique ids, taken in turn from SST-2, AG News and SMS spam."""
    sources = [
        ("sst2", shared_data / "sst2" / "train.tsv", 0),
        ("agnews", shared_data / "ag_news" / "train.tsv", 1),
        ("sms", shared_data / "sms_spam" / "train.tsv", 1),
    ]
    pools = []
    for name, path, text_column in sources:
        rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]
        pools.append([{"id": f"{name}-{i:05d}", "text": row[text_column], "label": row[1 - text_column]}
                      for i, row in enumerate(rows) if len(row) == 2 and row[text_column].strip()])
    docs: list[dict[str, str]] = []
    index = 0
    while len(docs) < count:
        pool = pools[index % len(pools)]
        position = index // len(pools)
        if position >= len(pool):
            raise ValueError(f"not enough shared documents for {count}")
        docs.append(pool[position])
        index += 1
    return docs


def create_topics(bootstrap: str, names: Iterable[str], partitions: int) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, api_version=(2, 5))
    try:
        admin.create_topics([NewTopic(name, partitions, 1) for name in names])
    finally:
        admin.close()


def produce(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes | None]], codecs: Iterable[str] = CODECS,
            headers: list[tuple[str, bytes]] | None = None) -> int:
    """Produce (key, value) pairs with idempotent confluent-kafka producers, one per codec in turn
    over equal slices, so the topic holds batches of every codec. Returns the count acknowledged."""
    from confluent_kafka import Producer

    codecs = list(codecs)
    size = -(-len(messages) // len(codecs))
    delivered: list[int] = []
    errors: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        (errors.append(str(err)) if err is not None else delivered.append(1))

    for i, codec in enumerate(codecs):
        producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "compression.codec": codec,
                             "linger.ms": 20, "message.max.bytes": 20_000_000, "batch.num.messages": 500})
        for key, value in messages[i * size:(i + 1) * size]:
            producer.produce(topic, key=key, value=value, headers=headers, on_delivery=on_delivery)
            producer.poll(0)
        left = producer.flush(60)
        assert left == 0, f"{left} messages not delivered"
    assert not errors, errors[:5]
    return len(delivered)


def json_messages(docs: list[dict[str, str]]) -> list[tuple[bytes | None, bytes | None]]:
    return [(d["id"].encode(), json.dumps(d, ensure_ascii=False).encode()) for d in docs]


@dataclass
class Worker:
    """A `textworker run` subprocess with its JSON log on disk."""

    process: subprocess.Popen[bytes]
    log_path: Path
    started: float

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def terminate(self, timeout_s: float = 60) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)

    def log_records(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue
        return records

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]


def start_worker(pipeline: Path, database_url: str, env: dict[str, str], log_path: Path, *args: str) -> Worker:
    """Start `python -m worker.cli run PIPELINE` with INFO logs to `log_path`."""
    full_env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", **env}
    command = [sys.executable, "-m", "worker.cli", "run", str(pipeline), "--database-url", database_url,
               "--quiet", "--log-level", "INFO", *args]
    log_file = log_path.open("ab")
    process = subprocess.Popen(command, cwd=REPO, env=full_env, stdout=log_file, stderr=subprocess.STDOUT)
    log_file.close()
    return Worker(process, log_path, time.monotonic())


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.5,
             abort: Callable[[], str | None] = lambda: None) -> None:
    """Poll `condition` until true; fail with `what` after `timeout_s` or as soon as `abort` returns a reason."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        reason = abort()
        if reason:
            raise AssertionError(f"gave up waiting for {what}: {reason}")
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


class Db:
    """Read-only queries on a test database."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(normalise_url(url), pool_pre_ping=True)

    def scalar(self, sql: str, **params: Any) -> Any:
        try:
            with self.engine.connect() as conn:
                return conn.execute(sa.text(sql), params).scalar()
        except sa.exc.ProgrammingError:
            return None

    def results(self, stage: str = "spam") -> int:
        return int(self.scalar("SELECT count(*) FROM results WHERE stage = :s", s=stage) or 0)

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params).all())

    def close(self) -> None:
        self.engine.dispose()


def assert_exactly_once(db: Db, expected_ids: set[str], group: str, messages: int) -> dict[str, Any]:
    """Every expected document has exactly one result per stage; nothing else is stored; offsets cover the topic."""
    per_stage = {r.stage: (r.n, r.ids) for r in db.rows(
        "SELECT stage, count(*) AS n, count(DISTINCT doc_id) AS ids FROM results GROUP BY stage")}
    assert per_stage == {stage: (len(expected_ids), len(expected_ids)) for stage in STAGES}, per_stage
    for stage in STAGES:
        ids = {r[0] for r in db.rows("SELECT doc_id FROM results WHERE stage = :s", s=stage)}
        assert ids == expected_ids, (stage, len(ids - expected_ids), len(expected_ids - ids))
    assert {r[0] for r in db.rows("SELECT doc_id FROM documents")} == expected_ids
    assert db.scalar("SELECT count(*) FROM dead_letters") == 0
    stored = db.scalar("SELECT sum(next_offset) FROM stream_offsets WHERE consumer_group = :g", g=group)
    assert stored == messages, f"stored offsets sum to {stored}, the topic holds {messages}"
    return {"documents": len(expected_ids), "per_stage": per_stage}

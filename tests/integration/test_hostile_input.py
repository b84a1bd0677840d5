"""Hostile input, property-based (hypothesis), against a real broker (Tansu), real PostgreSQL and real models.

- `textworker run` on a topic of 2,000+ generated hostile records (random bytes, JSON nested
  up to 5,000 levels, lone surrogates and NULs in random fields and keys, huge numbers and
  strings, duplicate keys, null keys and values, every codec) interleaved with valid
  documents: the worker never exits, its lag reaches 0, every valid document has all its
  results, every hostile record is a result or a dead letter with a reason code, and a
  restart replays nothing;
- the same generator on the feedback topic with `textworker schedule --once`: every record
  is a stored row or a dead letter, the offsets are committed;
- the same generator against `POST /v1/documents` and `POST /v1/feedback` of
  `textworker serve`: never a 500 (nor a 503).

The records are generated with a fixed seed (`derandomize`), so a failure names a record
that reproduces.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from schemas.documents import DeadLetter, Document
from schemas.pipeline import KafkaSource
from tests.hostile import REASONS, hostile_feedback, hostile_object, hostile_record, valid_document
from tests.http_server import free_port
from tests.integration.kafka_helpers import (
    REPO,
    Db,
    create_topics,
    pipeline_variant,
    produce,
    start_worker,
    unique_name,
    wait_for,
)
from worker.lifecycle.feedback import RowProblem, validate_any
from worker.sources.kafka_records import parse_record

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]

HOSTILE = 2000  # hostile records on the document topic
ROUTE_HOSTILE = 1000  # hostile records on the feedback topic and on each HTTP route
VALID_EVERY = 10  # a valid document (or row) after every 10 hostile records


def generate(strategy: st.SearchStrategy[Any], count: int, chunk: int = 25) -> list[Any]:
    """`count` examples of `strategy`, the same ones on every run (drawn as lists: far less engine time per record)."""
    found: list[Any] = []

    @settings(max_examples=count // chunk + 5, derandomize=True, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(st.lists(strategy, min_size=chunk, max_size=chunk))
    def collect(examples: list[Any]) -> None:
        found.extend(examples)

    collect()
    assert len(found) >= count, f"hypothesis generated {len(found)} examples, {count} wanted"
    return found[:count]


def _record(topic: str, offset: int, key: bytes | None, value: bytes | None) -> Any:
    return ConsumerRecord(topic, 0, 0, offset, 0, 0, key, value, [], None, -1, -1, -1)


def _committed(bootstrap: str, group: str, topic: str) -> int | None:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, api_version=(2, 5), group_id=group, enable_auto_commit=False)
    try:
        return consumer.committed(TopicPartition(topic, 0))
    finally:
        consumer.close()


def _latest(db: Db) -> tuple[Any, ...]:
    return tuple(db.scalar(f"SELECT max(updated_at) FROM {table}") for table in ("documents", "results", "dead_letters")) + (
        db.scalar("SELECT count(*) FROM dead_letters"), db.scalar("SELECT count(*) FROM results"))


# --------------------------------------------------------------------------- Kafka documents


def test_hostile_records_never_stop_the_stream_worker(kafka_bootstrap: str, models_dir: Path, postgres_url: str, tmp_path: Path) -> None:
    topic, group = unique_name("hostile"), unique_name("hostile-group")
    create_topics(kafka_bootstrap, [topic], partitions=1)
    hostile = generate(hostile_record(), HOSTILE)
    messages: list[tuple[bytes | None, bytes | None]] = []
    valid_ids: set[str] = set()
    for index, record in enumerate(hostile):
        messages.append(record)
        if index % VALID_EVERY == VALID_EVERY - 1:
            doc = valid_document(index, "hx")
            valid_ids.add(doc["id"])
            messages.append((doc["id"].encode(), json.dumps(doc).encode()))
    produce(kafka_bootstrap, topic, messages)  # one partition: offset i is message i; slices in every codec

    pipeline = pipeline_variant(tmp_path, "hostile", max_batch=128)
    spec = yaml.safe_load(pipeline.read_text(encoding="utf-8"))
    spec["stages"] = [stage for stage in spec["stages"] if stage["name"] == "spam"]  # one model keeps the run short
    pipeline.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    spec_source = KafkaSource.model_validate({**yaml.safe_load(pipeline.read_text())["source"], "bootstrap_servers": kafka_bootstrap,
                                              "topics": [topic], "group": group})
    expected = [parse_record(_record(topic, offset, key, value), spec_source) for offset, (key, value) in enumerate(messages)]
    documents = {item.id for item in expected if isinstance(item, Document)}
    letters = {item.ref: item.reason for item in expected if isinstance(item, DeadLetter)}
    assert valid_ids <= documents and len(letters) > 1000 and len(documents) > len(valid_ids)

    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "TEXTWORKER_MODELS_DIR": str(models_dir),
           "TEXTWORKER_TOPIC": topic, "TEXTWORKER_GROUP": group}
    db = Db(postgres_url)
    worker = start_worker(pipeline, postgres_url, env, tmp_path / "worker.log")
    try:
        def stored_offset() -> int:
            return int(db.scalar("SELECT next_offset FROM stream_offsets WHERE consumer_group = :g", g=group) or 0)

        wait_for(lambda: stored_offset() == len(messages), 600, "the stored offset to reach the end of the topic",
                 abort=lambda: None if worker.alive() else f"the worker exited: {worker.log_tail()}")
        wait_for(lambda: _committed(kafka_bootstrap, group, topic) == len(messages), 60, "Kafka's committed offset (lag 0)",
                 abort=lambda: None if worker.alive() else f"the worker exited: {worker.log_tail()}")
        assert worker.alive()

        assert {r[0] for r in db.rows("SELECT doc_id FROM documents")} == documents
        for stage in ("spam",):
            have = {r[0] for r in db.rows("SELECT doc_id FROM results WHERE stage = :s", s=stage)}
            failed = {r[0] for r in db.rows("SELECT ref FROM dead_letters WHERE stage = :s", s=stage)}
            assert valid_ids <= have, f"{stage}: {len(valid_ids - have)} valid documents without a result"
            assert have | failed == documents, f"{stage}: {len(documents - have - failed)} documents without result or letter"
        stored = {r.ref: r.reason for r in db.rows("SELECT ref, reason FROM dead_letters WHERE stage = 'source'")}
        assert stored == letters
        assert set(stored.values()) <= REASONS
        assert not db.rows("SELECT ref FROM dead_letters WHERE reason = 'sink_rejected'")
        assert worker.terminate() == 0, worker.log_tail()

        before = _latest(db)
        again = start_worker(pipeline, postgres_url, env, tmp_path / "again.log")
        try:
            wait_for(lambda: any(r.get("msg") == "partitions assigned" for r in again.log_records()), 120,
                     "the restarted worker to be assigned its partition",
                     abort=lambda: None if again.alive() else f"the worker exited: {again.log_tail()}")
            time.sleep(5)  # several polls at the stored offset
            assert again.alive() and _latest(db) == before, "a restart replayed records"
        finally:
            assert again.terminate() == 0, again.log_tail()
    finally:
        if worker.alive():
            worker.kill()
        db.close()


# --------------------------------------------------------------------------- the feedback topic


def _feedback_pipeline(tmp_path: Path, bootstrap: str, topic: str, database_url: str) -> Path:
    model_dir = tmp_path / "models" / "spam"
    (model_dir / "v0").mkdir(parents=True)
    (model_dir / "v0" / "config.json").write_text("{}", encoding="utf-8")
    spec = {"version": 1, "name": "hostile-feedback", "source": {"type": "file", "path": "unused.jsonl"},
            "stages": [{"name": "spam", "type": "spam", "model": str(model_dir),
                        "finetune": {"schedule": {"min_new_labels": 1_000_000}}}],
            "sink": {"url": database_url}, "feedback": {"topic": topic, "bootstrap_servers": bootstrap, "idle_ms": 2000}}
    path = tmp_path / "feedback.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def _cli(*args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout_s)


def test_hostile_feedback_records_never_stop_the_scheduler(kafka_bootstrap: str, postgres_url: str, tmp_path: Path) -> None:
    topic = unique_name("hostile-feedback")
    create_topics(kafka_bootstrap, [topic], partitions=1)
    values = generate(hostile_feedback(), ROUTE_HOSTILE)
    valid = [json.dumps({"stage": "spam", "text": f"valid feedback number {i}", "label": "spam" if i % 2 else "ham"}).encode()
             for i in range(ROUTE_HOSTILE // VALID_EVERY)]
    messages: list[tuple[bytes | None, bytes | None]] = []
    for index, value in enumerate(values):
        messages.append((None, value))
        if index % VALID_EVERY == VALID_EVERY - 1:
            messages.append((None, valid[index // VALID_EVERY]))
    produce(kafka_bootstrap, topic, messages)
    pipeline = _feedback_pipeline(tmp_path, kafka_bootstrap, topic, postgres_url)

    from schemas.pipeline import SpamStage
    from worker.sources.validation import RecordProblem, decode_json

    stages = {"spam": SpamStage(name="spam", model="unused")}
    refused: set[str] = set()
    for offset, (_key, value) in enumerate(messages):
        try:
            validate_any(stages, {"spam": ["ham", "spam"]}, decode_json(value or b""))
        except (RowProblem, RecordProblem):
            refused.add(f"{topic}/0/{offset}")

    done = _cli("schedule", str(pipeline), "--once", "--database-url", postgres_url, "--json")
    assert done.returncode == 0, done.stderr[-4000:]
    db = Db(postgres_url)
    try:
        letters = {r.ref: r.reason for r in db.rows("SELECT ref, reason FROM dead_letters WHERE stage = 'feedback'")}
        assert set(letters) == refused and set(letters.values()) <= REASONS | {"unknown_stage", "missing_field", "unknown_label",
                                                                                "empty_answer", "empty_question", "answer_not_in_context"}
        texts = {r[0] for r in db.rows("SELECT text FROM feedback")}
        assert {json.loads(v)["text"] for v in valid} <= texts
        before = (db.scalar("SELECT count(*) FROM feedback"), db.scalar("SELECT max(updated_at) FROM dead_letters"))
        again = _cli("schedule", str(pipeline), "--once", "--database-url", postgres_url)
        assert again.returncode == 0, again.stderr[-4000:]
        assert (db.scalar("SELECT count(*) FROM feedback"), db.scalar("SELECT max(updated_at) FROM dead_letters")) == before, \
            "the offsets were not committed: the second drain read the topic again"
    finally:
        db.close()


# --------------------------------------------------------------------------- the HTTP routes


@pytest.fixture(scope="module")
def served(models_dir: Path, tmp_path_factory: pytest.TempPathFactory, postgres_admin_url: str) -> Iterator[tuple[str, Path]]:
    """`textworker serve` of a one-stage (spam) pipeline with PostgreSQL, over real HTTP."""
    import uuid

    import sqlalchemy as sa

    name = f"tw_hostile_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    database_url = postgres_admin_url.rsplit("/", 1)[0] + f"/{name}"
    tmp = tmp_path_factory.mktemp("serve")
    spec = {"version": 1, "name": "hostile-http", "source": {"type": "file", "path": "unused.jsonl"},
            "stages": [{"name": "spam", "type": "spam", "model": str(models_dir / "spam"), "max_length": 64}]}
    pipeline = tmp / "serve.yaml"
    pipeline.write_text(yaml.safe_dump(spec), encoding="utf-8")
    port = free_port()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "RAY_DEDUP_LOGS": "0"}
    env.pop("TEXTWORKER_TOKEN", None)
    log = (tmp / "serve.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "worker.cli", "serve", str(pipeline), "--port", str(port), "--database-url",
                                database_url, "--max-documents", "64", "--max-body-bytes", str(4 * 1024 * 1024)],
                               cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return requests.get(url + "/readyz", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    try:
        wait_for(ready, 300, "textworker serve to be ready", interval_s=2,
                 abort=lambda: None if process.poll() is None else (tmp / "serve.log").read_text(errors="replace")[-3000:])
        yield url, tmp / "serve.log"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


HEADERS = {"Content-Type": "application/json", "X-Textworker": "1"}


def _post(url: str, body: bytes) -> requests.Response:
    return requests.post(url, data=body, headers=HEADERS, timeout=120)


def _batches(items: list[bytes], size: int) -> Iterator[list[bytes]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _server_errors(log: Path) -> list[str]:
    """The exception lines the server logged (what a 500 was), most frequent first."""
    lines = log.read_text(errors="replace").splitlines()
    errors: dict[str, int] = {}
    for line in lines:
        text = line.split("\x1b[0m ", 1)[-1].strip()
        if text[:1].isalpha() and ("Error: " in text or "Exception: " in text) and not text.startswith(("File ", "raise ")):
            key = text[:160]
            errors[key] = errors.get(key, 0) + 1
    return [f"{n} x {text}" for text, n in sorted(errors.items(), key=lambda item: -item[1])]


def _check_all(send: Callable[[bytes], requests.Response], bodies: Iterator[bytes], log: Path) -> dict[int, int]:
    """Send every body; every answer is JSON and none is a 5xx (the first failures and the server's errors are listed)."""
    statuses: dict[int, int] = {}
    failures: list[tuple[int, str, bytes]] = []
    for body in bodies:
        response = send(body)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        if response.status_code >= 500 or not response.headers.get("content-type", "").startswith("application/json"):
            failures.append((response.status_code, response.text[:200], body[:200]))
    assert not failures, (statuses, failures[:2], _server_errors(log)[:5])
    return statuses


def _unique_id_batches(bodies: list[bytes], size: int) -> Iterator[list[bytes]]:
    """Batches without two documents of the same id (as the boundary makes it: NULs removed, or derived from the text),
    so that a request is not refused whole for a repeated id (422)."""
    batch: list[bytes] = []
    keys: set[str] = {"http-valid"}
    for body in bodies:
        record = json.loads(body)
        doc_id = record.get("id")
        key = str(doc_id).replace("\x00", "") if doc_id is not None else "text:" + record["text"].replace("\x00", "")
        if key in keys or len(batch) == size:
            yield batch
            batch, keys = [], {"http-valid"}
        batch.append(body)
        keys.add(key)
    if batch:
        yield batch


def _fits_the_schema(body: bytes) -> bool:
    """What FastAPI's JSON parsing and the request schema accept (a document's own problems are answered per document)."""
    try:
        record = json.loads(body)
    except (ValueError, RecursionError):
        return False
    doc_id = record.get("id") if isinstance(record, dict) else None
    return isinstance(record, dict) and isinstance(record.get("text"), str) and (
        doc_id is None or (isinstance(doc_id, str | int) and not isinstance(doc_id, bool)))


def test_hostile_feedback_bodies_never_get_a_500(served: tuple[str, Path]) -> None:
    url, log = served
    rows = generate(hostile_feedback(), ROUTE_HOSTILE)

    def feedback_bodies() -> Iterator[bytes]:
        for index, batch in enumerate(_batches(rows, 10)):
            yield batch[0] if index % 4 == 0 else b"[" + b", ".join(batch) + b"]"

    statuses = _check_all(lambda body: _post(url + "/v1/feedback", body), feedback_bodies(), log)
    assert statuses.get(422, 0) > 10, statuses
    good = _post(url + "/v1/feedback", json.dumps({"stage": "spam", "text": "a valid row after the storm", "label": "spam"}).encode())
    assert good.status_code == 200 and good.json()["inserted"] == 1, good.text


def test_hostile_document_bodies_never_get_a_500(served: tuple[str, Path]) -> None:
    url, log = served
    objects = generate(hostile_object(), ROUTE_HOSTILE)
    valid = json.dumps({"id": "http-valid", "text": "Free entry! Text WIN to 80082 to claim your prize now"}).encode()
    fitting = [o for o in objects if _fits_the_schema(o)]
    others = [o for o in objects if not _fits_the_schema(o)]
    assert len(fitting) > 150 and len(others) > 150, (len(fitting), len(others))  # plenty of both kinds

    def documents_bodies() -> Iterator[bytes]:
        for batch in _unique_id_batches(fitting, 15):  # requests the schema accepts: each document gets its own answer
            yield b'{"documents": [' + b", ".join([*batch, valid]) + b"]}"
        for batch in _batches(others, 2):  # requests refused whole (400, 422, 413)
            yield b'{"documents": [' + b", ".join([*batch, valid]) + b"]}"

    statuses = _check_all(lambda body: _post(url + "/v1/documents", body), documents_bodies(), log)
    assert statuses.get(200, 0) > statuses.get(422, 0), statuses  # most accepted requests get an answer per document
    probe = _post(url + "/v1/documents", b'{"documents": [{"id": "x\\ud800y", "text": "fine", "k": "\\udc80"}, ' + valid + b"]}")
    assert probe.status_code == 200, probe.text
    entries = probe.json()["documents"]
    assert entries[0]["status"] == "rejected" and entries[0]["errors"][0]["reason"] == "invalid_utf8"
    assert entries[-1]["status"] == "ok" and entries[-1]["results"]["spam"]["label"] in ("ham", "spam")

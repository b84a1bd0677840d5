"""Bad Kafka records become dead letters with reasons, in SQL and on the dead-letter topic;
the valid records between them are processed. Against a real broker and PostgreSQL."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition

from tests.integration.kafka_helpers import (
    Db,
    create_topics,
    pipeline_variant,
    produce,
    shared_documents,
    start_worker,
    unique_name,
)

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

BAD: list[tuple[str, bytes | None, bytes | None, str]] = [
    # (name, key, value, reason); a name of None-able key means the ref is the position
    ("invalid-json", None, b'{"id": "bad-json", "text": "unterminated', "invalid_json"),
    ("wrong-type", None, json.dumps({"id": "bad-type", "text": 12345}).encode(), "wrong_type"),
    ("missing-text", None, json.dumps({"id": "bad-missing", "body": "no text field"}).encode(), "missing_text"),
    ("empty-text", None, json.dumps({"id": "bad-empty", "text": ""}).encode(), "empty_text"),
    ("blank-text", None, json.dumps({"id": "bad-blank", "text": " \n\t  "}).encode(), "empty_text"),
    ("non-utf8", None, b'{"id": "bad-latin1", "text": "caf\xe9 cr\xe8me"}', "invalid_utf8"),
    ("ten-mb", None, json.dumps({"id": "bad-huge", "text": "word " * (2 * 1024 * 1024)}).encode(), "too_large"),
    ("tombstone", b"bad-tombstone", None, "null_value"),
    ("array", None, json.dumps([{"id": "bad-array", "text": "inside an array"}]).encode(), "not_an_object"),
    ("id-type", None, json.dumps({"id": {"nested": 1}, "text": "an id that is an object"}).encode(), "invalid_id"),
    ("null-text", None, json.dumps({"id": "bad-null", "text": None}).encode(), "wrong_type"),
    ("deep-json", None, b"[" * 50_000 + b"]" * 50_000, "too_deep"),
    ("scalar", None, json.dumps("a bare string").encode(), "not_an_object"),
    ("surrogate", None, b'{"id": "bad-surrogate", "text": "lone \\udc80 half"}', "invalid_utf8"),
]


def _read_topic(bootstrap: str, topic: str, expected: int, timeout_s: float = 60) -> list[Any]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, api_version=(2, 5), enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek(tp, 0)
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and len(records) < expected:
        records += consumer.poll(timeout_ms=500).get(tp, [])
    consumer.poll(timeout_ms=1000)
    records += consumer.poll(timeout_ms=500).get(tp, [])
    consumer.close()
    return records


def test_bad_records_become_dead_letters_and_reach_the_dead_letter_topic(
    kafka_bootstrap: str, models_dir: Path, postgres_url: str, shared_data: Path, tmp_path: Path
) -> None:
    topic, dlt, rt, group = unique_name("mixed"), unique_name("dead"), unique_name("results"), unique_name("group")
    create_topics(kafka_bootstrap, [topic, dlt, rt], partitions=1)
    valid = shared_documents(shared_data, 2 * len(BAD) + 1)
    messages: list[tuple[bytes | None, bytes | None]] = []
    for i, doc in enumerate(valid):
        messages.append((doc["id"].encode(), json.dumps(doc).encode()))
        if i < len(BAD):
            messages.append((BAD[i][1], BAD[i][2]))
    produce(kafka_bootstrap, topic, messages, codecs=["lz4"])
    positions = {name: f"{topic}/0/{messages.index((key, value))}" for name, key, value, _ in BAD}

    pipeline = pipeline_variant(tmp_path, "with_topics", dead_letter_topic=dlt, results_topic=rt, max_batch=16)
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "TEXTWORKER_MODELS_DIR": str(models_dir),
           "TEXTWORKER_TOPIC": topic, "TEXTWORKER_GROUP": group}
    worker = start_worker(pipeline, postgres_url, env, tmp_path / "worker.log", "--until-end")
    assert worker.process.wait(timeout=300) == 0, worker.log_tail()

    db = Db(postgres_url)
    letters = {r.ref: (r.reason, r.detail) for r in db.rows("SELECT ref, reason, detail FROM dead_letters WHERE stage = 'source'")}
    assert len(letters) == len(BAD), sorted(letters)
    for name, _key, _value, reason in BAD:
        found = [ref for ref, (_why, detail) in letters.items() if ref == positions[name] or detail.endswith(f"(at {positions[name]})")]
        assert len(found) == 1, (name, positions[name], letters)
        assert letters[found[0]][0] == reason, (name, letters[found[0]])
    valid_ids = {d["id"] for d in valid}
    assert {r[0] for r in db.rows("SELECT doc_id FROM documents")} == valid_ids
    for stage in ("sentiment", "spam"):
        assert db.scalar("SELECT count(*) FROM results WHERE stage = :s", s=stage) == len(valid_ids)
    assert db.scalar("SELECT next_offset FROM stream_offsets WHERE consumer_group = :g", g=group) == len(messages)
    db.close()

    published = _read_topic(kafka_bootstrap, dlt, len(BAD))
    reasons = sorted(dict(r.headers)["textworker.reason"].decode() for r in published)
    assert reasons == sorted(reason for *_, reason in BAD)
    result_ids = {json.loads(r.value)["doc_id"] for r in _read_topic(kafka_bootstrap, rt, len(valid_ids))}
    assert result_ids == valid_ids

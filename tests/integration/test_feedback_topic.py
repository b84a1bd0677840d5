"""Feedback from a Kafka topic on the real (Tansu) broker: drained into SQL, bad records skipped, re-reads stored once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.integration.kafka_helpers import create_topics, produce, unique_name
from tests.integration.lifecycle_helpers import sms_rows, spam_pipeline
from worker.config import load_pipeline
from worker.lifecycle.feedback_topic import FeedbackTopicConsumer
from worker.lifecycle.registry import ModelRegistry, open_engine
from worker.lifecycle.schedule import Scheduler

pytestmark = pytest.mark.kafka


def _messages(rows: list[tuple[str, str]]) -> list[tuple[bytes | None, bytes | None]]:
    return [(None, json.dumps({"stage": "spam", "text": text, "label": label, "who": "kafka-test"}).encode()) for label, text in rows]


def test_feedback_topic_is_drained_into_sql(kafka_bootstrap: str, shared_data: Path, tmp_path: Path, sqlite_url: str) -> None:
    topic = unique_name("feedback")
    create_topics(kafka_bootstrap, [topic], partitions=2)
    rows = sms_rows(shared_data, "train")[100:160]
    bad = [(None, b"{not json"), (None, json.dumps({"stage": "nope", "text": "x", "label": "ham"}).encode()),
           (None, json.dumps({"stage": "spam", "text": "x", "label": "eggs"}).encode())]
    assert produce(kafka_bootstrap, topic, _messages(rows[:40]) + bad, codecs=["gzip", "none"]) == 43
    model_dir = tmp_path / "models" / "spam"
    (model_dir / "v0").mkdir(parents=True)
    (model_dir / "v0" / "config.json").write_text("{}", encoding="utf-8")
    pipeline = spam_pipeline(tmp_path / "p.yaml", model_dir, sqlite_url, tmp_path / "unused.tsv",
                             schedule={"min_new_labels": 1000},
                             extra={"feedback": {"topic": topic, "bootstrap_servers": kafka_bootstrap, "idle_ms": 1500}})
    spec = load_pipeline(pipeline)
    engine = open_engine(sqlite_url)
    consumer = FeedbackTopicConsumer(spec, engine)
    try:
        first = consumer.drain()
        assert (first.received, first.inserted, first.duplicates) == (43, len(set(rows[:40])), 40 - len(set(rows[:40])))
        assert sorted(r.reason for r in first.rejected) == ["invalid_json", "unknown_label", "unknown_stage"]
        assert all(r.detail.startswith(f"{topic}/") for r in first.rejected)
        with engine.connect() as conn:  # each refused record is a dead letter at its position, with its reason
            letters = conn.execute(sa.text("SELECT ref, stage, reason FROM dead_letters")).all()
        assert sorted(r.reason for r in letters) == ["invalid_json", "unknown_label", "unknown_stage"]
        assert all(r.stage == "feedback" and r.ref.startswith(f"{topic}/") for r in letters)
        assert consumer.drain().received == 0
        produce(kafka_bootstrap, topic, _messages(rows[30:60]), codecs=["lz4"])
        second = consumer.drain()
        assert second.received == 30 and second.inserted == len(set(rows[40:60]) - set(rows[:40]))
    finally:
        consumer.close()
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT count(*), min(source), min(who) FROM feedback")).one()
    assert tuple(stored) == (len(set(rows[:60])), "kafka", "kafka-test")

    again = FeedbackTopicConsumer(spec, engine)
    try:
        assert again.drain().received == 0, "offsets were committed after the rows were stored"
    finally:
        again.close()

    produce(kafka_bootstrap, topic, _messages(sms_rows(shared_data, "train")[200:205]), codecs=["none"])
    registry = ModelRegistry(engine)
    decisions = Scheduler(spec, registry).run(once=True, poll_seconds=0)
    assert decisions == [{"stage": "spam", "model": "spam", "due": False, "why": f"{len(set(rows[:60])) + 5} new labels, waiting for 1000",
                          "new_labels": len(set(rows[:60])) + 5}]
    engine.dispose()

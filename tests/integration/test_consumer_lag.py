"""Consumer lag per partition on /metrics, against a real Kafka-protocol broker and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.kafka_helpers import create_topics, pipeline_variant, produce, unique_name
from worker.assembly import run_kafka as run_stream
from worker.config import load_pipeline
from worker.engine.stream import StreamOptions
from worker.observability import metrics

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]
SAMPLE = Path(__file__).resolve().parents[2] / "worker" / "seed" / "sample_docs.jsonl"


def lags(pipeline: str, group: str) -> dict[str, float]:
    text = metrics.render().decode()
    return {s.labels["partition"]: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "textworker_consumer_lag" and s.labels["pipeline"] == pipeline and s.labels["group"] == group}


def partition_ends(bootstrap: str, topic: str) -> dict[str, int]:
    """Records per partition, counted by reading them (Tansu's ListOffsets is unreliable for batches)."""
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, api_version=(2, 5), enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = {str(tp.partition): 0 for tp in partitions}
        empty = 0
        while empty < 3:
            batch = consumer.poll(timeout_ms=1000)
            empty = 0 if batch else empty + 1
            for tp, records in batch.items():
                ends[str(tp.partition)] = max(ends[str(tp.partition)], records[-1].offset + 1)
        return ends
    finally:
        consumer.close()


def stored_offsets(url: str, group: str) -> dict[str, int]:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT partition, next_offset FROM stream_offsets WHERE consumer_group = :g"), {"g": group}).all()
    engine.dispose()
    return {str(p): int(o) for p, o in rows}


def test_lag_per_partition_is_what_is_left_to_read(kafka_bootstrap: str, models_dir: Path, postgres_url: str, tmp_path: Path) -> None:
    texts = []
    for line in SAMPLE.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("text"), str) and record["text"].strip():
            texts.append(record["text"])
    total = 120
    docs = [{"id": f"lag-{i:04d}", "text": texts[i % len(texts)]} for i in range(total)]
    topic, group = unique_name("lag"), unique_name("group")
    create_topics(kafka_bootstrap, [topic], 2)
    assert produce(kafka_bootstrap, topic, [(d["id"].encode(), json.dumps(d).encode()) for d in docs], codecs=["none"]) == total
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "TEXTWORKER_TOPIC": topic, "TEXTWORKER_GROUP": group,
           "TEXTWORKER_MODELS_DIR": str(models_dir)}
    spec = load_pipeline(pipeline_variant(tmp_path, "lag", max_batch=20), env=env)

    first = run_stream(spec, postgres_url, StreamOptions(limit=40))
    read = first.docs + first.dead_letters
    assert 0 < read < total
    ends = partition_ends(kafka_bootstrap, topic)
    assert sum(ends.values()) == total
    stored = stored_offsets(postgres_url, group)
    after_first = lags(spec.name, group)
    assert after_first, "no partition reported a lag"  # a partition not fetched yet reports nothing
    for partition, lag in after_first.items():
        assert lag == ends[partition] - stored.get(partition, 0) > 0, (partition, lag, ends, stored)

    rest = run_stream(spec, postgres_url, StreamOptions(until_end=True))
    assert rest.docs + rest.dead_letters == total - read
    assert lags(spec.name, group) == {"0": 0.0, "1": 0.0}

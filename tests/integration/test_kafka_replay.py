"""Replays: `textworker run --from-time/--until-time` and `--from-offset/--until-offset` read exactly
their range, outside the consumer group, and exit when every partition reached its end."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.integration.kafka_helpers import (
    STREAM_PIPELINE,
    Db,
    create_topics,
    json_messages,
    produce,
    shared_documents,
    start_worker,
    unique_name,
)

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")


def test_time_and_offset_ranges_read_exactly_their_records(
    kafka_bootstrap: str, models_dir: Path, postgres_url: str, shared_data: Path, tmp_path: Path
) -> None:
    topic, group = unique_name("replay"), unique_name("group")
    create_topics(kafka_bootstrap, [topic], partitions=1)
    docs = shared_documents(shared_data, 60)
    segments = [docs[0:20], docs[20:40], docs[40:60]]
    boundaries = []
    for i, segment in enumerate(segments):
        produce(kafka_bootstrap, topic, json_messages(segment), codecs=["zstd"])
        if i < 2:
            time.sleep(1.0)
            boundaries.append(time.time())
            time.sleep(1.0)
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "TEXTWORKER_MODELS_DIR": str(models_dir), "TEXTWORKER_TOPIC": topic,
           "TEXTWORKER_GROUP": group}
    db = Db(postgres_url)

    by_time = start_worker(STREAM_PIPELINE, postgres_url, env, tmp_path / "time.log",
                           "--from-time", _iso(boundaries[0]), "--until-time", _iso(boundaries[1]))
    assert by_time.process.wait(timeout=600) == 0, by_time.log_tail()
    assert {r[0] for r in db.rows("SELECT doc_id FROM documents")} == {d["id"] for d in segments[1]}

    by_offset = start_worker(STREAM_PIPELINE, postgres_url, env, tmp_path / "offset.log", "--from-offset", "5", "--until-offset", "12")
    assert by_offset.process.wait(timeout=600) == 0, by_offset.log_tail()
    expected = {d["id"] for d in segments[1]} | {d["id"] for d in docs[5:12]}
    assert {r[0] for r in db.rows("SELECT doc_id FROM documents")} == expected
    for stage in ("sentiment", "spam"):
        assert db.scalar("SELECT count(*) FROM results WHERE stage = :s", s=stage) == len(expected)
    assert db.scalar("SELECT count(*) FROM stream_offsets") == 0, "a replay must not move the group's offsets"
    db.close()

"""Kafka record parsing, replay ranges and client settings: no broker needed."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import TopicPartition
from pydantic import ValidationError

from schemas.documents import DeadLetter, Document, StageResult
from schemas.pipeline import KafkaSource, PipelineSpec
from worker.cli import build_parser
from worker.engine.stream import StreamOptions, StreamRunner
from worker.sinks.kafka_topics import dead_letter_message, result_messages
from worker.sources.kafka import consumer_config
from worker.sources.kafka_records import header_fields, parse_record
from worker.sources.kafka_replay import Replay, ReplayTracker, parse_time
from worker.sources.validation import generated_id

SPEC = KafkaSource(bootstrap_servers="b:9092", topics=["docs"], group="g", headers={"lang": "x-lang"})
TEXT_SPEC = SPEC.model_copy(update={"format": "text"})


def rec(value: bytes | None, key: bytes | None = None, offset: int = 7, headers: list[tuple[str, bytes]] | None = None,
        timestamp: int = 1000, partition: int = 2) -> Any:
    return ConsumerRecord("docs", partition, 0, offset, timestamp, 0, key, value, headers or [], None,
                          -1, len(value) if value is not None else -1, -1)


def jrec(obj: Any, **kw: Any) -> Any:
    return rec(json.dumps(obj).encode(), **kw)


def reason(item: Document | DeadLetter) -> str:
    assert isinstance(item, DeadLetter), item
    return item.reason


def test_valid_json_document_keeps_position_meta_and_headers() -> None:
    doc = parse_record(jrec({"id": "d1", "text": "Great film.", "label": "positive"}, headers=[("x-lang", b"en")]), SPEC)
    assert isinstance(doc, Document)
    assert (doc.id, doc.text, doc.source_ref) == ("d1", "Great film.", "docs/2/7")
    assert doc.meta == {"label": "positive", "lang": "en"}


def test_json_without_id_uses_the_key_then_a_generated_id() -> None:
    keyed = parse_record(jrec({"text": "hello there"}, key=b"k-9"), SPEC)
    assert isinstance(keyed, Document) and keyed.id == "k-9"
    unkeyed = parse_record(jrec({"text": "hello there"}), SPEC)
    assert isinstance(unkeyed, Document) and unkeyed.id == generated_id("hello there")


def test_integer_id_becomes_a_string() -> None:
    doc = parse_record(jrec({"id": 42, "text": "x y"}), SPEC)
    assert isinstance(doc, Document) and doc.id == "42"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b'{"id": "a", "text": "unterminated', "invalid_json"),
        (b"[" * 100_000 + b"]" * 100_000, "too_deep"),
        (b"", "invalid_json"),
        (b'{"id": "a", "text": "caf\xe9"}', "invalid_utf8"),
        (b'{"id": "a", "text": "lone \\ud800 surrogate"}', "invalid_utf8"),
        (json.dumps(["a", "b"]).encode(), "not_an_object"),
        (json.dumps("just a string").encode(), "not_an_object"),
        (b"null", "not_an_object"),
        (json.dumps({"id": "a"}).encode(), "missing_text"),
        (json.dumps({"id": "a", "text": 17}).encode(), "wrong_type"),
        (json.dumps({"id": "a", "text": None}).encode(), "wrong_type"),
        (json.dumps({"id": "a", "text": ""}).encode(), "empty_text"),
        (json.dumps({"id": "a", "text": " \n\t "}).encode(), "empty_text"),
        (json.dumps({"id": ["a"], "text": "x"}).encode(), "invalid_id"),
        (json.dumps({"id": True, "text": "x"}).encode(), "invalid_id"),
        (json.dumps({"id": "i" * 600, "text": "x"}).encode(), "invalid_id"),
        (json.dumps({"id": "a", "text": "w " * 600_000}).encode(), "too_large"),
    ],
)
def test_bad_json_values_become_dead_letters(value: bytes, expected: str) -> None:
    assert reason(parse_record(rec(value), SPEC)) == expected


def test_tombstone_and_huge_values() -> None:
    tomb = parse_record(rec(None, key=b"gone"), SPEC)
    assert reason(tomb) == "null_value" and tomb.ref == "docs/2/7"
    huge = parse_record(rec(b"x" * (10 * 1024 * 1024)), SPEC)
    assert reason(huge) == "too_large" and huge.ref == "docs/2/7"
    assert len(huge.payload) < 70 * 1024 and "clipped" in huge.payload


def test_dead_letter_ref_is_the_id_when_known_and_detail_names_the_position() -> None:
    letter = parse_record(jrec({"id": "bad-1", "text": ""}), SPEC)
    assert isinstance(letter, DeadLetter)
    assert letter.ref == "bad-1" and "docs/2/7" in letter.detail
    unknown = parse_record(rec(b"{oops"), SPEC)
    assert unknown.ref == "docs/2/7"


def test_text_format_key_is_id_null_key_generates_one() -> None:
    doc = parse_record(rec(b"Free entry now!!", key=b"sms-1"), TEXT_SPEC)
    assert isinstance(doc, Document) and (doc.id, doc.text) == ("sms-1", "Free entry now!!")
    anon = parse_record(rec(b"Free entry now!!"), TEXT_SPEC)
    assert isinstance(anon, Document) and anon.id == generated_id("Free entry now!!")
    assert reason(parse_record(rec(b"caf\xe9"), TEXT_SPEC)) == "invalid_utf8"
    assert reason(parse_record(rec(b"fine", key=b"\xff\xfe"), TEXT_SPEC)) == "invalid_id"
    assert reason(parse_record(rec(b"   "), TEXT_SPEC)) == "empty_text"
    assert reason(parse_record(rec(None), TEXT_SPEC)) == "null_value"


def test_header_fields_decode_and_ignore_missing() -> None:
    assert header_fields([("a", b"1"), ("b", b"\xff"), ("a", b"2")], {"x": "a", "y": "b", "z": "c"}) == {"x": "2", "y": "\\xff"}
    assert header_fields(None, {"x": "a"}) == {}


def test_spec_defaults_and_validation() -> None:
    assert SPEC.api_version == (2, 5, 0)
    assert KafkaSource(bootstrap_servers="b", topics=["t"], group="g", dead_letter_topic=" ").dead_letter_topic is None
    with pytest.raises(ValidationError):
        KafkaSource(bootstrap_servers="b", group="g")
    with pytest.raises(ValidationError):
        KafkaSource(bootstrap_servers="b", topics=["t"], topic_pattern="t.*", group="g")
    with pytest.raises(ValidationError):
        KafkaSource(bootstrap_servers="b", topics=["t"], group="g", unknown_key=1)


def test_consumer_config_manual_commits_and_fetch_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    config = consumer_config(SPEC, grouped=True)
    assert config["enable_auto_commit"] is False and config["group_id"] == "g" and config["api_version"] == (2, 5)
    assert config["max_partition_fetch_bytes"] > SPEC.max_value_bytes
    assert consumer_config(SPEC, grouped=False)["group_id"] is None
    monkeypatch.setenv("KAFKA_PW", "s3cret")
    secure = KafkaSource(bootstrap_servers="a:1,b:2", topics=["t"], group="g", client_options={"fetch_min_bytes": 10},
                         security={"protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "u", "sasl_password_env": "KAFKA_PW"})
    config = consumer_config(secure, grouped=True)
    assert config["bootstrap_servers"] == ["a:1", "b:2"] and config["fetch_min_bytes"] == 10
    assert (config["security_protocol"], config["sasl_plain_username"], config["sasl_plain_password"]) == ("SASL_SSL", "u", "s3cret")


def test_replay_range_is_half_open() -> None:
    r = Replay(from_offset=10, until_offset=20, from_time_ms=500, until_time_ms=900)
    assert r.admits(10, 500) and not r.admits(9, 600) and not r.admits(12, 499)
    assert r.past_end(20, 600) and r.past_end(12, 900) and not r.past_end(19, 899)
    with pytest.raises(ValueError):
        Replay(from_offset=5, until_offset=4)
    with pytest.raises(ValueError):
        Replay(from_offset=-1)


def test_replay_tracker_finishes_a_partition_at_its_first_record_past_the_end() -> None:
    tp = TopicPartition("docs", 0)
    tracker = ReplayTracker(Replay(from_offset=2, until_offset=5))
    tracker.partitions = [tp]
    kept = tracker.admit(tp, [rec(b"{}", offset=o, partition=0) for o in range(0, 8)])
    assert [r.offset for r in kept] == [2, 3, 4]
    assert tracker.done and tracker.admit(tp, [rec(b"{}", offset=9)]) == []


def test_parse_time_iso() -> None:
    assert parse_time("1970-01-01T00:00:01Z") == 1000
    assert parse_time("1970-01-01T00:00:01") == 1000
    assert parse_time("1970-01-01T01:00:01+01:00") == 1000


def test_cli_replay_flags_become_options() -> None:
    args = build_parser().parse_args(["run", "p.yaml", "--from-offset", "3", "--until-time", "1970-01-01T00:00:02Z"])
    options = StreamOptions.from_args(args)
    assert options.replay == Replay(from_offset=3, until_time_ms=2000) and not options.until_end
    plain = StreamOptions.from_args(build_parser().parse_args(["run", "p.yaml", "--until-end"]))
    assert plain.replay is None and plain.until_end


def test_published_messages_carry_reason_headers_and_results() -> None:
    letter = DeadLetter(ref="docs/0/3", reason="invalid_json", detail="bad", payload="{oops")
    key, value, headers = dead_letter_message(letter, "stream")
    assert (key, value) == (b"docs/0/3", b"{oops") and ("textworker.reason", b"invalid_json") in headers
    docs = [Document(id="a", text="t", source_ref="docs/0/1"), Document(id="b", text="u")]
    results = [StageResult(doc_id="a", stage="sentiment", label="positive", score=0.9), StageResult(doc_id="a", stage="spam", label="ham")]
    messages = result_messages(docs, results, "stream")
    assert len(messages) == 1 and messages[0][0] == b"a"
    body = json.loads(messages[0][1])
    assert set(body["results"]) == {"sentiment", "spam"} and body["source_ref"] == "docs/0/1"


class _FakeSink:
    run_id = "r1"

    def __init__(self, stored: dict[str, dict[tuple[str, int], int]]) -> None:
        self.stored = stored

    def load_offsets(self, group: str) -> dict[tuple[str, int], int]:
        return self.stored.get(group, {})


class _FakePublisher:
    enabled = True


def test_start_offsets_take_the_lower_of_processed_and_published() -> None:
    spec = PipelineSpec(name="s", source=SPEC, stages=[{"name": "a", "type": "classify", "model": "m"}])
    sink = _FakeSink({"g": {("docs", 0): 100, ("docs", 1): 50}, "g:published": {("docs", 0): 80}})
    runner = StreamRunner(spec, sink, None, None, _FakePublisher(), StreamOptions(), threading.Event())  # type: ignore[arg-type]
    assert runner.start_offsets() == {("docs", 0): 80, ("docs", 1): 50}

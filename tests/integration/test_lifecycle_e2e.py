"""The model lifecycle end to end, on the real broker, PostgreSQL, Ray and the real CLI.

A deliberately weak spam model (40 labels, one short epoch) serves a Kafka stream in a
`textworker run` worker. Labels from ../shared/data/sms_spam/train.tsv arrive on the
pipeline's Kafka feedback topic; `textworker schedule --once` drains them and, with
enough new labels, fine-tunes a candidate that the gate promotes. The running worker
switches to it between batches without a restart, and its F1(spam) on
../shared/data/sms_spam/test.tsv, measured from the results it stores, is at least 0.10
higher than the weak model's. Then the same texts arrive with shuffled labels: the
candidate trained on them is rejected with its reason, and the champion stays (the
worker keeps serving it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.kafka_helpers import Db, create_topics, produce, start_worker, unique_name, wait_for
from tests.integration.lifecycle_helpers import (
    FEEDBACK_ROWS,
    WEAK_ROWS,
    build_weak_spam,
    copy_family,
    shuffled,
    sms_rows,
    spam_pipeline,
    write_tsv,
)
from worker.cli import main
from worker.lifecycle.registry import CANDIDATE, CHAMPION, ModelRegistry
from worker.training.metrics import classification_metrics

pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.postgres]


def _feedback_messages(rows: list[tuple[str, str]]) -> list[tuple[bytes | None, bytes | None]]:
    return [(None, json.dumps({"stage": "spam", "text": text, "label": label, "who": "e2e"}).encode()) for label, text in rows]


def _documents(rows: list[tuple[str, str]], prefix: str) -> list[tuple[bytes | None, bytes | None]]:
    return [(f"{prefix}-{i}".encode(), json.dumps({"id": f"{prefix}-{i}", "text": text}).encode()) for i, (_, text) in enumerate(rows)]


def _stream_f1(db: Db, prefix: str, gold: list[tuple[str, str]]) -> tuple[float, set[str]]:
    """F1(spam) of the results the worker stored for documents `prefix-*`, and the model versions that made them."""
    rows = db.rows("SELECT doc_id, label, model_version FROM results WHERE stage = 'spam' AND doc_id LIKE :p", p=f"{prefix}-%")
    found = {r.doc_id: r.label for r in rows}
    golds = [label for label, _ in gold]
    preds = [found[f"{prefix}-{i}"] for i in range(len(gold))]
    return float(classification_metrics(golds, preds, ["ham", "spam"])["per_label"]["spam"]["f1"]), {r.model_version for r in rows}


def _count(db: Db, prefix: str) -> int:
    return int(db.scalar("SELECT count(*) FROM results WHERE stage = 'spam' AND doc_id LIKE :p", p=f"{prefix}-%") or 0)


def _wait_for_switch(bootstrap: str, topic: str, db: Db, rows: list[tuple[str, str]], version: str, alive: Callable[[], str | None]) -> None:
    """Send a few documents at a time until the running worker answers with `version` (it loads it between batches)."""
    deadline = time.monotonic() + 600
    for probe in range(10_000):
        prefix = f"probe{probe}"
        produce(bootstrap, topic, _documents(rows[:4], prefix), codecs=["none"])
        wait_for(lambda prefix=prefix: _count(db, prefix) >= 4, 300, "probe results", abort=alive)
        versions = {r[0] for r in db.rows("SELECT model_version FROM results WHERE doc_id LIKE :p", p=f"{prefix}-%")}
        if versions == {version}:
            return
        assert time.monotonic() < deadline, f"the worker still serves {versions}, not {version}"
        time.sleep(1)


def _schedule_once(capsys: pytest.CaptureFixture[str], pipeline: str) -> dict:
    capsys.readouterr()
    assert main(["schedule", pipeline, "--once", "--json"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.rstrip() == "[")
    decisions = json.JSONDecoder().raw_decode("".join(lines[start:]))[0]
    assert len(decisions) == 1, decisions
    return dict(decisions[0])


def test_weak_model_is_replaced_by_a_fine_tuned_one_while_the_worker_runs(
    ray_session: None, kafka_bootstrap: str, postgres_url: str, shared_data: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    family = copy_family(build_weak_spam(shared_data, tmp_path / "weak"), tmp_path / "models")
    train, test = sms_rows(shared_data, "train"), sms_rows(shared_data, "test")
    feedback = train[WEAK_ROWS:WEAK_ROWS + FEEDBACK_ROWS]
    frozen = write_tsv(tmp_path / "frozen.tsv", train[2000:2400])
    docs_topic, feedback_topic = unique_name("docs"), unique_name("labels")
    create_topics(kafka_bootstrap, [docs_topic, feedback_topic], partitions=1)
    source = {"type": "kafka", "bootstrap_servers": kafka_bootstrap, "topics": [docs_topic], "group": unique_name("g"),
              "max_batch": 128, "max_wait_ms": 200}
    pipeline = spam_pipeline(tmp_path / "lifecycle.yaml", family, postgres_url, frozen, source=source,
                             schedule={"min_new_labels": 40}, extra={"feedback": {"topic": feedback_topic}},
                             stage_extra={"swap_check_seconds": 1, "batch_size": 64})

    worker = start_worker(pipeline, postgres_url, {}, tmp_path / "worker.log")
    db = Db(postgres_url)
    registry = ModelRegistry.open(postgres_url)
    try:
        alive = lambda: None if worker.alive() else f"the worker exited: {worker.log_tail()}"  # noqa: E731
        produce(kafka_bootstrap, docs_topic, _documents(test, "before"), codecs=["none"])
        wait_for(lambda: _count(db, "before") >= len(test), 900, "the weak model's results on test.tsv", abort=alive)
        weak_f1, weak_versions = _stream_f1(db, "before", test)
        assert weak_versions == {"spam@v0-weak"}

        produce(kafka_bootstrap, feedback_topic, _feedback_messages(feedback), codecs=["none"])
        decision = _schedule_once(capsys, str(pipeline))
        assert decision["due"] is True and decision["new_labels"] == len(set(feedback)), decision
        result = decision["result"]
        assert result["promoted"] is True, result["reason"]
        champion_version = f"spam@{result['candidate']}"

        _wait_for_switch(kafka_bootstrap, docs_topic, db, test, champion_version, alive)
        produce(kafka_bootstrap, docs_topic, _documents(test, "after"), codecs=["none"])
        wait_for(lambda: _count(db, "after") >= len(test), 900, "the fine-tuned model's results on test.tsv", abort=alive)
        new_f1, new_versions = _stream_f1(db, "after", test)
        assert new_versions == {champion_version}, new_versions
        assert new_f1 >= weak_f1 + 0.10, (weak_f1, new_f1)
        assert worker.alive(), "the worker must switch models without a restart"
        with capsys.disabled():
            print(f"\nF1(spam) on test.tsv from the stream: weak {weak_f1:.4f} -> fine-tuned {new_f1:.4f}; gate: {result['reason']}")

        produce(kafka_bootstrap, feedback_topic, _feedback_messages(shuffled(feedback)), codecs=["none"])
        rejected = _schedule_once(capsys, str(pipeline))
        assert rejected["due"] is True and rejected["result"]["promoted"] is False, rejected
        reason = rejected["result"]["reason"]
        assert "less than the margin" in reason or "recall of `spam` drops" in reason, reason
        with capsys.disabled():
            print(f"shuffled-label candidate rejected: {reason}")
        assert registry.require("spam", rejected["result"]["candidate"]).status == CANDIDATE
        assert registry.require("spam", result["candidate"]).status == CHAMPION
        assert (family / "current").read_text(encoding="utf-8").strip() == "v0-weak"  # the worker followed the registry

        produce(kafka_bootstrap, docs_topic, _documents(test[:50], "last"), codecs=["none"])
        wait_for(lambda: _count(db, "last") >= 50, 300, "results after the rejection", abort=alive)
        assert _stream_f1(db, "last", test[:50])[1] == {champion_version}
        assert worker.terminate() == 0
    finally:
        if worker.alive():
            worker.kill()
        registry.close()
        db.close()

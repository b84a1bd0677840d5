"""One engine, five entry points, the same rows.

The same pipeline (sentiment -> spam with a review block -> QA for ham only, which
dead-letters documents without a question) and the same real documents from
../shared/data go through: a file in process, a file on Ray actors, a Kafka topic in
process, a Kafka topic on Ray actors, and HTTP requests to the Serve application.
Every run writes its own SQLite database; the rows must agree: labels, scores within
1e-4, model versions, stage dead letters, source dead-letter reasons and review items.
"""

from __future__ import annotations

import json
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from schemas.pipeline import ClassifyStage, Condition, FileSource, KafkaSource, PipelineSpec, QaStage, ReviewSpec, SpamStage, SqlSink
from tests.integration.kafka_helpers import create_topics, produce, shared_documents, unique_name

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
ENTRIES = ["file-local", "file-ray", "kafka-local", "kafka-ray", "serve"]


def _stages(models_dir: Path) -> list[Any]:
    return [
        ClassifyStage(name="sentiment", model=str(models_dir / "sentiment"), labels=["negative", "positive"], max_length=128,
                      review=ReviewSpec(below=0.97, max_open=1000), resources={"cpus": 0.5}),
        SpamStage(name="spam", model=str(models_dir / "spam"), max_length=128, review=ReviewSpec(below=0.99, max_open=1000),
                  resources={"cpus": 0.5}),
        QaStage(name="qa", model=str(models_dir / "qa"), question_field="question", max_length=128, stride=32, max_windows=4,
                when=Condition(stage="spam", op="eq", value="ham"), resources={"cpus": 0.5}),
    ]


def _documents(shared_data: Path) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [{"id": d["id"], "text": d["text"]} for d in shared_documents(shared_data, 45)]
    for doc in docs[::3]:
        doc["question"] = "What is this about?"
    docs.insert(7, {"id": "blank-1", "text": "   "})  # a source dead letter (empty text)
    return docs


def _rows(url: str) -> dict[str, Any]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        results = {(r.doc_id, r.stage): (r.label, float(r.score) if r.score is not None else None, r.model_version)
                   for r in conn.execute(sa.text("SELECT doc_id, stage, label, score, model_version FROM results"))}
        letters = conn.execute(sa.text("SELECT ref, stage, reason FROM dead_letters")).all()
        reviews = {(r.stage, r.doc_id) for r in conn.execute(sa.text("SELECT stage, doc_id FROM review_queue"))}
    engine.dispose()
    return {
        "results": results,
        "stage_letters": {(r.ref, r.stage, r.reason) for r in letters if r.stage != "source"},
        "source_reasons": Counter(r.reason for r in letters if r.stage == "source"),
        "reviews": reviews,
    }


def _file_run(spec: PipelineSpec, url: str, runtime: str) -> None:
    from worker.assembly import run_source
    from worker.engine.runs import new_run_id
    from worker.sinks.sql import SqlResultSink
    from worker.sources.files import FileDocumentSource

    assert isinstance(spec.source, FileSource)
    sink = SqlResultSink(url, spec.name, new_run_id()).open()
    try:
        run_source(spec, FileDocumentSource(spec.source), sink, runtime=runtime, chunk_size=16)
    finally:
        sink.close()


def _kafka_run(spec: PipelineSpec, url: str, runtime: str) -> None:
    from worker.assembly import run_kafka
    from worker.engine.stream import StreamOptions

    summary = run_kafka(spec, url, StreamOptions(until_end=True), runtime=runtime)
    assert summary.extra["records"] > 0


def _serve_run(spec: PipelineSpec, url: str, docs: list[dict[str, Any]]) -> None:
    from ray import serve

    from worker.serving.app import build_application
    from worker.serving.settings import ServeSettings

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_application(spec, ServeSettings(database_url=url, max_documents=16)), name="parity", route_prefix="/")
        for start in range(0, len(docs), 16):
            response = requests.post(f"http://127.0.0.1:{port}/v1/documents", json={"documents": docs[start:start + 16]},
                                     headers={"X-Textworker": "1"}, timeout=300)
            assert response.status_code == 200, response.text
            assert response.json()["stored"] is True
    finally:
        serve.delete("parity")
        serve.shutdown()


@pytest.fixture(scope="module")
def rows_by_entry(ray_session: None, models_dir: Path, shared_data: Path, kafka_bootstrap: str,
                  tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    workdir = tmp_path_factory.mktemp("parity")
    docs = _documents(shared_data)
    data = workdir / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    topic = unique_name("parity")
    create_topics(kafka_bootstrap, [topic], 2)
    produce(kafka_bootstrap, topic, [(d["id"].encode(), json.dumps(d).encode()) for d in docs], codecs=["none"])
    stages = _stages(models_dir)
    out: dict[str, dict[str, Any]] = {}
    for entry in ENTRIES:
        url = f"sqlite:///{workdir / (entry + '.db')}"
        source: Any = FileSource(path=str(data))
        if entry.startswith("kafka"):
            source = KafkaSource(bootstrap_servers=kafka_bootstrap, topics=[topic], group=unique_name("g"), max_batch=16, max_wait_ms=200)
        spec = PipelineSpec(name="parity", source=source, stages=stages, sink=SqlSink(url=url))
        if entry.startswith("file"):
            _file_run(spec, url, entry.split("-")[1])
        elif entry.startswith("kafka"):
            _kafka_run(spec, url, entry.split("-")[1])
        else:
            _serve_run(spec, url, docs)
        out[entry] = _rows(url)
    return out


def test_the_reference_run_exercises_every_rule(rows_by_entry: dict[str, dict[str, Any]]) -> None:
    ref = rows_by_entry["file-local"]
    stages = Counter(stage for (_, stage) in ref["results"])
    assert stages["sentiment"] == stages["spam"] == 45
    assert 0 < stages["qa"] < 45  # `when` skipped the spam
    assert {reason for (_, stage, reason) in ref["stage_letters"]} == {"missing_question"}
    assert ref["source_reasons"] == Counter({"empty_text": 1})
    assert ref["reviews"]


@pytest.mark.parametrize("entry", ENTRIES[1:])
def test_every_entry_point_writes_the_same_rows(rows_by_entry: dict[str, dict[str, Any]], entry: str) -> None:
    ref, got = rows_by_entry["file-local"], rows_by_entry[entry]
    assert got["results"].keys() == ref["results"].keys()
    for key, (label, score, version) in ref["results"].items():
        other = got["results"][key]
        assert (other[0], other[2]) == (label, version), key
        if score is not None:
            assert other[1] == pytest.approx(score, abs=1e-4), key
    assert got["stage_letters"] == ref["stage_letters"]
    assert got["source_reasons"] == ref["source_reasons"]
    assert got["reviews"] == ref["reviews"]

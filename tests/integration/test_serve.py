"""The pipeline served by Ray Serve, over real HTTP, with the default models.

One application serves the whole module (sentiment -> spam -> translate only for ham),
with small limits so every refusal is easy to reach: 2 requests in progress, 8
documents and 64 KiB per request, 2,000 characters per document.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from schemas.pipeline import ClassifyStage, Condition, FileSource, PipelineSpec, SpamStage, TranslateStage

HAM = ["Can you call me when you get a sec? Nothing urgent", "The green curry was fragrant and the staff were lovely."]
SPAM = ["URGENT! We are trying to contact you. Last weekends draw shows you won a £900 prize GUARANTEED. Call 09061 701461",
        "Reply WIN now to get a FREE weekend break! Only 100 places left. Text STOP to opt out. £1/msg"]


@dataclass
class Served:
    url: str
    database_url: str

    def post(self, body: object, **kwargs: object) -> requests.Response:
        kwargs.setdefault("headers", {"X-Textworker": "1"})  # the header every state-changing request needs (CSRF rule)
        return requests.post(self.url + "/v1/documents", json=body, timeout=120, **kwargs)  # type: ignore[arg-type]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _spec(models_dir: Path) -> PipelineSpec:
    return PipelineSpec(name="served", source=FileSource(path="unused"), stages=[
        ClassifyStage(name="sentiment", model=str(models_dir / "sentiment"), labels=["negative", "positive"], max_length=128),
        SpamStage(name="spam", model=str(models_dir / "spam"), max_length=128),
        TranslateStage(name="translate", model=str(models_dir / "translate"), max_new_tokens=24,
                       when=Condition(stage="spam", op="eq", value="ham")),
    ])


@pytest.fixture(scope="module")
def served(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    import ray
    from ray import serve

    from worker.engine.executors.ray import ensure_ray
    from worker.serving.app import build_application
    from worker.serving.settings import ServeSettings

    started = not ray.is_initialized()
    ensure_ray(num_cpus=2)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    database_url = f"sqlite:///{tmp_path_factory.mktemp('serve') / 'served.db'}"
    settings = ServeSettings(max_concurrent=2, max_documents=8, max_body_bytes=64 * 1024, max_chars=2000,
                             database_url=database_url, batch_wait_ms=100)
    serve.run(build_application(_spec(models_dir), settings), name="served", route_prefix="/")
    try:
        yield Served(f"http://127.0.0.1:{port}", database_url)
    finally:
        serve.shutdown()
        if started:
            ray.shutdown()


def _rows(database_url: str, query: str, **params: object) -> list[sa.Row]:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(query), params).all())
    finally:
        engine.dispose()


def test_one_document_gets_every_stage_and_lands_in_sql(served: Served) -> None:
    response = served.post({"documents": [{"id": "one-1", "text": HAM[1]}]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["pipeline"] == "served" and body["stored"] is True
    [doc] = body["documents"]
    assert doc["id"] == "one-1" and doc["status"] == "ok" and doc["errors"] == []
    assert doc["results"]["sentiment"]["label"] in ("negative", "positive")
    assert doc["results"]["sentiment"]["model_version"] == "sentiment@v0-seed"
    spam = doc["results"]["spam"]["label"]
    assert ("translate" in doc["results"]) == (spam == "ham")
    stored = {(r.stage, r.label) for r in _rows(served.database_url, "SELECT stage, label FROM results WHERE doc_id = :d", d="one-1")}
    assert stored == {(name, result["label"]) for name, result in doc["results"].items()}


def test_many_documents_honour_when_and_report_bad_ones(served: Served) -> None:
    docs = [{"id": f"m{i}", "text": text} for i, text in enumerate(HAM + SPAM)]
    docs += [{"id": "blank", "text": "   "}, {"id": "huge", "text": "word " * 1000},
             {"text": "A message without an id", "question": "What is it?"}]
    response = served.post({"documents": docs})
    assert response.status_code == 200, response.text
    out = response.json()["documents"]
    assert [d["id"] for d in out[:6]] == ["m0", "m1", "m2", "m3", "blank", "huge"]
    labels = {d["id"]: d["results"]["spam"]["label"] for d in out if d["status"] == "ok"}
    assert {labels["m2"], labels["m3"]} == {"spam"} and labels["m0"] == "ham"
    for doc in out:
        if doc["status"] == "ok":
            translated = "translate" in doc["results"]
            assert translated == (doc["results"]["spam"]["label"] == "ham")
            assert translated != ("translate" in doc["skipped"])
    reasons = {d["id"]: (d["status"], [e["reason"] for e in d["errors"]]) for d in out}
    assert reasons["blank"] == ("rejected", ["empty_text"]) and reasons["huge"] == ("rejected", ["too_large"])
    assert out[6]["id"].startswith("auto-") and out[6]["status"] == "ok"
    letters = _rows(served.database_url, "SELECT reason FROM dead_letters WHERE ref = :r", r="blank")
    assert [r.reason for r in letters] == ["empty_text"]


def test_malformed_json_is_400(served: Served) -> None:
    response = requests.post(served.url + "/v1/documents", data=b'{"documents": [{"text": "a"', timeout=30,
                             headers={"Content-Type": "application/json", "X-Textworker": "1"})
    assert response.status_code == 400
    assert "malformed JSON" in response.json()["detail"]


def test_schema_errors_are_422_with_the_field_path(served: Served) -> None:
    response = served.post({"documents": [{"id": "ok", "text": "fine"}, {"id": "bad", "text": 5}]})
    assert response.status_code == 422
    assert ["body", "documents", 1, "text"] in [e["loc"] for e in response.json()["detail"]]
    assert served.post({"docs": []}).status_code == 422
    duplicate = served.post({"documents": [{"id": "x", "text": "one"}, {"id": "x", "text": "two"}]})
    assert duplicate.status_code == 422
    assert duplicate.json()["detail"][0]["loc"] == ["body", "documents", 1, "id"]


def test_too_many_documents_or_bytes_is_413(served: Served) -> None:
    many = served.post({"documents": [{"id": f"d{i}", "text": "hello"} for i in range(9)]})
    assert many.status_code == 413 and "limit is 8" in many.json()["detail"]
    large = served.post({"documents": [{"id": "big", "text": "x" * 70_000}]})
    assert large.status_code == 413


def test_concurrency_bound_answers_429_and_batches_across_callers(served: Served) -> None:
    barrier = threading.Barrier(8)
    responses: list[requests.Response] = []

    def call(n: int) -> None:
        body = {"documents": [{"id": f"c{n}-{i}", "text": f"{HAM[i % 2]} ({n}/{i})"} for i in range(8)]}
        barrier.wait()
        responses.append(served.post(body))

    threads = [threading.Thread(target=call, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    codes = sorted(r.status_code for r in responses)
    assert set(codes) <= {200, 429} and 429 in codes and codes.count(200) >= 2, codes
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.headers["Retry-After"] == "1"
    stages = requests.get(served.url + "/readyz", timeout=30).json()["stages"]
    assert max(s["largest_batch_calls"] for s in stages) >= 2  # two callers' documents in one stage batch


def test_health_readiness_and_openapi(served: Served) -> None:
    assert requests.get(served.url + "/healthz", timeout=30).json() == {"status": "alive"}
    ready = requests.get(served.url + "/readyz", timeout=30)
    assert ready.status_code == 200
    stages = ready.json()["stages"]
    assert [s["stage"] for s in stages] == ["sentiment", "spam", "translate"]
    assert all(s["loaded"] and s["model_version"].endswith("@v0-seed") and s["device"] == "cpu" for s in stages)
    schema = requests.get(served.url + "/openapi.json", timeout=30).json()
    assert "post" in schema["paths"]["/v1/documents"]
    assert {"400", "413", "422", "429"} <= set(schema["paths"]["/v1/documents"]["post"]["responses"])
    assert requests.get(served.url + "/docs", timeout=30).status_code == 200


def test_feedback_and_dashboard_routers_are_mounted(served: Served) -> None:
    schema = requests.get(served.url + "/openapi.json", timeout=30).json()
    assert "/v1/feedback" in schema["paths"]
    page = requests.get(served.url + "/", timeout=30)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert requests.post(served.url + "/v1/feedback", data=b"{", headers={"Content-Type": "application/json", "X-Textworker": "1"},
                         timeout=30).status_code == 400


def test_the_rayservice_builder_builds_the_gpu_pipeline_on_a_cpu_cluster(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    from ray.serve import Application

    from worker.serving.app import app_builder

    repo = Path(__file__).resolve().parents[2]
    with caplog.at_level(logging.WARNING):
        app = app_builder({"pipeline": str(repo / "pipelines" / "gpu.yaml"), "store": False})
    assert isinstance(app, Application)
    assert sum("GPU" in r.getMessage() for r in caplog.records) == 4  # every stage moved to CPU, with a warning

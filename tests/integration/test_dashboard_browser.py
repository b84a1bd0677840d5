"""End to end in a real browser: headless Chromium (Debian's package) on the dashboard over PostgreSQL
filled by a real pipeline run, a real model registry history and real feedback rows.

Screenshots of every tab land in tests/artifacts/dashboard/ (git-ignored).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.http_server import serve_app
from worker.config import load_pipeline
from worker.sinks.sql import normalise_url

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts" / "dashboard"
CHROMIUM = os.environ.get("TEXTWORKER_CHROMIUM", "/usr/bin/chromium")
TOKEN = "browser-test-token-71a0"

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).is_file():
        _missing(f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/services.sh does it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the `playwright` package is not installed (pip install -e '.[test]')")
        return
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield chromium
        chromium.close()


def _sql(url: str, query: str) -> list[Any]:
    engine = sa.create_engine(normalise_url(url))
    with engine.connect() as conn:
        rows = conn.execute(sa.text(query)).all()
    engine.dispose()
    return rows


def _fill(url: str, models_dir: Path, tmp_path: Path) -> None:
    """A real run of the demo pipeline over the sample documents, then a model history and feedback."""
    from worker.assembly import run_source as run_pipeline
    from worker.engine.runs import new_run_id
    from worker.lifecycle.registry import ModelRegistry
    from worker.sinks import tables
    from worker.sinks.sql import SqlResultSink
    from worker.sources.files import FileDocumentSource

    spec = load_pipeline(REPO / "pipelines" / "demo.yaml")
    sink = SqlResultSink(url, spec.name, new_run_id()).open()
    source = FileDocumentSource(spec.source, str(REPO / "worker" / "seed" / "sample_docs.jsonl"))
    try:
        run_pipeline(spec, source, sink, chunk_size=16)
    finally:
        sink.close()
    registry = ModelRegistry.open(url)
    for version, f1 in (("v1", 0.91), ("v2", 0.95), ("v3", 0.89)):
        artifact = tmp_path / "registry" / "spam" / version  # not a model dir: the on-disk `current` pointer stays put
        artifact.mkdir(parents=True)
        registry.register(name="spam", version=version, stage="spam", task="spam", artifact_path=artifact, pipeline="demo",
                          metrics={"f1_spam": f1, "accuracy": f1 + 0.03}, reason="fine-tuned on feedback")
    registry.promote("spam", "v1", "first champion")
    registry.promote("spam", "v2", "gate passed: f1_spam +0.04")
    registry.reject("spam", "v3", "gate failed: f1_spam -0.06")
    registry.close()
    engine = sa.create_engine(normalise_url(url))
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(tables.feedback.insert(), [
            {"pipeline": "demo", "stage": "spam", "text": f"text {i}", "label": "spam" if i % 2 else "ham",
             "source": "import" if i < 5 else "review", "fingerprint": f"fp{i}", "created_at": now} for i in range(8)])
        conn.execute(tables.review_queue.insert(), [
            {"pipeline": "demo", "stage": "spam", "doc_id": f"r{i}", "text": "t", "predicted": "ham", "score": 0.5,
             "model_version": "spam@v2", "status": "open" if i < 3 else "labelled", "created_at": now} for i in range(5)])
    engine.dispose()


def test_dashboard_in_chromium(browser: Any, models_dir: Path, postgres_url: str, tmp_path: Path) -> None:
    from worker.dashboard.app import make_app

    _fill(postgres_url, models_dir, tmp_path)
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    with serve_app(make_app(None, postgres_url, token=TOKEN)) as base:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" and "401" not in msg.text else None)

        # sign in through the form; the token never shows up in the page
        page.goto(base + "/")
        page.screenshot(path=str(ARTIFACTS / "0-sign-in.png"))
        page.fill("input[name=token]", TOKEN)
        page.click("button[type=submit]")
        page.wait_for_selector("body[data-loaded=overview]", timeout=60_000)
        assert TOKEN not in page.content()
        page.screenshot(path=str(ARTIFACTS / "1-overview.png"), full_page=True)

        spam_sql = _sql(postgres_url, "SELECT count(*) FROM results WHERE stage = 'spam' AND label = 'spam'")[0][0]
        assert spam_sql > 0
        assert int(page.get_attribute("[data-kpi=spam]", "data-value")) == spam_sql
        assert int(page.get_attribute("[data-kpi=documents]", "data-value")) == _sql(postgres_url, "SELECT count(*) FROM documents")[0][0]
        assert int(page.get_attribute("[data-kpi=dead_letters]", "data-value")) == _sql(postgres_url, "SELECT count(*) FROM dead_letters")[0][0]
        assert int(page.get_attribute("[data-chart=labels-spam] [data-label=spam]", "data-value")) == spam_sql
        for label, count in _sql(postgres_url, "SELECT label, count(*) FROM results WHERE stage = 'sentiment' GROUP BY label"):
            assert int(page.get_attribute(f"[data-chart=labels-sentiment] [data-label={label}]", "data-value")) == count
        # the throughput chart's points add up to the results of each stage
        for stage, count in _sql(postgres_url, "SELECT stage, count(*) FROM results GROUP BY stage"):
            points = page.eval_on_selector_all(f"[data-chart=chart-throughput] [data-series={stage}] circle",
                                               "els => els.map(e => Number(e.dataset.value))")
            assert sum(points) == count, stage
        rates = page.eval_on_selector_all("[data-chart=chart-spam] circle", "els => els.map(e => Number(e.dataset.value))")
        assert rates and all(0 < r < 1 for r in rates)
        assert page.locator("[data-chart=chart-latency] circle").count() >= 8  # p50 and p95 of four stages for the run

        # dead letters: the chart, the table, and a requeue through the page
        page.click("nav a[data-tab=dead-letters]")
        page.wait_for_selector("body[data-loaded=dead-letters]", timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "2-dead-letters.png"), full_page=True)
        for reason, stage, count in _sql(postgres_url, "SELECT reason, stage, count(*) FROM dead_letters GROUP BY reason, stage"):
            assert int(page.get_attribute(f'[data-chart=chart-reasons] [data-label="{reason} ({stage})"]', "data-value")) == count
        shown = page.locator("[data-table=dead-letters] tbody tr")
        assert shown.count() == _sql(postgres_url, "SELECT count(*) FROM dead_letters")[0][0]
        first_id = int(shown.first.get_attribute("data-id"))
        shown.first.locator("input.dl-pick").check()
        page.click("#dl-requeue-selected")
        page.locator("#dl-message", has_text="marked").wait_for(timeout=30_000)
        assert "1 marked" in page.text_content("#dl-message")
        marked = _sql(postgres_url, "SELECT id FROM dead_letters WHERE requeued_at IS NOT NULL")
        assert [r[0] for r in marked] == [first_id]
        page.screenshot(path=str(ARTIFACTS / "3-dead-letters-requeued.png"), full_page=True)

        # model history: versions with their metric chart, and every lifecycle event
        page.click("nav a[data-tab=models]")
        page.wait_for_selector("body[data-loaded=models]", timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "4-models.png"), full_page=True)
        assert page.locator("[data-table=model-events] tbody tr").count() == _sql(postgres_url, "SELECT count(*) FROM model_events")[0][0]
        assert page.locator("[data-table=model-events] tr[data-action=reject]").count() == 1
        assert float(page.get_attribute("[data-chart=model-spam] [data-label=v2]", "data-value")) == 0.95
        champion = page.locator("[data-table=model-versions] tbody tr", has=page.locator(".badge.champion"))
        assert champion.count() == 1 and "v2" in champion.text_content()

        # QA answers and translations, paged
        page.click("nav a[data-tab=samples]")
        page.wait_for_selector("body[data-loaded=samples]", timeout=30_000)
        qa_rows = page.locator("[data-table=samples] tbody tr")
        assert qa_rows.count() == min(20, _sql(postgres_url, "SELECT count(*) FROM results WHERE stage = 'qa'")[0][0])
        page.screenshot(path=str(ARTIFACTS / "5-qa.png"), full_page=True)
        page.select_option("#sample-stage", "translate")
        page.locator("[data-table=samples] th", has_text="translation").wait_for(timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "6-translation.png"), full_page=True)

        # feedback and review-queue counts
        page.click("nav a[data-tab=feedback]")
        page.wait_for_selector("body[data-loaded=feedback]", timeout=30_000)
        assert int(page.get_attribute('[data-chart=chart-feedback] [data-label="spam · import"]', "data-value")) == 5
        assert int(page.get_attribute('[data-chart=chart-review] [data-label="spam · open"]', "data-value")) == 3
        page.screenshot(path=str(ARTIFACTS / "7-feedback.png"), full_page=True)

        # live metrics of this process (the run above happened in it)
        page.click("nav a[data-tab=live]")
        page.wait_for_selector("body[data-loaded=live]", timeout=30_000)
        assert page.locator("[data-source='this process'] table tbody tr").count() >= 4
        page.screenshot(path=str(ARTIFACTS / "8-live.png"), full_page=True)
        assert not errors, errors
        page.close()

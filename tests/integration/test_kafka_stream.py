"""Kafka -> stages -> PostgreSQL, effectively once, against a real broker and a real database.

Each test produces real documents (SST-2, AG News, SMS spam) with idempotent producers
and every compression codec, runs `textworker run pipelines/stream.yaml` as separate
processes, breaks something (SIGKILL, a database outage, a dead group member) and then
checks in SQL: every document has exactly one result per stage, nothing is missing,
nothing else is stored, and the stored offsets cover the whole topic.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.integration.kafka_helpers import (
    STREAM_PIPELINE,
    Db,
    Worker,
    assert_exactly_once,
    create_topics,
    json_messages,
    pipeline_variant,
    produce,
    shared_documents,
    start_worker,
    unique_name,
    wait_for,
)

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]


def _env(bootstrap: str, models_dir: Path, topic: str, group: str, **extra: str) -> dict[str, str]:
    return {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "TEXTWORKER_MODELS_DIR": str(models_dir), "TEXTWORKER_TOPIC": topic,
            "TEXTWORKER_GROUP": group, **extra}


def _died(*workers: Worker) -> str | None:
    for worker in workers:
        if not worker.alive():
            return f"worker exited with {worker.process.returncode}:\n{worker.log_tail()}"
    return None


def _setup(bootstrap: str, shared_data: Path, count: int, partitions: int) -> tuple[str, str, set[str], int]:
    topic, group = unique_name("docs"), unique_name("group")
    create_topics(bootstrap, [topic], partitions)
    docs = shared_documents(shared_data, count)
    produced = produce(bootstrap, topic, json_messages(docs))
    assert produced == count
    return topic, group, {d["id"] for d in docs}, produced


@pytest.mark.parametrize("runtime", ["local", "ray"])
def test_sigkill_at_random_points_loses_and_duplicates_nothing(
    kafka_bootstrap: str, models_dir: Path, postgres_url: str, shared_data: Path, tmp_path: Path, runtime: str
) -> None:
    """5,000 documents; the worker (stages in process, or on Ray actors) is SIGKILLed 5 times at random points and restarted.

    On Ray, each start begins a local Ray instance of its own: one left behind by a
    killed driver would make the next start fail or share its resources.
    """
    count = 5000
    topic, group, ids, produced = _setup(kafka_bootstrap, shared_data, count, partitions=3)
    env = _env(kafka_bootstrap, models_dir, topic, group, TEXTWORKER_RUNTIME=runtime)
    db = Db(postgres_url)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    thresholds = sorted(int(count * (base + rng.uniform(-0.04, 0.04))) for base in (0.08, 0.24, 0.40, 0.56, 0.72))
    kills = []
    for threshold in thresholds:
        worker = start_worker(STREAM_PIPELINE, postgres_url, env, tmp_path / "worker.log")
        wait_for(lambda t=threshold: db.results() >= t, 600, f"{threshold} results (seed {seed}, {runtime})", abort=lambda w=worker: _died(w))
        time.sleep(rng.uniform(0.0, 2.0))
        worker.kill()
        kills.append(db.results())
    final = start_worker(STREAM_PIPELINE, postgres_url, env, tmp_path / "worker.log", "--until-end")
    assert final.process.wait(timeout=900) == 0, final.log_tail()
    assert len(kills) == 5 and kills == sorted(kills), kills
    assert_exactly_once(db, ids, group, produced)
    db.close()


def _set_connections(admin_url: str, database: str, allow: bool) -> None:
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {"true" if allow else "false"}'))
        if not allow:
            conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d AND pid <> pg_backend_pid()"),
                         {"d": database})
    admin.dispose()


def test_database_outage_of_30s_pauses_and_resumes_without_restart(
    kafka_bootstrap: str, models_dir: Path, postgres_url: str, postgres_admin_url: str, shared_data: Path, tmp_path: Path
) -> None:
    """The test database refuses every connection for 30 s mid-stream; the same worker finishes.

    Small batches (32) make the worker write every few seconds, so it meets the outage."""
    count, batch = 800, 32
    topic, group, ids, produced = _setup(kafka_bootstrap, shared_data, count, partitions=2)
    db = Db(postgres_url)
    pipeline = pipeline_variant(tmp_path, "small_batches", max_batch=batch)
    worker = start_worker(pipeline, postgres_url, _env(kafka_bootstrap, models_dir, topic, group), tmp_path / "worker.log", "--until-end")
    wait_for(lambda: db.results() >= 3 * batch, 300, f"{3 * batch} results", abort=lambda: _died(worker))
    db.engine.dispose()
    database = postgres_url.rsplit("/", 1)[1]
    _set_connections(postgres_admin_url, database, allow=False)
    try:
        outage_end = time.monotonic() + 30
        wait_for(lambda: _logged(worker, "database unavailable, retrying"), 30, "the worker to meet the outage", abort=lambda: _died(worker))
        while time.monotonic() < outage_end:
            assert worker.alive(), worker.log_tail()
            time.sleep(1)
    finally:
        _set_connections(postgres_admin_url, database, allow=True)
    assert worker.process.wait(timeout=600) == 0, worker.log_tail()
    assert _logged(worker, "partitions paused while the database is unavailable")
    assert _logged(worker, "partitions resumed: the database is back")
    assert_exactly_once(db, ids, group, produced)
    db.close()


def _logged(worker: Worker, message: str) -> bool:
    return any(r.get("msg") == message for r in worker.log_records())


def _assigned(worker: Worker) -> list[list[str]]:
    return [r["partitions"] for r in worker.log_records() if r.get("msg") == "partitions assigned"]


def test_two_workers_in_one_group_survive_one_being_killed(
    kafka_bootstrap: str, models_dir: Path, postgres_url: str, shared_data: Path, tmp_path: Path
) -> None:
    """Two workers share a 4-partition topic; one is SIGKILLed mid-way; the other takes over its partitions."""
    count = 1000
    topic, group, ids, produced = _setup(kafka_bootstrap, shared_data, count, partitions=4)
    env = _env(kafka_bootstrap, models_dir, topic, group, OMP_NUM_THREADS="1")
    db = Db(postgres_url)
    first = start_worker(STREAM_PIPELINE, postgres_url, env, tmp_path / "first.log")
    second = start_worker(STREAM_PIPELINE, postgres_url, env, tmp_path / "second.log")
    wait_for(lambda: any(_assigned(first)[-1:]) and any(_assigned(second)[-1:]) and not any(len(p) == 4 for p in _assigned(second)[-1:]),
             240, "both workers to own partitions", abort=lambda: _died(first, second))
    wait_for(lambda: db.results() >= count * 0.4, 300, f"{int(count * 0.4)} results", abort=lambda: _died(first, second))
    first.kill()
    wait_for(lambda: any(len(p) == 4 for p in _assigned(second)), 120, "the survivor to own all 4 partitions", abort=lambda: _died(second))
    wait_for(lambda: db.results("spam") >= count and db.results("sentiment") >= count, 300, "every result", abort=lambda: _died(second))
    started = time.monotonic()
    assert second.terminate(timeout_s=60) == 0, second.log_tail()
    assert time.monotonic() - started < 60
    assert_exactly_once(db, ids, group, produced)
    db.close()

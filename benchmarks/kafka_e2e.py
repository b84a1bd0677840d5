"""End-to-end throughput: Kafka -> stages -> PostgreSQL beside the batch path (JSONL file -> stages -> PostgreSQL).

The same real documents (SST-2, AG News, SMS spam from ../shared/data) go through the
same stages of pipelines/stream.yaml twice, each into a fresh PostgreSQL database:

  batch:  textworker run <stream.yaml with a file source> --input docs.jsonl
  stream: textworker run pipelines/stream.yaml --until-end   (after producing the docs)

With `--runtime ray` both run their stages on Ray actor pools (`--runtime ray`; a local
Ray instance per process unless $RAY_ADDRESS is set); `--runtime both` measures the
four combinations in one run, so Kafka-on-Ray is compared with file-on-Ray side by side.

Both are separate processes; "docs/s" is the run summary's (model loading excluded,
group join and polling included for the stream), "wall s" includes process start and
model loading. The broker is $KAFKA_BOOTSTRAP_SERVERS, else a Tansu broker started here.

    .venv/bin/python benchmarks/kafka_e2e.py --docs 2000 [--runtime local|ray|both] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from worker.bench_latency import broker  # noqa: E402 - $KAFKA_BOOTSTRAP_SERVERS, else a Tansu broker

STREAM = REPO / "pipelines" / "stream.yaml"


def load_docs(shared: Path, count: int) -> list[dict[str, str]]:
    """`count` documents taken in turn from SST-2, AG News and SMS spam, with unique ids."""
    pools = []
    for name, rel, col in (("sst2", "sst2/train.tsv", 0), ("agnews", "ag_news/train.tsv", 1), ("sms", "sms_spam/train.tsv", 1)):
        rows = [line.split("\t") for line in (shared / rel).read_text(encoding="utf-8").splitlines()]
        pools.append([{"id": f"{name}-{i:05d}", "text": r[col]} for i, r in enumerate(rows) if len(r) == 2 and r[col].strip()])
    return [pools[i % 3][i // 3] for i in range(count)]


@contextmanager
def database(admin_url: str) -> Iterator[str]:
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"tw_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def produce(bootstrap: str, topic: str, docs: list[dict[str, str]]) -> None:
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, api_version=(2, 5))
    admin.create_topics([NewTopic(topic, 2, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, api_version=(2, 5), compression_type="lz4", linger_ms=20)
    for doc in docs:
        producer.send(topic, key=doc["id"].encode(), value=json.dumps(doc).encode())
    producer.flush(60)
    producer.close()


def textworker(args: list[str], env: dict[str, str]) -> tuple[dict[str, Any], float]:
    """Run the CLI; returns its --json summary and the wall-clock seconds."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "worker.cli", "run", *args, "--json", "--quiet"], cwd=REPO,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"textworker {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout), wall


def result_count(url: str) -> int:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as conn:
        value = conn.execute(sa.text("SELECT count(*) FROM results")).scalar_one()
    engine.dispose()
    return int(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--shared-data", default=os.environ.get("TEXTWORKER_SHARED_DATA", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--models-dir", default=os.environ.get("TEXTWORKER_MODELS_DIR", str(REPO / "models")))
    parser.add_argument("--postgres-admin-url", default=os.environ.get(
        "TEXTWORKER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--runtime", choices=["local", "ray", "both"], default="local")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    runtimes = ["local", "ray"] if args.runtime == "both" else [args.runtime]

    docs = load_docs(Path(args.shared_data), args.docs)
    stages = len(yaml.safe_load(STREAM.read_text(encoding="utf-8"))["stages"])
    env = {"TEXTWORKER_MODELS_DIR": str(Path(args.models_dir).resolve()), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    rows: list[tuple[str, str, dict[str, Any], float]] = []
    with tempfile.TemporaryDirectory() as tmp, broker() as bootstrap:
        jsonl = Path(tmp) / "docs.jsonl"
        jsonl.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
        batch_spec = yaml.safe_load(STREAM.read_text(encoding="utf-8"))
        batch_spec["source"] = {"type": "file", "path": str(jsonl)}
        batch_pipeline = Path(tmp) / "batch.yaml"
        batch_pipeline.write_text(yaml.safe_dump(batch_spec), encoding="utf-8")
        topic = f"bench-{uuid.uuid4().hex[:6]}"
        produce(bootstrap, topic, docs)
        for runtime in runtimes:
            with database(args.postgres_admin_url) as url:
                summary, wall = textworker([str(batch_pipeline), "--database-url", url, "--chunk-size", "256", "--runtime", runtime], env)
                assert result_count(url) == stages * len(docs)
                rows.append(("file", runtime, summary, wall))
            group = f"bench-{topic}-{runtime}"
            stream_env = {**env, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "TEXTWORKER_TOPIC": topic, "TEXTWORKER_GROUP": group}
            with database(args.postgres_admin_url) as url:
                summary, wall = textworker([str(STREAM), "--database-url", url, "--until-end", "--runtime", runtime], stream_env)
                assert result_count(url) == stages * len(docs)
                rows.append(("kafka", runtime, summary, wall))
    ratios = {}
    for runtime in runtimes:
        rate = {source: s["docs_per_s"] for source, r, s, _ in rows if r == runtime}
        ratios[runtime] = round(rate["kafka"] / rate["file"], 3)
    if args.json:
        print(json.dumps({"docs": len(docs), "stages": stages, "cpu": cpu_model(), "cpus": os.cpu_count(),
                          "rows": [{"source": src, "runtime": r, "docs_per_s": s["docs_per_s"], "run_s": s["seconds"], "wall_s": round(w, 1)}
                                   for src, r, s, w in rows], "kafka_over_file": ratios}, indent=2))
        return
    print(f"{len(docs)} documents, {stages} stages ({', '.join(s['name'] for s in batch_spec['stages'])}), PostgreSQL sink, "
          f"{os.cpu_count()} CPUs, {cpu_model()}")
    print(f"{'source':<8} {'runtime':<8} {'docs':>6} {'run s':>8} {'docs/s':>8} {'wall s':>8}")
    for source, runtime, summary, wall in rows:
        print(f"{source:<8} {runtime:<8} {summary['docs']:>6} {summary['seconds']:>8.1f} {summary['docs_per_s']:>8.1f} {wall:>8.1f}")
    for runtime, ratio in ratios.items():
        print(f"kafka / file throughput on {runtime}: {ratio:.2f}")


def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (figures depend on it)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()

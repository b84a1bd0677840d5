"""Storing one chunk while the stages work on the next: the in-process runtime with and without overlap.

Real documents (SST-2, AG News and SMS spam from ../shared/data, taken in turn) go through
pipelines/stream.yaml's stages (sentiment + spam) from a JSONL file into SQL, chunk by
chunk, as `textworker run` does. The stages are loaded once and shared; each round runs the
engine twice, without overlap (`overlap=False`: every stage call on the engine's thread,
then the chunk's transaction) and with it (the default: calls on the stage thread while the
engine stores the previous chunk), in alternating order, each into a fresh run of the same
database. Small chunks are what a stream at moderate load stores (`--chunk 24` is about a
quarter of a second of work at 100 docs/s); the gain is the share of time the engine's
thread spends storing, reading and polling. Prints the CPU model and ISA flags, the docs/s
of every round and the ratio of the medians.

    .venv/bin/python benchmarks/overlap.py [--docs 1200] [--chunk 24] [--rounds 4]
        [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=1200)
    parser.add_argument("--chunk", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--database-url", default=os.environ.get("TEXTWORKER_DATABASE_URL"),
                        help="where results go (default: a SQLite file in a temporary directory)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("TEXTWORKER_MODELS_DIR", str(REPO / "models"))
    shared = Path(os.environ.get("TEXTWORKER_SHARED_DATA", REPO.parent / "shared" / "data"))

    from kafka_e2e import load_docs

    from schemas.pipeline import FileSource
    from worker.bench import machine, machine_line
    from worker.config import load_pipeline
    from worker.engine import Engine
    from worker.engine.batch import run_pipeline
    from worker.engine.executors.local import LocalExecutor
    from worker.engine.runs import new_run_id
    from worker.sinks import build_sink
    from worker.sources.files import FileDocumentSource
    from worker.stages import build_stage

    docs = load_docs(shared, args.docs)
    samples: dict[str, list[float]] = {"without": [], "with": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "docs.jsonl"
        data.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
        spec = load_pipeline(str(REPO / "pipelines" / "stream.yaml"), {"KAFKA_BOOTSTRAP_SERVERS": "unused:9092", **os.environ})
        spec = spec.model_copy(update={"source": FileSource(path=str(data))})
        url = args.database_url or f"sqlite:///{tmp}/overlap.db"
        stages = [build_stage(s) for s in spec.stages]
        for stage in stages:
            stage.load()

        def run(overlap: bool) -> float:
            engine = Engine(spec, LocalExecutor(stages=stages, overlap=overlap)).start()
            sink = build_sink(spec.sink, spec.name, new_run_id(), url=url).open()
            try:
                started = time.perf_counter()
                summary = run_pipeline(spec, FileDocumentSource(spec.source), sink, engine, chunk_size=args.chunk)
                seconds = time.perf_counter() - started
            finally:
                sink.close()
                engine.close()
            assert summary.docs == len(docs) and not summary.dead_letters, summary
            return round(len(docs) / seconds, 1)

        run(True)  # untimed: every session, tokenizer and table warm
        for number in range(max(1, args.rounds)):
            order = (False, True) if number % 2 == 0 else (True, False)
            for overlap in order:
                samples["with" if overlap else "without"].append(run(overlap))
    medians = {key: statistics.median(values) for key, values in samples.items()}
    report: dict[str, Any] = {
        "machine": machine(), "docs": len(docs), "chunk": args.chunk, "database": url.split(":", 1)[0],
        "stages": [s.name for s in spec.stages], "docs_per_s": samples, "median": medians,
        "ratio": round(medians["with"] / medians["without"], 3),
        "paired": [round(b / a, 3) for a, b in zip(samples["without"], samples["with"], strict=True)],
    }
    if args.json:
        print(json.dumps(report))
        return
    print(machine_line(report["machine"]))
    print(f"{len(docs)} documents, chunks of {args.chunk}, {', '.join(report['stages'])} -> {report['database']}")
    print(f"without overlap: {samples['without']} docs/s, median {medians['without']}")
    print(f"with overlap:    {samples['with']} docs/s, median {medians['with']}")
    print(f"with / without: {report['ratio']}x (rounds: {report['paired']})")


if __name__ == "__main__":
    main()

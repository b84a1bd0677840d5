"""The duplicate-text cache's gain on a stream with repeated texts.

AG News texts (../shared/data, the training split: 10,000 distinct texts) go through
pipelines/stream.yaml's stages (sentiment + spam) in one process, in chunks of 256 as the
Kafka driver hands them over, three times per mix: without the cache
(`cache.max_entries: 0`); with it (4096, the default) and hot swap off, so results of
earlier chunks are reused; and with it and hot swap on, so only identical texts within a
chunk are merged (`worker.engine.dedupe` says why). In the repeated mix, `--repeat`
(default 0.3) of the documents re-send a text seen among the previous 2,000 (a spam
flood, a retweet, a re-sent message); the unique mix has none.
Model loading is excluded; docs/s is documents over the engine's time. Prints the CPU
model and ISA flags with the figures.

    .venv/bin/python benchmarks/dedupe.py [--docs 3000] [--repeat 0.3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def texts(shared: Path, count: int, repeat: float, seed: int = 0) -> list[str]:
    rows = [line.split("\t") for line in (shared / "ag_news" / "train.tsv").read_text(encoding="utf-8").splitlines()]
    pool = [r[1] for r in rows if len(r) == 2 and r[1].strip()]
    rng = random.Random(seed)
    out: list[str] = []
    fresh = iter(pool * (count // len(pool) + 1))
    for _ in range(count):
        out.append(rng.choice(out[-2000:]) if out and rng.random() < repeat else next(fresh))
    return out


def measure(items: list[str], max_entries: int, swap_check_seconds: float | None = None) -> dict[str, Any]:
    from schemas.documents import Document
    from schemas.pipeline import CacheSpec, FileSource
    from worker.assembly import build_engine
    from worker.config import load_pipeline
    from worker.engine import ChunkInput

    spec = load_pipeline(str(REPO / "pipelines" / "stream.yaml"), {"KAFKA_BOOTSTRAP_SERVERS": "unused:9092", **os.environ})
    stages = [stage.model_copy(update={"swap_check_seconds": swap_check_seconds}) for stage in spec.stages]
    spec = spec.model_copy(update={"source": FileSource(path="-"), "stages": stages, "cache": CacheSpec(max_entries=max_entries)})
    engine = build_engine(spec, "local", hooks=[]).start()
    docs = [Document(id=f"d{i}", text=t) for i, t in enumerate(items)]
    done = 0

    def count(chunk: Any) -> None:
        nonlocal done
        done += len(chunk.results)

    started = time.perf_counter()
    engine.run((ChunkInput(docs[i:i + 256]) for i in range(0, len(docs), 256)), count)
    seconds = time.perf_counter() - started
    hits = sum(int(s.get("cache_hits", 0)) for s in engine.stage_summary().values())
    engine.close()
    return {"docs_per_s": round(len(docs) / seconds, 1), "seconds": round(seconds, 2), "results": done, "cache_hits": hits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=3000)
    parser.add_argument("--repeat", type=float, default=0.3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("TEXTWORKER_MODELS_DIR", str(REPO / "models"))
    shared = Path(os.environ.get("TEXTWORKER_SHARED_DATA", REPO.parent / "shared" / "data"))
    from worker.bench import machine, machine_line

    report: dict[str, Any] = {"machine": machine(), "docs": args.docs, "repeat": args.repeat}
    for mix, share in (("repeated", args.repeat), ("unique", 0.0)):
        items = texts(shared, args.docs, share)
        plain, cached, swapping = measure(items, 0), measure(items, 4096), measure(items, 4096, swap_check_seconds=5.0)
        report[mix] = {"with_cache": cached, "with_cache_hot_swap_on": swapping, "without_cache": plain,
                       "ratio": round(cached["docs_per_s"] / plain["docs_per_s"], 2),
                       "ratio_hot_swap_on": round(swapping["docs_per_s"] / plain["docs_per_s"], 2)}
    if args.json:
        print(json.dumps(report))
        return
    print(machine_line(report["machine"]))
    for mix in ("repeated", "unique"):
        row = report[mix]
        print(f"{mix:>9}: without the cache {row['without_cache']['docs_per_s']} docs/s; with it, hot swap off "
              f"{row['with_cache']['docs_per_s']} docs/s ({row['with_cache']['cache_hits']} hits, {row['ratio']}x), hot swap on "
              f"{row['with_cache_hot_swap_on']['docs_per_s']} docs/s ({row['with_cache_hot_swap_on']['cache_hits']} hits, "
              f"{row['ratio_hot_swap_on']}x)")


if __name__ == "__main__":
    main()

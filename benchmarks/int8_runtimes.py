"""The two int8 runtimes side by side: a stage's ONNX Runtime build against its OpenVINO build, in one run.

Loads the stage twice at `precision: int8`, once per runtime (`TEXTWORKER_INT8_RUNTIME`), builds
whichever build is missing, then runs both over the same texts in interleaved rounds (the stage's
own length-sorted batches, every core), keeping each one's best. Prints docs/s, the ratio, each
one's fraction of the int8 roofline (against the higher of the two runtimes' measured int8 GEMM
peaks, `worker.bench.int8_peaks`), and how many labels each gives as fp32 does.

    .venv/bin/python benchmarks/int8_runtimes.py [--pipeline pipelines/demo.yaml] [--stage sentiment]
        [--data ../shared/data/ag_news/test.tsv] [--limit 1000] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RUNTIMES = ("onnxruntime", "openvino")


def _stage(stage_spec: Any, precision: str, runtime: str | None) -> Any:
    from worker.stages import build_stage

    saved = os.environ.get("TEXTWORKER_INT8_RUNTIME")
    if runtime:
        os.environ["TEXTWORKER_INT8_RUNTIME"] = runtime
    try:
        stage = build_stage(stage_spec.model_copy(update={"precision": precision}))
        stage.load()
    finally:
        if saved is None:
            os.environ.pop("TEXTWORKER_INT8_RUNTIME", None)
        else:
            os.environ["TEXTWORKER_INT8_RUNTIME"] = saved
    return stage


def compare(stage_spec: Any, texts: list[str], rounds: int = 3, chunk: int = 512) -> dict[str, Any]:
    from transformers import AutoConfig, AutoTokenizer

    from schemas.documents import Document
    from worker.bench import forward_flops, int8_peaks, machine
    from worker.models import int8, loading

    model_dir = loading.resolve(stage_spec.model).location
    auto_class = int8.SEQ_CLASS
    builds = {runtime: int8.build(model_dir, auto_class, runtime=runtime) for runtime in RUNTIMES}
    docs = [Document(id=f"d{i}", text=text) for i, text in enumerate(texts)]
    stages = {runtime: _stage(stage_spec, "int8", runtime) for runtime in RUNTIMES}
    reference = _stage(stage_spec, "fp32", None)
    labels = {"fp32": [r.label for r in reference.run(docs, {})]}

    def run(stage: Any) -> tuple[float, list[Any]]:
        started = time.perf_counter()
        results = []
        for start in range(0, len(docs), chunk):
            results.extend(stage.run(docs[start:start + chunk], {}))
        return len(docs) / (time.perf_counter() - started), results

    for runtime, stage in stages.items():
        labels[runtime] = [r.label for r in run(stage)[1]]  # also the warm-up
    samples: dict[str, list[float]] = {runtime: [] for runtime in RUNTIMES}
    peaks: dict[str, list[float]] = {}
    for _ in range(max(1, rounds)):
        for runtime, stage in stages.items():
            samples[runtime].append(run(stage)[0])
        for name, value in int8_peaks().items():
            peaks.setdefault(name, []).append(value)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    tokens = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=stage_spec.max_length)["input_ids"]]
    flops = sum(forward_flops(config, n, bool(builds["onnxruntime"].get("last_layer_first_token_only"))) for n in tokens) / len(tokens)
    peak = max(max(values) for values in peaks.values())
    best = {runtime: max(values) for runtime, values in samples.items()}
    return {
        "model": str(model_dir), "docs": len(texts), "mean_tokens": round(sum(tokens) / len(tokens), 1), "rounds": max(1, rounds),
        "docs_per_s": {k: round(v, 2) for k, v in best.items()}, "samples": {k: [round(v, 2) for v in vs] for k, vs in samples.items()},
        "openvino_over_onnxruntime": round(best["openvino"] / best["onnxruntime"], 3),
        "int8_peaks_gops": {k: [round(v, 1) for v in vs] for k, vs in peaks.items()}, "int8_peak_gops": round(peak, 1),
        "forward_gflop_per_doc": round(flops / 1e9, 4),
        "roofline_fraction": {k: round(v * flops / 1e9 / peak, 4) for k, v in best.items()},
        "labels_as_fp32": {k: round(sum(a == b for a, b in zip(labels[k], labels["fp32"], strict=True)) / len(texts), 4) for k in RUNTIMES},
        "builds": {k: {field: v.get(field) for field in ("runtime", "onnxruntime", "openvino", "nncf", "activations", "batch_independent")}
                   for k, v in builds.items()},
        "machine": machine(),
    }


def render(result: dict[str, Any]) -> str:
    from worker.bench import machine_line

    rates, fractions, agree = result["docs_per_s"], result["roofline_fraction"], result["labels_as_fp32"]
    lines = [f"{machine_line(result['machine'])}; int8 peak {result['int8_peak_gops']} GOP/s "
             f"({', '.join(f'{k} {max(v)}' for k, v in result['int8_peaks_gops'].items())})",
             f"{result['docs']} texts, {result['mean_tokens']} tokens on average, best of {result['rounds']} interleaved rounds"]
    for runtime in RUNTIMES:
        lines.append(f"  {runtime:<12} {rates[runtime]:8.1f} docs/s  {100 * fractions[runtime]:5.1f}% of the int8 roofline  "
                     f"labels as fp32 {100 * agree[runtime]:.1f}%")
    lines.append(f"OpenVINO / ONNX Runtime: {result['openvino_over_onnxruntime']}x")
    return "\n".join(lines)


def stage_main(doc: str, compare: Any, render: Any, argv: list[str] | None = None) -> int:
    """The command line of a script that compares int8 builds of one pipeline stage on a data file: parses the
    arguments, runs `compare(stage_spec, texts, rounds=...)` and prints the JSON or `render`'s text."""
    from worker.bench import read_bench_texts
    from worker.config import load_pipeline

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--pipeline", default=str(REPO / "pipelines" / "demo.yaml"))
    parser.add_argument("--stage", default="sentiment")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "ag_news" / "test.tsv"))
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    spec = load_pipeline(args.pipeline)
    result = compare(spec.stage(args.stage), read_bench_texts(args.data, args.limit), rounds=args.rounds)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    return stage_main(__doc__, compare, render, argv)


if __name__ == "__main__":
    raise SystemExit(main())

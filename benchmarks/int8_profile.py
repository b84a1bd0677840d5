"""Where an int8 build's time goes, one thread, one document per call, and how close to the int8 roofline it can get.

    .venv/bin/python benchmarks/int8_profile.py [--pipeline pipelines/demo.yaml] [--stage sentiment]
        [--data ../shared/data/ag_news/test.tsv] [--limit 300] [--depths] [--json]

Runs the stage's int8 build (`worker.models.int8`, built if missing) the way the int8 runner
does -- each document on its own, unpadded, one thread per call -- first without the
profiler (the docs/s and the fraction of the one-thread int8 roofline), then under ONNX
Runtime's profiler, and splits the time into:

- the int8 matrix products (`DynamicQuantizeMatMul`, `MatMulIntegerToFloat`,
  `MatMulInteger`, and the input projection inside each `QAttention`, which the profiler
  cannot time apart: it is estimated from its FLOPs at the rate the other products ran);
- the fp32 operators (attention scores and softmax, GELU, LayerNorm, residual adds, ...);
- what runs between operators (the wall time the kernels do not cover).

From that it prints the **bound**: the fraction of the roofline the build would reach if
every int8 product ran at the measured one-thread peak and nothing else changed. When the
bound is below a target, no faster GEMM kernel reaches the target; only less fp32 work or
less time between operators can. The peak is measured before and after, and the higher
one counts, as in `textworker bench` (three samples: before, between and after).

With `--depths`, it also measures the build on every thread at three depths, in interleaved
rounds (best of each), against the int8 roofline of every core (`worker.bench.int8_peaks`,
the higher of the two runtimes' peaks, as `textworker bench` uses):

- `runtime`: the calls the stage would make (chunks of 512, one call per document on its
  real tokens), built beforehand and spread over the worker threads
  (`OnnxEncoder._run_each`); nothing else is timed;
- `stage`: the stage's `run` on the same chunks (tokenising, the calls, the scores);
- `engine`: a `textworker bench`-style engine run (a JSONL file through the engine into
  SQLite, model loaded outside the timing).

The differences say what the stage and the engine cost on top of the runtime.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

GEMM_OPS = ("DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulInteger")
QUANTISE_OPS = ("DynamicQuantizeLinear",)  # quantising a product's input outside it: counted with the products


def _shape(arg: Any) -> list[int]:
    """The first shape in an ONNX Runtime profile event's `input_type_shape` entry ({'float': [1, 54, 384]})."""
    return list(next(iter(arg.values()))) if isinstance(arg, dict) and arg else []


def gemm_flops(op: str, inputs: list[Any], outputs: list[Any]) -> float:
    """FLOPs of an int8 product (or of QAttention's input projection) from its profiled shapes."""
    if op in GEMM_OPS:
        a, out = _shape(inputs[0]), _shape(outputs[0])
        if not a or not out:
            return 0.0
        rows = 1
        for size in a[:-1]:
            rows *= size
        return 2.0 * rows * a[-1] * out[-1]
    if op == "QAttention":  # the profile lists no weights (they are constants): queries, keys and values are each as wide as the output
        x, out = _shape(inputs[0]), _shape(outputs[0])
        if len(x) < 3 or len(out) < 3:
            return 0.0
        return 2.0 * x[0] * x[1] * x[2] * 3 * out[-1]
    return 0.0


def after_warmup(events: list[dict[str, Any]], runs: int) -> list[dict[str, Any]]:
    """The profile events after the first `runs` runs of the session (warm-up, not timed)."""
    ends = sorted(event["ts"] + event["dur"] for event in events if event.get("name") == "model_run")
    if len(ends) <= runs:
        return events
    cutoff = ends[runs - 1]
    return [event for event in events if event.get("ts", 0) >= cutoff]


def summarise(events: list[dict[str, Any]], docs: int, profiled_s_per_doc: float, wall_s_per_doc: float, flops_per_doc: float,
              peak_gops: float) -> dict[str, Any]:
    """The split of one document's time and the bound, from ONNX Runtime profile events (times in microseconds).

    The profiled pass runs slower than the timed ones (the profiler's own cost, and a shared machine's drift), so
    the split is taken as shares of the profiled pass's wall time and applied to the fastest timed pass."""
    per_op: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    gemm_us = 0.0
    gemm_work = 0.0
    qattention_us = 0.0
    qattention_work = 0.0
    quantise_us = 0.0
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        args = event.get("args", {})
        op = args.get("op_name", "?")
        per_op[op] += event["dur"]
        calls[op] += 1
        work = gemm_flops(op, args.get("input_type_shape", []), args.get("output_type_shape", []))
        if op in GEMM_OPS:
            gemm_us += event["dur"]
            gemm_work += work
        elif op in QUANTISE_OPS:
            quantise_us += event["dur"]
        elif op == "QAttention":
            qattention_us += event["dur"]
            qattention_work += work
    scale = wall_s_per_doc / profiled_s_per_doc  # profiled microseconds -> timed-pass microseconds
    kernel_us = sum(per_op.values()) / docs * scale
    gemm_rate = gemm_work / (gemm_us * scale) / 1e3 if gemm_us else 0.0  # GOP/s
    projection_us = qattention_work / (gemm_rate * 1e3) if gemm_rate else 0.0
    products_us = (gemm_us + quantise_us) * scale / docs + min(projection_us, qattention_us * scale) / docs
    wall_us = wall_s_per_doc * 1e6
    kernel_us = min(kernel_us, wall_us)
    fp32_us = kernel_us - products_us
    between_us = wall_us - kernel_us
    ideal_us = flops_per_doc / (peak_gops * 1e3)
    return {
        "wall_us_per_doc": round(wall_us, 1), "kernel_us_per_doc": round(kernel_us, 1),
        "int8_products_us_per_doc": round(products_us, 1), "fp32_operators_us_per_doc": round(fp32_us, 1),
        "between_operators_us_per_doc": round(between_us, 1),
        "int8_product_rate_gops": round(gemm_rate, 1), "int8_product_share_of_peak": round(gemm_rate / peak_gops, 3) if peak_gops else None,
        "ideal_us_per_doc": round(ideal_us, 1), "roofline_fraction": round(ideal_us / wall_us, 3) if wall_us else None,
        "bound_if_products_at_peak": round(ideal_us / (ideal_us + fp32_us + between_us), 3),
        "operators": [{"op": op, "us_per_doc": round(us * scale / docs, 1), "share": round(us / sum(per_op.values()), 3),
                       "calls_per_doc": round(calls[op] / docs, 1)} for op, us in per_op.most_common()],
    }


def profile(model_dir: str | Path, auto_class: str, texts: list[str], max_length: int = 256, rounds: int = 3,
            warmup: int = 8) -> dict[str, Any]:
    """Time the version's int8 build on `texts` (one thread, one document per call), profile it, and split the time."""
    import numpy as np
    import onnxruntime
    from transformers import AutoConfig, AutoTokenizer

    from worker.bench import forward_flops, int8_peak_gops, machine
    from worker.models import int8

    info = int8.build(model_dir, auto_class, runtime="onnxruntime")  # the build this profile splits is ONNX Runtime's
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = AutoConfig.from_pretrained(model_dir)
    path = int8.int8_dir(model_dir, "onnxruntime") / int8.ONNX_FILE

    def session(profile_dir: str | None = None) -> Any:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        if profile_dir:
            options.enable_profiling = True
            options.profile_file_prefix = os.path.join(profile_dir, "int8")
        return int8.open_session(path, options)

    plain = session()
    names = [item.name for item in plain.get_inputs()]
    feeds = []
    tokens = []
    for text in texts:
        encoded = tokenizer(text, truncation=True, max_length=max_length, return_tensors="np")
        ids = encoded["input_ids"].astype(np.int64)
        defaults = {"attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        feeds.append({name: encoded[name].astype(np.int64) if name in encoded else defaults[name] for name in names})
        tokens.append(int(ids.shape[1]))
    pruned = bool(info.get("last_layer_first_token_only"))
    flops = sum(forward_flops(config, n, pruned) for n in tokens) / len(tokens)

    peaks = [int8_peak_gops(repeats=20, threads=1)]
    for feed in feeds[:warmup]:
        plain.run(None, feed)
    passes = []
    for _ in range(max(1, rounds)):
        started = time.perf_counter()
        for feed in feeds:
            plain.run(None, feed)
        passes.append((time.perf_counter() - started) / len(feeds))
    peaks.append(int8_peak_gops(repeats=20, threads=1))
    with tempfile.TemporaryDirectory() as profile_dir:
        profiled = session(profile_dir)
        for feed in feeds[:warmup]:
            profiled.run(None, feed)
        started = time.perf_counter()
        for feed in feeds:
            profiled.run(None, feed)
        profiled_s = (time.perf_counter() - started) / len(feeds)
        events = json.loads(Path(profiled.end_profiling()).read_text(encoding="utf-8"))
    peaks.append(int8_peak_gops(repeats=20, threads=1))
    peak = max(peaks)
    return {"model": str(model_dir), "docs": len(feeds), "mean_tokens": round(sum(tokens) / len(tokens), 1), "threads": 1,
            "int8_build": {k: info.get(k) for k in ("format", "reduce_range", "smoothed_products", "split_layer_norms",
                                                   "fused_attention", "last_layer_first_token_only", "onnxruntime")},
            "forward_gflop_per_doc": round(flops / 1e9, 4), "int8_peak_gops_one_thread": round(peak, 1),
            "peak_samples": [round(p, 1) for p in peaks], "docs_per_s": round(1 / min(passes), 1),
            "passes_docs_per_s": [round(1 / p, 1) for p in passes], "machine": machine(),
            **summarise(after_warmup(events, min(warmup, len(feeds))), len(feeds), profiled_s, min(passes), flops, peak)}


def depths(spec: Any, texts: list[str], rounds: int = 3, chunk: int = 512) -> dict[str, Any]:
    """The ONNX Runtime build on every worker thread at three depths -- the planned calls alone, the stage, the engine
    -- in interleaved rounds (best of each), as fractions of the all-core int8 roofline."""
    from transformers import AutoConfig

    from worker.bench import depth_rounds, forward_flops
    from worker.models import int8, loading
    from worker.stages import build_stage
    from worker.stages.classify import encode_texts

    spec = spec.model_copy(update={"precision": "int8"})
    model_dir = loading.resolve(spec.model).location
    saved = os.environ.get("TEXTWORKER_INT8_RUNTIME")
    os.environ["TEXTWORKER_INT8_RUNTIME"] = "onnxruntime"
    try:
        info = int8.build(model_dir, int8.SEQ_CLASS, runtime="onnxruntime")
        config = AutoConfig.from_pretrained(model_dir)
        stage = build_stage(spec)
        stage.load()
        encoder = stage.model
        if not isinstance(encoder, int8.OnnxEncoder):
            raise SystemExit(f"stage {spec.name} did not load the ONNX Runtime int8 build ({stage.precision_reason})")
        planned = []  # per chunk: one feed per document
        tokens: list[int] = []
        for start in range(0, len(texts), chunk):
            encoded = encode_texts(stage.tokenizer, texts[start:start + chunk], stage.max_positions)
            types = encoded.get("token_type_ids")
            planned.append([encoder._feed(ids, None if types is None else types[row]) for row, ids in enumerate(encoded["input_ids"])])
            tokens.extend(len(ids) for ids in encoded["input_ids"])
        flops = sum(forward_flops(config, n, bool(info.get("last_layer_first_token_only"))) for n in tokens) / len(tokens)
        samples, peaks = depth_rounds(spec, stage, texts, lambda: [encoder._run_each(feeds) for feeds in planned], rounds, chunk)
    finally:
        if saved is None:
            os.environ.pop("TEXTWORKER_INT8_RUNTIME", None)
        else:
            os.environ["TEXTWORKER_INT8_RUNTIME"] = saved
    peak = max(peaks)
    roofline = peak * 1e9 / flops
    best = {name: max(values) for name, values in samples.items()}
    return {
        "docs": len(texts), "chunk": chunk, "rounds": max(1, rounds), "threads": encoder.workers, "sessions": len(encoder._sessions),
        "int8_peak_gops": round(peak, 1), "peak_samples": [round(p, 1) for p in peaks], "forward_gflop_per_doc": round(flops / 1e9, 4),
        "docs_per_s": {"roofline": round(roofline, 2), **{k: round(v, 2) for k, v in best.items()}},
        "samples": {k: [round(v, 2) for v in values] for k, values in samples.items()},
        "roofline_fraction": {k: round(v / roofline, 4) for k, v in best.items()},
        "lost_to": {"stage_work": round(1 - best["stage"] / best["runtime"], 4), "engine_work": round(1 - best["engine"] / best["stage"], 4)},
    }


def render(result: dict[str, Any]) -> str:
    from worker.bench import machine_line

    lines = [
        f"{machine_line(result['machine'])}; int8 peak on one thread {result['int8_peak_gops_one_thread']} GOP/s",
        f"{result['docs']} documents, {result['mean_tokens']} tokens on average, {result['forward_gflop_per_doc']} GFLOP each; "
        f"{result['docs_per_s']} docs/s on one thread = {100 * result['roofline_fraction']:.1f}% of the one-thread int8 roofline",
        f"per document: {result['wall_us_per_doc']} us wall = int8 products {result['int8_products_us_per_doc']} us "
        f"(at {result['int8_product_rate_gops']} GOP/s, {100 * result['int8_product_share_of_peak']:.0f}% of the peak) "
        f"+ fp32 operators {result['fp32_operators_us_per_doc']} us + between operators {result['between_operators_us_per_doc']} us",
        f"with every int8 product at the peak and nothing else changed: {100 * result['bound_if_products_at_peak']:.1f}% of the roofline",
    ]
    lines += [f"  {row['op']:<28} {row['us_per_doc']:>9.1f} us/doc  {100 * row['share']:5.1f}%  {row['calls_per_doc']:>5.1f} calls/doc"
              for row in result["operators"]]
    if "depths" in result:
        deep = result["depths"]
        lines.append(f"on {deep['threads']} threads ({deep['sessions']} sessions), int8 peak {deep['int8_peak_gops']} GOP/s, "
                     f"roofline {deep['docs_per_s']['roofline']} docs/s, best of {deep['rounds']} interleaved rounds:")
        lines += [f"  {name:<8} {deep['docs_per_s'][name]:>8.1f} docs/s  {100 * deep['roofline_fraction'][name]:5.1f}% of the roofline"
                  for name in ("runtime", "stage", "engine")]
        lines.append(f"  lost to the stage's work {100 * deep['lost_to']['stage_work']:.1f}%, to the engine's {100 * deep['lost_to']['engine_work']:.1f}%")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default=str(REPO / "pipelines" / "demo.yaml"))
    parser.add_argument("--stage", default="sentiment")
    parser.add_argument("--data", nargs="+", default=[str(REPO.parent / "shared" / "data" / "ag_news" / "test.tsv")])
    parser.add_argument("--limit", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3, help="timed passes without the profiler; the fastest counts")
    parser.add_argument("--depths", action="store_true", help="also time the build on every thread: the calls alone, the stage, the engine")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from worker.bench import read_bench_mix
    from worker.config import load_pipeline
    from worker.models import loading
    from worker.stages import plugin_for

    spec = load_pipeline(args.pipeline)
    stage = spec.stage(args.stage)
    auto_class = getattr(plugin_for(stage.type).stage, "auto_class", None)
    if auto_class != "AutoModelForSequenceClassification":
        parser.error(f"stage {args.stage} ({stage.type}) is not a sequence classifier with an int8 build")
    texts = read_bench_mix(args.data, args.limit)
    if not texts:
        parser.error(f"no texts in {' '.join(args.data)}")
    result = {"stage": args.stage, **profile(loading.resolve(stage.model).location, auto_class, texts, stage.max_length, args.rounds)}
    if args.depths:
        result["depths"] = depths(stage, texts, args.rounds)
    print(json.dumps(result, indent=2) if args.json else render(result))


if __name__ == "__main__":
    main()

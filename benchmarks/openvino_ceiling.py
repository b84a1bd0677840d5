"""Where the OpenVINO int8 build's share of the int8 roofline goes, from the runtime alone to the engine run, in one run.

`textworker bench` reports one fraction of the int8 roofline for the whole engine run. This
script measures the same texts at three depths, in interleaved rounds (best of each), and
splits the distance to the roofline:

- `runtime`: the calls the stage would make (chunks of 512, `OpenVinoEncoder.plan_feeds`),
  built beforehand and run through the build's inference streams; nothing else is timed;
- `stage`: the stage's `run` on the same chunks (tokenising, planning, padding, the calls,
  the scores);
- `engine`: a `textworker bench`-style engine run (a JSONL file through the engine into
  SQLite, model loaded outside the timing).

It also reports:

- the padding share: documents are padded to their length bucket, and the padded tokens are
  computed like real ones, but the roofline counts real tokens only;
- the runtime's own operator split: one stream on one thread, with OpenVINO's per-operator
  counters, over the same calls. The int8 products (`FullyConnected`, with the bias, GELU and
  requantising the plugin fuses into them), the fused attention block (`Subgraph`) and the
  rest (adds, normalisation, transposes, embeddings);
- the bound: the fraction of the roofline the runtime would reach if every int8 product ran
  at the measured peak and nothing else changed (padding included). Below a target, no
  faster product kernel and no engine change reaches the target.

The peak is the higher of the two runtimes' int8 GEMM peaks on every core
(`worker.bench.int8_peaks`), measured before, between and after the rounds, as in
`textworker bench`.

    TEXTWORKER_INT8_RUNTIME is set to openvino by the script.
    .venv/bin/python benchmarks/openvino_ceiling.py [--pipeline pipelines/demo.yaml] [--stage sentiment]
        [--data ../shared/data/ag_news/test.tsv] [--limit 1000] [--rounds 3] [--json]
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(Path(__file__).resolve().parent))  # int8_runtimes, beside this script

PRODUCTS = ("FullyConnected", "FullyConnectedQuantizedLegacy", "MatMul")  # OpenVINO CPU node types of the int8 products
ATTENTION = ("Subgraph",)  # the plugin's fused attention block


def operator_split(records: list[tuple[str, str, float]]) -> dict[str, Any]:
    """Shares of the operator time from (node type, kernel, seconds) records: int8 products, the fused attention
    block and the rest, and the operators by time."""
    per_op: Counter[tuple[str, str]] = Counter()
    for node_type, kernel, seconds in records:
        per_op[(node_type, kernel)] += seconds
    total = sum(per_op.values())
    if total <= 0:
        return {"products": 0.0, "attention": 0.0, "other": 0.0, "operators": []}

    def share(types: tuple[str, ...]) -> float:
        return sum(seconds for (node_type, _), seconds in per_op.items() if node_type in types) / total

    products, attention = share(PRODUCTS), share(ATTENTION)
    return {"products": round(products, 4), "attention": round(attention, 4), "other": round(max(0.0, 1 - products - attention), 4),
            "operators": [{"op": node_type, "kernel": kernel, "share": round(seconds / total, 4)}
                          for (node_type, kernel), seconds in per_op.most_common(12)]}


def bound(real_flops: float, padded_flops: float, runtime_s_per_doc: float, products_share: float, peak_gops: float) -> float:
    """The runtime's fraction of the roofline with every int8 product (padded tokens included) at `peak_gops` and the
    rest of its time (`1 - products_share` of `runtime_s_per_doc`) unchanged."""
    ideal_real = real_flops / (peak_gops * 1e9)
    ideal_padded = padded_flops / (peak_gops * 1e9)
    rest = (1 - products_share) * runtime_s_per_doc
    return ideal_real / (ideal_padded + rest)


def _profile(path: str, feeds: list[dict[str, Any]]) -> list[tuple[str, str, float]]:
    """Every call once (after one untimed pass) on one stream and one thread, with the per-operator counters."""
    import openvino

    compiled = openvino.Core().compile_model(path, "CPU", {"NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": 1, "PERF_COUNT": True,
                                                          "ENABLE_CPU_PINNING": False, "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    for feed in feeds:
        request.infer(feed)
    records = []
    for feed in feeds:
        request.infer(feed)
        records.extend((info.node_type, info.exec_type, info.real_time.total_seconds()) for info in request.profiling_info)
    return records


def compare(stage_spec: Any, texts: list[str], rounds: int = 3, chunk: int = 512) -> dict[str, Any]:
    saved = os.environ.get("TEXTWORKER_INT8_RUNTIME")
    os.environ["TEXTWORKER_INT8_RUNTIME"] = "openvino"
    try:
        return _measure(stage_spec.model_copy(update={"precision": "int8"}), texts, rounds, chunk)
    finally:
        if saved is None:
            os.environ.pop("TEXTWORKER_INT8_RUNTIME", None)
        else:
            os.environ["TEXTWORKER_INT8_RUNTIME"] = saved


def _measure(spec: Any, texts: list[str], rounds: int, chunk: int) -> dict[str, Any]:
    from transformers import AutoConfig

    from worker.bench import depth_rounds, forward_flops, machine
    from worker.models import int8, loading
    from worker.stages import build_stage
    from worker.stages.classify import encode_texts

    model_dir = loading.resolve(spec.model).location
    info = int8.build(model_dir, int8.SEQ_CLASS, runtime="openvino")
    pruned = bool(info.get("last_layer_first_token_only"))
    config = AutoConfig.from_pretrained(model_dir)
    stage = build_stage(spec)
    stage.load()
    encoder, tokenizer = stage.model, stage.tokenizer
    chunks = [texts[start:start + chunk] for start in range(0, len(texts), chunk)]
    planned = []  # per chunk: the feeds of its calls
    real = padded = 0.0
    tokens: list[int] = []
    for part in chunks:
        encoded = encode_texts(tokenizer, part, stage.max_positions)
        lengths = [len(ids) for ids in encoded["input_ids"]]
        tokens.extend(lengths)
        calls, feeds = encoder.plan_feeds(encoded["input_ids"], encoded.get("token_type_ids"), max_rows=spec.batch_size)
        planned.append(feeds)
        for members, width in calls:
            for row in members:
                real += forward_flops(config, lengths[row], pruned)
                padded += forward_flops(config, width, pruned)

    samples, peaks = depth_rounds(spec, stage, texts, lambda: [encoder._infer(feeds) for feeds in planned], rounds, chunk)
    split = operator_split(_profile(encoder._path, [feed for feeds in planned for feed in feeds]))
    peak = max(peaks)
    real_per_doc, padded_per_doc = real / len(texts), padded / len(texts)
    roofline = peak * 1e9 / real_per_doc
    best = {name: max(values) for name, values in samples.items()}
    return {
        "model": str(model_dir), "docs": len(texts), "mean_tokens": round(sum(tokens) / len(tokens), 1), "chunk": chunk,
        "rounds": max(1, rounds), "streams": encoder.workers, "length_bucket": info.get("length_bucket"),
        "int8_peak_gops": round(peak, 1), "peak_samples": [round(p, 1) for p in peaks],
        "forward_gflop_per_doc": round(real_per_doc / 1e9, 4), "padded_gflop_per_doc": round(padded_per_doc / 1e9, 4),
        "padding_share": round(1 - real / padded, 4),
        "docs_per_s": {"roofline": round(roofline, 2), **{k: round(v, 2) for k, v in best.items()}},
        "samples": {k: [round(v, 2) for v in values] for k, values in samples.items()},
        "roofline_fraction": {k: round(v / roofline, 4) for k, v in best.items()},
        "runtime_fraction_of_padded_work": round(best["runtime"] * padded_per_doc / (peak * 1e9), 4),
        "lost_to": {"stage_work": round(1 - best["stage"] / best["runtime"], 4), "engine_work": round(1 - best["engine"] / best["stage"], 4)},
        "operator_split": split,
        "bound_if_products_at_peak": round(bound(real_per_doc, padded_per_doc, 1 / best["runtime"], split["products"], peak), 4),
        "machine": machine(),
    }


def render(result: dict[str, Any]) -> str:
    from worker.bench import machine_line

    rates, fractions, split = result["docs_per_s"], result["roofline_fraction"], result["operator_split"]
    lines = [f"{machine_line(result['machine'])}; int8 peak {result['int8_peak_gops']} GOP/s on every core",
             f"{result['docs']} texts, {result['mean_tokens']} tokens on average, chunks of {result['chunk']}, {result['streams']} streams, "
             f"best of {result['rounds']} interleaved rounds",
             f"padding: {result['padded_gflop_per_doc']} GFLOP computed per document for {result['forward_gflop_per_doc']} counted "
             f"({100 * result['padding_share']:.1f}% of the work is padding)",
             f"  {'roofline':<8} {rates['roofline']:8.1f} docs/s"]
    for name in ("runtime", "stage", "engine"):
        lines.append(f"  {name:<8} {rates[name]:8.1f} docs/s  {100 * fractions[name]:5.1f}% of the int8 roofline")
    lost = result["lost_to"]
    lines += [f"the runtime on the work it does (padding counted): {100 * result['runtime_fraction_of_padded_work']:.1f}% of the roofline; "
              f"the stage's own work costs {100 * lost['stage_work']:.1f}%, the engine's {100 * lost['engine_work']:.1f}%",
              f"operator time, one stream: int8 products {100 * split['products']:.1f}%, fused attention {100 * split['attention']:.1f}%, "
              f"the rest {100 * split['other']:.1f}%",
              f"with every int8 product at the peak and nothing else changed: {100 * result['bound_if_products_at_peak']:.1f}% of the roofline"]
    lines += [f"    {row['op']:<30} {row['kernel']:<22} {100 * row['share']:5.1f}%" for row in split["operators"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from int8_runtimes import stage_main  # the same command line, beside this script

    return stage_main(__doc__, compare, render, argv)


if __name__ == "__main__":
    raise SystemExit(main())

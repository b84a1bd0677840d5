"""`textworker bench`: one stage's throughput against the ways users would otherwise run it.

All contenders run in one process, one after another, on the same model and the same
documents: (a) textworker's batch run from a file into SQLite, (b) a transformers
`pipeline()` called once per document, (c) the same `pipeline()` with batch_size=64,
(d) Ray Data `map_batches` with an actor pool running the model, (e) the FLOP-bound
limit: forward FLOPs per document against this machine's measured matmul peak for the
precision textworker runs at -- fp32 or int8 (ONNX Runtime's u8 x s8 GEMM) on CPU, bf16
on CUDA (where every contender runs the model on the GPU in bf16).

`--precision` picks textworker's precision (default: the stage's, `auto`). The baselines
stay fp32 as users run them; when textworker runs int8, the same three baselines run
again on the same int8 model (`*_int8`), so the gain of the engine and of the precision
can be told apart. Model loading and Ray start-up are outside every timed region.

The peak is measured before and after the contenders, and the higher of the two is used
(`peak_samples` in the JSON): on a shared machine a peak measured in a slow moment would
understate the limit and overstate every fraction of it. For the same reason `rounds` > 1
measures every contender once per round, one round after another, and keeps each one's best
(`samples` in the JSON), with the peak measured between rounds as well.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from schemas.pipeline import FileSource, PipelineSpec, SqlSink
from worker.models import loading
from worker.stages import plugin_for


def read_bench_texts(path: str | Path, limit: int | None) -> list[str]:
    """Texts from a TSV (text/label, either order), or JSONL with a `text` field."""
    path = Path(path)
    if path.suffix == ".tsv":
        from worker.training.data import load_labelled

        texts, _ = load_labelled(path, limit=limit)
        return texts
    texts = []
    for line in path.read_text(encoding="utf-8").split("\n"):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("text"), str) and row["text"].strip():
            texts.append(row["text"])
        if limit is not None and len(texts) >= limit:
            break
    return texts


def bench_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def machine() -> dict[str, Any]:
    """What a figure was measured on: the date, CPU model, logical cores and the ISA flags that decide matmul speed."""
    import platform

    from worker.machine import cpu_field, cpu_flags

    flags = cpu_flags()
    return {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_field("model name") or platform.processor() or platform.machine(),
            "family": _number(cpu_field("cpu family")), "model": _number(cpu_field("model")),
            "cores": os.cpu_count(), "isa": [flag for flag in ISA_FLAGS if flag in flags]}


def _number(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def machine_line(info: dict[str, Any]) -> str:
    """`2026-12-03, AMD EPYC (family 25 model 17), 2 logical cores, ISA: ...`. Guests of one vendor often show one model
    name (`AMD EPYC`) for several CPU generations, so the family and model numbers are part of the label."""
    cpu = info["cpu"]
    if info.get("family") is not None and info.get("model") is not None:
        cpu = f"{cpu} (family {info['family']} model {info['model']})"
    return f"{info['date']}, {cpu}, {info['cores']} logical cores, ISA: {' '.join(info['isa']) or 'none of ' + '/'.join(ISA_FLAGS)}"


def matmul_peak_gflops(size: int | None = None, repeats: int = 8, device: str = "cpu") -> float:
    """Best observed matmul rate: fp32 on CPU (all torch threads), bf16 on CUDA (the tensor-core peak)."""
    import torch

    cuda = device.startswith("cuda")
    size = size or (8192 if cuda else 1536)
    dtype = torch.bfloat16 if cuda else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    torch.mm(a, b)
    sync()
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        sync()
        best = max(best, 2 * size**3 / (time.perf_counter() - started))
    return best / 1e9


def int8_peak_gops(size: int = 1536, repeats: int = 8, threads: int | None = None) -> float:
    """Best observed int8 GEMM rate on `threads` threads (default: as many as torch uses): the faster of ONNX Runtime's
    MatMulInteger and, where OpenVINO is installed, its int8 product, so a build on either runtime is held to the
    higher peak (`int8_peaks`)."""
    return max(int8_peaks(size, repeats, threads).values())


def int8_peaks(size: int = 1536, repeats: int = 8, threads: int | None = None) -> dict[str, float]:
    """The int8 GEMM peak (GOP/s) of each installed runtime, `size`-square, best of `repeats`."""
    peaks = {"onnxruntime": _onnxruntime_int8_peak(size, repeats, threads)}
    try:
        peaks["openvino"] = _openvino_int8_peak(size, repeats, threads)
    except ImportError:
        pass
    return peaks


def _onnxruntime_int8_peak(size: int, repeats: int, threads: int | None) -> float:
    """u8 x s8 -> s32, ONNX Runtime's MatMulInteger."""
    import numpy as np
    import onnxruntime
    import torch
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["c"])], "gemm",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [size, size]), helper.make_tensor_value_info("b", TensorProto.INT8, [size, size])],
        [helper.make_tensor_value_info("c", TensorProto.INT32, [size, size])])
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    session = onnxruntime.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(),
                                           options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {"a": rng.integers(0, 255, (size, size), dtype=np.uint8), "b": rng.integers(-128, 127, (size, size), dtype=np.int8)}
    return _best_rate(lambda: session.run(None, feed), 2 * size**3, repeats)


def _openvino_int8_peak(size: int, repeats: int, threads: int | None) -> float:
    """OpenVINO's CPU int8 product (u8 activations from a FakeQuantize, s8 weights scaled per row): the kernel its
    int8 builds run (`worker.models.int8_openvino`); the activations' quantising is timed with it."""
    import numpy as np
    import openvino
    import torch
    from openvino import opset13 as ops

    def const(value: Any) -> Any:
        return ops.constant(np.array(value, np.float32))

    rng = np.random.default_rng(0)
    x = ops.parameter([size, size], np.float32, name="x")
    quantised = ops.fake_quantize(x, const(-4.0), const(4.0), const(-4.0), const(4.0), 256)
    weights = ops.multiply(ops.convert(ops.constant(rng.integers(-127, 127, (size, size), dtype=np.int8)), np.float32),
                           ops.constant(np.full((size, 1), 0.01, np.float32)))
    model = openvino.Model([ops.matmul(quantised, weights, False, True)], [x])
    compiled = openvino.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads or torch.get_num_threads(), "NUM_STREAMS": 1,
                                                            "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False})
    request = compiled.create_infer_request()
    data = rng.standard_normal((size, size)).astype(np.float32)
    return _best_rate(lambda: request.infer([data]), 2 * size**3, repeats)


def _best_rate(call: Callable[[], Any], ops_per_call: float, repeats: int) -> float:
    call()
    best = 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        best = max(best, ops_per_call / (time.perf_counter() - started))
    return best / 1e9


def forward_flops(config: Any, tokens: int, last_layer_first_token: bool = False) -> float:
    """Forward FLOPs of a BERT/RoBERTa-style encoder for one sequence of `tokens` (with
    `last_layer_first_token`: the last layer computed for the first token only, as the int8
    build of a sequence classifier does; keys and values still cover every token)."""
    h = config.hidden_size
    layers = config.num_hidden_layers
    inter = getattr(config, "intermediate_size", 4 * h)
    per_layer = 2 * tokens * (4 * h * h + 2 * h * inter) + 2 * 2 * tokens * tokens * h
    if not last_layer_first_token:
        return float(layers * per_layer)
    last = 2 * (2 * tokens * h * h + 2 * h * h + 2 * h * inter) + 2 * 2 * tokens * h
    return float((layers - 1) * per_layer + last)


def _timed(fn: Callable[[], Any], docs: int) -> float:
    started = time.perf_counter()
    fn()
    return docs / (time.perf_counter() - started)


def bench_textworker(stage_spec: Any, texts: list[str], workdir: Path, runtime: str = "local",
                     timings: dict[str, float] | None = None) -> float:
    """textworker's own batch run: a JSONL file through the engine into SQLite (model loaded outside the timing; its
    seconds, with any warm-up the build does as it loads, go into `timings["load_s"]`)."""
    from worker.engine import Engine
    from worker.engine.batch import run_pipeline
    from worker.engine.executors import make_executor
    from worker.engine.runs import new_run_id
    from worker.sinks import build_sink
    from worker.sources.files import FileDocumentSource

    data = workdir / f"docs-{time.monotonic_ns()}.jsonl"
    data.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    source = FileSource(path=str(data))
    spec = PipelineSpec(name="bench", source=source, stages=[stage_spec], sink=SqlSink(url=f"sqlite:///{data.with_suffix('.db')}"))
    started = time.perf_counter()
    engine = Engine(spec, make_executor(runtime)).start()
    if timings is not None:
        timings["load_s"] = time.perf_counter() - started
    sink = build_sink(spec.sink, spec.name, new_run_id()).open()
    try:
        summary = run_pipeline(spec, FileDocumentSource(source), sink, engine, chunk_size=512)
    finally:
        sink.close()
        engine.close()
    return summary.docs / summary.seconds


def depth_rounds(spec: Any, stage: Any, texts: list[str], run_calls: Callable[[], Any], rounds: int = 3,
                 chunk: int = 512) -> tuple[dict[str, list[float]], list[float]]:
    """The same texts at three depths, in interleaved rounds: `runtime` (`run_calls`: the stage's calls, built
    beforehand, nothing else timed), `stage` (the loaded `stage`'s `run` on chunks of `chunk`) and `engine`
    (`bench_textworker` with `spec`). Returns the docs/s samples of each and the all-core int8 peak (GOP/s) measured
    before the rounds and after each (`benchmarks/openvino_ceiling.py`, `benchmarks/int8_profile.py --depths`)."""
    from schemas.documents import Document

    docs = [Document(id=f"d{i}", text=text) for i, text in enumerate(texts)]

    def runtime() -> float:
        return _timed(run_calls, len(texts))

    def stage_pass() -> float:
        return _timed(lambda: [stage.run(docs[start:start + chunk], {}) for start in range(0, len(docs), chunk)], len(docs))

    run_calls()  # untimed: every session or stream warm
    peaks = [max(int8_peaks().values())]
    samples: dict[str, list[float]] = {"runtime": [], "stage": [], "engine": []}
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(max(1, rounds)):
            samples["runtime"].append(runtime())
            samples["stage"].append(stage_pass())
            samples["engine"].append(bench_textworker(spec, texts, Path(workdir)))
            peaks.append(max(int8_peaks().values()))
    return samples, peaks


def _hf_model(model_dir: str, device: str) -> Any:
    """The classifier as a plain transformers user would load it: bf16 on CUDA, fp32 on CPU."""
    import torch
    from transformers import AutoModelForSequenceClassification

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    return AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True, dtype=dtype).to(device).eval()


def bench_hf(model_dir: str, texts: list[str], max_length: int, batch_size: int | None, device: str = "cpu") -> float:
    import torch
    from transformers import AutoTokenizer, pipeline

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    classify = pipeline("text-classification", model=_hf_model(model_dir, device), tokenizer=tokenizer, device=torch.device(device))
    kwargs = {"truncation": True, "max_length": max_length}
    with torch.inference_mode():
        classify(texts[:4], **kwargs)
        if batch_size is None:
            return _timed(lambda: [classify(t, **kwargs) for t in texts], len(texts))
        return _timed(lambda: classify(texts, batch_size=batch_size, **kwargs), len(texts))


def _int8_model(model_dir: str, threads: int | None = None) -> Any:
    from worker.models import int8

    return int8.encoder(model_dir, "AutoModelForSequenceClassification", threads=threads)


def bench_int8(model_dir: str, texts: list[str], max_length: int, batch_size: int | None) -> float:
    """The baselines' loops on the int8 model: one document per call, or input-order batches padded to their longest."""
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = _int8_model(model_dir)

    def classify(batch: list[str]) -> list[int]:
        encoded = tokenizer(batch, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        return torch.softmax(model(**encoded).logits, dim=-1).argmax(-1).tolist()

    classify(texts[:4])
    if batch_size is None:
        return _timed(lambda: [classify([t]) for t in texts], len(texts))
    return _timed(lambda: [classify(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)], len(texts))


class _RayDataClassifier:
    def __init__(self, model_dir: str, max_length: int, threads: int, device: str = "cpu", int8: bool = False) -> None:
        import torch
        from transformers import AutoTokenizer

        torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = _int8_model(model_dir, threads) if int8 else _hf_model(model_dir, device)
        self.device = device
        self.max_length = max_length

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import torch

        encoded = self.tokenizer(list(batch["text"]), truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
        with torch.inference_mode():
            logits = self.model(**{k: v.to(self.device) for k, v in encoded.items()}).logits
            batch["label"] = logits.argmax(-1).cpu().numpy()
        return batch


def bench_ray_data(model_dir: str, texts: list[str], max_length: int, actors: int, device: str = "cpu", int8: bool = False) -> float:
    import ray

    from worker.engine.executors.ray import ensure_ray

    # Ray starts its workers at niceness 15; the other contenders run in this process at
    # the caller's priority, so on a busy machine Ray Data would be measured at a handicap.
    os.environ.setdefault("RAY_worker_niceness", "0")
    # a Ray this call starts stops with it: left running, its idle processes took about 7% of a core (measured on a
    # 2-vCPU AMD EPYC, 2026-12-04) from every contender timed after it
    started = not ray.is_initialized()
    ensure_ray()
    try:
        threads = max(1, (os.cpu_count() or 1) // actors)
        warm = ray.data.from_items([{"text": t} for t in texts[:8]])
        ctx: dict[str, Any] = {"fn_constructor_args": (model_dir, max_length, threads, device, int8), "batch_size": 64, "concurrency": actors}
        ctx.update({"num_gpus": 1, "num_cpus": 1} if device.startswith("cuda") else {"num_cpus": threads})
        warm.map_batches(_RayDataClassifier, **ctx).materialize()
        dataset = ray.data.from_items([{"text": t} for t in texts])
        return _timed(lambda: dataset.map_batches(_RayDataClassifier, **ctx).materialize(), len(texts))
    finally:
        if started:
            ray.shutdown()


def read_bench_mix(paths: str | list[str], limit: int | None) -> list[str]:
    """Texts of several files interleaved (one from each in turn), so short and long documents mix."""
    if isinstance(paths, str):
        return read_bench_texts(paths, limit)
    sources = [read_bench_texts(p, limit) for p in paths]
    mixed = [text for row in itertools.zip_longest(*sources) for text in row if text is not None]
    return mixed[:limit] if limit is not None else mixed


PEAK_REPEATS = 20  # timed GEMMs per peak measurement; the best one counts
CONTENDERS = ("textworker", "hf_per_doc", "hf_batched", "ray_data")


def run_bench(spec: PipelineSpec, stage_name: str, data: str | list[str], limit: int | None, contenders: list[str],
              progress: Callable[[str], None], precision: str | None = None, rounds: int = 1) -> dict[str, Any]:
    """Measure every contender on the same texts; returns the JSON the CLI prints. With `rounds` > 1 every contender
    is measured that many times, one round after another (so a slow spell of a shared machine falls on all of them),
    and each one's best counts; `samples` in the JSON has every measurement."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from worker.models import precision as precisions

    rounds = max(1, rounds)
    stage_spec = spec.stage(stage_name)
    auto_class = getattr(plugin_for(stage_spec.type).stage, "auto_class", None)
    if auto_class != "AutoModelForSequenceClassification":
        raise ValueError(f"bench measures sequence-classification stages (classify, spam); `{stage_name}` is {stage_spec.type}")
    if precision:
        stage_spec = stage_spec.model_copy(update={"precision": precision})
    model_dir = loading.resolve(stage_spec.model).location
    texts = read_bench_mix(data, limit)
    max_length = stage_spec.max_length
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokens = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]]
    config = AutoConfig.from_pretrained(model_dir)
    device = bench_device()
    choice = precisions.choose(stage_spec.precision, device, model_dir, auto_class)
    int8_run = choice.precision == "int8"
    measure_peak = (lambda: int8_peak_gops(repeats=PEAK_REPEATS)) if int8_run else (lambda: matmul_peak_gflops(repeats=PEAK_REPEATS, device=device))
    peak_samples = [measure_peak()]
    peak_dtype = "int8" if int8_run else ("bf16" if device == "cuda" else "fp32")
    pruned = False
    if int8_run:
        from worker.models import int8

        pruned = bool(int8.build(model_dir, auto_class).get("last_layer_first_token_only"))
    flops = sum(forward_flops(config, n, pruned) for n in tokens) / len(texts)
    samples: dict[str, list[float]] = {}
    loads: list[float] = []

    def textworker_round() -> float:
        timings: dict[str, float] = {}
        rate = bench_textworker(stage_spec, texts, Path(workdir), timings=timings)
        loads.append(timings["load_s"])
        return rate

    runners: dict[str, Callable[[], float]] = {
        "textworker": textworker_round,
        "hf_per_doc": lambda: bench_hf(model_dir, texts, max_length, None, device),
        "hf_batched": lambda: bench_hf(model_dir, texts, max_length, 64, device),
        "ray_data": lambda: bench_ray_data(model_dir, texts, max_length, actors=1, device=device),
        "hf_per_doc_int8": lambda: bench_int8(model_dir, texts, max_length, None),
        "hf_batched_int8": lambda: bench_int8(model_dir, texts, max_length, 64),
        "ray_data_int8": lambda: bench_ray_data(model_dir, texts, max_length, actors=1, int8=True),
    }
    order = list(contenders) + ([f"{name}_int8" for name in contenders if name != "textworker"] if int8_run else [])
    with tempfile.TemporaryDirectory() as workdir:
        for round_number in range(rounds):
            for name in order:
                progress(f"measuring {name} on {len(texts)} documents" + (f" (round {round_number + 1} of {rounds})" if rounds > 1 else ""))
                samples.setdefault(name, []).append(runners[name]())
                progress(f"  {name}: {samples[name][-1]:.1f} docs/s")
            if round_number + 1 < rounds:
                peak_samples.append(measure_peak())
    peak_samples.append(measure_peak())  # once more after the contenders: a peak measured in a slow moment would flatter them
    peak = max(peak_samples)
    rates = {"roofline": peak * 1e9 / flops, **{name: max(values) for name, values in samples.items()}}
    tw = rates.get("textworker")
    ratios = {name: round(tw / rate, 3) for name, rate in rates.items() if tw and name != "textworker"}
    return {
        "model": model_dir, "parameters": _parameters(config), "docs": len(texts), "mean_tokens": round(sum(tokens) / len(tokens), 1),
        "max_length": max_length, "device": device, "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "torch_threads": torch.get_num_threads(), "precision": choice.precision, "precision_reason": choice.reason,
        "peak_dtype": peak_dtype, "matmul_peak_gflops": round(peak, 1), "peak_samples": [round(p, 1) for p in peak_samples], "peaks": _peaks(device, peak, peak_dtype),
        "forward_gflop_per_doc": round(flops / 1e9, 4), "last_layer_first_token_only": pruned, "docs_per_s": {k: round(v, 2) for k, v in rates.items()},
        "rounds": rounds, "samples": {k: [round(v, 2) for v in values] for k, values in samples.items()},
        "textworker_load_s": [round(v, 2) for v in loads],
        "textworker_over": ratios, "roofline_fraction": round(tw / rates["roofline"], 4) if tw else None, "machine": machine(),
    }


def _peaks(device: str, measured: float, dtype: str) -> dict[str, float]:
    """The matmul peaks of this machine: fp32 and int8 on CPU (GFLOP/s, GOP/s), bf16 on CUDA."""
    peaks = {dtype: round(measured, 1)}
    if device == "cpu":
        for name, measure in (("fp32", matmul_peak_gflops), ("int8", _int8_peak_if_available)):
            if name not in peaks:
                value = measure()
                if value:
                    peaks[name] = round(value, 1)
    return peaks


def _int8_peak_if_available() -> float:
    try:
        return int8_peak_gops()
    except ImportError:
        return 0.0


def _parameters(config: Any) -> int:
    """Parameters of the encoder the config describes (embeddings + layers), without building it."""
    h, layers = config.hidden_size, config.num_hidden_layers
    inter = getattr(config, "intermediate_size", 4 * h)
    embeddings = (config.vocab_size + getattr(config, "max_position_embeddings", 512)) * h
    return int(embeddings + layers * (4 * h * h + 2 * h * inter + 9 * h + inter))


def render_bench(result: dict[str, Any]) -> str:
    rates = result["docs_per_s"]
    tw = rates.get("textworker")
    where = result.get("gpu") or f"{result['torch_threads']} torch threads"
    peaks = ", ".join(f"{k} {v}" for k, v in (result.get("peaks") or {result["peak_dtype"]: result["matmul_peak_gflops"]}).items())
    lines = [
        f"machine: {machine_line(result['machine'])}" if result.get("machine") else "machine: not recorded",
        f"bench: {result['docs']} documents, mean {result['mean_tokens']} tokens (max {result['max_length']}), "
        f"{where}, matmul peaks (G(FL)OP/s): {peaks}",
        f"textworker precision: {result.get('precision', 'fp32')} ({result.get('precision_reason', '')})",
        f"model: {result['model']} ({result['parameters'] / 1e6:.1f}M parameters)",
        *([f"each contender measured {result['rounds']} times, interleaved; the best of each counts"] if result.get("rounds", 1) > 1 else []),
        f"{'contender':<16} {'docs/s':>10} {'textworker ÷ this':>18}",
    ]
    for name, rate in rates.items():
        ratio = f"{tw / rate:.2f}x" if tw and name != "textworker" else ""
        lines.append(f"{name:<16} {rate:>10.1f} {ratio:>18}")
    if result.get("textworker_load_s"):
        lines.append(f"textworker's model load, outside the timing: {', '.join(f'{v:.2f}' for v in result['textworker_load_s'])} s")
    if result.get("roofline_fraction") is not None:
        lines.append(f"textworker reaches {100 * result['roofline_fraction']:.1f}% of the {result['peak_dtype']} roofline")
    return "\n".join(lines)

"""int8 versions of encoder models: built once, cached beside the model version.

Two runtimes (`runtime_for`): by default every model gets the ONNX Runtime build this module
makes (the notes below are about it); with `TEXTWORKER_INT8_RUNTIME=openvino`, sequence
classifiers get an OpenVINO build with static activation scales instead
(`worker.models.int8_openvino`: documents of one length bucket share a call, and each still gets
the scores it gets alone; faster for batch jobs, slower near a stream's saturation).

Why ONNX Runtime and not torch's dynamic quantization: measured on 2026-11-30 on a 2-core
AMD EPYC (Zen 3; AVX2, no AVX-512/VNNI) with the default sentiment model (MiniLM, 6
layers) on 1,000 AG News texts, torch fp32 ran 70 docs/s, torch dynamic int8 (fbgemm,
per-tensor) 97 docs/s with 94.8% of labels agreeing with fp32, and ONNX Runtime int8
(fused attention, per-channel weights) 100-104 docs/s with 97.7% agreeing. Per-channel
ONNX Runtime int8 is as fast and closer to fp32. Numbers for a given machine come from
`textworker bench --precision`; `benchmarks/int8_runtimes.py` sets this build beside the
OpenVINO one.

A version's int8 files live in `<version>/int8/`: `model.onnx` and `int8.json` (what it was
built from, with which onnxruntime, and -- once checked -- the quality guard's verdict,
`worker.lifecycle.precision`). A version directory that cannot be written (a read-only
image) gets them under `$TEXTWORKER_CACHE_DIR` (default `~/.cache/textworker`) instead, and
so does a verdict reached later for a build that sits read-only beside its weights (the
build is copied there with it); a current build in the cache is used before one beside.

Activations are quantised dynamically, one scale per tensor computed as it runs. Run on a
padded batch, that scale would cover the batch mates and the padding too, and a document's
scores would move with them (measured: about 0.01-0.02 in probability on the default
models, a label near 0.5 flipping between entry points). `OnnxEncoder` therefore runs each
document on its own, unpadded: the same text gets the same scores in every batch and entry
point, which is what lets `precision: auto` pick a checked build
(`worker.models.precision`). The build records `batch_independent: true`.

Weights use 7 of their 8 bits (`reduce_range`) on x86 CPUs without VNNI: there ONNX Runtime's
u8 x s8 kernels add pairs of products in 16 bits, which can saturate with full-range
weights. Measured 2026-12-01, AMD EPYC (2 vCPUs, AVX2, no VNNI), default models: F1(spam)
on the SMS test set fell 0.014 at int8 with full-range weights and 0.0 with 7-bit ones;
macro-F1 on SST-2 dev fell 0.0091 and 0.0019; docs/s the same within 2%. CPUs with VNNI or
AMX add in 32 bits and keep the full range. `TEXTWORKER_INT8_REDUCE_RANGE=1|0` decides
instead (for a build made on one kind of machine to run on another). The build records
which (`reduce_range`).

Before quantising, the feed-forward products' activations are smoothed: their few outlier
channels are divided out and multiplied into the weights' rows, which are quantised per
channel (`worker.models.smoothing`; `TEXTWORKER_INT8_SMOOTHING=0` builds without). The build
records how many products were smoothed (`smoothed_products`).

The build also writes each fused SkipLayerNormalization back as Add + LayerNormalization
(`split_layer_norms`): ONNX Runtime's fused kernel is several times slower on CPU, and
sessions (`open_session`) keep it from being fused again.

`OnnxEncoder` stands in for the transformers model inside the stages: it is called with
the same tensors and returns the same fields (`logits`, or `start_logits`/`end_logits`).
The classifier stages hand it a whole chunk of unpadded token lists instead (`run_encoded`,
`plans_calls`), which it spreads over its worker threads longest first.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from worker.errors import ModelFormatError
from worker.machine import cpu_flags
from worker.models import smoothing

log = logging.getLogger(__name__)
INT8_DIR = "int8"
ONNX_FILE = "model.onnx"
INFO_FILE = "int8.json"
# The runtimes an int8 build is made for, each with its own directory and model file (`int8_openvino` has the second).
RUNTIMES = ("onnxruntime", "openvino")
DIRS = {"onnxruntime": INT8_DIR, "openvino": "int8-openvino"}
MODEL_FILES = {"onnxruntime": (ONNX_FILE,), "openvino": ("model.xml", "model.bin")}
SEQ_CLASS = "AutoModelForSequenceClassification"
# The Auto classes whose models have an int8 version, and the outputs each returns.
OUTPUTS = {
    "AutoModelForSequenceClassification": ("logits",),
    "AutoModelForQuestionAnswering": ("start_logits", "end_logits"),
}
PER_TOKEN_OUTPUTS = {"start_logits", "end_logits"}  # outputs with one value per input token
# Architectures whose attention ONNX Runtime's transformer optimizer fuses (then quantised as QAttention).
FUSED_TYPES = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "camembert": "bert", "distilbert": "bert"}
PRECISIONS = ("auto", "fp32", "int8", "bf16", "fp16")
MAX_SESSIONS = 4  # one-thread sessions an `OnnxEncoder` opens for its worker threads at most (each holds the weights)
FORMAT = 4  # bumped when the export or how it runs changes: builds of another format are rebuilt (and re-checked)


def available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def runtime_for(auto_class: str | None = None, model_dir: str | Path | None = None, env: dict[str, str] | None = None) -> str:
    """Which runtime a model's int8 build is made for and run on. ONNX Runtime by default; OpenVINO for sequence
    classifiers where `TEXTWORKER_INT8_RUNTIME=openvino` (static activation scales, so documents share a call:
    `worker.models.int8_openvino`, faster on batch jobs and slower near a stream's saturation, see its notes).
    Extractive QA always runs on ONNX Runtime."""
    if auto_class is None and model_dir is not None:
        auto_class = _auto_class_of(Path(model_dir))
    wanted = (os.environ if env is None else env).get("TEXTWORKER_INT8_RUNTIME", "").strip().lower() or "onnxruntime"
    if wanted not in RUNTIMES:
        raise ModelFormatError(f"TEXTWORKER_INT8_RUNTIME is `{wanted}`", hint=f"one of: {', '.join(RUNTIMES)}")
    return "openvino" if wanted == "openvino" and auto_class == SEQ_CLASS else "onnxruntime"


def _auto_class_of(model_dir: Path) -> str | None:
    """The Auto class a version's config names (its first architecture), if it says."""
    try:
        architectures = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return None
    for name in architectures:
        if str(name).endswith("ForQuestionAnswering"):
            return "AutoModelForQuestionAnswering"
        if str(name).endswith("ForSequenceClassification"):
            return SEQ_CLASS
    return None


def _cache_root() -> Path:
    return Path(os.environ.get("TEXTWORKER_CACHE_DIR") or Path.home() / ".cache" / "textworker")


def _writable(directory: Path) -> bool:
    return os.access(directory, os.W_OK)


def _cache_dir(model_dir: Path, runtime: str) -> Path:
    key = hashlib.sha256(f"{model_dir}:{source_fingerprint(model_dir)}".encode()).hexdigest()[:16]
    return _cache_root() / DIRS[runtime] / key


def _runtime(model_dir: Path, runtime: str | None) -> str:
    return runtime or runtime_for(model_dir=model_dir)


def _valid(directory: Path, model_dir: Path, runtime: str) -> dict[str, Any] | None:
    try:
        info = json.loads((directory / INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (not isinstance(info, dict) or info.get("format") != FORMAT or info.get("source") != source_fingerprint(model_dir)
            or not all((directory / name).is_file() for name in MODEL_FILES[runtime])):
        return None
    return dict(info)


def _write_target(model_dir: Path, runtime: str) -> Path:
    """Where a new build goes: beside the weights where that can be written, else in the cache."""
    beside = model_dir / DIRS[runtime]
    if (beside.is_dir() and _writable(beside)) or (not beside.exists() and _writable(model_dir)):
        return beside
    return _cache_dir(model_dir, runtime)


def int8_dir(model_dir: str | Path, runtime: str | None = None) -> Path:
    """Where a version's int8 files are: a current build in the cache (made, or re-checked, where the version's own
    directory is read-only: an image's models) before one beside the weights; with neither, where a build would go.
    `runtime` defaults to the one this machine builds for the model (`runtime_for`)."""
    model_dir = Path(model_dir).resolve()
    runtime = _runtime(model_dir, runtime)
    current = _current(model_dir, runtime)
    return current[0] if current else _write_target(model_dir, runtime)


def _current(model_dir: Path, runtime: str) -> tuple[Path, dict[str, Any]] | None:
    """The directory and record of the build in use: the cache's before the one beside the weights."""
    for directory in (_cache_dir(model_dir, runtime), model_dir / DIRS[runtime]):
        info = _valid(directory, model_dir, runtime)
        if info is not None:
            return directory, info
    return None


def source_fingerprint(model_dir: str | Path) -> str:
    """Names, sizes and modification times of the weights an int8 version is built from."""
    parts = []
    for file in sorted(Path(model_dir).glob("*.safetensors")) + sorted(Path(model_dir).glob("pytorch_model*.bin")):
        stat = file.stat()
        parts.append(f"{file.name}:{stat.st_size}:{int(stat.st_mtime)}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def read_info(model_dir: str | Path, runtime: str | None = None) -> dict[str, Any] | None:
    """The int8 version's record (for `runtime`, default this machine's for the model), or None when there is none
    built from the current weights."""
    model_dir = Path(model_dir).resolve()
    current = _current(model_dir, _runtime(model_dir, runtime))
    return current[1] if current else None


def stale_reason(model_dir: str | Path, runtime: str | None = None) -> str | None:
    """Why a build that is on disk for the version is not used (made by an earlier build format, or from other
    weights), or None when there is no such build."""
    model_dir = Path(model_dir).resolve()
    runtime = _runtime(model_dir, runtime)
    for directory in (_cache_dir(model_dir, runtime), model_dir / DIRS[runtime]):
        try:
            info = json.loads((directory / INFO_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(info, dict):
            continue
        if info.get("format") != FORMAT:
            return f"its int8 build has format {info.get('format')} and this textworker builds format {FORMAT}"
        if info.get("source") != source_fingerprint(model_dir):
            return "its int8 build was made from other weights"
    return None


def write_info(model_dir: str | Path, info: dict[str, Any]) -> None:
    """Record `info` (a quality verdict) with the build; a build whose directory cannot be written is copied to the
    cache first, and the record goes there."""
    model_dir = Path(model_dir).resolve()
    runtime = info.get("runtime") or "onnxruntime"
    directory = int8_dir(model_dir, runtime)
    if not _writable(directory):
        cached = _cache_dir(model_dir, runtime)
        cached.mkdir(parents=True, exist_ok=True)
        for name in MODEL_FILES[runtime]:
            shutil.copy2(directory / name, cached / name)
        directory = cached
    target = directory / INFO_FILE
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, target)


def reduce_range(flags: set[str] | frozenset[str] | None = None, arch: str | None = None, env: dict[str, str] | None = None) -> bool:
    """Whether int8 weights should use 7 bits on this machine: on x86 without VNNI/AMX (see the module notes)."""
    override = (os.environ if env is None else env).get("TEXTWORKER_INT8_REDUCE_RANGE", "").strip().lower()
    if override in ("1", "true", "yes"):
        return True
    if override in ("0", "false", "no"):
        return False
    return kernels(flags, arch) in ("avx512", "avx2", "x86")  # x86 kernels that add u8 x s8 pairs in 16 bits


def kernels(flags: set[str] | frozenset[str] | None = None, arch: str | None = None) -> str:
    """Which kind of ONNX Runtime int8 kernels this machine runs: `amx`, `vnni`, `avx512`, `avx2` (x86), else the
    architecture's name. The kinds round and add differently, so a build's scores, and the verdict of its quality
    check, hold for the kind it was checked on (`worker.models.precision`)."""
    import platform

    machine = (arch or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i686", "x86"):
        return machine or "unknown"
    flags = cpu_flags() if flags is None else flags
    if "amx_int8" in flags:
        return "amx"
    if flags & {"avx512_vnni", "avx_vnni", "avx_vnni_int8"}:
        return "vnni"
    if "avx512bw" in flags:
        return "avx512"
    return "avx2" if "avx2" in flags else "x86"


def supports(auto_class: str) -> bool:
    return auto_class in OUTPUTS


def build(model_dir: str | Path, auto_class: str, *, force: bool = False, runtime: str | None = None) -> dict[str, Any]:
    """The version's int8 build for `runtime` (default: `runtime_for(auto_class)`), made when missing and recorded.
    Cached: a second call with unchanged weights returns the record without rebuilding.

    For ONNX Runtime: export the version to ONNX, fuse attention where the architecture allows, smooth the
    feed-forward products' activations (`worker.models.smoothing`), quantise the weights to int8 (per channel;
    activations quantised per document as it runs). For OpenVINO: `worker.models.int8_openvino.build`."""
    if not supports(auto_class):
        raise ModelFormatError(f"no int8 version for {auto_class} models", hint="use precision: fp32")
    if not available():
        raise ModelFormatError("int8 needs onnxruntime", hint="pip install onnxruntime onnx")
    runtime = runtime or runtime_for(auto_class)
    if runtime == "openvino" and auto_class != SEQ_CLASS:
        raise ModelFormatError(f"the OpenVINO int8 build covers sequence classifiers, not {auto_class}", hint="TEXTWORKER_INT8_RUNTIME=onnxruntime")
    info = None if force else read_info(model_dir, runtime)
    if info is not None:
        return info
    if runtime == "openvino":
        from worker.models import int8_openvino

        if not int8_openvino.available():
            raise ModelFormatError("the OpenVINO int8 build needs openvino and nncf", hint="pip install openvino nncf, or unset TEXTWORKER_INT8_RUNTIME")
        return int8_openvino.build(Path(model_dir), _write_target(Path(model_dir).resolve(), runtime))
    started = time.perf_counter()
    target = _write_target(Path(model_dir).resolve(), runtime)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".int8-", dir=target.parent))
    try:
        exported = _export(Path(model_dir), auto_class, work)
        inputs = exported.pop("inputs")
        exported.update(smoothing.smooth(work / "fp32.onnx", Path(model_dir), inputs) if smoothing.enabled() else {"smoothed_products": 0})
        from onnxruntime.quantization import QuantType, quantize_dynamic

        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantiser logs a generic pre-processing hint on the root logger; the graph is already optimised
        seven_bits = reduce_range()
        try:
            quantize_dynamic(work / "fp32.onnx", work / ONNX_FILE, weight_type=QuantType.QInt8, per_channel=True, reduce_range=seven_bits,
                             extra_options={"DefaultTensorType": 1})  # 1 = FLOAT: the fused ops' outputs have no inferred type
        finally:
            root.setLevel(level)
        (work / "fp32.onnx").unlink()
        for extra in work.glob("*.data"):
            extra.unlink()
        import onnxruntime

        info = {"format": FORMAT, "source": source_fingerprint(model_dir), "auto_class": auto_class, **exported,
                "runtime": "onnxruntime", "onnxruntime": onnxruntime.__version__, "reduce_range": seven_bits,
                "weights": "int8 per channel (QInt8" + (", 7-bit range)" if seven_bits else ")"), "activations": "uint8, per document (dynamic)", "batch_independent": True,
                "built_at": datetime.now(UTC).isoformat(timespec="seconds"), "build_seconds": round(time.perf_counter() - started, 1),
                "quality": None}
        (work / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        os.replace(work, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("int8 version built", extra={"model": str(model_dir), "seconds": info["build_seconds"], **exported})
    return info


# ONNX Runtime's session-time fusions that the build undoes on purpose (see `_split_skip_layer_norms`).
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


def open_session(path: str | Path, options: Any = None) -> Any:
    """An ONNX Runtime CPU session on an int8 build, with the fusions the build avoids kept off."""
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                        disabled_optimizers=list(DISABLED_OPTIMIZERS))


CLS_ONLY_TYPES = ("bert", "roberta", "xlm-roberta", "camembert")


def _export(model_dir: Path, auto_class: str, work: Path, optimize: bool = True) -> dict[str, Any]:
    """`work/fp32.onnx` from the version (eager attention, so the optimizer can fuse it; `optimize=False` leaves the
    graph as exported, for runtimes that fuse on their own).

    A sequence classifier's head reads the first token only, so its last encoder layer is
    exported for that token alone (keys and values still come from every token): the same
    logits for about an eighth fewer FLOPs on a 6-layer model. The export is checked
    against the transformers model and falls back to the whole layer on any mismatch."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = getattr(transformers, auto_class).from_pretrained(model_dir, attn_implementation="eager", use_safetensors=True).eval()
    pair = ["a pair", "of texts"] if auto_class == "AutoModelForQuestionAnswering" else None
    sample = tokenizer(["an example sentence", "a second, somewhat longer example sentence"], pair, return_tensors="pt", padding=True)
    accepted = inspect.signature(model.forward).parameters
    names = [name for name in ("input_ids", "token_type_ids", "attention_mask") if name in sample and name in accepted]
    outputs = list(OUTPUTS[auto_class])
    axes = {**{name: {0: "batch", 1: "tokens"} for name in names}, **{name: {0: "batch"} for name in outputs}}
    if auto_class == "AutoModelForQuestionAnswering":
        axes.update({name: {0: "batch", 1: "tokens"} for name in outputs})
    config = model.config
    with torch.inference_mode():
        reference = [getattr(model(**{n: sample[n] for n in names}), name) for name in outputs]
    cls_only = auto_class == "AutoModelForSequenceClassification" and config.model_type in CLS_ONLY_TYPES
    for attempt in ((True, False) if cls_only else (False,)):
        wrapped = _ClsOnly(model, names) if attempt else _Whole(model, names, outputs)
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes on shape-dependent Python branches: the graph is checked below
            torch.onnx.export(wrapped.eval(), tuple(sample[name] for name in names), str(work / "raw.onnx"), input_names=names,
                              output_names=outputs, dynamic_axes=axes, opset_version=17, dynamo=False)
        if not attempt or _matches(work / "raw.onnx", sample, names, reference):
            cls_only = attempt
            break
        log.warning("first-token export of the last layer differs from the model; exporting the whole layer", extra={"model": str(model_dir)})
        model = getattr(transformers, auto_class).from_pretrained(model_dir, attn_implementation="eager", use_safetensors=True).eval()
    fused = False
    if optimize and config.model_type in FUSED_TYPES:
        from onnxruntime.transformers import optimizer

        optimized = optimizer.optimize_model(str(work / "raw.onnx"), model_type=FUSED_TYPES[config.model_type],
                                             num_heads=config.num_attention_heads, hidden_size=config.hidden_size)
        fused = bool(optimized.get_fused_operator_statistics().get("Attention"))
        optimized.save_model_to_file(str(work / "fp32.onnx"))
        (work / "raw.onnx").unlink()
        unfused = _split_skip_layer_norms(work / "fp32.onnx")
    else:
        (work / "raw.onnx").rename(work / "fp32.onnx")
        unfused = 0
    return {"fused_attention": fused, "last_layer_first_token_only": cls_only, "split_layer_norms": unfused, "inputs": names}


def _split_skip_layer_norms(path: Path) -> int:
    """Replace each fused SkipLayerNormalization (residual add, bias, LayerNorm in one operator) with Add nodes and the
    standard LayerNormalization, in place; returns how many. The same arithmetic to float rounding, and far faster:
    ONNX Runtime 1.32's SkipLayerNormalization kernel took 97 us per call on a 55 x 384 input where Add + Add +
    LayerNormalization took 19 (one thread, Intel Xeon with AVX-512, 2026-12-01). Sessions keep ONNX Runtime from
    fusing them back (`DISABLED_OPTIMIZERS`)."""
    import onnx

    model = onnx.load(str(path))
    nodes: list[Any] = []
    count = 0
    for node in model.graph.node:
        outputs = list(node.output) + [""] * (4 - len(node.output))
        if node.op_type != "SkipLayerNormalization" or outputs[1] or outputs[2]:  # mean / inverse std wanted: leave it
            nodes.append(node)
            continue
        count += 1
        epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-12)
        value, skip, gamma = node.input[0], node.input[1], node.input[2]
        beta = node.input[3] if len(node.input) > 3 else ""
        bias = node.input[4] if len(node.input) > 4 else ""
        if bias:
            nodes.append(onnx.helper.make_node("Add", [value, bias], [f"{node.name}__biased"], name=f"{node.name}__bias"))
            value = f"{node.name}__biased"
        summed = outputs[3] or f"{node.name}__sum"
        nodes.append(onnx.helper.make_node("Add", [value, skip], [summed], name=f"{node.name}__add"))
        nodes.append(onnx.helper.make_node("LayerNormalization", [summed, gamma] + ([beta] if beta else []), [outputs[0]],
                                           name=f"{node.name}__norm", axis=-1, epsilon=epsilon))
    if count:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        onnx.save(model, str(path))
    return count


def _matches(path: Path, sample: Any, names: list[str], reference: list[Any], tolerance: float = 1e-3) -> bool:
    import numpy as np
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {name: sample[name].numpy() for name in names})
    return all(np.abs(g - r.numpy()).max() <= tolerance for g, r in zip(got, reference, strict=True))


def _module() -> Any:
    import torch

    return torch.nn.Module


class _Whole(_module()):  # type: ignore[misc]
    """The model with positional inputs and a tuple of its outputs (what the exporter traces)."""

    def __init__(self, model: Any, names: list[str], outputs: list[str]) -> None:
        super().__init__()
        self.inner, self.names, self.outputs = model, names, outputs

    def forward(self, *args: Any) -> Any:
        result = self.inner(**dict(zip(self.names, args, strict=True)))
        return tuple(getattr(result, name) for name in self.outputs)


class _ClsOnly(_module()):  # type: ignore[misc]
    """A BERT/RoBERTa sequence classifier whose last layer computes the first token's row only."""

    def __init__(self, model: Any, names: list[str]) -> None:
        import torch

        super().__init__()
        self.inner, self.names = model, names
        self.base = getattr(model, model.base_model_prefix)
        layers = self.base.encoder.layer
        self.last = layers[-1]
        self.base.encoder.layer = torch.nn.ModuleList(list(layers)[:-1])

    def forward(self, *args: Any) -> Any:
        import torch

        given = dict(zip(self.names, args, strict=True))
        hidden = self.base(**given).last_hidden_state
        mask = given["attention_mask"]
        attention = self.last.attention
        heads, size = attention.self.num_attention_heads, attention.self.attention_head_size
        first = hidden[:, :1]

        def split(x: Any) -> Any:
            return x.view(x.shape[0], -1, heads, size).transpose(1, 2)

        query, key, value = split(attention.self.query(first)), split(attention.self.key(hidden)), split(attention.self.value(hidden))
        blocked = (1.0 - mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        scores = torch.matmul(query, key.transpose(-1, -2)) * size**-0.5 + blocked
        context = torch.matmul(torch.softmax(scores, dim=-1), value).transpose(1, 2).reshape(hidden.shape[0], 1, heads * size)
        attended = attention.output(context, first)
        out = self.last.output(self.last.intermediate(attended), attended)
        pooler = getattr(self.base, "pooler", None)
        if pooler is not None:  # BERT: pooler (first token) -> dropout -> classifier
            return (self.inner.classifier(self.inner.dropout(pooler(out))),)
        return (self.inner.classifier(out),)  # RoBERTa: the head reads the first token itself


def encoder(model_dir: str | Path, auto_class: str, threads: int | None = None, max_tokens: int | None = None) -> Any:
    """The version's int8 build, built when missing, as a model the stages call: on the runtime this machine builds
    for the model (`runtime_for`). `max_tokens` (the caller's `max_length`) bounds the call shapes the OpenVINO
    build prepares as it loads."""
    runtime = runtime_for(auto_class)
    build(model_dir, auto_class, runtime=runtime)
    if runtime == "openvino":
        from worker.models import int8_openvino

        return int8_openvino.OpenVinoEncoder(model_dir, auto_class, threads=threads, max_tokens=max_tokens)
    return OnnxEncoder(model_dir, auto_class, threads=threads)


class EncoderFace:
    """What the stages use of a transformers model, for int8 runners that stand in for one."""

    training = False
    device: Any = None
    _hooks: list[Any]

    def _run_hooks(self, given: dict[str, Any]) -> None:
        for hook in self._hooks:
            hook(self, (), given)

    def register_forward_pre_hook(self, hook: Any, with_kwargs: bool = True) -> Any:
        """Like `torch.nn.Module`'s (always with keyword arguments): `hook(module, (), inputs)` before each call."""
        self._hooks.append(hook)
        return SimpleNamespace(remove=lambda: self._hooks.remove(hook))

    def parameters(self) -> Any:
        import torch

        yield torch.zeros(1)

    def eval(self) -> Any:
        return self

    def train(self, mode: bool = True) -> Any:
        return self

    def to(self, *args: Any, **kwargs: Any) -> Any:
        return self


class OnnxEncoder(EncoderFace):
    """An int8 ONNX Runtime session that the stages call like the transformers model it replaces."""

    def __init__(self, model_dir: str | Path, auto_class: str, threads: int | None = None) -> None:
        import torch
        import transformers

        self.config = transformers.AutoConfig.from_pretrained(model_dir)
        # Documents run one per call (see the module notes), and one document's matrices are small: split over threads
        # inside each operator, the threads spend much of their time waiting on each other. So a batch runs `threads`
        # documents at once, each on one thread (ONNX Runtime's run() releases the GIL); a lone document still gets
        # every thread. Measured 2026-12-01, AMD EPYC (2 vCPUs, AVX2), default sentiment model, 1,000 AG News texts:
        # 2 threads per call 134 docs/s, 1 thread per call on 2 documents at once 176 docs/s, scores identical.
        self.workers = max(1, threads or torch.get_num_threads())
        self._path = str(int8_dir(model_dir, "onnxruntime") / ONNX_FILE)
        self.session = self._session(self.workers)
        self.inputs = [item.name for item in self.session.get_inputs()]
        self.outputs = list(OUTPUTS[auto_class])
        # Worker threads run on one-thread sessions of their own (up to `MAX_SESSIONS`; more threads share them in
        # turn: each session holds its own copy of the weights), made here with the pool so the first batch waits for
        # neither. Measured 2026-12-04, AMD EPYC family 25 model 1 (2 vCPUs, AVX2), ONNX Runtime 1.32, default
        # sentiment model, 1,000 AG News texts, ten interleaved passes: median 243 docs/s with a session per thread,
        # 237 with both threads on one; each extra session took 27 MB.
        self._sessions = [self._session(1) for _ in range(min(self.workers, MAX_SESSIONS))] if self.workers > 1 else [self.session]
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="textworker-int8") if self.workers > 1 else None
        # A runner that takes a chunk's documents unpadded and makes its own calls (`run_encoded`; the classifier
        # stages check this): one document per call already, so the stage's padded batches would only add work.
        self.plans_calls = not any(name in PER_TOKEN_OUTPUTS for name in self.outputs)
        self.device = torch.device("cpu")
        self.precision = "int8"
        self._hooks: list[Any] = []
        self._warm_up()

    def _session(self, threads: int) -> Any:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle pool threads sleep rather than spin: a pipeline holds one session per stage, beside the sink, the Kafka
        # client and often the broker and database on the same cores, and a spinning pool takes the CPU the next
        # stage needs. Measured 2026-12-01, AMD EPYC (2 vCPUs, AVX2), pipelines/stream.yaml at 20 docs/s into
        # PostgreSQL (two runs each): spinning p50 80/77 ms, p95 156/143 ms; sleeping p50 41/41 ms, p95 65/64 ms.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return open_session(self._path, options)

    def _feed(self, input_ids: Any, token_type_ids: Any = None) -> dict[str, Any]:
        """One document's inputs (unpadded token ids) as a one-row call."""
        import numpy as np

        ids = np.asarray(input_ids, dtype=np.int64).reshape(1, -1)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if "token_type_ids" in self.inputs:
            feed["token_type_ids"] = np.zeros_like(ids) if token_type_ids is None else np.asarray(token_type_ids, dtype=np.int64).reshape(1, -1)
        return {name: feed[name] for name in self.inputs}

    def _warm_up(self, tokens: int = 64) -> None:
        """One call in every session as it loads: the first run of a session sets up its memory, which the first
        batch would otherwise wait for."""
        limit = int(getattr(self.config, "max_position_embeddings", tokens) or tokens)
        feed = self._feed([int(getattr(self.config, "pad_token_id", 0) or 0) + 1] * max(2, min(tokens, limit - 2)))
        for session in {id(s): s for s in [self.session, *self._sessions]}.values():
            session.run(self.outputs, feed)

    def _run_each(self, feeds: Sequence[dict[str, Any]]) -> list[list[Any]]:
        """Each call's outputs, in order. Several calls run side by side, one per worker thread, each on its own
        session; the longest go first and every thread takes the next call as it finishes one, so the threads end
        together. A lone call runs on every thread."""
        if self._pool is None or len(feeds) < 2:
            return [self.session.run(self.outputs, feed) for feed in feeds]
        results: list[list[Any]] = [[] for _ in feeds]
        order = sorted(range(len(feeds)), key=lambda i: -feeds[i]["input_ids"].shape[1])
        claim = itertools.count()  # next() on it is atomic under the GIL: each call is taken once

        def work(session: Any) -> None:
            while (position := next(claim)) < len(order):
                index = order[position]
                results[index] = session.run(self.outputs, feeds[index])

        for future in [self._pool.submit(work, self._sessions[k % len(self._sessions)]) for k in range(self.workers)]:
            future.result()
        return results

    def run_encoded(self, input_ids: Sequence[Sequence[int]], token_type_ids: Sequence[Sequence[int]] | None = None,
                    max_rows: int | None = None, hooks: bool = True) -> tuple[dict[str, Any], list[tuple[list[int], int]]]:
        """Outputs (name -> array, one row per document, input order) for unpadded token lists, and the calls made
        (members, width): one call per document, on its real tokens (`max_rows` is accepted for the interface and
        has nothing to bound). The stages hand a whole chunk here at once (`plans_calls`), so the worker threads stay
        busy across it with one wait at the end instead of one per padded batch. Measured 2026-12-04, AMD EPYC family
        25 model 1 (2 vCPUs, AVX2), default sentiment model, 1,000 AG News texts file -> SQLite, six interleaved
        rounds: median 213 docs/s (best 238), against 199 (best 206) for the stage's padded batches through
        `forward` as it ran before, on one session shared by both threads and made at the first batch."""
        import numpy as np

        feeds = [self._feed(ids, None if token_type_ids is None else token_type_ids[row]) for row, ids in enumerate(input_ids)]
        if hooks:
            for feed in feeds:
                self._run_hooks({"input_ids": feed["input_ids"], "attention_mask": feed["attention_mask"]})
        results = self._run_each(feeds)
        outputs = {name: (np.concatenate([values[position] for values in results], axis=0) if results
                          else np.zeros((0, self.config.num_labels), dtype=np.float32))
                   for position, name in enumerate(self.outputs)}
        return outputs, [([row], len(ids)) for row, ids in enumerate(input_ids)]

    def forward(self, input_ids: Any = None, attention_mask: Any = None, token_type_ids: Any = None, **_: Any) -> Any:
        """The outputs for a padded batch, computed one document at a time on its real tokens only (see the module
        notes): per-token outputs (QA's start/end logits) get -10000 at padding positions."""
        import numpy as np
        import torch

        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        self._run_hooks(given)
        if given["attention_mask"] is None:
            given["attention_mask"] = torch.ones_like(input_ids)
        ids = given["input_ids"].cpu().numpy()
        types = None if given["token_type_ids"] is None else given["token_type_ids"].cpu().numpy()
        mask = given["attention_mask"].cpu().numpy().astype(bool)
        rows, width = mask.shape
        kept = [np.flatnonzero(mask[row]) for row in range(rows)]
        results = self._run_each([self._feed(ids[row, keep], None if types is None else types[row, keep]) for row, keep in enumerate(kept)])
        collected: dict[str, list[Any]] = {name: [] for name in self.outputs}
        for keep, values in zip(kept, results, strict=True):
            for name, value in zip(self.outputs, values, strict=True):
                if name in PER_TOKEN_OUTPUTS:
                    full = np.full((1, width, *value.shape[2:]), -10000.0, dtype=value.dtype)
                    full[:, keep] = value
                    value = full
                collected[name].append(value)
        if not rows:  # an empty batch: empty outputs of the right shape
            return SimpleNamespace(**{name: torch.zeros((0, width) if name in PER_TOKEN_OUTPUTS else (0, self.config.num_labels))
                                      for name in self.outputs})
        return SimpleNamespace(**{name: torch.from_numpy(np.concatenate(parts, axis=0)) for name, parts in collected.items()})

    __call__ = forward

"""Activation smoothing for the int8 build: move the feed-forward inputs' outlier channels into the weights.

The int8 build quantises activations with one scale per tensor. A transformer's feed-forward
inputs (the attention block's LayerNorm output and the GELU output) carry a few channels far
larger than the rest, so that one scale leaves the ordinary channels only a handful of
levels. For a product `X @ W`, per input channel `j`, `X[:, j] / s[j]` times `s[j] * W[j, :]`
gives the same result in fp32; with `s[j] = max|X[:, j]| ** alpha / max|W[j, :]| ** (1 - alpha)`
the activation's channels come out nearly level, and the weights, quantised per output
channel, absorb the spread (the method of SmoothQuant, Xiao et al., 2022). The division is a
`Mul` node before the product; the scaling of the weight's rows is done once, here.

The activation maxima come from running the fp32 graph over calibration texts: the package's
seed texts (`worker/seed`: reviews, short messages, demo documents), which cover the kinds of
text the stages see. Outlier channels are a property of the model more than of the text.

Measured 2026-12-01 on an Intel Xeon (2 vCPUs, AVX-512 with VNNI, AMX), default sentiment
model, SST-2 dev (872 sentences), int8 against fp32 with per-document dynamic quantisation:
labels agreeing 97.7% unsmoothed, 99.2% with the feed-forward products smoothed at
alpha 0.8 (mean change in the positive probability 0.019 -> 0.009); alpha 0.7 and 0.9 gave
98.3% and 98.6%; smoothing the attention inputs too gave 98.7%; speed on one thread 2-3%
lower (the `Mul` nodes).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
ALPHA = 0.8
SCALE_LIMITS = (1e-2, 1e2)  # clip each channel's factor: a dead channel must not blow a weight row up
CALIBRATION_LIMIT = 256
CALIBRATION_MAX_TOKENS = 128
SEED_DIR = Path(__file__).resolve().parent.parent / "seed"


def enabled(env: dict[str, str] | None = None) -> bool:
    """Smoothing is on unless `TEXTWORKER_INT8_SMOOTHING=0` (for measuring the build without it)."""
    value = (os.environ if env is None else env).get("TEXTWORKER_INT8_SMOOTHING", "1").strip().lower()
    return value not in ("0", "false", "no", "off")


def calibration_texts(limit: int = CALIBRATION_LIMIT, seed_dir: Path = SEED_DIR) -> list[str]:
    """Up to `limit` seed texts, taken in turn from each seed file so every kind is represented."""
    sources: list[list[str]] = []
    sentiment = seed_dir / "sentiment.tsv"
    if sentiment.exists():
        sources.append([line.split("\t")[0] for line in sentiment.read_text(encoding="utf-8").splitlines() if line.strip()])
    spam = seed_dir / "spam.tsv"
    if spam.exists():
        sources.append([line.split("\t", 1)[-1] for line in spam.read_text(encoding="utf-8").splitlines() if line.strip()])
    docs = seed_dir / "sample_docs.jsonl"
    if docs.exists():
        found = []
        for line in docs.read_text(encoding="utf-8").splitlines():
            try:
                text = json.loads(line).get("text")
            except (ValueError, AttributeError):
                continue
            if isinstance(text, str) and text.strip():
                found.append(text)
        sources.append(found)
    texts: list[str] = []
    for i in range(max((len(s) for s in sources), default=0)):
        for source in sources:
            if i < len(source) and len(texts) < limit:
                texts.append(source[i])
    return texts


def _ffn_products(model: Any, weights: dict[str, Any]) -> dict[str, list[Any]]:
    """The feed-forward MatMuls with a constant 2-D weight, by their activation input: the one feeding a GELU
    (the block's first product) and the one reading a GELU's output (its second)."""
    producers = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_inputs = {item.name for item in model.graph.input}
    found: dict[str, list[Any]] = {}
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2 or node.input[1] not in weights or len(weights[node.input[1]].dims) != 2:
            continue
        producer = producers.get(node.input[0])
        reads_gelu = producer is not None and "Gelu" in producer.op_type
        feeds_gelu = any("Gelu" in c.op_type for c in consumers.get(node.output[0], []))
        if (reads_gelu or feeds_gelu) and node.input[0] not in graph_inputs:
            found.setdefault(node.input[0], []).append(node)
    # a weight shared with another node cannot be rescaled for this product alone
    uses = Counter(name for node in model.graph.node for name in set(node.input))
    return {act: nodes for act, nodes in found.items() if all(uses[n.input[1]] == 1 for n in nodes)}


def _activation_maxima(model: Any, activations: list[str], feeds: Iterable[dict[str, Any]]) -> dict[str, Any]:
    import numpy as np
    import onnx
    import onnxruntime

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in activations:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    maxima: dict[str, Any] = {}
    for feed in feeds:
        for name, value in zip(activations, session.run(activations, feed), strict=True):
            channel = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            maxima[name] = channel if name not in maxima else np.maximum(maxima[name], channel)
    return maxima


def _same_outputs(before: Any, after: Any, feeds: list[dict[str, Any]], tolerance: float = 1e-3) -> bool:
    """Whether the smoothed fp32 graph gives the original's outputs (it should, to rounding)."""
    import numpy as np
    import onnxruntime

    sessions = [onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]) for m in (before, after)]
    for feed in feeds:
        for old, new in zip(*(s.run(None, feed) for s in sessions), strict=True):
            if np.abs(old - new).max() > tolerance * (1.0 + np.abs(old).max()):
                return False
    return True


def smooth(path: Path, model_dir: Path, names: list[str], alpha: float = ALPHA, texts: list[str] | None = None) -> dict[str, Any]:
    """Smooth the feed-forward products of the ONNX graph at `path` in place (see the module notes); returns what was
    done for the build's record. `names` are the graph's inputs. Leaves the graph as it was when there is nothing
    to smooth or no calibration text."""
    import numpy as np
    import onnx
    import transformers
    from onnx import numpy_helper

    model = onnx.load(str(path))
    weights = {init.name: init for init in model.graph.initializer}
    products = _ffn_products(model, weights)
    texts = calibration_texts() if texts is None else texts
    if not products or not texts:
        return {"smoothed_products": 0}
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    feeds = []
    for text in texts:
        encoded = tokenizer(text, truncation=True, max_length=CALIBRATION_MAX_TOKENS, return_tensors="np")
        encoded.setdefault("attention_mask", np.ones_like(encoded["input_ids"]))
        feeds.append({name: encoded[name].astype(np.int64) if name in encoded else np.zeros_like(encoded["input_ids"], dtype=np.int64)
                      for name in names})
    activations = sorted(products)
    maxima = _activation_maxima(model, activations, feeds)
    low, high = SCALE_LIMITS
    muls = []
    for act in activations:
        nodes = products[act]
        rows = np.max([np.abs(numpy_helper.to_array(weights[n.input[1]])).max(axis=1) for n in nodes], axis=0)
        scale = np.clip(np.maximum(maxima[act], 1e-5) ** alpha / np.maximum(rows, 1e-5) ** (1 - alpha), low, high).astype(np.float32)
        inverse = f"{act}__smooth_inverse"
        model.graph.initializer.append(numpy_helper.from_array((1.0 / scale).astype(np.float32), inverse))
        smoothed = f"{act}__smoothed"
        muls.append((act, onnx.helper.make_node("Mul", [act, inverse], [smoothed], name=f"{act}__smooth")))
        for node in nodes:
            weight = numpy_helper.to_array(weights[node.input[1]]) * scale[:, None]
            weights[node.input[1]].CopyFrom(numpy_helper.from_array(weight.astype(np.float32), node.input[1]))
            node.input[0] = smoothed
    ordered = list(model.graph.node)
    del model.graph.node[:]
    for node in ordered:  # each Mul right after the node that makes its activation: the graph stays in topological order
        model.graph.node.append(node)
        model.graph.node.extend(mul for act, mul in muls if act in node.output)
    if not _same_outputs(onnx.load(str(path)), model, feeds[:8]):
        log.warning("smoothing changed the fp32 outputs; the int8 build goes without it", extra={"model": str(model_dir)})
        return {"smoothed_products": 0}
    onnx.save(model, str(path))
    return {"smoothed_products": sum(len(products[a]) for a in activations), "smoothing_alpha": alpha, "calibration_texts": len(texts)}

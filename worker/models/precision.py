"""Which precision a stage runs at (the stage spec's `precision`), and loading a model at it.

- `auto`: int8 on CPU when the version's int8 build passed its quality check
  (`worker.lifecycle.precision`) on a machine with the same kind of int8 kernels as this
  one (AVX2, AVX-512, VNNI, AMX: they round differently, and a check on one kind does not
  hold for another) and gives every document the same scores whatever its batch mates,
  bf16 on CUDA, fp32 otherwise; the reason is logged. int8 builds give each document
  the scores it gets alone (ONNX Runtime's runs each document on its own,
  `worker.models.int8`; OpenVINO's fixes every activation scale and pads each document
  to its length bucket, `worker.models.int8_openvino`), so a checked build qualifies; one that
  does not record `batch_independent` (an older format) stays on fp32, because a
  document's scores would then depend on the batch it lands in and entry points would
  write different rows.
- `fp32`, `bf16`, `fp16`: the transformers model with its weights in that dtype
  (fp16 only on CUDA, where it is fast).
- `int8`: the version's int8 build, built on first use when missing; on CPU only, for
  classification and extractive-QA models: ONNX Runtime, or OpenVINO for sequence
  classifiers with `TEXTWORKER_INT8_RUNTIME=openvino` (`worker.models.int8.runtime_for`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.errors import ModelFormatError
from worker.models import int8

log = logging.getLogger(__name__)
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True)
class Choice:
    precision: str  # fp32 | bf16 | fp16 | int8
    reason: str


def choose(requested: str, device: str, model_dir: str | Path | None, auto_class: str) -> Choice:
    """The precision to run at and why (raises for a combination that cannot run)."""
    cuda = device.startswith("cuda")
    if requested == "auto":
        if cuda:
            return Choice("bf16", "auto: bf16 on CUDA")
        return _auto_cpu(model_dir, auto_class)
    if requested == "int8":
        if cuda:
            raise ModelFormatError("precision int8 runs on CPU (OpenVINO or ONNX Runtime)", hint="use bf16 or fp16 on CUDA, or device: cpu")
        if not int8.supports(auto_class):
            raise ModelFormatError(f"precision int8 covers classification and extractive-QA models, not {auto_class}",
                                   hint="use precision: fp32")
        if model_dir is None:
            raise ModelFormatError("precision int8 needs a local model directory", hint="download the model first")
        return Choice("int8", "requested")
    if requested == "fp16" and not cuda:
        raise ModelFormatError("precision fp16 runs on CUDA only", hint="use fp32, bf16 or int8 on CPU")
    if requested not in DTYPES:
        raise ModelFormatError(f"unknown precision `{requested}`", hint=f"one of: {', '.join(int8.PRECISIONS)}")
    return Choice(requested, "requested")


def _auto_cpu(model_dir: str | Path | None, auto_class: str) -> Choice:
    if not int8.supports(auto_class):
        return Choice("fp32", "auto: this model kind has no int8 version")
    if model_dir is None:
        return Choice("fp32", "auto: no local model directory to hold an int8 version")
    if not int8.available():
        return Choice("fp32", "auto: onnxruntime is not installed")
    info = int8.read_info(model_dir)
    if info is None:
        stale = int8.stale_reason(model_dir)
        if stale:
            return Choice("fp32", f"auto: {stale} (rebuild and check it: textworker models quantize PIPELINE --stage NAME)")
        return Choice("fp32", "auto: no int8 version of this model version (build and check one: textworker models quantize)")
    quality = info.get("quality")
    if not quality:
        return Choice("fp32", "auto: the int8 version has not been checked against fp32 yet (textworker models quantize)")
    verdict = f"{quality['metric']} {quality['fp32']} at fp32, {quality['int8']} at int8"
    if not quality.get("passed"):
        return Choice("fp32", f"auto: the int8 version failed its quality check ({verdict}; drop over {quality['tolerance']})")
    checked_on, here = quality.get("kernels"), int8.kernels()
    if checked_on and checked_on != here:
        return Choice("fp32", f"auto: the int8 version was checked on a machine with {checked_on} int8 kernels and this one has {here}, "
                              "whose scores differ; check it here: textworker models quantize PIPELINE --stage NAME --data FILE")
    if not info.get("batch_independent"):
        return Choice("fp32", f"auto: the int8 version passed its quality check ({verdict}) but quantises activations per batch, "
                              "so a document's scores would depend on its batch mates; rebuild it (textworker models quantize --force)")
    if quality.get("held_out") is False:
        return Choice("int8", f"auto: the int8 version passed its quality check on its training rows only ({verdict}); "
                              "check it on held-out data: textworker models quantize PIPELINE --stage NAME --data FILE")
    return Choice("int8", f"auto: the int8 version passed its quality check ({verdict})")


def load(transformers_class: Any, auto_class: str, ref: Any, revision: str | None, device: str, choice: Choice,
         threads: int | None = None, max_tokens: int | None = None) -> Any:
    """The model of `ref` at the chosen precision, on `device`, in eval mode. `max_tokens`: the longest input the
    caller sends (its `max_length`), which bounds the call shapes an int8 build prepares as it loads."""
    import torch

    from worker.models import loading

    if choice.precision == "int8":
        return int8.encoder(ref.location, auto_class, threads=threads, max_tokens=max_tokens)
    model = loading.load_pretrained(transformers_class, ref, revision)
    if choice.precision != "fp32":
        model = model.to(getattr(torch, DTYPES[choice.precision]))
    return model.to(device).eval()


def local_dir(ref: Any) -> str | None:
    return ref.location if getattr(ref, "local", False) or Path(ref.location).is_dir() else None

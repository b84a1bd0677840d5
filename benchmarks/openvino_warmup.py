"""What preparing the call shapes at load buys the OpenVINO int8 build: a fresh build with and without it, in one run.

The CPU plugin prepares its kernels for every new input shape on first use, in each inference
stream, so a freshly loaded build runs its first documents slower than later ones.
`OpenVinoEncoder.warm_up` runs every shape the call planner can make (each length bucket up to
`TEXTWORKER_OPENVINO_WARM_TOKENS`, each power of two up to the row limit) once per stream
while the model loads. This script loads the stage afresh in interleaved rounds, with the
warm-up on and off, and times, for each:

- the load (with the warm-up when on);
- the first pass over the texts (chunks of 512, as `textworker bench` runs them) and a
  second pass on the same build;
- a whole `textworker bench`-style engine run (a JSONL file through the engine into SQLite,
  model loaded outside the timing).

Every load runs in a new interpreter: oneDNN keeps the kernels it prepared for the life of a
process, so a build loaded after another one in the same process starts warm either way (which
is also why `textworker bench --rounds N` sees cold shapes in its first round only).

Best of the rounds for each; the ratios are warm-up on over off.

    TEXTWORKER_INT8_RUNTIME is set to openvino by the script.
    .venv/bin/python benchmarks/openvino_warmup.py [--pipeline pipelines/demo.yaml] [--stage sentiment]
        [--data ../shared/data/ag_news/test.tsv] [--limit 1000] [--rounds 3] [--json]
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(Path(__file__).resolve().parent))  # spawned children import this script by its name

MODES = {"warm_up": None, "no_warm_up": "0"}  # TEXTWORKER_OPENVINO_WARM_TOKENS per mode (None: the default)


def _set_mode(mode: str) -> None:
    os.environ["TEXTWORKER_INT8_RUNTIME"] = "openvino"
    if MODES[mode] is None:
        os.environ.pop("TEXTWORKER_OPENVINO_WARM_TOKENS", None)
    else:
        os.environ["TEXTWORKER_OPENVINO_WARM_TOKENS"] = MODES[mode]


def _passes(mode: str, spec: Any, texts: list[str], chunk: int) -> tuple[float, float, float]:
    """In a fresh process: load the stage, then two passes over the texts; (load seconds, docs/s, docs/s)."""
    from schemas.documents import Document
    from worker.stages import build_stage

    _set_mode(mode)
    docs = [Document(id=f"d{i}", text=text) for i, text in enumerate(texts)]
    started = time.perf_counter()
    stage = build_stage(spec)
    stage.load()
    load = time.perf_counter() - started
    rates = []
    for _ in range(2):
        started = time.perf_counter()
        for start in range(0, len(docs), chunk):
            stage.run(docs[start:start + chunk], {})
        rates.append(len(docs) / (time.perf_counter() - started))
    return load, rates[0], rates[1]


def _engine(mode: str, spec: Any, texts: list[str], workdir: str) -> float:
    """In a fresh process: one `textworker bench`-style engine run (model loaded outside the timing), docs/s."""
    from worker.bench import bench_textworker

    _set_mode(mode)
    return bench_textworker(spec, texts, Path(workdir))


def _fresh(function: Any, *args: Any) -> Any:
    """Call `function` in a new interpreter: kernels a runtime prepared earlier in this process (oneDNN keeps them
    process-wide) would otherwise make every later build look warm."""
    if function.__module__ != "__main__":  # loaded from its file (the tests): the child imports it by name from here
        function = getattr(importlib.import_module(function.__module__), function.__name__)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


def compare(stage_spec: Any, texts: list[str], rounds: int = 3, chunk: int = 512) -> dict[str, Any]:
    from worker.bench import machine
    from worker.models import int8, loading

    spec = stage_spec.model_copy(update={"precision": "int8"})
    int8.build(loading.resolve(spec.model).location, int8.SEQ_CLASS, runtime="openvino")
    samples: dict[str, dict[str, list[float]]] = {mode: {"load_s": [], "first_pass": [], "second_pass": [], "engine": []} for mode in MODES}
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(max(1, rounds)):
            for mode in MODES:
                load, first, second = _fresh(_passes, mode, spec, texts, chunk)
                samples[mode]["load_s"].append(load)
                samples[mode]["first_pass"].append(first)
                samples[mode]["second_pass"].append(second)
                samples[mode]["engine"].append(_fresh(_engine, mode, spec, texts, workdir))
    best = {mode: {"load_s": min(values["load_s"]), **{k: max(v) for k, v in values.items() if k != "load_s"}} for mode, values in samples.items()}
    on, off = best["warm_up"], best["no_warm_up"]
    return {
        "docs": len(texts), "rounds": max(1, rounds), "chunk": chunk,
        "best": {mode: {k: round(v, 2) for k, v in values.items()} for mode, values in best.items()},
        "samples": {mode: {k: [round(x, 2) for x in v] for k, v in values.items()} for mode, values in samples.items()},
        "warm_up_over_none": {k: round(on[k] / off[k], 3) for k in ("first_pass", "second_pass", "engine")},
        "load_seconds_added": round(on["load_s"] - off["load_s"], 2),
        "machine": machine(),
    }


def render(result: dict[str, Any]) -> str:
    from worker.bench import machine_line

    lines = [machine_line(result["machine"]),
             f"{result['docs']} texts, chunks of {result['chunk']}, best of {result['rounds']} interleaved rounds, a fresh build each"]
    for mode, values in result["best"].items():
        lines.append(f"  {mode:<11} load {values['load_s']:6.2f} s  first pass {values['first_pass']:8.1f} docs/s  "
                     f"second pass {values['second_pass']:8.1f}  engine run {values['engine']:8.1f}")
    ratios = result["warm_up_over_none"]
    lines.append(f"warm-up / none: first pass {ratios['first_pass']}x, second pass {ratios['second_pass']}x, engine run "
                 f"{ratios['engine']}x; load {result['load_seconds_added']:+.2f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from int8_runtimes import stage_main  # the same command line, beside this script

    return stage_main(__doc__, compare, render, argv)


if __name__ == "__main__":
    raise SystemExit(main())

"""int8 against fp32 on the shared evaluation sets: the same model version scored at both precisions.

    .venv/bin/python benchmarks/int8_quality.py [--models-dir models] [--topic-model DIR] [--model STAGE=DIR ...] [--json]

Rows: sentiment on SST-2 dev, spam on SMS test, topic on AG News test, QA on the QA eval
set -- the stages of pipelines/shared_data.yaml, with the models given (default: the
offline defaults of `make models` for sentiment, spam and QA; `--topic-model` names a
version trained with `textworker train pipelines/shared_data.yaml --stage topic`; `--model`
checks any stage's trained version instead of its default). Each row
runs `worker.lifecycle.precision.check` (the int8 build and the guard that `precision: auto`
reads), so it prints what the guard decides too. Each row also gives the share of rows whose
prediction (label, or answer text) is the same at both precisions. `--smoothing both` builds
every version twice, without and with the activation smoothing of `worker.models.smoothing`
(`TEXTWORKER_INT8_SMOOTHING`), and leaves the smoothed build in place.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ROWS = (  # stage in shared_data.yaml, default model family, evaluation file
    ("sentiment", "sentiment", "sst2/dev.tsv"),
    ("spam", "spam", "sms_spam/test.tsv"),
    ("topic", None, "ag_news/test.tsv"),
    ("qa", "qa", "qa/eval.jsonl"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", default=os.environ.get("TEXTWORKER_MODELS_DIR", str(REPO / "models")))
    parser.add_argument("--shared-data", default=os.environ.get("TEXTWORKER_SHARED_DATA", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--topic-model", help="a topic classifier version (AG News labels)")
    parser.add_argument("--model", action="append", default=[], metavar="STAGE=DIR",
                        help="check this version for the stage instead of the default one (repeatable), "
                             "e.g. spam=models/spam/v1-shared")
    parser.add_argument("--smoothing", choices=("as-built", "both"), default="as-built",
                        help="both: rebuild each version without, then with, activation smoothing and report both")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    chosen: dict[str, str] = {}
    for item in args.model:
        stage_name, sep, directory = item.partition("=")
        if not sep or stage_name not in {row[0] for row in ROWS} or not directory:
            parser.error(f"--model takes STAGE=DIR with STAGE one of {', '.join(row[0] for row in ROWS)}; got {item!r}")
        chosen[stage_name] = directory
    if args.topic_model:
        chosen.setdefault("topic", args.topic_model)
    os.environ.setdefault("TEXTWORKER_SHARED_DATA", args.shared_data)

    from worker.bench import machine, machine_line
    from worker.config import load_pipeline
    from worker.lifecycle import precision
    from worker.models import int8, loading
    from worker.stages import plugin_for

    spec = load_pipeline(REPO / "pipelines" / "shared_data.yaml")
    rows: list[dict[str, Any]] = []
    for stage_name, family, rel in ROWS:
        model = chosen.get(stage_name) or (str(Path(args.models_dir) / family) if family else None)
        if model is None:
            print(f"skipping {stage_name}: no model given (--model {stage_name}=DIR)", file=sys.stderr)
            continue
        location = loading.resolve(model).location
        stage = spec.stage(stage_name).model_copy(update={"model": location, "precision": "auto"})
        labels = plugin_for(stage.type).labels(stage)
        data = Path(args.shared_data) / rel
        examples = plugin_for(stage.type).load_trainer().read(data, stage, labels)
        for smoothed in ((None,) if args.smoothing == "as-built" else (False, True)):
            if smoothed is not None:
                os.environ["TEXTWORKER_INT8_SMOOTHING"] = "1" if smoothed else "0"
            started = time.perf_counter()
            verdict = precision.check(stage, location, sets={rel: examples}, what=rel, labels=labels, force=smoothed is not None)
            same = _agreement(stage, location, examples)
            info = int8.read_info(location) or {}
            rows.append({"stage": stage_name, "data": rel, "model": location, **verdict, "same_prediction": round(same, 4),
                         "smoothed_products": info.get("smoothed_products"), "seconds": round(time.perf_counter() - started, 1)})
            print(f"{stage_name} (smoothed products: {info.get('smoothed_products')}): {precision.describe(verdict)}; "
                  f"same prediction {same:.2%}", file=sys.stderr)
    result: dict[str, Any] = {"machine": machine(), "rows": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"machine: {machine_line(result['machine'])}")
    print(f"{'stage':<10} {'data':<20} {'smoothed':>8} {'metric':<10} {'fp32':>8} {'int8':>8} {'drop':>8} {'same':>7} {'guard':>7}")
    for row in rows:
        print(f"{row['stage']:<10} {row['data']:<20} {row['smoothed_products']!s:>8} {row['metric']:<10} {row['fp32']:>8} {row['int8']:>8} "
              f"{row['drop']:>8} {row['same_prediction']:>7.2%} {'pass' if row['passed'] else 'fail':>7}")


def _agreement(stage: Any, location: str, examples: list[Any]) -> float:
    """The share of rows predicted the same at fp32 and at int8."""
    from worker.lifecycle.evaluation import load_model
    from worker.stages import plugin_for

    trainer = plugin_for(stage.type).load_trainer()
    predicted = []
    for wanted in ("fp32", "int8"):
        at = stage.model_copy(update={"precision": wanted})
        model, tokenizer = load_model(at, trainer, location)
        predicted.append(trainer.predict(at, model, tokenizer, examples))
    def key(prediction: Any) -> Any:  # QA predictions carry scores: compare the answer text
        return prediction.get("answer") if isinstance(prediction, dict) else prediction

    return sum(key(a) == key(b) for a, b in zip(*predicted, strict=True)) / max(1, len(examples))


if __name__ == "__main__":
    main()

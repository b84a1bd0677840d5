"""The `textworker` command line: parsing only; each command lives in `worker.commands` (shared output in `worker.console`)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from worker.console import add_common, default_database_url, default_models_dir
from worker.errors import TextworkerError
from worker.logs import setup_logging

_add_common = add_common


def build_parser() -> argparse.ArgumentParser:
    from worker.resources import package_version

    parser = argparse.ArgumentParser(prog="textworker", description="Streaming and batch text analytics into SQL.")
    parser.add_argument("--version", action="version", version=f"textworker {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a pipeline until its input is exhausted")
    p.add_argument("pipeline")
    p.add_argument("--input", help="file, directory or glob (overrides the file source's path)")
    p.add_argument("--database-url", help="SQLAlchemy URL (default: the pipeline's sink, then $TEXTWORKER_DATABASE_URL)")
    p.add_argument("--limit", type=int, help="stop after N input items")
    p.add_argument("--chunk-size", type=int, default=256)
    p.add_argument("--runtime", choices=["local", "ray"], default=os.environ.get("TEXTWORKER_RUNTIME", "local"),
                   help="local: stages in this process; ray: stage actor pools, pipelined (default $TEXTWORKER_RUNTIME or local)")
    p.add_argument("--address", default=None, help="Ray cluster address (default $RAY_ADDRESS; none starts a local Ray)")
    mg = p.add_argument_group("metrics", "Prometheus /metrics while the run goes on (see README: Operations)")
    mg.add_argument("--metrics-port", type=int, help="serve /metrics on this port (0: any free port)")
    mg.add_argument("--metrics-host", default="127.0.0.1", help="address for /metrics; any but loopback needs a token")
    mg.add_argument("--metrics-linger", type=float, default=0.0, help="keep /metrics up this many seconds after the run (a last scrape)")
    mg.add_argument("--token", default=None, help="bearer token /metrics requires (default $TEXTWORKER_TOKEN)")
    k = p.add_argument_group("kafka sources", "without these a kafka pipeline streams until SIGTERM/SIGINT")
    k.add_argument("--until-end", action="store_true", help="exit once every owned partition is caught up")
    k.add_argument("--from-offset", type=int, help="replay: first offset of every partition (read outside the group)")
    k.add_argument("--until-offset", type=int, help="replay: stop each partition before this offset")
    k.add_argument("--from-time", help="replay: first record timestamp, ISO 8601 (e.g. 2026-11-28T10:00:00Z)")
    k.add_argument("--until-time", help="replay: stop each partition at its first record at or after this time")
    _add_common(p)

    p = sub.add_parser("validate", help="check a pipeline file and report every problem")
    p.add_argument("pipeline")
    _add_common(p)

    p = sub.add_parser("train", help="fine-tune a stage's model on labelled data; stores a new version")
    p.add_argument("pipeline")
    p.add_argument("--stage", required=True)
    p.add_argument("--data", help="TSV (text/label, either order), SQuAD JSONL (qa) or {en,de} JSONL (translate); "
                   "default: the stage's `train.data`")
    p.add_argument("--out", help="version directory (default: next to the stage's model)")
    p.add_argument("--base", help="base model (default: the stage's model); `scratch` builds a new translation model")
    p.add_argument("--eval-data", help="score the new version on this file after training")
    p.add_argument("--epochs", type=float)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-length", type=int)
    p.add_argument("--max-minutes", type=float, help="stop training after this wall-clock budget")
    p.add_argument("--size", choices=["tiny", "small", "medium", "base"], help="model size when building from scratch (default small)")
    p.add_argument("--dropout", type=float, help="residual and attention dropout while training (translate; default: the model's own)")
    p.add_argument("--dropout-from-epoch", type=float, help="late dropout (translate): no dropout for this many epochs, "
                   "then --dropout's rate")
    p.add_argument("--curriculum-epochs", type=float, help="length curriculum (translate): this many epochs' worth of "
                   "steps draw the shortest examples first")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--limit", type=int, help="use only the first N training rows")
    p.add_argument("--promote", action="store_true", help="make the new version the family's current one")
    _add_common(p)

    p = sub.add_parser("eval", help="score a stage's model on a labelled file, or on its reference sets")
    p.add_argument("pipeline")
    p.add_argument("--stage", required=True)
    p.add_argument("--data", help="labelled file (default: the stage's `train.eval_data`; not with --references)")
    p.add_argument("--references", action="store_true", help="score the version on every reference set it carries")
    p.add_argument("--database-url", help="registry whose champion --references scores (default: as `run`)")
    p.add_argument("--model", help="model directory (default: the stage's model)")
    p.add_argument("--limit", type=int)
    p.add_argument("--precision", choices=["fp32", "int8", "bf16", "fp16"],
                   help="score the model at this precision (default: the stage's; auto scores fp32)")
    _add_common(p)

    p = sub.add_parser("models", help="list or build local models")
    msub = p.add_subparsers(dest="models_command", required=True)
    m = msub.add_parser("list", help="model families, versions, metrics")
    m.add_argument("--dir", default=default_models_dir())
    m.add_argument("--database-url", default=default_database_url(), help="registry database (default $TEXTWORKER_DATABASE_URL, then sqlite:///textworker.db)")
    _add_common(m)
    m = msub.add_parser("build-defaults", help="build the offline default models from seed data")
    m.add_argument("--dir", default=default_models_dir())
    m.add_argument("--force", action="store_true")
    m.add_argument("--only", nargs="*", help="build only these defaults")
    _add_common(m)
    m = msub.add_parser("quantize", help="build a stage model's int8 version and check it against fp32 (what precision auto reads)")
    m.add_argument("pipeline")
    m.add_argument("--stage", required=True)
    m.add_argument("--model", help="model directory (default: the stage's model)")
    m.add_argument("--data", help="evaluation file (default: the version's reference sets)")
    m.add_argument("--limit", type=int, help="use only the first N rows of --data")
    m.add_argument("--force", action="store_true", help="rebuild the int8 version even when one from the same weights exists")
    _add_common(m)
    m = msub.add_parser("build-roberta", help="train a byte-level BPE tokenizer and build a RoBERTa model")
    m.add_argument("--data", required=True, nargs="+", help="text files (TSV/JSONL/plain) to train the tokenizer on")
    m.add_argument("--out", required=True)
    m.add_argument("--size", default="small", choices=["tiny", "small", "medium", "base"])
    m.add_argument("--vocab-size", type=int, default=8000)
    _add_common(m)
    from worker.commands import lifecycle as lifecycle_commands

    lifecycle_commands.add_models_parsers(msub, _add_common)
    lifecycle_commands.add_parsers(sub, _add_common)

    p = sub.add_parser("bench", help="a stage's docs/s against plain transformers, Ray Data and the FLOP limit; "
                       "with --latency, a stream's end-to-end latency at fixed rates")
    p.add_argument("pipeline")
    p.add_argument("--stage", help="the stage to measure (throughput; not with --latency)")
    p.add_argument("--data", nargs="+", help="TSV (text/label) or JSONL with `text`; several files are interleaved "
                   "(--latency: the texts produced, default the seed sample documents)")
    p.add_argument("--limit", type=int, default=2000)
    p.add_argument("--only", nargs="*", default=["textworker", "hf_per_doc", "hf_batched", "ray_data"],
                   choices=["textworker", "hf_per_doc", "hf_batched", "ray_data"], help="contenders to run")
    p.add_argument("--precision", choices=["auto", "fp32", "int8", "bf16", "fp16"],
                   help="textworker's precision (default: the stage's); with int8 the baselines also run on the int8 model")
    p.add_argument("--rounds", type=int, default=1,
                   help="measure every contender this many times, interleaved, and keep each one's best (for a shared machine whose "
                        "speed drifts)")
    p.add_argument("--latency", action="store_true", help="produce to a broker at --rate docs/s and report produce-to-SQL latency")
    p.add_argument("--rate", type=float, nargs="+", default=[20.0], help="offered docs/s (several: one after another, same worker)")
    p.add_argument("--seconds", type=float, default=30.0, help="how long each rate is offered")
    p.add_argument("--database-url", help="--latency: the database the worker writes (default: the pipeline's sink)")
    p.add_argument("--runtime", choices=["local", "ray"], default="local", help="--latency: the worker's runtime")
    _add_common(p)

    p = sub.add_parser("serve", help="serve the pipeline over HTTP (Ray Serve) until SIGTERM/SIGINT")
    p.add_argument("pipeline")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--address", default=None, help="Ray cluster address (default $RAY_ADDRESS; none starts a local Ray)")
    p.add_argument("--max-concurrent", type=int, default=32, help="requests in progress at once; 429 beyond")
    p.add_argument("--max-documents", type=int, default=256, help="documents per request; 413 beyond")
    p.add_argument("--max-body-bytes", type=int, default=8 * 1024 * 1024, help="request body size; 413 beyond")
    p.add_argument("--batch-calls", type=int, default=16, help="most requests a stage replica batches together")
    p.add_argument("--batch-wait-ms", type=float, default=10.0, help="how long a stage replica waits for more requests to batch")
    p.add_argument("--database-url", help="store served results here (default: as `run`); `none` stores nothing")
    p.add_argument("--token", default=None,
                   help="bearer token every route except /healthz and /readyz requires (default $TEXTWORKER_TOKEN); "
                        "required when --host is not loopback")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME", help="a Host name to answer to besides loopback names and IP addresses (repeatable; also $TEXTWORKER_ALLOWED_HOSTS)")
    _add_common(p)

    p = sub.add_parser("review", help="the active-learning review queue: list low-confidence predictions, label them")
    rsub = p.add_subparsers(dest="review_command", required=True)
    r = rsub.add_parser("list", help="a stage's review items, least confident first")
    r.add_argument("pipeline")
    r.add_argument("--stage", required=True)
    r.add_argument("--status", default="open", choices=["open", "labelled", "skipped", "all"])
    r.add_argument("--limit", type=int, default=50)
    r.add_argument("--database-url", help="default: $TEXTWORKER_DATABASE_URL, then the pipeline's sink")
    _add_common(r)
    for verb, text in (("label", "label an item; the label goes to the feedback table"), ("skip", "close an item without a label")):
        r = rsub.add_parser(verb, help=text)
        r.add_argument("pipeline")
        r.add_argument("--stage", required=True)
        r.add_argument("--doc", required=True, help="the item's document id")
        if verb == "label":
            r.add_argument("--label", required=True, help="one of the stage's labels")
        r.add_argument("--who", default=os.environ.get("USER"), help="who labelled it (default $USER)")
        r.add_argument("--database-url", help="default: $TEXTWORKER_DATABASE_URL, then the pipeline's sink")
        _add_common(r)

    p = sub.add_parser("pretrain", help="continue masked-LM pretraining of a stage's encoder on unlabelled text")
    p.add_argument("pipeline")
    p.add_argument("--stage", required=True)
    p.add_argument("--data", required=True, nargs="+", help="TSV/JSONL/plain-text files of unlabelled documents")
    p.add_argument("--out", help="version directory (default: a new version of models/<family>-mlm)")
    p.add_argument("--base", help="encoder to start from (default: the stage's model)")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-minutes", type=float, help="stop training after this wall-clock budget")
    p.add_argument("--mlm-probability", type=float, default=0.15)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--holdout", type=float, default=0.1, help="share of the texts held out for perplexity")
    p.add_argument("--limit", type=int, help="use only the first N texts")
    p.add_argument("--seed", type=int, default=0)
    _add_common(p)

    from worker.commands.dashboard import add_dashboard_parser

    add_dashboard_parser(sub, _add_common)

    from worker.scaffold import add_init_parser

    add_init_parser(sub, _add_common)

    from worker.stages import STAGE_TYPES

    for plugin in STAGE_TYPES.values():  # sub-commands a stage type brings (e.g. `search` of embed)
        if plugin.add_commands is not None:
            plugin.add_commands(sub, _add_common)

    p = sub.add_parser("demo", help="build the defaults and run pipelines/demo.yaml on the sample documents")
    p.add_argument("--database-url", default="sqlite:///demo.db")
    p.add_argument("--models-dir", default=default_models_dir())
    _add_common(p)
    return parser


def _handlers() -> dict[str, Callable[[argparse.Namespace], int]]:
    from worker.commands import bench, dashboard, demo, lifecycle, models, review, run, serve, training, validate
    from worker.commands.pretrain import cmd_pretrain
    from worker.scaffold import cmd_init
    from worker.stages import STAGE_TYPES

    plugin_commands = {name: handler for plugin in STAGE_TYPES.values() for name, handler in plugin.commands.items()}
    return {
        **plugin_commands,
        "run": dashboard.run_with_metrics(run.cmd_run),
        "dashboard": dashboard.cmd_dashboard,
        "requeue": dashboard.cmd_requeue,
        "validate": validate.cmd_validate,
        "train": training.cmd_train,
        "eval": training.cmd_eval,
        "models": models.cmd_models,
        "demo": demo.cmd_demo,
        "init": cmd_init,
        "bench": bench.cmd_bench,
        "feedback": lifecycle.cmd_feedback,
        "finetune": lifecycle.cmd_finetune,
        "schedule": lifecycle.cmd_schedule,
        "review": review.cmd_review,
        "pretrain": cmd_pretrain,
        "serve": serve.cmd_serve,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        return _handlers()[args.command](args)
    except TextworkerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

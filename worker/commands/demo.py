"""`textworker demo`: build the default models if missing, run the demo pipeline on the sample documents, report."""

from __future__ import annotations

import argparse
import os

from worker.commands.run import cmd_run


def cmd_demo(args: argparse.Namespace) -> int:
    from worker.lifecycle.defaults import SEED_DIR, build_defaults
    from worker.resources import pipeline_path

    os.environ.setdefault("TEXTWORKER_MODELS_DIR", args.models_dir)
    build_defaults(args.models_dir, log_step=(lambda m: None) if args.quiet else print)
    demo = pipeline_path("demo.yaml")
    run_args = argparse.Namespace(
        pipeline=str(demo), input=str(SEED_DIR / "sample_docs.jsonl"), database_url=args.database_url,
        limit=None, chunk_size=64, quiet=args.quiet, json=args.json,
    )
    code = cmd_run(run_args)
    if code == 0 and not (args.quiet or args.json):
        from worker.demo_report import print_report

        print_report(args.database_url, "demo")
    return code

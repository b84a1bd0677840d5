"""`textworker bench`: a stage's throughput against plain transformers, Ray Data and the FLOP limit."""

from __future__ import annotations

import argparse
import sys

from worker.config import load_pipeline
from worker.console import emit
from worker.errors import TextworkerError


def cmd_bench(args: argparse.Namespace) -> int:
    from worker.bench import render_bench, run_bench

    if args.latency:
        return _latency(args)
    spec = load_pipeline(args.pipeline)
    if not args.stage or not args.data:
        raise TextworkerError("bench needs --stage and --data (or --latency for a stream pipeline)")
    if args.rounds < 1:
        raise TextworkerError("--rounds must be at least 1")
    if args.quiet:
        result = run_bench(spec, args.stage, args.data, args.limit, list(args.only), lambda message: None, args.precision, args.rounds)
    else:
        from tqdm import tqdm

        # One step per contender and round; each contender's docs/s is printed above the bar as it finishes.
        baselines = [name for name in args.only if name != "textworker"]
        total = (len(args.only) + (len(baselines) if args.precision == "int8" else 0)) * args.rounds
        with tqdm(total=total, unit=" contenders", dynamic_ncols=True, file=sys.stderr) as bar:
            def say(message: str) -> None:
                bar.write(message, file=sys.stderr)
                if message.startswith("  "):
                    bar.update(1)

            result = run_bench(spec, args.stage, args.data, args.limit, list(args.only), say, args.precision, args.rounds)
    emit(args, result, render_bench(result))
    return 0


def _latency(args: argparse.Namespace) -> int:
    from worker.bench_latency import render_latency, run_latency

    if any(rate <= 0 for rate in args.rate) or args.seconds <= 0:
        raise TextworkerError("--rate and --seconds must be positive")
    say = (lambda message: None) if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    try:
        result = run_latency(args.pipeline, list(args.rate), args.seconds, args.data, args.database_url, args.runtime, say)
    except ValueError as exc:
        raise TextworkerError(str(exc)) from exc
    emit(args, result, render_latency(result))
    return 0

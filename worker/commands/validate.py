"""`textworker validate`: check a pipeline file and report every problem."""

from __future__ import annotations

import argparse
import sys

from worker.config import load_pipeline
from worker.console import emit
from worker.errors import PipelineFileError


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        spec = load_pipeline(args.pipeline)
    except PipelineFileError as exc:
        payload = {"valid": False, "problems": [p.__dict__ for p in exc.problems]}
        if args.json:
            emit(args, payload, "")
        else:
            print(str(exc), file=sys.stderr)
        return 1
    stages = [f"{s.name} ({s.type}, model {s.model})" for s in spec.stages]
    text = f"{args.pipeline}: valid pipeline `{spec.name}`: source {spec.source.type}, {len(stages)} stage(s): " + "; ".join(stages)
    emit(args, {"valid": True, "pipeline": spec.name, "stages": [s.name for s in spec.stages]}, text)
    return 0

"""`textworker init DIR`: a starter project made from the files the package ships.

The project holds the shipped pipeline files, the sample documents and seed labels they
read, an environment example and a short README:

    DIR/pipelines/{demo,stream,lifecycle,gpu}.yaml
    DIR/data/sample_docs.jsonl, DIR/data/spam.tsv
    DIR/.env.example, DIR/README.md

The shipped files name their inputs relative to a checkout (`worker/seed/...`); the
copies name them relative to DIR (`data/...`), so every command in the project's README
works from DIR. Existing files are never overwritten unless `force` is set.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.errors import TextworkerError
from worker.resources import pipeline_path, seed_dir

STARTER_PIPELINES = ("demo.yaml", "stream.yaml", "lifecycle.yaml", "gpu.yaml")
STARTER_DATA = ("sample_docs.jsonl", "spam.tsv")
CHECKOUT_SEED_PREFIX = "worker/seed/"

ENV_EXAMPLE = """\
# Copy to .env and load it (`set -a; . ./.env; set +a`) before running textworker.
# Where results, dead letters, runs and the model registry are stored (SQLAlchemy URL).
TEXTWORKER_DATABASE_URL=sqlite:///textworker.db
# TEXTWORKER_DATABASE_URL=postgresql+psycopg://user@127.0.0.1:5432/textworker
# Model families the pipelines name as ${TEXTWORKER_MODELS_DIR:-models}/<name>.
TEXTWORKER_MODELS_DIR=models
# The file source of demo.yaml, lifecycle.yaml and gpu.yaml (a file, directory or glob).
TEXTWORKER_INPUT=data/sample_docs.jsonl
# Kafka (stream.yaml).
KAFKA_BOOTSTRAP_SERVERS=localhost:9092
TEXTWORKER_TOPIC=documents
TEXTWORKER_GROUP=textworker
# Fine-tuning data of lifecycle.yaml: a frozen evaluation set (TSV text/label) and base rows.
# SPAM_EVAL_DATA=data/spam_eval.tsv
SPAM_BASE_DATA=data/spam.tsv
# Where train, finetune and pretrain run: auto (a GPU when torch sees one), cpu or cuda.
# TEXTWORKER_TRAIN_DEVICE=auto
# Bearer token for `serve`, `dashboard` and /metrics; required to listen beyond loopback.
# TEXTWORKER_TOKEN=change-me
# Ray cluster for --runtime ray and serve (unset: a local Ray starts).
# RAY_ADDRESS=127.0.0.1:6379
TEXTWORKER_LOG_LEVEL=WARNING
"""

README = """\
# {name}

A textworker project.

    textworker models build-defaults --dir models    # the offline default models (a few minutes on CPU)
    textworker run pipelines/demo.yaml               # data/sample_docs.jsonl -> textworker.db
    textworker run pipelines/demo.yaml --input 'my_docs/*.jsonl' --database-url sqlite:///mine.db
    textworker validate pipelines/demo.yaml          # after editing a pipeline file
    textworker serve pipelines/demo.yaml --port 8000 # the pipeline over HTTP

`.env.example` lists the environment variables the pipeline files read.
"""


@dataclass(frozen=True)
class StarterFile:
    """One file of the starter project: where it goes (relative to the project) and its text."""

    relative: str
    text: str


def starter_files(project_name: str) -> list[StarterFile]:
    """Every file `init` writes, with checkout-relative seed paths rewritten to `data/`."""
    files = [StarterFile(f"pipelines/{name}", localise(pipeline_path(name).read_text(encoding="utf-8"))) for name in STARTER_PIPELINES]
    files += [StarterFile(f"data/{name}", (seed_dir() / name).read_text(encoding="utf-8")) for name in STARTER_DATA]
    files.append(StarterFile(".env.example", ENV_EXAMPLE))
    files.append(StarterFile("README.md", README.format(name=project_name)))
    return files


def localise(pipeline_text: str) -> str:
    """A shipped pipeline file's text with `worker/seed/X` paths pointing at the project's `data/X`."""
    return pipeline_text.replace(CHECKOUT_SEED_PREFIX, "data/")


def init_project(directory: Path, *, force: bool = False) -> list[Path]:
    """Write the starter project into `directory` (created if needed) and return the files written.

    Fails before writing anything when a file would be overwritten and `force` is not set."""
    directory = directory.expanduser()
    if directory.exists() and not directory.is_dir():
        raise TextworkerError(f"{directory} exists and is not a directory", hint="pick another path for the project")
    files = starter_files(directory.resolve().name or "textworker-project")
    clashes = [directory / f.relative for f in files if (directory / f.relative).exists()]
    if clashes and not force:
        names = ", ".join(str(p) for p in clashes)
        raise TextworkerError(f"would overwrite {names}", hint="use another directory, or --force to replace them")
    written = []
    for f in files:
        target = directory / f.relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f.text, encoding="utf-8")
        written.append(target)
    return written



def add_init_parser(sub: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    """The `init` sub-command's arguments."""
    p = sub.add_parser("init", help="write a starter project (pipeline files, sample data, an env example) into DIR")
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--force", action="store_true", help="overwrite files that already exist")
    add_common(p)


def cmd_init(args: argparse.Namespace) -> int:
    """`textworker init DIR`: write the starter project and say what to run next."""
    written = init_project(Path(args.directory), force=args.force)
    if args.json:
        print(json.dumps({"directory": str(Path(args.directory)), "files": [str(p) for p in written]}, indent=2))
    elif not args.quiet:
        listing = "\n".join(f"  {p}" for p in written)
        print(f"wrote {len(written)} files:\n{listing}\nnext:\n  cd {args.directory}\n"
              "  textworker models build-defaults --dir models\n  textworker run pipelines/demo.yaml")
    return 0

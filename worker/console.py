"""Console helpers every command shares: URL and directory defaults, common flags, output, progress bars, summaries.

A leaf module: it imports nothing of the project above `schemas`, so any command may use it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

DEFAULT_DB = "sqlite:///textworker.db"


def default_database_url() -> str:
    return os.environ.get("TEXTWORKER_DATABASE_URL") or DEFAULT_DB


def default_models_dir() -> str:
    return os.environ.get("TEXTWORKER_MODELS_DIR") or "models"


def database_url(args: argparse.Namespace, spec: Any) -> str:
    """--database-url, then $TEXTWORKER_DATABASE_URL, then the pipeline's sink URL."""
    if getattr(args, "database_url", None):
        return str(args.database_url)
    if os.environ.get("TEXTWORKER_DATABASE_URL"):
        return os.environ["TEXTWORKER_DATABASE_URL"]
    return str(getattr(spec.sink, "url", None) or default_database_url()) if spec is not None else default_database_url()


def add_common(parser: argparse.ArgumentParser) -> None:
    """--log-level, --quiet and --json, which every command takes."""
    parser.add_argument("--log-level", default=os.environ.get("TEXTWORKER_LOG_LEVEL", "WARNING"), help="DEBUG, INFO, WARNING, ERROR")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars or tables")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def emit(args: argparse.Namespace, payload: Any, text: str) -> None:
    """Print JSON for scripts (--json) or the human-readable text."""
    if getattr(args, "json", False):
        print(json.dumps(payload, indent=2, default=str))
    elif not getattr(args, "quiet", False) or text.startswith("error"):
        print(text)


def progress_bar(args: argparse.Namespace, unit: str) -> Any:
    """A tqdm bar on stderr, or None with --quiet/--json."""
    if getattr(args, "quiet", False) or getattr(args, "json", False):
        return None
    from tqdm import tqdm

    return tqdm(unit=f" {unit}", dynamic_ncols=True, file=sys.stderr)


def render_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"run {summary['run_id']} of pipeline `{summary['pipeline']}`",
        f"  documents: {summary['docs']}   dead letters: {summary['dead_letters']}   "
        f"time: {summary['seconds']:.1f}s   throughput: {summary['docs_per_s']:.1f} docs/s",
        "  stage            results  skipped  failed  tokens/s  padding  model",
    ]
    for name, st in summary["stages"].items():
        lines.append(
            f"  {name:<16} {st['results']:>7}  {st['skipped']:>7}  {st['failed']:>6}  "
            f"{st['tokens_per_s']:>8.0f}  {st['padding_waste']:>6.1%}  {st['model_version']}"
        )
        if st.get("labels") and len(st["labels"]) <= 12:
            labels = ", ".join(f"{k}: {v}" for k, v in sorted(st["labels"].items(), key=lambda kv: -kv[1]))
            lines.append(f"  {'':<16} labels: {labels}")
    if summary["dead_letter_reasons"]:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(summary["dead_letter_reasons"].items()))
        lines.append(f"  dead-letter reasons: {reasons}")
    return "\n".join(lines)


def run_with_bar(args: argparse.Namespace, unit: str, run: Any) -> Any:
    """`run(on_chunk)` with a progress bar of input items (none with --quiet/--json); returns what it returns."""
    bar = progress_bar(args, unit)
    try:
        return run((lambda items, docs: bar.update(items)) if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()

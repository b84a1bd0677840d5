"""`textworker review list | label | skip`: the active-learning queue from the command line."""

from __future__ import annotations

import argparse
from typing import Any

from worker.config import load_pipeline
from worker.console import database_url, emit
from worker.lifecycle import review
from worker.sinks.sql import make_engine, migrate, normalise_url
from worker.stages import STAGE_TYPES, plugin_for


def _render(items: list[review.QueuedItem]) -> str:
    if not items:
        return "no review items"
    lines = [f"{'doc':<24} {'predicted':<12} {'conf':>6}  {'status':<9} {'label':<12} text"]
    for item in items:
        text = " ".join(item.text.split())
        lines.append(f"{item.doc_id[:24]:<24} {str(item.predicted)[:12]:<12} {item.score or 0:>6.3f}  {item.status:<9} "
                     f"{(item.label or '')[:12]:<12} {text[:70]}")
    return "\n".join(lines)


def cmd_review(args: argparse.Namespace) -> int:
    spec = load_pipeline(args.pipeline)
    stage = spec.stage(args.stage)
    if plugin_for(stage.type).confidence is None:
        raise review.ReviewError(f"stage `{stage.name}` is a {stage.type} stage; the review queue holds predictions of "
                                 f"stages with a label confidence ({', '.join(t for t, p in STAGE_TYPES.items() if p.confidence)})")
    engine = make_engine(normalise_url(database_url(args, spec)))
    try:
        migrate(engine)
        payload: Any
        if args.review_command == "list":
            status = None if args.status == "all" else args.status
            items = review.list_items(engine, spec.name, stage.name, status, args.limit)
            payload, text = [i.as_dict() for i in items], _render(items)
        elif args.review_command == "label":
            item = review.label_item(engine, spec.name, stage, args.doc, args.label, args.who)
            payload, text = item.as_dict(), f"labelled {item.doc_id} as `{item.label}` (model said `{item.predicted}`); stored as feedback"
        else:
            item = review.skip_item(engine, spec.name, stage.name, args.doc, args.who)
            payload, text = item.as_dict(), f"skipped {item.doc_id}"
    finally:
        engine.dispose()
    emit(args, payload, text)
    return 0

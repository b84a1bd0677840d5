"""`textworker dashboard` (the page and API on their own) and `textworker requeue` (marked dead letters)."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from worker.console import default_database_url, emit
from worker.errors import TextworkerError
from worker.observability.auth import check_bind, resolve_token
from worker.observability.server import run_with_metrics

__all__ = ["add_dashboard_parser", "cmd_dashboard", "cmd_requeue", "run_with_metrics"]
log = logging.getLogger(__name__)


def add_dashboard_parser(sub: Any, add_common: Any) -> None:
    p = sub.add_parser("dashboard", help="the operations dashboard: charts over the SQL store, live metrics, /metrics")
    p.add_argument("--database-url", help="SQLAlchemy URL (default: --pipeline's sink, then $TEXTWORKER_DATABASE_URL)")
    p.add_argument("--pipeline", help="pipeline file: names the stages and their types (optional; inferred otherwise)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; any but loopback needs a token")
    p.add_argument("--port", type=int, default=8050)
    p.add_argument("--token", default=None, help="bearer token for every route (default $TEXTWORKER_TOKEN)")
    p.add_argument("--metrics-url", action="append", default=[],
                   help="a worker's /metrics to show live (repeatable); the token is sent only to loopback and --allowed-host targets")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a Host name the dashboard answers to besides loopback names and IP addresses (repeatable; "
                        "also $TEXTWORKER_ALLOWED_HOSTS); other names get 400, which stops DNS rebinding")
    add_common(p)

    p = sub.add_parser("requeue", help="send the dead letters marked for requeue through the pipeline again")
    p.add_argument("pipeline")
    p.add_argument("--database-url", help="SQLAlchemy URL (default: the pipeline's sink, then $TEXTWORKER_DATABASE_URL)")
    p.add_argument("--limit", type=int, help="at most N marked letters")
    p.add_argument("--chunk-size", type=int, default=256)
    p.add_argument("--runtime", choices=["local", "ray"], default=os.environ.get("TEXTWORKER_RUNTIME", "local"))
    p.add_argument("--address", default=None, help="Ray cluster address")
    add_common(p)


def _database_url(args: argparse.Namespace, spec: Any) -> str:
    if args.database_url:
        return str(args.database_url)
    if os.environ.get("TEXTWORKER_DATABASE_URL"):
        return os.environ["TEXTWORKER_DATABASE_URL"]
    return str(spec.sink.url) if spec is not None else default_database_url()


def cmd_dashboard(args: argparse.Namespace) -> int:
    import uvicorn

    from worker.config import load_pipeline
    from worker.dashboard.app import make_app

    spec = load_pipeline(args.pipeline) if args.pipeline else None
    token = resolve_token(args.token)
    check_bind(args.host, token)
    app = make_app(spec, _database_url(args, spec), token=token, metrics_urls=args.metrics_url,
                   allowed=getattr(args, "allowed_host", None) or ())
    if not (args.quiet or args.json):
        print(f"dashboard on http://{args.host}:{args.port}/ ({'token required' if token else 'no token: loopback only'})", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_config=None, log_level=args.log_level.lower(), access_log=False)
    except SystemExit as exc:
        raise TextworkerError(f"the dashboard could not listen on {args.host}:{args.port}", hint="pick another --port") from exc
    return 0


def cmd_requeue(args: argparse.Namespace) -> int:
    from worker.assembly import run_source
    from worker.config import load_pipeline
    from worker.console import render_summary, run_with_bar
    from worker.engine.runs import new_run_id
    from worker.sinks import build_sink
    from worker.sources.requeue import RequeueSource

    spec = load_pipeline(args.pipeline)
    url = _database_url(args, spec)
    source = RequeueSource(spec, url, limit=args.limit)
    sink = build_sink(spec.sink, spec.name, new_run_id(), url=url).open()
    try:
        summary = run_with_bar(args, "letters", lambda on_chunk: run_source(
            spec, source, sink, runtime=args.runtime, address=args.address, chunk_size=args.chunk_size, on_chunk=on_chunk,
            meta={"source": "requeue"}))
        resolved = source.resolve()
    finally:
        source.close()
        sink.close()
    payload = {**summary.as_dict(), "requeued": len(source.taken), "resolved": resolved, "failed_again": len(source.taken) - resolved}
    text = render_summary(summary.as_dict()) + f"\n  requeued letters: {len(source.taken)}   resolved: {resolved}   failed again: {len(source.taken) - resolved}"
    emit(args, payload, text)
    return 0

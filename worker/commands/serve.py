"""`textworker serve FILE`: run the pipeline as a Ray Serve application until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any

from worker.config import hide_password
from worker.errors import TextworkerError


def serve_settings(args: argparse.Namespace, spec: Any) -> Any:
    from pydantic import SecretStr

    from worker.console import database_url
    from worker.observability.auth import check_bind, resolve_token
    from worker.serving.settings import ServeSettings

    url = None if (args.database_url or "").lower() == "none" else database_url(args, spec)
    token = resolve_token(getattr(args, "token", None))
    check_bind(args.host, token)
    return ServeSettings(
        max_concurrent=args.max_concurrent, max_documents=args.max_documents, max_body_bytes=args.max_body_bytes,
        database_url=url, batch_calls=args.batch_calls, batch_wait_ms=args.batch_wait_ms,
        token=SecretStr(token) if token else None, allowed_hosts=tuple(getattr(args, "allowed_host", None) or ()),
    )


def _start(spec: Any, settings: Any, args: argparse.Namespace) -> None:
    from ray import serve

    from worker.serving.app import build_application

    serve.start(http_options={"host": args.host, "port": args.port})
    try:
        serve.run(build_application(spec, settings), name=spec.name, route_prefix="/")
    except RuntimeError as exc:
        raise TextworkerError(f"the application did not start: {str(exc)[:2000]}",
                              hint="the replica logs above say why (a missing model, too few CPUs/GPUs)") from exc
    stored = f", results into {hide_password(settings.database_url)}" if settings.database_url else ""
    print(f"serving `{spec.name}` on http://{args.host}:{args.port}/v1/documents (API docs: /docs){stored}; "
          "SIGTERM or Ctrl-C stops", file=sys.stderr, flush=True)


def _stop(name: str, own_ray: bool) -> None:
    import ray
    from ray import serve

    try:
        serve.delete(name)
    finally:
        if own_ray:
            serve.shutdown()
            ray.shutdown()


def cmd_serve(args: argparse.Namespace) -> int:
    import ray

    from worker.config import load_pipeline
    from worker.engine.executors.ray import ensure_ray

    spec = load_pipeline(args.pipeline)
    settings = serve_settings(args, spec)
    own_ray = not ray.is_initialized() and not (args.address or os.environ.get("RAY_ADDRESS"))
    ensure_ray(args.address)
    stop = threading.Event()  # handlers go in after ray.init, which installs its own, and before the slow start
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        _start(spec, settings, args)
        stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _stop(spec.name, own_ray)
    print("stopped", file=sys.stderr)
    return 0

"""The HTTP ingress deployment: FastAPI routes in front of the stage deployments.

Routes: `POST /v1/documents`, `GET /healthz` (the process answers), `GET /readyz`
(200 only when every stage deployment answers with its model loaded, else 503),
FastAPI's `/openapi.json` and `/docs`, and, when a database is configured, the routers
of other textworker parts (`worker.lifecycle.api`: `/v1/feedback`; `worker.dashboard`:
`/`, `/api/...`, `/metrics`) when those modules are installed.

Limits, each answered before any model work:
- more than `max_concurrent` requests on `/v1/documents` at once: 429 with
  `Retry-After` (checked before the body is read, so refused requests cost nothing);
- a body over `max_body_bytes`: 413; more than `max_documents` documents: 413;
- malformed JSON: 400; a body that does not fit the schema: 422 with the field path.

The bound is per ingress replica; the application runs one.

Delivery: with a database URL, each request's documents, results and dead letters
are written in ONE transaction before the response is sent (upserts on natural keys,
so a client may retry a request whose response it lost). If that write fails the
request gets 503 and may be retried.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from schemas.documents import DeadLetter, Document, StageResult
from schemas.pipeline import PipelineSpec
from worker.observability.auth import resolve_token
from worker.observability.http_guard import harden
from worker.serving.payloads import (
    DocumentOut,
    DocumentsRequest,
    DocumentsResponse,
    ErrorBody,
    document_out,
    duplicate_ids,
    read_documents,
)
from worker.serving.settings import ServeSettings
from worker.serving.stage_server import ServeExecutor

log = logging.getLogger(__name__)
DOCUMENTS_PATH = "/v1/documents"
MOUNTED_ROUTERS = ("worker.lifecycle.api", "worker.dashboard")  # each exposes make_router(spec, database_url)
READY_TIMEOUT_S = 5.0


class DocumentsGate:
    """ASGI middleware in front of `POST /v1/documents`: the concurrency bound (429) and a
    declared body over the limit (413), both answered before the body is read.

    A body without a Content-Length is counted as it streams by the route's own limit.
    The count lives on the replica's event loop, so it needs no lock.
    """

    def __init__(self, app: ASGIApp, limit: int, max_body_bytes: int, retry_after_s: int) -> None:
        self.app = app
        self.limit = limit
        self.max_body_bytes = max_body_bytes
        self.retry_after_s = retry_after_s
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"].rstrip("/") != DOCUMENTS_PATH:
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1

    def _refusal(self, scope: Scope) -> JSONResponse | None:
        if self.active >= self.limit:
            return JSONResponse(
                {"detail": f"too many requests in progress (limit {self.limit}); retry after {self.retry_after_s}s"},
                status_code=429, headers={"Retry-After": str(self.retry_after_s)},
            )
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return JSONResponse({"detail": f"the body has {int(declared)} bytes; the limit is {self.max_body_bytes}"}, status_code=413)
        return None


async def _bad_json_is_400(request: Request, exc: Exception) -> JSONResponse:
    """Malformed JSON is a 400; every other validation error is a 422 with each error's `loc`, `msg` and `type`.

    The body never echoes the request's input: it may hold anything (a lone surrogate
    cannot even be encoded back), and the client has it already.
    """
    assert isinstance(exc, RequestValidationError)
    for error in exc.errors():
        if error.get("type") == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "JSON decode error")
            return JSONResponse({"detail": f"malformed JSON: {reason} (at character {error['loc'][-1]})"}, status_code=400)
    detail = [{"loc": [p if isinstance(p, int) else str(p).encode("utf-8", "replace").decode("utf-8") for p in error.get("loc", ())],
               "msg": str(error.get("msg", "")).encode("utf-8", "replace").decode("utf-8"), "type": str(error.get("type", ""))}
              for error in exc.errors()]
    return JSONResponse({"detail": detail}, status_code=422)


def mount_routers(app: FastAPI, spec: PipelineSpec, database_url: str | None, token: str | None = None) -> list[str]:
    """Include `make_router(spec, database_url, token=token)` of every installed module in MOUNTED_ROUTERS
    (the token signs the dashboard's form in with the same token the app requires)."""
    mounted: list[str] = []
    if database_url is None:
        return mounted
    for name in MOUNTED_ROUTERS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name):
                continue  # not written or not installed: nothing to mount
            log.warning("router module failed to import; not mounted", extra={"module": name, "error": str(exc)})
            continue
        except ImportError as exc:
            log.warning("router module failed to import; not mounted", extra={"module": name, "error": str(exc)})
            continue
        try:
            app.include_router(module.make_router(spec, database_url, token=token))
        except Exception as exc:  # noqa: BLE001 - a broken optional router must not take the document API down
            log.warning("router could not be built; not mounted", extra={"module": name, "error": f"{type(exc).__name__}: {exc}"})
            continue
        mounted.append(name)
    return mounted


class DocumentsIngress:
    """The ingress replica: stage handles, the optional SQL sink, and the FastAPI app."""

    def __init__(self, spec: PipelineSpec, stages: list[Any], settings: ServeSettings) -> None:
        from worker.assembly import default_hooks
        from worker.engine import Engine

        self.spec = spec
        self.stages = stages
        self.settings = settings
        # The same stage loop as every other entry point, its calls going to the stage deployments.
        self.engine = Engine(spec, ServeExecutor(stages), default_hooks()).start()
        self.sink: Any = None
        self.book: Any = None
        if settings.database_url:
            from worker.engine.runs import RunBook, new_run_id
            from worker.sinks import build_sink

            self.sink = build_sink(spec.sink, spec.name, "serve-" + new_run_id(), url=settings.database_url).open()
            self.book = RunBook(spec, self.sink, self.engine, {"runtime": "serve"}, bind_log=False).start()
        self.served = {"requests": 0, "documents": 0, "rejected": 0}

    def __serve_build_asgi_app__(self) -> FastAPI:
        return self.build_api()

    def build_api(self) -> FastAPI:
        app = FastAPI(
            title=f"textworker — {self.spec.name}",
            description=self.spec.description or "Documents in, every stage's result out.",
            lifespan=self._lifespan,
        )
        app.add_exception_handler(RequestValidationError, _bad_json_is_400)
        app.add_middleware(DocumentsGate, limit=self.settings.max_concurrent, max_body_bytes=self.settings.max_body_bytes,
                           retry_after_s=self.settings.retry_after_s)
        token = self.settings.token.get_secret_value() if self.settings.token else resolve_token()
        # added last, so they run first: Host check, body limit, token, CSRF rule, then the gate
        harden(app, max_body_bytes=self.settings.max_body_bytes, token=token, extra_hosts=self.settings.allowed_hosts)
        errors: dict[int | str, dict[str, Any]] = {
            400: {"model": ErrorBody, "description": "Malformed JSON."},
            413: {"model": ErrorBody, "description": "Body or document count over the limit."},
            429: {"model": ErrorBody, "description": "Too many requests in progress; see Retry-After."},
            503: {"model": ErrorBody, "description": "The results could not be stored; retry."},
        }

        @app.post(DOCUMENTS_PATH, response_model=DocumentsResponse, responses=errors, max_body_size=self.settings.max_body_bytes,
                  summary="Run documents through every stage")
        async def post_documents(body: DocumentsRequest) -> DocumentsResponse:
            return await self.handle(body)

        @app.get("/healthz", summary="The server process is alive")
        async def healthz() -> dict[str, str]:
            return {"status": "alive"}

        @app.get("/readyz", summary="Every stage has its model loaded", responses={503: {"description": "Not ready"}})
        async def readyz() -> JSONResponse:
            stages = await self.stage_info()
            ready = all(s.get("loaded") for s in stages)
            return JSONResponse({"ready": ready, "pipeline": self.spec.name, "stages": stages, "served": self.served},
                                status_code=200 if ready else 503)

        mount_routers(app, self.spec, self.settings.database_url, token)
        return app

    @asynccontextmanager
    async def _lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        yield
        if self.book is not None:
            self.book.finish("finished", {"served": dict(self.served)})
            self.sink.close()

    # ------------------------------------------------------------------ requests

    async def handle(self, body: DocumentsRequest) -> DocumentsResponse:
        settings = self.settings
        if len(body.documents) > settings.max_documents:
            raise HTTPException(413, f"{len(body.documents)} documents in one request; the limit is {settings.max_documents}")
        request_id = uuid.uuid4().hex[:16]
        items = read_documents(body, request_id, settings.max_chars or self.spec.source.max_chars)
        duplicates = duplicate_ids(items)
        if duplicates:
            raise HTTPException(422, duplicates)
        docs = [item for item in items if isinstance(item, Document)]
        rejected = [item for item in items if isinstance(item, DeadLetter)]
        chunk = await self.engine.process_async(docs, rejected)
        results: dict[str, list[StageResult]] = {d.id: [] for d in docs}
        failed: dict[str, list[DeadLetter]] = {d.id: [] for d in docs}
        for result in chunk.results:
            results[result.doc_id].append(result)
        for letter in chunk.letters:
            if letter.ref in failed and letter.stage != "source":
                failed[letter.ref].append(letter)
        order = {stage.name: i for i, stage in enumerate(self.spec.stages)}
        out: list[DocumentOut] = []
        for item in items:
            if isinstance(item, DeadLetter):
                out.append(document_out(item.ref, [], [item], [], rejected=True))
                continue
            mine = sorted(results[item.id], key=lambda r: order[r.stage])
            out.append(document_out(item.id, mine, failed[item.id], chunk.skipped[item.id]))
        stored = await self._store(chunk)
        self.served["requests"] += 1
        self.served["documents"] += len(items)
        self.served["rejected"] += sum(1 for d in out if d.status == "rejected")
        return DocumentsResponse(pipeline=self.spec.name, request_id=request_id, stored=stored, documents=out)

    async def _store(self, chunk: Any) -> bool:
        if self.book is None:
            return False
        try:
            await asyncio.to_thread(self.book.store, chunk)
        except Exception as exc:  # noqa: BLE001 - any storage failure is a retryable 503 for the client
            log.warning("could not store served results", extra={"error": str(exc)[:300]})
            raise HTTPException(503, "the results could not be stored; retry (the server log has the database's message)",
                                headers={"Retry-After": str(self.settings.retry_after_s)}) from exc
        return True

    async def stage_info(self) -> list[dict[str, Any]]:
        """Each stage deployment's `info()`, or `loaded: false` with the reason when it does not answer in time."""

        async def one(stage_spec: Any, handle: Any) -> dict[str, Any]:
            async def ask() -> dict[str, Any]:
                info: dict[str, Any] = await handle.info.remote()
                return info

            try:
                return await asyncio.wait_for(ask(), READY_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - any failure means: not ready
                # /readyz answers without a token: the reason's kind only, its message (which may quote
                # the database or the model path) goes to the log
                log.warning("stage not ready", extra={"stage": stage_spec.name, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
                return {"stage": stage_spec.name, "loaded": False, "error": type(exc).__name__}

        return list(await asyncio.gather(*(one(s, h) for s, h in zip(self.spec.stages, self.stages, strict=True))))

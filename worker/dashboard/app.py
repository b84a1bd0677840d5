"""The operations dashboard: one page, a JSON API over the SQL store, and `/metrics`.

`make_router(spec, database_url)` returns a FastAPI router that `textworker dashboard`
serves on its own and `textworker serve` mounts in its app. Routes (relative to where
the router is mounted):

    GET  /                          the page (self-contained: its own JS and SVG charts, no CDN)
    GET  /api/pipelines             pipelines with runs in the database
    GET  /api/overview              counts: documents, results per stage, dead letters, spam, last run
    GET  /api/labels                label distribution of classify and spam stages
    GET  /api/throughput?window=24h results per stage per time bucket
    GET  /api/spam-rate?window=24h  spam share per time bucket
    GET  /api/runs                  newest runs with docs/s and per-stage latency p50/p95
    GET  /api/samples?stage=S       newest results of a stage (QA answers, translations), paged
    GET  /api/dead-letters/reasons  dead-letter counts by reason and stage
    GET  /api/dead-letters          a page of dead letters (filters: reason, status)
    POST /api/dead-letters/requeue  {"ids": [...]} or {"reason": R[, "stage": S]}: mark for requeue
    GET  /api/models                registered model versions and lifecycle events
    GET  /api/feedback              feedback and review-queue counts
    GET  /api/live                  live metrics: this process and the --metrics-url targets
    GET  /metrics                   Prometheus text format (this process + SQL gauges)

Pages take `before=<id>` (keyset) and `limit` (at most 200); a number out of range or
a `window` that is not a duration (`nan`, `-1h`) is a 422. With a token every route
needs `Authorization: Bearer <token>` or the session cookie the sign-in form sets; a
POST authorised by the cookie must also carry `X-Textworker: 1` (a header other sites'
pages cannot send), which the page's own script does. `make_app` (and `textworker
serve`, which mounts this router) adds `worker.observability.http_guard`: the Host
allow-list, the body limit before auth, and the JSON + header rule for every POST,
with or without a token. Database errors never reach a response body.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from schemas.pipeline import PipelineSpec
from worker.dashboard import live
from worker.dashboard.queries import DashboardStore, window_seconds
from worker.observability import metrics
from worker.observability.auth import COOKIE, BearerAuth, resolve_token
from worker.observability.http_guard import DEFAULT_DASHBOARD_BODY_BYTES, allowed_hosts, harden

log = logging.getLogger(__name__)
PAGE_DIR = Path(__file__).parent / "page"
MAX_ROW_ID = 2**63 - 1  # a BIGINT id; larger numbers are refused (422), never sent to the database
Limit = Annotated[int, Query(ge=1, le=10_000, description="Rows per page (at most 200 are returned).")]
RowId = Annotated[int, Query(ge=0, le=MAX_ROW_ID)]


def window_of(text: str | None) -> float:
    try:
        return window_seconds(text)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None


@lru_cache(maxsize=1)
def page_html() -> str:
    """index.html with the stylesheet and the script inlined: one request, nothing from elsewhere."""
    html = (PAGE_DIR / "index.html").read_text(encoding="utf-8")
    css = (PAGE_DIR / "dashboard.css").read_text(encoding="utf-8")
    js = (PAGE_DIR / "dashboard.js").read_text(encoding="utf-8")
    return html.replace("/*STYLE*/", css).replace("/*SCRIPT*/", js)


def login_html(error: str = "") -> str:
    message = f'<p class="error">{error}</p>' if error else ""
    return (PAGE_DIR / "login.html").read_text(encoding="utf-8").replace("<!--MESSAGE-->", message)


def make_router(spec: PipelineSpec | None, database_url: str, *, token: str | None = None,
                metrics_urls: Sequence[str] = (), own_hosts: Sequence[str] = ()) -> APIRouter:
    """The dashboard's routes over `database_url`; `token` defaults to $TEXTWORKER_TOKEN.

    `own_hosts`: the names this dashboard answers to besides loopback (`--allowed-host`);
    a `metrics_urls` target on one of them (or on loopback) is sent the token, no other is.
    """
    token = resolve_token(token)
    auth = BearerAuth(token)
    store = DashboardStore(database_url, spec)
    token_hosts = allowed_hosts(own_hosts)

    def authorised(request: Request) -> bool:
        if auth.check_header(request.headers.get("authorization")):
            return True
        if auth.check_cookie(request.cookies.get(COOKIE)):
            if request.method == "POST" and request.headers.get("x-textworker") != "1":
                raise HTTPException(403, "a POST signed in by cookie needs the header X-Textworker: 1")
            return True
        return False

    def require(request: Request) -> None:
        if not authorised(request):
            raise HTTPException(401, "sign in: Authorization: Bearer <token>", headers={"WWW-Authenticate": 'Bearer realm="textworker"'})

    def pipeline_of(name: str | None) -> str:
        chosen = name or store.default_pipeline()
        if not chosen:
            raise HTTPException(404, "no pipeline has run against this database yet")
        return chosen

    router = APIRouter()
    api = APIRouter(prefix="/api", dependencies=[Depends(require)])

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page(request: Request) -> Response:
        if not authorised(request):
            return HTMLResponse(login_html(), status_code=401)
        return HTMLResponse(page_html(), headers={"Cache-Control": "no-store", "Content-Security-Policy": _CSP})

    @router.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"))
        if not auth.enabled or not auth.check_token((form.get("token") or [""])[0]):
            log.warning("dashboard sign-in refused", extra={"client": request.client.host if request.client else None})
            return HTMLResponse(login_html("That token is not right."), status_code=401)
        response = RedirectResponse("./", status_code=303)
        response.set_cookie(COOKIE, auth.session_value(), httponly=True, samesite="strict", secure=request.url.scheme == "https",
                            path=_cookie_path(request))
        return response

    @router.post("/logout", include_in_schema=False)
    def logout(request: Request) -> Response:
        response = RedirectResponse("./", status_code=303)
        response.delete_cookie(COOKIE, path=_cookie_path(request))
        return response

    @router.get("/metrics", include_in_schema=False, dependencies=[Depends(require)])
    def prometheus_metrics() -> Response:
        return Response(metrics.render(database_url), media_type=CONTENT_TYPE_PLAIN_0_0_4)

    @api.get("/pipelines")
    def pipelines() -> dict[str, Any]:
        return {"pipelines": store.pipelines(), "default": store.default_pipeline()}

    @api.get("/overview")
    def overview(pipeline: str | None = None) -> dict[str, Any]:
        return store.overview(pipeline_of(pipeline))

    @api.get("/labels")
    def labels(pipeline: str | None = None) -> dict[str, Any]:
        return store.labels(pipeline_of(pipeline))

    @api.get("/throughput")
    def throughput(pipeline: str | None = None, window: str | None = None) -> dict[str, Any]:
        return store.throughput(pipeline_of(pipeline), window_of(window))

    @api.get("/spam-rate")
    def spam_rate(pipeline: str | None = None, window: str | None = None) -> dict[str, Any]:
        return store.spam_rate(pipeline_of(pipeline), window_of(window))

    @api.get("/runs")
    def runs(pipeline: str | None = None, limit: Limit = 50) -> dict[str, Any]:
        return store.runs(pipeline_of(pipeline), limit)

    @api.get("/samples")
    def samples(stage: str, pipeline: str | None = None, before: RowId | None = None, limit: Limit = 20) -> dict[str, Any]:
        return store.samples(pipeline_of(pipeline), stage, before, limit)

    @api.get("/dead-letters/reasons")
    def dead_letter_reasons(pipeline: str | None = None) -> dict[str, Any]:
        return store.dead_letter_reasons(pipeline_of(pipeline))

    @api.get("/dead-letters")
    def dead_letters(pipeline: str | None = None, reason: str | None = None, status: str = "all",
                     before: RowId | None = None, limit: Limit = 50) -> dict[str, Any]:
        if status not in ("all", "pending", "requeued"):
            raise HTTPException(422, "status is all, pending or requeued")
        return store.dead_letters(pipeline_of(pipeline), reason=reason, status=status, before=before, limit=limit)

    @api.post("/dead-letters/requeue")
    async def requeue(request: Request, pipeline: str | None = None) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError as exc:
            raise HTTPException(422, "send JSON: {\"ids\": [...]} or {\"reason\": ...}") from exc
        if not isinstance(body, dict) or not (isinstance(body.get("ids"), list) or isinstance(body.get("reason"), str)):
            raise HTTPException(422, "send {\"ids\": [1, 2]} or {\"reason\": \"stage_error\", \"stage\": \"qa\"}")
        if not isinstance(body.get("stage"), str | None):
            raise HTTPException(422, "stage is a stage name")
        name = pipeline_of(pipeline)
        ids = body.get("ids") or []
        if not all(type(i) is int and 0 <= i <= MAX_ROW_ID for i in ids):
            raise HTTPException(422, "ids are the integer ids of dead letters")
        marked = store.requeue(name, ids=ids, reason=body.get("reason"), stage=body.get("stage"))
        log.info("dead letters marked for requeue", extra={"pipeline": name, "marked": marked, "reason": body.get("reason")})
        return JSONResponse({"pipeline": name, "marked": marked,
                             "next": f"run `textworker requeue PIPELINE_FILE` for pipeline `{name}` to process them"})

    @api.get("/models")
    def models(name: str | None = None, events: Limit = 100) -> dict[str, Any]:
        return store.models(name, events)

    @api.get("/feedback")
    def feedback(pipeline: str | None = None) -> dict[str, Any]:
        return store.feedback(pipeline_of(pipeline))

    @api.get("/live")
    def live_metrics() -> dict[str, Any]:
        return {"sources": live.snapshot(metrics_urls, token, token_hosts)}

    router.include_router(api)
    return router


_CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"


def _cookie_path(request: Request) -> str:
    path = request.url.path
    return path[: path.rfind("/") + 1] or "/"


def make_app(spec: PipelineSpec | None, database_url: str, *, token: str | None = None, metrics_urls: Sequence[str] = (),
             allowed: Sequence[str] = (), max_body_bytes: int = DEFAULT_DASHBOARD_BODY_BYTES) -> Any:
    """The standalone app of `textworker dashboard`: the router at `/`, behind `http_guard.harden`
    (Host allow-list with `allowed`, body limit, the token on every route, the CSRF rule)."""
    from fastapi import FastAPI
    token = resolve_token(token)
    app = FastAPI(title="textworker dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(make_router(spec, database_url, token=token, metrics_urls=metrics_urls, own_hosts=allowed))
    return harden(app, max_body_bytes=max_body_bytes, token=token, extra_hosts=allowed)

"""HTTP hardening shared by every FastAPI app textworker serves (`serve`, `dashboard`).

`harden(app, ...)` puts four ASGI layers in front of an app, outermost first:

1. `HostGuard`: the `Host` header must name this server: a loopback name, any IP
   literal, or a name given with `--allowed-host`. A DNS-rebinding page reaches the
   server under the attacker's own domain name, which is none of these: 400.
2. `BodyLimit`: one body limit for every route, checked before auth and before any
   byte of the body is read. A declared `Content-Length` over the limit is refused at
   once (413); a body without one is counted as it streams and refused once it passes
   the limit, without reading the rest.
3. `BearerAuthMiddleware` (with a token): every route but the open paths needs the
   token or the dashboard's session cookie.
4. `CsrfGuard`: a state-changing request (any method but GET, HEAD, OPTIONS) needs a
   JSON `Content-Type` and a header that a page on another site cannot send without a
   CORS preflight, which these servers never grant: `X-Textworker: 1`, or
   `Authorization`. The sign-in and sign-out forms are the exceptions (form bodies).
   This holds with or without a token, so a cross-site `text/plain` POST to a
   loopback server without a token gets 415 or 403 and changes nothing.

Each refusal is a small JSON body `{"detail": ...}` that says what to change.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
from collections.abc import Iterable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker.observability.auth import BearerAuth, BearerAuthMiddleware

log = logging.getLogger(__name__)
ALLOWED_HOSTS_ENV = "TEXTWORKER_ALLOWED_HOSTS"
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
FORM_PATHS = frozenset({"/login", "/logout"})  # the dashboard's own sign-in and sign-out forms
CSRF_HEADER = "x-textworker"
DEFAULT_DASHBOARD_BODY_BYTES = 1024 * 1024


async def send_json(send: Send, status: int, detail: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": body})


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


# --------------------------------------------------------------------------- Host


def allowed_hosts(extra: Iterable[str] = ()) -> frozenset[str]:
    """Loopback names, `extra` (`--allowed-host`) and the comma-separated $TEXTWORKER_ALLOWED_HOSTS, lower-cased."""
    names = {h.strip().lower().rstrip(".") for h in [*extra, *os.environ.get(ALLOWED_HOSTS_ENV, "").split(",")]}
    return frozenset(LOOPBACK_NAMES | {n for n in names if n})


def host_name(header: str) -> str:
    """The name part of a Host header: `[::1]:8000` -> `::1`, `Example.com.:80` -> `example.com`."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    if header.count(":") == 1:
        header = header.split(":", 1)[0]
    return header.rstrip(".")


def host_allowed(header: str | None, names: frozenset[str]) -> bool:
    """True for an allowed name or any IP literal (a rebinding page always arrives under a domain name)."""
    if not header:
        return False
    name = host_name(header)
    if name in names or "*" in names:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostGuard:
    """400 for a request whose Host header names none of this server's names."""

    def __init__(self, app: ASGIApp, names: frozenset[str]) -> None:
        self.app = app
        self.names = names

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not host_allowed(_headers(scope).get("host"), self.names):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await send_json(send, 400, "this server does not answer to that Host name; "
                                       "start it with --allowed-host NAME (or $TEXTWORKER_ALLOWED_HOSTS) to add one")
            return
        await self.app(scope, receive, send)


# --------------------------------------------------------------------------- body size


class BodyTooLarge(HTTPException):
    """Raised from `receive` when a streamed body passes the limit; FastAPI and Starlette answer it as 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the body is larger than {limit} bytes, this server's limit")


class BodyLimit:
    """413 for a body over `max_bytes`, before auth and before the body is read."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _headers(scope).get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await send_json(send, 400, "Content-Length is not a number")
                return
            if int(declared) > self.max_bytes:
                await send_json(send, 413, f"the body has {int(declared)} bytes; this server's limit is {self.max_bytes}")
                return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except BodyTooLarge as exc:  # raised where no exception handler turned it into a response
            if started:
                raise
            await send_json(send, 413, str(exc.detail))


# --------------------------------------------------------------------------- CSRF


class CsrfGuard:
    """State-changing requests need a JSON body type and a header no cross-site page can send unasked."""

    def __init__(self, app: ASGIApp, form_paths: frozenset[str] = FORM_PATHS) -> None:
        self.app = app
        self.form_paths = form_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if scope["path"] in self.form_paths:
            if media and media != "application/x-www-form-urlencoded":
                await send_json(send, 415, "send the sign-in form as application/x-www-form-urlencoded")
                return
        elif media != "application/json" and not media.endswith("+json"):
            await send_json(send, 415, "send the body as JSON, with Content-Type: application/json")
            return
        elif headers.get(CSRF_HEADER) != "1" and not headers.get("authorization"):
            await send_json(send, 403, "a state-changing request needs the header X-Textworker: 1 (or Authorization)")
            return
        await self.app(scope, receive, send)


# --------------------------------------------------------------------------- database errors


async def database_unavailable(request: Any, exc: Exception) -> Any:
    """A database error as a response that never echoes the database's message (which can name hosts,
    users, tables and values): 422 when the database refused a value of the request, else 503 with Retry-After."""
    from sqlalchemy.exc import DataError
    from starlette.responses import JSONResponse

    log.warning("database error while answering a request",
                extra={"path": request.url.path, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
    if isinstance(exc, DataError):
        return JSONResponse({"detail": "the database refused a value of this request; the server log has its message"}, status_code=422)
    return JSONResponse({"detail": "the database is unavailable; retry later"}, status_code=503, headers={"Retry-After": "5"})


# --------------------------------------------------------------------------- all together


def harden(app: Any, *, max_body_bytes: int, token: str | None, extra_hosts: Iterable[str] = ()) -> Any:
    """Add the layers of the module docstring to a FastAPI/Starlette `app` (call after its own middleware),
    and answer database errors (`SQLAlchemyError`, `SinkError`) without their message."""
    from sqlalchemy.exc import SQLAlchemyError

    from worker.errors import SinkError

    app.add_exception_handler(SQLAlchemyError, database_unavailable)
    app.add_exception_handler(SinkError, database_unavailable)
    app.add_middleware(CsrfGuard)
    if token:
        app.add_middleware(BearerAuthMiddleware, auth=BearerAuth(token))
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(HostGuard, names=allowed_hosts(extra_hosts))
    return app

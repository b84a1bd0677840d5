"""Bearer-token auth shared by every HTTP endpoint textworker opens (dashboard, /metrics, serve).

Rules:
- the token comes from `--token` or `$TEXTWORKER_TOKEN`; without one, endpoints are open,
  and `check_bind` refuses to listen on any address but loopback;
- API clients send `Authorization: Bearer <token>`; tokens are compared in constant time;
- a browser signs in once through the dashboard's form and then holds a cookie whose
  value is an HMAC of the token (not the token itself), HttpOnly and SameSite=Strict;
- the token never appears in a URL, a page, a log line or a repr.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from http.cookies import CookieError, SimpleCookie
from typing import Any

from worker.errors import TextworkerError

TOKEN_ENV = "TEXTWORKER_TOKEN"
COOKIE = "textworker_session"
_SESSION_CONTEXT = b"textworker dashboard session v1"


def resolve_token(explicit: str | None = None) -> str | None:
    """`--token`, else `$TEXTWORKER_TOKEN`; an empty value means no token."""
    token = explicit if explicit is not None else os.environ.get(TOKEN_ENV)
    return token or None


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve on a non-loopback address without a token."""
    if token is None and not is_loopback(host):
        raise TextworkerError(
            f"refusing to listen on {host} without a token: anyone who reaches it could read the results and requeue dead letters",
            hint=f"set ${TOKEN_ENV} (or --token), or listen on 127.0.0.1",
        )


class BearerAuth:
    """Checks requests against one token; `enabled` is False when there is none."""

    def __init__(self, token: str | None) -> None:
        self._token = token.encode("utf-8") if token else None

    def __repr__(self) -> str:
        return f"BearerAuth(enabled={self.enabled})"

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def check_token(self, candidate: str | None) -> bool:
        if self._token is None:
            return True
        if not candidate:
            return False
        return hmac.compare_digest(candidate.encode("utf-8"), self._token)

    def check_header(self, authorization: str | None) -> bool:
        """`Authorization: Bearer <token>`."""
        if self._token is None:
            return True
        scheme, _, value = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and self.check_token(value.strip())

    def session_value(self) -> str:
        """The cookie value for a signed-in browser: HMAC(token, context), never the token."""
        if self._token is None:
            return ""
        return hmac.new(self._token, _SESSION_CONTEXT, hashlib.sha256).hexdigest()

    def check_cookie(self, value: str | None) -> bool:
        if self._token is None:
            return True
        return bool(value) and hmac.compare_digest(str(value).encode("utf-8"), self.session_value().encode("utf-8"))


OPEN_PATHS = frozenset({"/", "/login", "/logout", "/healthz", "/readyz"})


class BearerAuthMiddleware:
    """ASGI middleware that puts every route of an app behind the token (for `textworker serve`).

    A request passes with `Authorization: Bearer <token>` or the dashboard's session cookie.
    `open_paths` stay reachable without either: the dashboard page (which shows its own
    sign-in form), sign-in/out, and the health probes orchestrators call. Without a token
    the middleware lets everything through (and `check_bind` keeps such a server on loopback).
    """

    def __init__(self, app: Any, auth: BearerAuth, open_paths: frozenset[str] = OPEN_PATHS) -> None:
        self.app = app
        self.auth = auth
        self.open_paths = open_paths

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.auth.enabled or scope.get("path", "") in self.open_paths or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        body = b'{"detail":"sign in: Authorization: Bearer <token>"}'
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b'Bearer realm="textworker"')]})
        await send({"type": "http.response.body", "body": body})

    def _allowed(self, scope: Any) -> bool:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.auth.check_header(headers.get("authorization")):
            return True
        cookies = SimpleCookie()
        try:
            cookies.load(headers.get("cookie", ""))
        except CookieError:
            return False
        morsel = cookies.get(COOKIE)
        return morsel is not None and self.auth.check_cookie(morsel.value)

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

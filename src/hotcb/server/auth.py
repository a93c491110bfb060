"""Token check for every REST call and WebSocket connect (when a token is in force).

The token travels as ``Authorization: Bearer T``, as ``?token=T``, or as the ``hotcb_token``
cookie that the server sets (HttpOnly, SameSite=Strict) when a request carries a valid
``?token=`` — so ``/docs`` works in a browser after opening the page's URL. The page itself
(``GET /``, ``/static/*``) and ``/api/health`` are public: they hold no data and no secret.
A refused WebSocket gets an HTTP 401 handshake answer where the server supports it, else a close
with code 4401 before it is accepted.
"""

from __future__ import annotations

import json
import secrets
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["TokenAuthMiddleware", "SameOriginMiddleware", "COOKIE_NAME", "PUBLIC_PATHS"]

COOKIE_NAME = "hotcb_token"
PUBLIC_PATHS = frozenset({"/", "/index.html", "/api/health", "/favicon.ico"})
WS_CLOSE_UNAUTHORIZED = 4401
_TOKEN_HELP = "missing or wrong token: send 'Authorization: Bearer <token>' or ?token=<token>"


def _public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith("/static/")


class TokenAuthMiddleware:
    """Pure ASGI middleware, so it guards HTTP and WebSocket alike."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    def _presented(self, scope: Scope) -> tuple[str | None, bool]:
        """The token the request carries, and whether it came in the query string."""
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if query.get("token"):
            return query["token"][-1], True
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, cred = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and cred:
                    return cred.strip(), False
            elif name == b"cookie":
                cookie: SimpleCookie = SimpleCookie()
                try:
                    cookie.load(value.decode("latin-1"))
                except Exception:
                    continue
                if COOKIE_NAME in cookie:
                    return cookie[COOKIE_NAME].value, False
        return None, False

    def _ok(self, presented: str | None) -> bool:
        assert self.token is not None
        return presented is not None and secrets.compare_digest(
            presented.encode(), self.token.encode()
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token is None or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        presented, in_query = self._presented(scope)
        ok = self._ok(presented)
        if scope["type"] == "websocket":
            if ok:
                await self.app(scope, receive, send)
            else:
                await _refuse_ws(scope, receive, send, 401, "missing or wrong token")
            return
        if not ok and not _public(scope["path"]):
            await _refuse_http(send, 401, _TOKEN_HELP, [(b"www-authenticate", b"Bearer")])
            return
        if ok and in_query:
            send = self._with_cookie(send)
        await self.app(scope, receive, send)

    def _with_cookie(self, send: Send) -> Send:
        assert self.token is not None
        cookie = f"{COOKIE_NAME}={self.token}; HttpOnly; SameSite=Strict; Path=/".encode()

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [*message.get("headers", []), (b"set-cookie", cookie)]
            await send(message)

        return wrapped


_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _hostname(netloc: str) -> str:
    """``host`` of ``host:port`` / ``[v6]:port``, lower-cased."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):
        return netloc[1 : netloc.find("]")] if "]" in netloc else netloc
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc


class SameOriginMiddleware:
    """Browser-side attacks on a dashboard bound to localhost.

    - Cross-site requests: a WebSocket, or a POST/PUT/PATCH/DELETE, whose ``Origin`` is not the
      server's own origin is refused (403), so another website open in the same browser cannot
      read the runs over the WebSocket or send commands.
    - DNS rebinding: when bound to loopback, a ``Host`` header that is not a loopback name (or
      one of ``allowed_hosts``) is refused (403).
    """

    def __init__(self, app: ASGIApp, *, loopback: bool, allowed_hosts: frozenset[str]) -> None:
        self.app = app
        self.loopback = loopback
        self.allowed = _LOOPBACK_NAMES | {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {
            k.decode(): v.decode("latin-1")
            for k, v in scope.get("headers", ())
            if k in (b"host", b"origin")
        }
        host = headers.get("host", "")
        reason = None
        if self.loopback and host and _hostname(host) not in self.allowed:
            reason = f"host {host!r} is not allowed (add it to allowed_hosts)"
        elif scope["type"] == "websocket" or scope.get("method") in _UNSAFE:
            origin = headers.get("origin")
            if origin is not None and (
                origin == "null" or origin.split("://", 1)[-1].lower() != host.lower()
            ):
                reason = f"cross-origin request from {origin} refused"
        if reason is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await _refuse_ws(scope, receive, send, 403, reason)
        else:
            await _refuse_http(send, 403, reason)


async def _refuse_http(
    send: Send, status: int, reason: str, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps({"detail": reason}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send(
        {"type": "http.response.start", "status": status, "headers": headers + (extra or [])}
    )
    await send({"type": "http.response.body", "body": body})


async def _refuse_ws(scope: Scope, receive: Receive, send: Send, status: int, reason: str) -> None:
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    if "websocket.http.response" in scope.get("extensions", {}):
        body = json.dumps({"detail": reason}).encode()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        code = WS_CLOSE_UNAUTHORIZED if status == 401 else 4403
        await send({"type": "websocket.close", "code": code})

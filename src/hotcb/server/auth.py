"""Who may talk to the server: the token check and the same-origin guard.

The token travels as ``Authorization: Bearer T``: API clients send it themselves, and so does
the page, which keeps it in its origin's ``localStorage``. A browser opens the printed URL
``/?token=T``; that request is answered with a redirect to ``/#token=T`` (other query
parameters kept); the page takes the token out of the address, and keeps it in its storage
once the server has taken it (a link to ``/#token=junk`` does not replace a working one). A
fragment is never sent to a server nor in a ``Referer``; the storage is the
page's own origin's, which includes the port. No cookie is ever set: browsers send a host's
cookies to every port of that host (``SameSite`` does not tell ports apart either), so a page
served by anyone else on another port of 127.0.0.1 would be sent the token with its own
requests. A cookie an older hotcb set is expired when it is seen (on HTTP answers), and never
read.

A browser's WebSocket cannot send headers: the page offers the subprotocols ``hotcb`` and
``hotcb.token.<the token's UTF-8 bytes in hex>``, and the server accepts ``hotcb``
(:func:`ws_subprotocol`). ``?token=T`` on an API call or on ``/ws`` is still accepted for
scripts (and redacted from the logs, see :mod:`hotcb.server.logs`). The page itself (``GET /``,
``/static/*``), the API's description (``/docs``, ``/openapi.json``) and ``/api/health`` are
public: they hold no data and no secret. A refused WebSocket gets an HTTP 401 handshake answer.
"""

from __future__ import annotations

import json
import re
import secrets
from urllib.parse import parse_qsl, quote, urlencode

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .logs import mark_ws_refused

__all__ = [
    "PUBLIC_PATHS",
    "WS_SUBPROTOCOL",
    "SameOriginMiddleware",
    "TokenAuthMiddleware",
    "refuse_http",
    "ws_subprotocol",
]

#: The cookie an older hotcb kept the token in (``hotcb_token_<port>``): expired on sight.
LEGACY_COOKIE = "hotcb_token"
#: The WebSocket subprotocol the page offers and the server accepts; the token rides beside it
#: as ``hotcb.token.<hex>``.
WS_SUBPROTOCOL = "hotcb"
WS_TOKEN_PREFIX = "hotcb.token."
PUBLIC_PATHS = frozenset(
    {"/", "/index.html", "/api/health", "/favicon.ico", "/docs", "/openapi.json"}
)
PAGE_PATHS = frozenset({"/", "/index.html"})
WS_CLOSE_UNAUTHORIZED = 4401
_TOKEN_HELP = (
    "missing or wrong token: open the URL that 'hotcb serve' printed (…/?token=…), or send "
    "'Authorization: Bearer <token>'"
)


def _public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith("/static/")


def _legacy_cookies(scope: Scope) -> list[str]:
    """The cookies an older hotcb set (``hotcb_token_<port>``, and before it ``hotcb_token``)
    that this request carries; tolerant of other sites' odd cookies on the same host."""
    header = _header(scope, b"cookie")
    if not header:
        return []
    server = scope.get("server")
    names = {LEGACY_COOKIE, f"{LEGACY_COOKIE}_{server[1]}" if server else LEGACY_COOKIE}
    present = {part.strip().partition("=")[0] for part in header.split(";")}
    return sorted(names & present)


def _subprotocol_token(scope: Scope) -> str | None:
    """The token a browser's WebSocket offered as ``hotcb.token.<hex>`` (``None`` if none, or
    not hex of UTF-8)."""
    for proto in scope.get("subprotocols") or ():
        if proto.startswith(WS_TOKEN_PREFIX):
            try:
                return bytes.fromhex(proto[len(WS_TOKEN_PREFIX) :]).decode()
            except ValueError:
                return None
    return None


def ws_subprotocol(scope: Scope) -> str | None:
    """The subprotocol to accept a WebSocket with: ``hotcb`` when the client offered it (a
    browser fails a connection whose offered subprotocols all go unanswered), else none."""
    return WS_SUBPROTOCOL if WS_SUBPROTOCOL in (scope.get("subprotocols") or ()) else None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


class TokenAuthMiddleware:
    """Pure ASGI middleware, so it guards HTTP and WebSocket alike. ``token=None`` (the
    ``no_token`` opt-out) lets everything through."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    def _presented(self, scope: Scope) -> tuple[str | None, bool]:
        """The token the request carries, and whether it came in the query string."""
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        if query.get("token"):
            return query["token"], True
        auth = _header(scope, b"authorization")
        if auth:
            scheme, _, cred = auth.partition(" ")
            if scheme.lower() == "bearer" and cred.strip():
                return cred.strip(), False
        if scope["type"] == "websocket":
            return _subprotocol_token(scope), False
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
        stale = _legacy_cookies(scope) if scope["type"] == "http" else []
        if stale:
            send = _expiring(stale, send)
        if scope["type"] == "websocket":
            if ok:
                await self.app(scope, receive, send)
            else:
                await _refuse_ws(scope, receive, send, 401, "missing or wrong token")
            return
        if in_query and scope["method"] in ("GET", "HEAD") and _navigation(scope):
            await self._redirect(scope, send, ok=ok)
            return
        if not ok and not _public(scope["path"]):
            await refuse_http(send, 401, _TOKEN_HELP, [(b"www-authenticate", b"Bearer")])
            return
        await self.app(scope, receive, send)

    async def _redirect(self, scope: Scope, send: Send, *, ok: bool) -> None:
        """303 to the same address without ``token`` (other query parameters kept); the page
        itself gets a right token back in the fragment, where its script takes it."""
        query = [
            (k, v)
            for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1"), True)
            if k != "token"
        ]
        # one leading slash: "//evil.example/?token=…" must not become a redirect off-site
        path = "/" + scope["path"].lstrip("/")
        location = quote(path) + (f"?{urlencode(query)}" if query else "")
        if ok and path in PAGE_PATHS:
            assert self.token is not None
            location += "#" + urlencode({"token": self.token})
        headers = [
            (b"location", location.encode("latin-1")),
            (b"cache-control", b"no-store"),
            (b"referrer-policy", b"no-referrer"),
            (b"content-length", b"0"),
        ]
        await send({"type": "http.response.start", "status": 303, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


def _expiring(names: list[str], send: Send) -> Send:
    """``send`` that also tells the browser to drop the cookies ``names``."""
    headers = [
        (b"set-cookie", f"{name}=; Max-Age=0; Path=/; HttpOnly; SameSite=Strict".encode())
        for name in names
    ]

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = dict(message)
            message["headers"] = [*message.get("headers", []), *headers]
        await send(message)

    return wrapped


def _navigation(scope: Scope) -> bool:
    """A browser opening the page or another public address (e.g. ``/docs``), as opposed to a
    script: the token is taken out of its address. An API address opened in the browser keeps
    ``?token=`` (the token is what lets it answer)."""
    path = scope["path"]
    if path in PAGE_PATHS:
        return True
    return _public(path) and _header(scope, b"sec-fetch-mode") == "navigate"


_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


#: A ``Host`` header: a name or IPv4 address, or ``[v6]``, then an optional ``:port``.
_HOST = re.compile(r"(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9._-]+))(?::[0-9]{1,5})?")


def _hostname(netloc: str) -> str:
    """``host`` of ``host:port`` / ``[v6]:port``, lower-cased; ``""`` for anything else
    (``127.0.0.1:80@evil``, a path, a space): no allowed name."""
    m = _HOST.fullmatch(netloc.strip().lower())
    if m is None:
        return ""
    return m["v6"] or m["name"]


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
        host = _header(scope, b"host") or ""
        origin = _header(scope, b"origin")
        reason = None
        if self.loopback and host and _hostname(host) not in self.allowed:
            reason = f"host {host!r} is not allowed (add it to allowed_hosts)"
        elif (
            (scope["type"] == "websocket" or scope.get("method") in _UNSAFE)
            and origin is not None
            and (origin == "null" or origin.split("://", 1)[-1].lower() != host.lower())
        ):
            reason = f"cross-origin request from {origin} refused"
        if reason is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await _refuse_ws(scope, receive, send, 403, reason)
        else:
            await refuse_http(send, 403, reason)


async def refuse_http(
    send: Send, status: int, reason: str, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Answer with ``{"detail": reason}`` and ``status``, without reading the request."""
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
        mark_ws_refused()
    else:
        code = WS_CLOSE_UNAUTHORIZED if status == 401 else 4403
        await send({"type": "websocket.close", "code": code})

"""HTTP guards that do not depend on who is asking: response headers, JSON-only writes and
the request size cap. Pure ASGI middlewares, so they act before FastAPI reads a body.

- :class:`SecurityHeadersMiddleware`: every HTTP response says where it may be framed and what
  the page may load (``Content-Security-Policy`` with ``frame-ancestors 'self'``,
  ``X-Frame-Options``, ``nosniff``): another site cannot put the dashboard in a frame and trick
  a click on *Stop*.
- :class:`JSONOnlyMiddleware`: a write to ``/api/*`` must be ``Content-Type: application/json``
  (415 otherwise). A cross-site page can POST ``text/plain``, a form or ``multipart`` without
  asking the browser's permission (no CORS preflight); JSON it cannot.
- :class:`BodyLimitMiddleware`: a body over ``max_body_bytes`` gets 413, without the app ever
  seeing it: when ``Content-Length`` says so, as soon as the count passes the cap when it is
  streamed. A body up to :data:`DRAIN_BYTES` is read to its end (and dropped) first: closing
  with bytes unread resets the connection, and the client often lost the 413 to the reset.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import refuse_http

__all__ = [
    "CSP",
    "BodyLimitMiddleware",
    "JSONOnlyMiddleware",
    "SecurityHeadersMiddleware",
]

#: The page loads its own scripts, styles and data only; nothing inline, no frames but its own.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'self'; base-uri 'none'; form-action 'self'; "
    "object-src 'none'"
)

_HEADERS = (
    (b"x-frame-options", b"SAMEORIGIN"),
    (b"x-content-type-options", b"nosniff"),
    # not "no-referrer": with it, some browsers send "Origin: null" on the page's own POSTs,
    # which the same-origin guard refuses
    (b"referrer-policy", b"same-origin"),
)
_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class SecurityHeadersMiddleware:
    """Adds :data:`CSP` (unless the response set its own, as ``/docs`` does), and
    ``X-Frame-Options``, ``X-Content-Type-Options`` and ``Referrer-Policy`` to every HTTP
    response."""

    def __init__(self, app: ASGIApp, csp: str = CSP) -> None:
        self.app = app
        self.csp = csp.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                if b"content-security-policy" not in present:
                    headers.append((b"content-security-policy", self.csp))
                headers += [(k, v) for k, v in _HEADERS if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


def _media_types(scope: Scope) -> list[str]:
    return [
        v.decode("latin-1").split(";", 1)[0].strip().lower()
        for k, v in scope.get("headers", ())
        if k == b"content-type"
    ]


class JSONOnlyMiddleware:
    """415 for a POST/PUT/PATCH/DELETE to ``/api/*`` whose ``Content-Type`` is not
    ``application/json`` (parameters such as ``; charset=utf-8`` are fine)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] in _WRITES
            and scope["path"].startswith("/api/")
            and _media_types(scope) != ["application/json"]
        ):
            got = ", ".join(_media_types(scope)) or "no Content-Type"
            await refuse_http(
                send,
                415,
                f"send the request as JSON with 'Content-Type: application/json' (got {got}); "
                "other types are refused because any website can send them to this server",
            )
            return
        await self.app(scope, receive, send)


_CLOSE = [(b"connection", b"close")]

#: The most of an over-cap body read and dropped before the 413. A client sends its whole body
#: before it reads the answer; a server that closes while bytes are still coming makes its
#: kernel answer them with a reset, which takes the unread 413 with it ("connection reset" one
#: time in five for a 1 MiB body on a loaded machine). A bigger body is cut off at once.
DRAIN_BYTES = 32 * 1024 * 1024


async def _drain(receive: Receive, budget: int) -> None:
    """Read and drop the request's body, ``budget`` bytes at most."""
    while budget > 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _too_large(max_bytes: int) -> str:
    return (
        f"request body is larger than {max_bytes} bytes (max_body_bytes); "
        "commands are small JSON objects"
    )


class BodyLimitMiddleware:
    """413 for a request body over ``max_bytes``: from ``Content-Length`` before reading, or
    by counting a chunked body as it arrives (the rest is never buffered). The answer closes
    the connection, so the client stops sending."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if await self._refused_by_length(scope, receive, send):
            return
        body = _CountedBody(self.max_bytes, receive, send)
        await self.app(scope, body.receive, body.send)

    async def _refused_by_length(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Answer 400 for a bad ``Content-Length`` and 413 for one over the cap; True if so."""
        for k, v in scope.get("headers", ()):
            if k != b"content-length":
                continue
            try:
                declared = int(v)
            except ValueError:
                await refuse_http(send, 400, f"bad Content-Length {v.decode('latin-1')!r}", _CLOSE)
                return True
            if declared > self.max_bytes:
                if declared <= DRAIN_BYTES:
                    await _drain(receive, declared)
                await refuse_http(send, 413, _too_large(self.max_bytes), _CLOSE)
                return True
        return False


class _CountedBody:
    """One request's ``receive``/``send`` pair that counts the body as it arrives. Past the
    cap the client gets 413 (unless the app already started its reply), the app sees the
    client go away, and whatever the app answers after that is dropped."""

    def __init__(self, max_bytes: int, receive: Receive, send: Send) -> None:
        self.max_bytes = max_bytes
        self._receive = receive
        self._send = send
        self.received = 0
        self.refused = False
        self.started = False

    async def receive(self) -> Message:
        if self.refused:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.max_bytes:
                self.refused = True
                if not self.started:
                    await refuse_http(self._send, 413, _too_large(self.max_bytes), _CLOSE)
                # the app sees the client go away and gives up on the body
                return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        if self.refused:  # the 413 is the answer; drop the app's reply to the cut body
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)

"""Keep the token out of the server's log lines.

uvicorn writes the path with its query string in the access log (``uvicorn.access``) and in
its WebSocket lines (``uvicorn.error``); a script calling ``/api/runs?token=T`` would leave the
token in every log file. :func:`install_log_filters` puts a :class:`RedactTokens` filter on
both loggers (``hotcb serve`` and :func:`hotcb.server.app.create_app` call it; it is idempotent).

At ``--log-level debug`` the WebSocket handshake logs the request's headers, the token's
``authorization``, ``sec-websocket-protocol`` (the page's WebSocket offers the token there) and
``cookie`` among them: their values are redacted too.

The same filter drops one bogus line: uvicorn's ``websockets-sansio`` protocol logs
``ERROR: ASGI callable returned without completing handshake.`` after a WebSocket refused with
an HTTP answer (the ASGI denial-response extension), though the refusal went out complete
(uvicorn PR #3138). The refusal marks its connection's context with :func:`mark_ws_refused`;
only a record logged in that context is dropped, so a real incomplete handshake still shows.
"""

from __future__ import annotations

import contextvars
import logging
import re
from typing import Any

__all__ = ["RedactTokens", "install_log_filters", "mark_ws_refused", "redact"]

#: ``uvicorn.asgi`` is ``--log-level trace``: it logs each connection's ASGI scope (query string
#: and WebSocket subprotocols included).
LOGGERS = ("uvicorn.access", "uvicorn.error", "uvicorn.asgi")

# "token" as a query name, any of its letters percent-encoded (``tok%65n`` is read as token)
_TOKEN_NAME = "".join(f"(?:{c}|%{ord(c):02x})" for c in "token")
# the value runs to the next "&" or blank, but for a quote just before it (a quote inside may be
# part of a token, as curl sends it)
_TOKEN_IN_QUERY = re.compile(rf"(?i)((?:^|[?&;\s/'\"]){_TOKEN_NAME}=)[^&\s]*?(?=[\"']?(?:[&\s]|$))")
# the page's WebSocket offers the token as the subprotocol ``hotcb.token.<hex>``
_TOKEN_SUBPROTOCOL = re.compile(r"(?i)(hotcb\.token\.)[0-9a-f]+")
_INCOMPLETE_HANDSHAKE = "ASGI callable returned without completing handshake."

#: Set in the task of a WebSocket connection that was refused with an HTTP answer.
_ws_refused: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "hotcb_ws_refused", default=False
)


def mark_ws_refused() -> None:
    """Called by the middleware that refused a WebSocket with an HTTP answer."""
    _ws_refused.set(True)


#: Headers that carry the token: at ``--log-level debug`` the WebSocket handshake logs every
#: request header as ``< %s: %s`` (name, value), and the response's ``set-cookie``.
_SECRET_HEADERS = frozenset(
    {"authorization", "cookie", "set-cookie", "proxy-authorization", "sec-websocket-protocol"}
)
_TOKEN_IN_HEADER = re.compile(r"(?i)((?:authorization|cookie|sec-websocket-protocol):\s*).+")


def redact(text: str) -> str:
    """``…?token=SECRET&run=a`` → ``…?token=[redacted]&run=a``; a header line ``authorization:
    Bearer SECRET`` (or ``cookie: …``) → ``authorization: [redacted]``; ``hotcb.token.HEX`` →
    ``hotcb.token.[redacted]``."""
    text = _TOKEN_IN_QUERY.sub(r"\1[redacted]", text)
    return _TOKEN_SUBPROTOCOL.sub(r"\1[redacted]", _TOKEN_IN_HEADER.sub(r"\1[redacted]", text))


_PLAIN = (str, int, float)


def _plain(args: Any) -> bool:
    """Arguments that format as themselves (each can be redacted alone): uvicorn's access line
    keeps its five of them, which its formatter reads."""
    values = args.values() if isinstance(args, dict) else args
    return all(isinstance(v, _PLAIN) for v in values)


def _formatted(record: logging.LogRecord) -> str:
    """The record's message with its arguments in, redacted; never raises (a record that does
    not format is shown as its parts, still redacted, rather than leak through the error
    report of logging's handler)."""
    try:
        return redact(record.getMessage())
    except Exception:  # any error of the caller's format string
        return redact(f"{record.msg} % {record.args!r}")


class RedactTokens(logging.Filter):
    """Rewrites ``token=…`` in a record's message, arguments and traceback; drops uvicorn's
    spurious incomplete-handshake error for a WebSocket that hotcb refused."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == _INCOMPLETE_HANDSHAKE and _ws_refused.get():
            return False
        args = record.args
        if isinstance(args, tuple) and len(args) == 2 and str(args[0]).lower() in _SECRET_HEADERS:
            record.args = (args[0], "[redacted]")  # a header dump: "< %s: %s"
        elif (args and not _plain(args)) or not isinstance(record.msg, str):
            record.msg, record.args = _formatted(record), ()  # e.g. a scope dict (trace)
        elif isinstance(args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in args)
        elif isinstance(args, dict):
            record.args = {k: redact(v) if isinstance(v, str) else v for k, v in args.items()}
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if record.args:
            try:
                record.getMessage()
            except Exception:  # it would fail in the handler, whose report shows the arguments
                record.msg, record.args = _formatted(record), ()
        if record.exc_info and not record.exc_text:  # formatters use exc_text when it is set
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


def install_log_filters() -> None:
    """Put one :class:`RedactTokens` on each of uvicorn's loggers (again: no effect).
    ``logging.config.dictConfig`` (which uvicorn runs) keeps a logger's filters."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())

"""Real receivers for the notify tests: an HTTP server and an SMTP server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


class Receiver:
    """What a local HTTP server got: ``bodies`` (parsed JSON) by path; it answers with the
    next status in ``statuses`` (then 200)."""

    def __init__(self) -> None:
        self.got: list[tuple[str, Any]] = []
        self.auth: list[str | None] = []  # each delivered request's Authorization header
        self.statuses: list[int] = []
        self.lock = threading.Condition()
        self.url = ""

    def bodies(self, path: str) -> list[Any]:
        with self.lock:
            return [b for p, b in self.got if p == path]

    def wait_for(self, path: str, n: int, timeout: float = 30.0) -> list[Any]:
        return wait_until(lambda: len(self.bodies(path)) >= n and self.bodies(path), timeout)


def wait_until(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll ``check`` until it returns something truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.02)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with rec.lock:
                status = rec.statuses.pop(0) if rec.statuses else 200
                if status == 200:
                    rec.got.append((self.path.split("?")[0], body))
                    rec.auth.append(self.headers.get("Authorization"))
                rec.lock.notify_all()
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.url = f"http://127.0.0.1:{server.server_address[1]}"
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield rec
    server.shutdown()
    server.server_close()


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        from email import message_from_bytes

        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture
def smtp_server() -> Iterator[tuple[str, int, Mailbox]]:
    import socket

    from aiosmtpd.controller import Controller

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    box = Mailbox()
    ctl = Controller(box, hostname="127.0.0.1", port=port)
    ctl.start()
    yield "127.0.0.1", port, box
    ctl.stop()

"""Test helpers for the dashboard: a real server on 127.0.0.1, never a mock transport.

- :func:`serve_in_thread` runs :func:`~hotcb.server.app.create_app` under uvicorn in a thread
  (a free port) and returns a :class:`LiveServer`, whose clients carry the token.
- :class:`ServeProcess` runs ``hotcb serve`` as a real process (restartable on its port), for
  what only the command shows: what it prints and logs, its memory, another user's view.
- :func:`chromium` launches Debian's headless Chromium (``/usr/bin/chromium``) with Playwright,
  for tests of the page; never a downloaded browser.

hotcb's own tests use both (``tests/server``, ``tests/security``); so can yours::

    srv = serve_in_thread(DashboardConfig.load(dir=run_dir))
    with srv.client() as c:
        c.post("/api/runs/commands", json={"module": "control", "op": "pause"})
    srv.stop()

Needs the ``dashboard`` extra, plus ``httpx`` for :meth:`LiveServer.client`.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn

from ..testing import wait_for
from .app import create_app
from .config import DashboardConfig

__all__ = [
    "CHROMIUM",
    "LiveServer",
    "ServeProcess",
    "chromium",
    "free_port",
    "http_up",
    "serve_in_thread",
]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_up(url: str) -> bool:
    """Whether ``url`` answers 200 now."""
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class LiveServer:
    """A server started by :func:`serve_in_thread`."""

    url: str
    ws_url: str
    config: DashboardConfig
    root: str
    deps: Any  # the app's hotcb.server.deps.Deps (registry, hub), for white-box checks
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def token(self) -> str | None:
        return self.config.token

    def client(self, token: str | None = None, *, auth: bool = True) -> Any:
        """An ``httpx.Client`` on the server sending ``Authorization: Bearer`` with ``token``
        (default: the server's own); ``auth=False``: a client without any token."""
        import httpx

        token = token or (self.token if auth else None)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10)

    def ws(self, *, auth: bool = True, **kwargs: Any) -> Any:
        """A ``websockets`` sync connection to ``/ws`` (with the Bearer token unless
        ``auth=False``); use it as a context manager."""
        from websockets.sync.client import connect

        if auth and self.token:
            headers = dict(kwargs.pop("additional_headers", None) or {})
            headers.setdefault("Authorization", f"Bearer {self.token}")
            kwargs["additional_headers"] = headers
        return connect(self.ws_url, **kwargs)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def serve_in_thread(config: DashboardConfig, static_dir: str | None = None) -> LiveServer:
    """Start the app for ``config`` on 127.0.0.1 (a free port; ``config.port`` is ignored),
    served by uvicorn in a daemon thread, and wait until it answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(config, static_dir=static_dir)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level="warning",
            ws="websockets-sansio",
            ws_max_size=config.max_body_bytes,
            lifespan="on",
        )
    )
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: http_up(url + "/api/health"), timeout=20, what="the dashboard server")
    return LiveServer(
        url, f"ws://127.0.0.1:{port}/ws", config, config.dir, app.state.deps, server, thread
    )


_URL_LINE = re.compile(r"hotcb dashboard for .*: (http://\S+)")


class ServeProcess:
    """``hotcb --dir ROOT serve --port PORT ARGS…`` as a real process.

    stdout and stderr go to ``serve-PORT.out`` / ``.err`` in ``log_dir`` (default: ``root``),
    appended on each :meth:`start`, so a restart on the same port keeps the earlier output.
    ``env`` is added to this process's environment without its ``HOTCB_*`` variables."""

    def __init__(
        self,
        root: str,
        port: int | None = None,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        log_dir: str | None = None,
    ) -> None:
        self.root = root
        self.port = port or free_port()
        self.args = list(args)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("HOTCB_")}
        self.env.update(env or {})
        self.url = f"http://127.0.0.1:{self.port}"
        base = os.path.join(log_dir or root, f"serve-{self.port}")
        self.out_path, self.err_path = base + ".out", base + ".err"
        self.proc: subprocess.Popen[bytes] | None = None
        self._offsets = (0, 0)

    @property
    def argv(self) -> list[str]:
        return [sys.executable, "-m", "hotcb", "--dir", self.root, "serve",
                "--port", str(self.port), *self.args]  # fmt: skip

    def start(self, timeout: float = 30) -> str:
        """Start the server, wait until it answers, return the URL it printed."""
        with open(self.out_path, "ab") as out, open(self.err_path, "ab") as err:
            self._offsets = (out.tell(), err.tell())
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=err)

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"hotcb serve exited ({self.proc.returncode}): {self.output()}")
            return http_up(self.url + "/api/health")

        wait_for(up, timeout=timeout, what="hotcb serve to answer")
        found = wait_for(lambda: _URL_LINE.search(self.stdout()), 5, what="the printed URL")
        return found.group(1)

    def stdout(self) -> str:
        """What this start printed on stdout so far."""
        return _read_from(self.out_path, self._offsets[0])

    def stderr(self) -> str:
        return _read_from(self.err_path, self._offsets[1])

    def output(self) -> str:
        return self.stdout() + self.stderr()

    def stop(self, sig: int = signal.SIGINT, timeout: float = 10) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def _read_from(path: str, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


@contextmanager
def chromium(executable: str = CHROMIUM) -> Iterator[Any]:
    """A headless Playwright ``Browser`` on ``executable`` (closed on exit). Raises
    ``ImportError`` without Playwright and ``FileNotFoundError`` without the browser."""
    from playwright.sync_api import sync_playwright

    if not os.path.exists(executable):
        raise FileNotFoundError(f"{executable} is missing (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=executable, headless=True, args=list(CHROMIUM_ARGS)
        )
        try:
            yield browser
        finally:
            browser.close()

"""Fixtures for the dashboard's attack tests (``test_dashboard_*.py``).

Every attack runs against a real server on 127.0.0.1, started the two ways the server tests
use (:mod:`hotcb.server.testing`): ``live_server`` (the app under uvicorn in a thread) and
``serve`` (the real ``hotcb serve`` command as a process). ``other_origin`` is the attacker's
website: a plain ``http.server`` on another port of 127.0.0.1, so a real second origin for the
browser. ``browser``/``page`` drive Debian's headless Chromium.

Other tests share this folder: nothing here imports the dashboard's dependencies until a
fixture asks for them (a missing extra skips only the tests that use it).
"""

from __future__ import annotations

import http.server
import json
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hotcb.metrics import MetricsCollector

COMMANDS = "hotcb.commands.jsonl"


def _make_run(path: Any, steps: int = 3) -> str:
    run = os.fspath(path)
    with MetricsCollector(run) as m:
        for s in range(steps):
            m.log(s, {"loss": 1.0 / (s + 1)})
    return run


def _commands(run: str) -> list[dict[str, Any]]:
    path = os.path.join(run, COMMANDS)
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        return [json.loads(line) for line in f.read().split(b"\n") if line.strip()]


@pytest.fixture
def make_run() -> Callable[..., str]:
    """``make_run(path, steps=3)``: a run directory with a few metrics (enough to be listed)."""
    return _make_run


@pytest.fixture
def read_commands() -> Callable[[str], list[dict[str, Any]]]:
    """``read_commands(run)``: the run's command records (``[]`` when the file does not exist)."""
    return _commands


def _dashboard() -> Any:
    pytest.importorskip("fastapi")
    import hotcb.server.testing

    return hotcb.server.testing


@pytest.fixture
def live_server(tmp_path: Any) -> Iterator[Callable[..., Any]]:
    """``live_server(root=None, **config)``: the app in a thread over ``root`` (default:
    tmp_path), with the default security settings unless ``config`` says otherwise; a
    :class:`hotcb.server.testing.LiveServer`."""
    testing = _dashboard()
    from hotcb.server.config import DashboardConfig

    started: list[Any] = []

    def start(root: Any = None, **overrides: Any) -> Any:
        config = DashboardConfig.load(None, dir=os.fspath(root or tmp_path), **overrides)
        srv = testing.serve_in_thread(config)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture
def serve(tmp_path: Any) -> Iterator[Callable[..., Any]]:
    """``serve(root, *args, env=None)``: ``hotcb --dir root serve --port P *args`` started (its
    output in ``tmp_path/logs``), a :class:`hotcb.server.testing.ServeProcess`; stopped after
    the test."""
    testing = _dashboard()
    started: list[Any] = []
    logs = tmp_path / "logs"
    logs.mkdir()

    def start(root: Any, *args: str, env: dict[str, str] | None = None) -> Any:
        proc = testing.ServeProcess(os.fspath(root), args=args, env=env, log_dir=os.fspath(logs))
        started.append(proc)
        proc.start()
        return proc

    yield start
    for proc in started:
        proc.stop()


class OtherOrigin:
    """``other_origin({"/path": html})`` serves those pages from another port of 127.0.0.1
    (another origin than the dashboard) and returns its base URL. ``requests`` holds what
    reached the attacker: ``(method, path, headers)`` of every request, bodies included as a
    ``body`` header."""

    def __init__(self) -> None:
        self.servers: list[http.server.ThreadingHTTPServer] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []

    def __call__(self, pages: dict[str, str]) -> str:
        seen = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def _record(self) -> None:
                headers = dict(self.headers.items())
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    headers["body"] = self.rfile.read(length).decode("latin-1")
                seen.append((self.command, self.path, headers))

            def do_GET(self) -> None:
                self._record()
                body = pages.get(self.path.split("?", 1)[0])
                if body is None:
                    self.send_error(404)
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                self._record()
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        self.servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}"

    def close(self) -> None:
        for httpd in self.servers:
            httpd.shutdown()
            httpd.server_close()


@pytest.fixture
def other_origin() -> Iterator[OtherOrigin]:
    """The attacker's website, see :class:`OtherOrigin`."""
    site = OtherOrigin()
    yield site
    site.close()


@pytest.fixture(scope="module")  # not session: its event loop would outlive the module
def browser() -> Iterator[Any]:
    testing = _dashboard()
    pytest.importorskip("playwright.sync_api")
    if not os.path.exists(testing.CHROMIUM):
        pytest.skip(f"{testing.CHROMIUM} is missing (apt-get install chromium)")
    with testing.chromium() as b:
        yield b


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context and page; ``page.console`` collects every console message and
    ``page.violations`` every CSP violation the page reported (``securitypolicyviolation``)."""
    ctx = browser.new_context(viewport={"width": 1440, "height": 1000})
    pg = ctx.new_page()
    pg.console = []
    pg.on("console", lambda msg: pg.console.append(f"{msg.type}: {msg.text}"))
    pg.on("pageerror", lambda exc: pg.console.append(f"pageerror: {exc}"))
    pg.add_init_script(
        "window.__violations = [];"
        "document.addEventListener('securitypolicyviolation', (e) => window.__violations.push("
        "`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`));"
    )
    yield pg
    ctx.close()

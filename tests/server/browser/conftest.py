"""Fixtures for the page tests: Debian's headless Chromium driven by Playwright, a real demo
trainer process, and a real ``hotcb serve`` process (restartable on the same port).

The server is :class:`hotcb.server.testing.ServeProcess` with the token in ``HOTCB_TOKEN``; a
page opens the printed URL (``/?token=…``), which the server answers with a cookie and a
redirect to the same address without the token.

Chromium is ``/usr/bin/chromium`` (``.ci/run`` installs it with apt-get); a downloaded browser
is never used. The tests skip with a reason when Playwright or Chromium is missing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from hotcb.server.testing import CHROMIUM, ServeProcess, chromium, free_port
from hotcb.testing import wait_for

TOKEN = "browser-test-token"
ENV = {k: v for k, v in os.environ.items() if not k.startswith("HOTCB_")}


def debug(page: Any) -> dict[str, Any]:
    """What the page says of itself (``window.hotcb.debug()``)."""
    return page.evaluate("window.hotcb.debug()")


def wait_page(page: Any, expr: str, timeout: float = 60) -> dict[str, Any]:
    """Wait until the JS expression over ``d`` (= ``window.hotcb.debug()``) is truthy."""
    fn = f"() => {{ const d = window.hotcb && window.hotcb.debug(); return !!(d && ({expr})); }}"
    page.wait_for_function(fn, timeout=timeout * 1000)
    return debug(page)


def read_jsonl(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    return [json.loads(line) for line in data.split(b"\n")[:-1] if line.strip()]


def stop(proc: subprocess.Popen[Any], sig: int = signal.SIGINT, timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def last_step(path: str) -> int:
    """The last step in a run's metrics file (-1: none yet)."""
    recs = read_jsonl(os.path.join(path, "hotcb.metrics.jsonl"))
    return recs[-1]["step"] if recs else -1


def trainers(tmp_path: Any, source: str) -> Iterator[Any]:
    """The body of a ``trainer`` fixture: yields ``start(name, *args)``, which runs ``source``
    (``python -c``, argv: the run's path, then ``args``) on ``tmp_path/runs/name`` and waits
    for its first metrics; every trainer started is stopped after the test. The run's path is
    the process's ``path``."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, *args: str) -> subprocess.Popen[bytes]:
        path = os.fspath(tmp_path / "runs" / name)
        proc = subprocess.Popen([sys.executable, "-c", source, path, *args], env=ENV)
        proc.path = path  # type: ignore[attr-defined]
        procs.append(proc)
        wait_for(lambda: last_step(path) >= 0, timeout=60, what=f"the trainer of {name}")
        return proc

    yield start
    for proc in procs:
        stop(proc)


# ------------------------------------------------------------------------------ browser
@pytest.fixture(scope="module")  # not session: its event loop would outlive the module
def browser() -> Iterator[Any]:
    pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page; console errors and uncaught exceptions of the page while the test runs
    fail it (checked by ``pytest_runtest_call`` below)."""
    ctx = browser.new_context(viewport={"width": 1440, "height": 1000})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    pg.on(
        "console",
        lambda msg: (
            errors.append(f"console: {msg.text}")
            # a refused fetch while the server is down (restart test) is expected noise
            if msg.type == "error"
            and "ERR_CONNECTION_REFUSED" not in msg.text
            and "WebSocket connection" not in msg.text
            else None
        ),
    )
    pg.errors = errors
    yield pg
    ctx.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """The page's errors as of the end of the test body: a function-scoped server (``serve_dir``)
    stops before the page closes, and a fetch it cuts off then (ERR_CONNECTION_RESET) is the
    teardown's, not the page's (a CI run failed on one)."""
    result = yield
    pg = getattr(item, "funcargs", {}).get("page")
    if pg is not None:
        errors = list(pg.errors)
        assert not errors, f"the page logged errors: {errors}"
    return result


# ------------------------------------------------------------------------------ runs
class Run:
    """A demo trainer process (``python -m hotcb.demo train``) writing into ``path``."""

    def __init__(self, path: str, *args: str) -> None:
        self.path = path
        argv = [sys.executable, "-m", "hotcb.demo", "train", "--run-dir", path, *args]
        self.log = open(path + ".log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=ENV)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def ledger(self) -> list[dict[str, Any]]:
        return read_jsonl(self.file("hotcb.applied.jsonl"))

    def commands(self) -> list[dict[str, Any]]:
        return read_jsonl(self.file("hotcb.commands.jsonl"))

    def last_step(self) -> int:
        recs = read_jsonl(self.file("hotcb.metrics.jsonl"))
        return recs[-1]["step"] if recs else -1

    def entry(self, cmd_id: str, decision: str | None = None) -> dict[str, Any] | None:
        for e in self.ledger():
            if e.get("cmd_id") == cmd_id and (decision is None or e["decision"] == decision):
                return e
        return None

    def close(self) -> None:
        stop(self.proc)
        self.log.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: Any) -> Iterator[dict[str, Run]]:
    """``live``: the golden demo trainer, a step every ~10 ms, for the whole module;
    ``baseline``: a short finished run beside it (for overlay and the stale banner)."""
    root = os.fspath(tmp_path_factory.mktemp("runs"))
    live = Run(os.path.join(root, "live"), "--golden", "--max-steps", "1000000",
               "--step-delay", "0.01")  # fmt: skip
    # the pure-Python loop: no second torch start-up competing for the CPU
    baseline = Run(os.path.join(root, "baseline"), "--synthetic", "--max-steps", "120",
                   "--step-delay", "0")  # fmt: skip
    try:
        wait_for(lambda: live.last_step() >= 30, timeout=120, what="the live trainer's metrics")
        wait_for(lambda: os.path.exists(live.file("hotcb.actuators.json")), timeout=10)
        assert baseline.proc.wait(60) == 0
        yield {"root": root, "live": live, "baseline": baseline}  # type: ignore[dict-item]
    finally:
        live.close()
        baseline.close()


class Server(ServeProcess):
    """``hotcb --dir ROOT serve --port P`` as a real process (restartable), with the token in
    ``HOTCB_TOKEN`` (never on the command line)."""

    def __init__(self, root: str, port: int) -> None:
        # small timers and a small first ledger page, so that the tests see them act
        env = {
            "HOTCB_TOKEN": TOKEN,
            "HOTCB_UI__STALE_AFTER_SEC": "3",
            "HOTCB_UI__RECONNECT_MAX_DELAY_SEC": "1",
            "HOTCB_LEDGER_LIMIT": "3",
        }
        super().__init__(root, port, env=env)

    def start(self, timeout: float = 30) -> str:
        printed = super().start(timeout)
        # the URL it prints carries the token, so a person can click it
        assert re.fullmatch(rf"http://127\.0\.0\.1:{self.port}/\?token={TOKEN}", printed), printed
        return printed

    def page_url(self, run: str | None = None) -> str:
        """The printed URL (with the token; the server trades it for a cookie)."""
        q = f"?token={TOKEN}" + (f"&run={run}" if run else "")
        return f"{self.url}/{q}"


@pytest.fixture(scope="module")
def server(runs: dict[str, Any]) -> Iterator[Server]:
    srv = Server(runs["root"], free_port())
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def serve_dir() -> Iterator[Any]:
    """``serve_dir(path, env=None)`` starts another ``hotcb serve`` over ``path`` (``env``: its
    settings, ``HOTCB_…``); stopped after the test."""
    started: list[Server] = []

    def start(path: str, env: dict[str, str] | None = None) -> Server:
        srv = Server(path, free_port())
        srv.env.update(env or {})
        srv.start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()

"""What ``hotcb launch`` says about the signals it forwards: what it really sent (the third in a
row goes as SIGKILL), and SIGTERM goes as SIGTERM (docs/launch.md, Signals and exit codes)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from hotcb.testing import wait_for

ENV = {k: v for k, v in os.environ.items() if k != "HOTCB_DIR"}

#: A training that ignores SIGINT and SIGTERM (only SIGKILL ends it).
DEAF = (
    "import signal, time\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(600)\n"
)
#: A plain loop: SIGTERM's default action ends it.
PLAIN = "import time\nprint('ready', flush=True)\ntime.sleep(600)\n"


class Launched:
    """``hotcb launch -- python -c CODE`` in a subprocess, its output read as it comes."""

    def __init__(self, run_dir: Path, code: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hotcb", "--dir", os.fspath(run_dir), "launch", "--",
             sys.executable, "-c", code],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
        )  # fmt: skip
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(s, into), daemon=True)
                         for s, into in ((self.proc.stdout, self.out),
                                         (self.proc.stderr, self.err))]  # fmt: skip
        for t in self._readers:
            t.start()

    @staticmethod
    def _read(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))

    def said(self, part: str) -> list[str]:
        """The launcher's own lines that contain ``part``."""
        return [
            line for line in list(self.err) if line.startswith("hotcb launch:") and part in line
        ]

    def ready(self) -> int:
        """Wait for the training to run; its pid (the launcher names it)."""
        wait_for(lambda: ("ready" in self.out and self.pid()) or self.proc.poll() is not None,
                 120, what="the training ready")  # fmt: skip
        pid = self.pid()
        assert "ready" in self.out and pid is not None, self.log()
        return pid

    def pid(self) -> int | None:
        """The training's pid, once the launcher said it."""
        lines = self.said("training (pid ")
        return int(lines[0].split("training (pid ", 1)[1].split(")", 1)[0]) if lines else None

    def finish(self) -> int:
        code = self.proc.wait(120)
        for t in self._readers:
            t.join(30)
        return code

    def log(self) -> str:
        return "\n".join([*self.out[-20:], "--- stderr ---", *self.err[-40:]])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def launch(tmp_path: Path) -> Any:
    started: list[Launched] = []

    def start(code: str) -> Launched:
        lp = Launched(tmp_path / f"run{len(started)}", code)
        started.append(lp)
        return lp

    yield start
    for lp in started:
        pgid = lp.pid()  # the training leads its own process group: end it first
        if lp.proc.poll() is None and pgid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        lp.kill()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_the_third_signal_is_said_to_go_as_sigkill(launch: Any, sig: signal.Signals) -> None:
    lp = launch(DEAF)
    pid = lp.ready()
    for n in (1, 2, 3):
        lp.proc.send_signal(sig)
        wait_for(lambda n=n: len(lp.said("forwarded")) >= n, 60, what=f"signal {n} said")
    assert lp.finish() == 128 + signal.SIGKILL, lp.log()
    assert lp.said("forwarded") == [
        f"hotcb launch: {sig.name} forwarded to the training (pid {pid})",
        f"hotcb launch: {sig.name} forwarded to the training (pid {pid})",
        f"hotcb launch: {sig.name} forwarded as SIGKILL to the training (pid {pid}): the third "
        "in a row",
    ], lp.log()
    assert lp.said("training exited with 137"), lp.log()


@pytest.mark.slow
def test_sigterm_goes_as_sigterm(launch: Any) -> None:
    """A plain loop ends on SIGTERM's default action (143), not with KeyboardInterrupt (130)."""
    lp = launch(PLAIN)
    pid = lp.ready()
    lp.proc.send_signal(signal.SIGTERM)
    assert lp.finish() == 128 + signal.SIGTERM, lp.log()
    assert lp.said("forwarded") == [f"hotcb launch: SIGTERM forwarded to the training (pid {pid})"]
    assert "KeyboardInterrupt" not in "\n".join(lp.err), lp.log()

"""``hotcb --dir runs autopilot`` on a folder of runs, as a sweep uses it: real trainer
processes write their runs one after another (some nested, ``runs/sweep/b``), next to the real
CLI in its own process.

Found by a user: the autopilot left as soon as every run it had seen was over, so the sweep's
next run, started a few seconds later, got none; runs one level deeper were never looked at;
and ``--once`` wrote its lock and state files into every finished run it only reported on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from hotcb import HotClient
from hotcb.testing import wait_for

pytestmark = pytest.mark.slow

ENV = {k: v for k, v in os.environ.items() if k != "HOTCB_DIR"}


class Pilot:
    """``hotcb --dir FOLDER autopilot ARGS`` in its own process; its output lines as they
    come (a thread reads them, so that waiting on one has a deadline)."""

    def __init__(self, folder: str, *args: str) -> None:
        argv = [sys.executable, "-m", "hotcb", "--dir", folder, "autopilot", "--mode", "suggest",
                "--key-metric", "loss", "--interval", "0.2", *args]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=ENV)  # fmt: skip
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def out(self) -> str:
        return "\n".join(self.lines)

    def wait_line(self, text: str, timeout: float = 120) -> str:
        """The first line holding ``text``, once printed; fails at once if the process has
        exited without printing it."""

        def said() -> str | None:
            exited = self.proc.poll() is not None and not self._reader.is_alive()
            hit = next((line for line in self.lines if text in line), None)
            if hit is None and exited:
                raise AssertionError(f"the autopilot exited (code {self.proc.returncode}) "
                                     f"without saying {text!r}:\n{self.out}")  # fmt: skip
            return hit

        return str(wait_for(said, timeout, what=f"the autopilot to say {text!r}"))

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM (as ``hotcb launch`` stops it), then its exit code."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        return code

    def kill(self) -> None:
        """Killed if still running; its pipe closed."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(60)
        self._reader.join(60)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _files(run: str) -> set[str]:
    return set(os.listdir(run))


def test_a_folder_autopilot_drives_the_next_run_of_a_sweep_until_stopped(
    tmp_path: Path, start_trainer: Any
) -> None:
    """Run ``a`` of the sweep finishes; ``b`` (one level deeper) starts after it. The
    autopilot on the folder says it watches for later runs, stays, drives ``b``, and stops on
    SIGTERM, freeing ``b``."""
    folder = os.fspath(tmp_path / "runs")
    a, b = os.path.join(folder, "a"), os.path.join(folder, "sweep", "b")
    first = start_trainer(a, os.fspath(tmp_path / "a.jsonl"), steps=60, step_delay=0.01)
    first.wait_step(1, 120)
    client = HotClient(a, source="test")
    client.wait(client.pause(), 120)  # run a goes on once the autopilot drives it
    pilot = Pilot(folder)
    try:
        pilot.wait_line(f"hotcb autopilot (suggest) on {a};")
        client.resume()
        code, _out, err = first.finish(120)
        assert code == 0, err[-2000:]
        said = pilot.wait_line(f"the run {a} finished at step ")
        assert said.endswith(f"; still watching {folder}"), said
        assert pilot.proc.poll() is None  # every run it has seen is over: it stays
        second = start_trainer(b, os.fspath(tmp_path / "b.jsonl"), steps=100_000,
                               step_delay=0.01)  # fmt: skip
        pilot.wait_line(f"hotcb autopilot (suggest) on {b};")
        state = os.path.join(b, "hotcb.autopilot.state.json")
        wait_for(lambda: os.path.exists(state), 120, what="b's autopilot state")
        assert os.path.exists(os.path.join(b, "hotcb.autopilot.owner.json"))
        assert pilot.stop() == 0, pilot.out
        assert second.proc.poll() is None  # the run goes on without it
    finally:
        pilot.kill()
    assert not os.path.exists(os.path.join(b, "hotcb.autopilot.owner.json"))  # b is free
    assert pilot.out.count(f"on {a};") == 1, pilot.out  # a finished run is not taken again
    said = pilot.lines[0]  # it says how long it stays, before anything else
    assert said.startswith(f"hotcb autopilot: watching the runs in {folder} (up to 2 levels"), said
    assert "started later too, until Ctrl-C" in said, said


def test_once_on_a_folder_checks_nested_live_runs_and_leaves_finished_ones_untouched(
    tmp_path: Path, start_trainer: Any, cli: Any
) -> None:
    """``--once`` on a folder: one round on each live run, nested ones included; a finished
    run is named as left alone and gets no file (it had a lock and a state file)."""
    folder = os.fspath(tmp_path / "runs")
    done, live = os.path.join(folder, "done"), os.path.join(folder, "sweep", "live")
    over = start_trainer(done, os.fspath(tmp_path / "done.jsonl"), steps=20)
    code, _out, err = over.finish(120)
    assert code == 0, err[-2000:]
    before = _files(done)
    running = start_trainer(live, os.fspath(tmp_path / "live.jsonl"), steps=100_000,
                            step_delay=0.01)  # fmt: skip
    running.wait_step(3, 120)
    res = cli(folder, "autopilot", "--once", "--mode", "suggest", "--key-metric", "loss",
              timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"hotcb autopilot (suggest) on {live};" in res.stdout, res.stdout
    assert f"one round on {live} up to step" in res.stdout, res.stdout
    assert f"{done}: the run finished at step 19; left alone" in res.stdout, res.stdout
    assert _files(done) == before  # no lock, no state, no records
    assert os.path.exists(os.path.join(live, "hotcb.autopilot.state.json"))
    assert not os.path.exists(os.path.join(live, "hotcb.autopilot.owner.json"))

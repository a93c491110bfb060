"""Ramps say what they do: a start is not an arrival, and an interrupted ramp has its own
ledger entry (issue #11, item 1)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from hotcb.testing import StepDriver, read_ledger, wait_for


@pytest.fixture
def drv(tmp_path: Any) -> StepDriver:
    with StepDriver(os.fspath(tmp_path / "run"), weights={"ce": 1.0, "aux": 0.0}) as d:
        d.steps(1)
        yield d


def test_a_command_mid_ramp_supersedes_it_and_says_at_which_value(drv: StepDriver) -> None:
    ramp = drv.client.send("loss", "set_params", params={"aux": 1.0}, transition={"steps": 10})
    drv.steps(5)  # step 1 starts the ramp; steps 2..5 move it to 0.4
    jump = drv.client.loss(aux=0.25)
    drv.steps()
    start, ended = drv.entries(ramp)
    assert start["changes"] == {"aux": {"old": 0.0, "new": 1.0}} and start["transition"]
    assert ended["ramp"] == "superseded" and ended["superseded_by"] == jump
    assert ended["changes"]["aux"] == {"old": 0.0, "new": pytest.approx(0.4)}
    assert "superseded at 0.4" in ended["error"] and jump in ended["error"]
    assert ended["seq"] < drv.only(jump)["seq"]  # the ledger reads in the order it happened
    drv.steps(10)
    assert drv.weights["aux"] == 0.25  # the ramp never comes back


def test_a_scheduled_change_that_falls_due_mid_ramp_is_recorded_too(drv: StepDriver) -> None:
    ramp = drv.client.send("loss", "set_params", params={"aux": 1.0}, transition={"steps": 10})
    later = drv.client.send("loss", "set_params", params={"aux": 0.1}, at_step=4)
    drv.steps(6)
    ended = [e for e in drv.entries(ramp) if e.get("ramp")]
    assert [e["ramp"] for e in ended] == ["superseded"] and ended[0]["superseded_by"] == later
    assert drv.weights["aux"] == 0.1


def test_undo_mid_ramp_stops_it(drv: StepDriver) -> None:
    ramp = drv.client.send("loss", "set_params", params={"aux": 1.0}, transition={"steps": 10})
    drv.steps(3)
    drv.client.undo()
    drv.steps(12)
    ended = [e for e in drv.entries(ramp) if e.get("ramp")]
    assert [e["ramp"] for e in ended] == ["superseded"] and "by an undo" in ended[0]["error"]
    assert drv.weights["aux"] == 0.0


def test_a_ramp_still_going_when_the_loop_closes_is_ledgered_where_it_got_to(
    drv: StepDriver,
) -> None:
    """Nothing moves it after ``close()``: its end was never ledgered, ``hotcb status`` said
    "ramping" on the finished run, and a ``--wait`` on it waited out its timeout."""
    ramp = drv.client.send("loss", "set_params", params={"aux": 1.0}, transition={"steps": 1000})
    drv.steps(5)  # step 1 starts it; steps 2..5 move it
    drv.close()
    ended = [e for e in drv.entries(ramp) if e.get("ramp")]
    assert [e["ramp"] for e in ended] == ["superseded"]
    assert "the training loop it ran in ended" in ended[0]["error"]
    assert ended[0]["changes"]["aux"]["new"] == pytest.approx(0.004)
    acts = json.loads(Path(drv.paths.actuators).read_text())["actuators"]
    assert [a["state"] for a in acts if a["param_key"] == "aux"] != ["ramping"]


@pytest.mark.slow
def test_cli_wait_on_a_ramp_ends_with_exit_1_when_the_run_is_killed_mid_ramp(
    run_dir: str, tmp_path: Any, start_trainer: Any, cli: Any
) -> None:
    tr = start_trainer(run_dir, os.fspath(tmp_path / "t.jsonl"), steps=100_000, step_delay=0.005)
    tr.wait_step(2)
    done: list[Any] = []
    waiter = threading.Thread(target=lambda: done.append(cli(
        run_dir, "set", "lr=1e-3", "--ramp", "1000000", "--wait", "--timeout", "300",
        timeout=360)))  # fmt: skip
    waiter.start()
    try:
        wait_for(lambda: [e for e in read_ledger(run_dir) if e.get("transition")], 120,
                 what="the ramp's start")  # fmt: skip
    finally:
        tr.kill()
    tr.proc.communicate(timeout=60)
    waiter.join(120)  # (the run's end is seen within a second, not after the 300 s timeout)
    (proc,) = done
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "ramping 0.01 → 0.001" in proc.stdout
    assert "before the ramp of" in proc.stderr and "crashed" in proc.stderr


@pytest.mark.slow
def test_cli_wait_on_a_ramp_that_outlasts_it_says_the_ramp_goes_on(
    run_dir: str, tmp_path: Any, start_trainer: Any, cli: Any
) -> None:
    """Its timeout said "not handled yet; it stays queued, and the run applies it when it reads
    it", under the applied entry it had just printed: the ramp had started and goes on."""
    tr = start_trainer(run_dir, os.fspath(tmp_path / "t.jsonl"), steps=100_000, step_delay=0.005)
    tr.wait_step(2)
    done = cli(run_dir, "set", "lr=1e-3", "--ramp", "1000000", "--wait", "--timeout", "15")
    assert done.returncode == 3, (done.stdout, done.stderr)
    assert "ramping 0.01 → 0.001" in done.stdout
    assert "it goes on in the run" in done.stderr and "queued" not in done.stderr, done.stderr
    cli(run_dir, "stop")
    assert tr.finish()[0] == 0


@pytest.mark.slow
def test_cli_wait_on_a_ramp_says_it_ramps_then_waits_for_its_end(
    run_dir: str, tmp_path: Any, start_trainer: Any, cli: Any
) -> None:
    tr = start_trainer(run_dir, os.fspath(tmp_path / "t.jsonl"), steps=100_000, step_delay=0.005)
    tr.wait_step(2)
    done = cli(run_dir, "set", "lr=1e-3", "--ramp", "40", "--wait", "--timeout", "120")
    assert done.returncode == 0, done.stderr
    first, last = done.stdout.strip().splitlines()
    start = int(first.split(" step ")[1].split()[0])
    assert f"lr: ramping 0.01 → 0.001 over steps {start}..{start + 40}" in first
    assert "lr: ramped 0.01 → 0.001" in last and f"step {start + 40} [ramp]" in last
    cli(run_dir, "stop")
    assert tr.finish()[0] == 0


def test_a_ramp_a_life_left_under_way_ends_in_the_ledger_when_the_run_restarts(
    tmp_path: Any,
) -> None:
    """A notebook's ``HotKernel(...)`` cell run again mid-ramp (or a trainer killed mid-ramp
    and started again without a checkpoint): nothing moves the old ramp any more. Its end was
    never ledgered, so ``hotcb log`` and a ``--wait`` read it as still going."""
    run = os.fspath(tmp_path / "run")
    first = StepDriver(run, weights={"ce": 1.0, "aux": 0.0})
    first.steps(1)
    ramp = first.client.send("loss", "set_params", params={"aux": 1.0}, transition={"steps": 100})
    first.steps(5)  # left as it is: not closed
    with StepDriver(run, weights=first.weights) as again:
        again.steps(2)
        ended = [e for e in again.entries(ramp) if e.get("ramp")]
        assert [e["ramp"] for e in ended] == ["superseded"]
        assert "restarted without a checkpoint before the ramp ended" in ended[0]["error"]
        assert ended[0]["changes"]["aux"] == {"old": 0.0, "new": None}
    with StepDriver(run, weights=first.weights) as third:  # ended once, not at every start
        third.steps(1)
        assert [e["ramp"] for e in third.entries(ramp) if e.get("ramp")] == ["superseded"]

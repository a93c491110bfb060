"""Ramps say what they do: a start is not an arrival, and an interrupted ramp has its own
ledger entry (issue #11, item 1)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from hotcb.testing import StepDriver


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

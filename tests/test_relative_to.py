"""A multiplier sent ``relative_to`` the value its sender read (the autopilot's ``lr_mult``):
applied to the value in force when it lands, which a tuner's roll-back or a person may have
moved in between. Before, the autopilot sent ``read × factor`` as an absolute value, and a
plateau cut of ×0.3 computed from a tuner trial's raised lr, landing after the trial's
roll-back, came out as ×0.65 (or, from a trial at ×4, as a raise)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hotcb import HotClient
from hotcb.autopilot.engine import send_action
from hotcb.autopilot.rules import Action
from hotcb.cli._common import fmt_entry
from hotcb.errors import CommandError
from hotcb.ledger import LedgerEntry
from hotcb.recipe import ledger_to_entries
from hotcb.testing import TorchStepDriver


@pytest.fixture
def loop(run_dir: str) -> TorchStepDriver:
    drv = TorchStepDriver(run_dir)  # AdamW at lr 0.01
    yield drv
    drv.close()


def _lr_mult(loop: TorchStepDriver, factor: float, *, read: float) -> dict:
    """The autopilot's ``lr_mult`` computed from an lr it read as ``read`` (the run's is 0.01),
    landed at the next step: its ledger entry."""
    loop.steps(2)
    client = HotClient(loop.run_dir, source="autopilot")
    action = Action("lr_mult", {"factor": factor})
    (cid,) = send_action(client, action, "plateau", live={"opt.lr": read})
    loop.steps(1)
    return loop.only(cid)


def test_a_cut_computed_from_a_stale_lr_applies_to_the_lr_in_force(loop: TorchStepDriver) -> None:
    """The autopilot read lr 0.04 (a tuner trial's ×4); the roll-back to 0.01 landed first:
    its ×0.3 makes 0.003, not 0.012, a raise from the 0.01 in force."""
    e = _lr_mult(loop, 0.3, read=0.04)
    cid = e["cmd_id"]
    assert e["decision"] == "applied"
    assert e["changes"]["lr"]["old"] == 0.01
    assert e["changes"]["lr"]["new"] == pytest.approx(0.003)
    assert e["rebased"] == {"lr": {"sent": pytest.approx(0.012), "basis": 0.04, "in_force": 0.01}}
    assert loop.opt.param_groups[0]["lr"] == pytest.approx(0.003)
    assert "[lr x0.3 of 0.01 in force (sent for 0.04)]" in fmt_entry(e, loop.run_dir)  # hotcb log
    # what applies it again (a resume, a recipe export that a replay plays) sets 0.003
    assert LedgerEntry.from_dict(e).to_command()["params"]["lr"] == pytest.approx(0.003)
    (exported,) = [r for r in ledger_to_entries(loop.ledger(), loop.run_dir) if r.cmd_id == cid]
    assert exported.params["lr"] == pytest.approx(0.003)


def test_a_multiplier_from_an_up_to_date_read_is_sent_as_is(loop: TorchStepDriver) -> None:
    e = _lr_mult(loop, 0.5, read=0.01)
    assert e["changes"]["lr"] == {"old": 0.01, "new": 0.005} and "rebased" not in e
    assert e["relative_to"] == {"lr": 0.01}  # the command says what it was relative to
    # hotcb log says why the controller sent it (the ledger had the reason; the log did not)
    assert fmt_entry(e, loop.run_dir).endswith("(lr: 0.01 -> 0.005) (why: plateau)")


@pytest.mark.parametrize(
    ("module", "params", "relative_to", "says"),
    [
        ("control", {}, {"lr": 0.01}, "applies to opt/loss/custom set_params"),
        ("opt", {"lr": 0.003}, {"weight_decay": 0.01}, "not one of the command's params"),
        ("opt", {"lr": 0.003}, {"lr": 0}, "relative_to.lr must be a non-zero number"),
        ("opt", {"lr": 0.003}, [0.01], "must be an object"),
    ],
)
def test_a_bad_relative_to_is_refused_before_it_is_written(
    run_dir: str, module: str, params: dict, relative_to: object, says: str
) -> None:
    client = HotClient(run_dir, validate=False)
    op = "pause" if module == "control" else "set_params"
    with pytest.raises(CommandError, match=says):
        client.send(module, op, params=params, relative_to=relative_to)
    assert not Path(client.paths.commands).exists() or Path(client.paths.commands).read_text() == ""

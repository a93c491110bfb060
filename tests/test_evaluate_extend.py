"""``control evaluate`` and ``control extend`` in a bare loop (issue #15): a real torch loop
(TinyMLP on digits) that trains while fewer than ``kernel.max_steps`` steps are done and
evaluates when ``kernel.evaluate_requested``; commands are written the way every writer writes
them and read back from the ledger.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import torch

from hotcb import HotClient, jsonl
from hotcb.errors import CommandError, HotcbError
from hotcb.ops import make_command
from hotcb.recipe import export_recipe
from hotcb.testing import TorchStepDriver


class Loop(TorchStepDriver):
    """Trains while ``step + 1 < kernel.max_steps`` (what a bare loop does to honour
    ``hotcb extend``) and evaluates on held-out digits when asked."""

    def __init__(self, run_dir: str, base: int | None = 10, **kw: Any) -> None:
        super().__init__(run_dir, **kw)
        self.base = base  # the loop's own horizon, passed as env["max_steps"]
        self.evaluated: list[int] = []

    def train_step(self, step: int) -> Mapping[str, Any]:
        env = dict(super().train_step(step))
        if self.base is not None:
            env["max_steps"] = self.base
        return env

    def after_apply(self, env: Mapping[str, Any]) -> None:
        super().after_apply(env)
        kernel = self.kernel
        if kernel.evaluate_requested:
            kernel.evaluate_requested = False
            x, y = self.data
            with torch.no_grad():
                val = float(torch.nn.functional.cross_entropy(self.model(x[1500:]), y[1500:]))
            kernel.apply({"step": self.step, "metrics": {"val_loss": val}}, ("val_epoch_end",))
            self.evaluated.append(self.step)

    def run(self, actions: Mapping[int, Any] | None = None, limit: int = 200) -> int:
        """Train to the horizon (``actions[step](client)`` during a step); steps trained."""
        self.steps(1, actions=actions)  # the first apply seeds kernel.max_steps
        while self.step + 1 < (self.kernel.max_steps or 0) and not self.kernel.stop_requested:
            self.steps(1, actions=actions)
            assert self.step < limit
        return self.step + 1


@pytest.fixture
def loop(run_dir: str) -> Any:
    lp = Loop(run_dir)
    yield lp
    lp.close()


def test_extend_adds_steps_and_the_loop_trains_them(loop: Loop) -> None:
    ids: dict[str, str] = {}
    actions = {4: lambda c: ids.setdefault("ext", c.extend(5))}
    assert loop.run(actions) == 15
    e = loop.only(ids["ext"])
    assert e["decision"] == "applied" and e["step"] == 4
    assert e["changes"] == {"max_steps": {"old": 10, "new": 15}}
    assert loop.kernel.max_steps == 15 and loop.kernel.horizon == {"max_steps": 15}
    assert sorted(loop.lr) == list(range(15))  # fifteen optimizer steps, one lr each


def test_a_horizon_below_the_current_step_ends_the_run_after_it(loop: Loop) -> None:
    loop.base = 20
    ids: dict[str, str] = {}
    actions = {
        2: lambda c: ids.setdefault("fewer", c.extend(-3)),
        8: lambda c: ids.setdefault("to", c.extend(to_step=5)),
    }
    assert loop.run(actions) == 9  # steps 0..8: step 8 applied it, the loop stops after it
    assert loop.only(ids["fewer"])["changes"] == {"max_steps": {"old": 20, "new": 17}}
    assert loop.only(ids["to"])["changes"] == {"max_steps": {"old": 17, "new": 5}}


def test_undo_puts_the_old_horizon_back(loop: Loop) -> None:
    ids: dict[str, str] = {}
    actions = {
        1: lambda c: ids.setdefault("ext", c.extend(20)),
        3: lambda c: ids.setdefault("undo", c.undo()),
    }
    assert loop.run(actions) == 10
    undo = loop.only(ids["undo"])
    assert undo["decision"] == "applied" and undo["undo_of"] == ids["ext"]
    assert undo["changes"] == {"max_steps": {"old": 30, "new": 10}}
    # the loop's own horizon again: a checkpoint has no extend to replace a resumed loop's with
    assert loop.kernel.state_dict()["horizon"] == {}


def test_extend_scheduled_with_at_step_lands_there(loop: Loop) -> None:
    cid = loop.client.extend(3, at_step=6)
    assert loop.run() == 13
    (applied,) = [e for e in loop.entries(cid) if e["decision"] == "applied"]
    assert applied["step"] == 6


def test_what_extend_cannot_do_is_rejected_with_the_reason(run_dir: str) -> None:
    lp = Loop(run_dir, base=None)  # the loop never says how long it trains
    try:
        steps, epochs, to = lp.client.extend(5), lp.client.extend(epochs=1), None
        lp.steps(1)
        assert lp.kernel.max_steps is None
        e = lp.only(steps)
        assert e["decision"] == "rejected"
        assert "max_steps is not known" in e["error"] and "to_step" in e["error"]
        e = lp.only(epochs)
        assert e["decision"] == "rejected" and "max_epochs is not known" in e["error"]
        to = lp.client.extend(to_step=4)  # a horizon of its own needs none known before
        lp.steps(1)
        assert lp.only(to)["changes"] == {"max_steps": {"old": None, "new": 4}}
        assert lp.kernel.max_steps == 4
        below = lp.client.extend(-9)
        lp.steps(1)
        assert lp.only(below)["decision"] == "rejected" and "below 0" in lp.only(below)["error"]
    finally:
        lp.close()


def test_one_cycle_schedule_is_not_extended_past_its_total_steps(run_dir: str) -> None:
    def one_cycle(opt: Any) -> Any:
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=12)

    lp = Loop(run_dir, base=10, scheduler=one_cycle)
    try:
        ids: dict[str, str] = {}
        actions = {
            2: lambda c: ids.setdefault("past", c.extend(5)),
            3: lambda c: ids.setdefault("within", c.extend(2)),
        }
        assert lp.run(actions) == 12  # it would have raised at step 12 had it gone on
        past = lp.only(ids["past"])
        assert past["decision"] == "rejected" and "OneCycleLR's total_steps=12" in past["error"]
        within = lp.only(ids["within"])
        assert within["changes"] == {"max_steps": {"old": 10, "new": 12}}
        assert within["lr_schedule"].startswith("unchanged")
    finally:
        lp.close()


def test_the_horizon_comes_back_with_a_checkpoint_and_later_extends_land_again(
    run_dir: str,
) -> None:
    first = Loop(run_dir)
    saved: dict[str, Any] = {}

    def snapshot(c: HotClient) -> None:
        saved["state"] = first.kernel.state_dict()  # at the start of step 4: after step 3

    ids: dict[str, str] = {}
    actions = {
        2: lambda c: ids.setdefault("a", c.extend(5)),
        4: snapshot,
        6: lambda c: ids.setdefault("b", c.extend(3)),
    }
    assert first.run(actions) == 18
    first.close()
    assert saved["state"]["horizon"] == {"max_steps": 15}

    # resume at step 4 from the snapshot, with the script's own horizon (10) as before
    again = Loop(run_dir)
    try:
        again.kernel.load_state_dict(saved["state"])
        assert again.kernel.max_steps == 15  # before the first step: the loop reads it
        again.step = 3
        assert again.run() == 18  # the extend at step 6 is applied again there
        resumed = [e for e in again.ledger() if e.get("source") == "resume"]
        assert [(e["cmd_id"], e["step"]) for e in resumed] == [(ids["b"], 6)]
        assert resumed[0]["changes"] == {"max_steps": {"old": 15, "new": 18}}
    finally:
        again.close()


def test_a_checkpoint_horizon_that_replaces_the_loops_own_says_so(
    run_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A branch started with its own ``--steps 2500`` trained on to the 21000 its parent's
    ``extend`` had set, and nothing said so. The kernel now warns at the load, with how to keep
    the loop's own."""
    first = Loop(run_dir)
    try:
        first.run({2: lambda c: c.extend(5)})
        saved = first.kernel.state_dict()
    finally:
        first.close()
    again = Loop(run_dir)
    try:
        again.kernel.max_steps = 40  # the script's own horizon, set before the load
        with caplog.at_level("WARNING", logger="hotcb"):
            again.kernel.load_state_dict(saved)
        assert again.kernel.max_steps == 15
        (said,) = [r.getMessage() for r in caplog.records if "horizon" in r.getMessage()]
        assert "(max_steps 40 -> 15)" in said and "after load_state_dict" in said
    finally:
        again.close()


def test_evaluate_sets_the_flag_a_bare_loop_reads(loop: Loop) -> None:
    ids: dict[str, str] = {}
    assert loop.run({3: lambda c: ids.setdefault("ev", c.evaluate())}) == 10
    e = loop.only(ids["ev"])
    assert e["decision"] == "applied" and e["step"] == 3 and e["evaluate"] == "requested"
    assert loop.evaluated == [3] and not loop.kernel.evaluate_requested
    loop.close()
    metrics = [m for m in jsonl.iter_records(loop.paths.metrics) if "val_loss" in m["metrics"]]
    assert [m["step"] for m in metrics] == [3]


def test_evaluate_through_the_envs_request_evaluate(loop: Loop) -> None:
    asked: list[int] = []

    def request() -> str:
        asked.append(loop.step)
        return "at_step_end"

    def refuse() -> str:
        raise HotcbError("this trainer cannot evaluate now")

    loop.env_extra = {"request_evaluate": request}
    ok = loop.client.evaluate()
    loop.steps(2)
    loop.env_extra = {"request_evaluate": refuse}
    no = loop.client.evaluate()
    loop.steps(1)
    assert asked == [0] and not loop.kernel.evaluate_requested
    assert loop.only(ok)["evaluate"] == "at_step_end"
    refused = loop.only(no)
    assert refused["decision"] == "rejected" and refused["evaluate"] == "unsupported"
    assert refused["error"] == "this trainer cannot evaluate now"


def test_recipes_replay_extend_not_evaluate_and_freeze_blocks_only_extend(loop: Loop) -> None:
    ids: dict[str, str] = {}
    actions = {
        1: lambda c: ids.setdefault("ext", c.extend(2)),
        2: lambda c: ids.setdefault("ev", c.evaluate()),
    }
    loop.run(actions)
    _, entries = export_recipe(loop.run_dir)
    assert [(e.module, e.op, e.params, e.step) for e in entries] == [
        ("control", "extend", {"steps": 2}, 1)
    ]
    frozen = loop.client.freeze("prod")
    loop.steps(1)
    assert loop.only(frozen)["decision"] == "applied"
    ext, ev = loop.client.extend(5), loop.client.evaluate()
    loop.steps(1)
    assert loop.only(ext)["decision"] == "ignored_freeze"
    assert loop.only(ev)["decision"] == "applied"


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({}, "exactly one of"),
        ({"steps": 1, "to_step": 3}, "exactly one of"),
        ({"steps": 0}, "must not be 0"),
        ({"steps": True}, "must be an integer"),
        ({"epochs": 1.5}, "must be an integer"),
        ({"to_step": -1}, "must be >= 0"),
        ({"horizon": 3}, "exactly one of"),
    ],
)
def test_extend_commands_are_validated(params: dict[str, Any], says: str) -> None:
    with pytest.raises(CommandError, match=says):
        make_command("control", "extend", params=params)


def test_cli_evaluate_and_extend(run_dir: str, cli: Any) -> None:
    assert cli(run_dir, "init").returncode == 0
    none = cli(run_dir, "extend")
    assert none.returncode == 2 and "one of the arguments" in none.stderr
    for args in (["--steps", "-50"], ["--epochs", "2"], ["--to-step", "900", "--at-step", "10"]):
        done = cli(run_dir, "extend", *args)
        assert done.returncode == 0, done.stderr
    assert cli(run_dir, "evaluate").returncode == 0
    lp = Loop(run_dir, base=100)
    try:
        lp.steps(11)
        got = [(e["op"], e["params"], e["decision"]) for e in lp.ledger()]
    finally:
        lp.close()
    assert got == [
        ("extend", {"steps": -50}, "applied"),
        ("extend", {"epochs": 2}, "rejected"),  # the loop passes no max_epochs
        ("extend", {"to_step": 900}, "scheduled"),
        ("evaluate", {}, "applied"),
        ("extend", {"to_step": 900}, "applied"),
    ]

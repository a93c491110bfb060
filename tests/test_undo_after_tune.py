"""`hotcb undo` of a person's change whose old value was a tuner trial's that the tuner did not
keep (rolled back, voided, or open and overlapped by the change): the trial's roll-back had
left the knob to the person, so the undo put the rejected trial's value back, and the run went
on with a move the tuner had scored and turned down (docs/tune.md: a plain undo passes over the
mutations the tuner rolled back). The undo now puts back the value the roll-back would have,
and the ledger says so. A real kernel, a real torch optimizer and the real tuner (sync)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("optuna")

from hotcb import HotClient, HotKernel  # noqa: E402
from hotcb.recipe import ledger_to_entries  # noqa: E402
from hotcb.testing import read_ledger  # noqa: E402

LR_ONLY = [{"key": "lr", "module": "opt", "mode": "mult", "low": 0.5, "high": 2.0, "max": 10.0}]


class Loop:
    """A bare training loop: a real kernel polling every step, an AdamW whose loss is better
    at a higher lr (so the tuner keeps raises), optionally an ExponentialLR stepped each step."""

    def __init__(self, run_dir: str, *, decay: float | None = None) -> None:
        self.kernel = HotKernel(run_dir, poll_interval_sec=0.0)
        self.client = HotClient(run_dir)
        self.param = torch.nn.Parameter(torch.zeros(1))
        self.opt = torch.optim.AdamW([self.param], lr=1e-3, weight_decay=0.0)
        self.sched = (
            torch.optim.lr_scheduler.ExponentialLR(self.opt, decay) if decay is not None else None
        )
        self.step = 0

    @property
    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    @property
    def tune(self) -> Any:
        return self.kernel.module("tune")

    def run(self, until: Callable[[], Any], limit: int = 5000) -> None:
        """Step until ``until()`` holds (a deadline in steps, never a sleep)."""
        for _ in range(limit):
            self.step += 1
            env: dict[str, Any] = {"step": self.step, "optimizer": self.opt,
                                   "metrics": {"loss": 10.0 - math.log10(self.lr)}}  # fmt: skip
            if self.sched is not None:
                self.opt.step()
                self.sched.step()
                env["scheduler"] = self.sched
            self.kernel.apply(env)
            if until():
                return
        raise AssertionError(f"not reached in {limit} steps")

    def entry(self, cmd_id: str) -> dict[str, Any] | None:
        return next((e for e in read_ledger(self.kernel.run_dir) if e["cmd_id"] == cmd_id), None)

    def undo(self, cmd_id: str | None = None) -> dict[str, Any]:
        """``hotcb undo`` (of ``cmd_id``), stepped until the run ledgers it: its entry."""
        cid = self.client.undo(cmd_id)
        self.run(lambda: self.entry(cid) is not None)
        entry = self.entry(cid)
        assert entry is not None
        return entry

    def mutation(self, trial: int) -> dict[str, Any]:
        return next(e for e in read_ledger(self.kernel.run_dir)
                    if e["op"] == "mutate" and e["tune"]["trial"] == trial)  # fmt: skip


@pytest.fixture
def loop(run_dir: str) -> Any:
    made: list[Loop] = []

    def make(**kw: Any) -> Loop:
        made.append(Loop(run_dir, **kw))
        return made[-1]

    yield make
    for lp in made:
        lp.kernel.close()


def _inside_a_trial(lp: Loop) -> dict[str, Any]:
    """Enable the tuner (long segments over lr) and step 3 steps into its first trial."""
    lp.client.tune_enable("active", objective="loss", segment_steps=60, seed=0, space=LR_ONLY,
                          sync=True)  # fmt: skip
    lp.run(lambda: lp.tune.trial is not None and lp.step > lp.tune.trial["step"] + 3)
    return dict(lp.tune.trial)


def test_undo_of_a_set_that_landed_with_the_roll_back_puts_the_trial_s_start_back(
    loop: Any, cli: Any
) -> None:
    """A person's `set lr` read in the same poll as the trial's roll-back (written after it):
    the roll-back leaves lr to the person. Undoing the person's set gave the rolled-back
    trial's lr; it gives the lr before the trial, and the ledger, the log and a replay say so."""
    lp: Loop = loop()
    trial = _inside_a_trial(lp)
    number, lr_before = trial["number"], trial["before"]["opt"]["lr"]
    assert lp.lr != lr_before  # the trial moved lr
    lp.client.tune_disable()  # applied first: its roll-back is written after the person's set
    (cmd,) = lp.client.set({"lr": 0.05})
    lp.run(lambda: lp.tune.mode == "off" and lp.tune.waiting is None)
    back = next(e for e in read_ledger(lp.kernel.run_dir) if e["op"] == "rollback")
    assert back["tune"]["left"] == ["opt.lr"] and lp.lr == 0.05  # the person's value stays
    lp.run(lambda: lp.step % 40 == 0)  # later on

    done = lp.undo()
    assert done["decision"] == "applied" and done["undo_of"] == cmd, done
    assert lp.lr == lr_before  # not the rolled-back trial's lr
    assert done["changes"] == {"lr": {"old": 0.05, "new": lr_before}}
    took = done["without_trial"]["lr"]
    assert took["trial"] == number and took["ended"] == "rolled_back", took
    assert took["factor"] == pytest.approx(lr_before / lp.mutation(number)["changes"]["lr"]["new"])
    log = cli(lp.kernel.run_dir, "log").stdout
    assert f"lr: trial {number}'s x" in log and "the tuner rolled that trial back" in log, log
    replayed = [e.params["lr"] for e in ledger_to_entries(read_ledger(lp.kernel.run_dir),
                lp.kernel.run_dir) if "lr" in e.params]  # fmt: skip
    assert replayed[-1] == lr_before  # a replay (no trial there) ends on the same lr


def test_undo_under_a_scheduler_of_a_set_that_voided_a_trial_keeps_the_schedule(
    loop: Any,
) -> None:
    """Under an LR schedule a person's `set lr` voids the open trial (its roll-back leaves lr
    to the person); the undo took back only the set's ratio: the run went on at the schedule
    times the voided trial's factor (Lightning: x1.73). It takes the trial's factor back too,
    and a second plain undo passes over the voided mutation."""
    decay = 0.995
    lp: Loop = loop(decay=decay)
    trial = _inside_a_trial(lp)
    number = trial["number"]
    (cmd,) = lp.client.set({"lr": 0.002})
    lp.run(lambda: lp.tune.trial is None and lp.tune.waiting is None)
    void = next(e for e in read_ledger(lp.kernel.run_dir) if e["op"] == "void")
    assert void["tune"]["trial"] == number
    lp.client.tune_disable()  # no new trial: the second undo below finds nothing to undo
    lp.run(lambda: lp.tune.mode == "off")
    lp.run(lambda: lp.step % 25 == 0)

    m = lp.mutation(number)
    done = lp.undo()
    assert done["decision"] == "applied" and done["undo_of"] == cmd, done
    lr_then = m["changes"]["lr"]["old"]  # the schedule's lr at the trial's start
    on_schedule = lr_then * decay ** (done["step"] - m["step"])
    assert lp.lr == pytest.approx(on_schedule, rel=1e-9)  # the schedule, without the trial
    assert done["without_trial"]["lr"]["ended"] == "voided"
    set_entry = lp.entry(cmd)
    assert set_entry is not None
    ratio = set_entry["changes"]["lr"]["old"] / set_entry["changes"]["lr"]["new"]
    trial_back = lr_then / m["changes"]["lr"]["new"]
    assert done["on_schedule"]["lr"] == pytest.approx(ratio * trial_back)

    again = lp.undo()
    assert again["decision"] == "rejected", again  # not the voided trial's mutation
    assert lp.lr == pytest.approx(on_schedule * decay ** (again["step"] - done["step"]), rel=1e-9)


def test_undo_while_the_overlapped_trial_is_still_open(loop: Any) -> None:
    """A person's `set lr` inside a trial, undone before the trial's segment ends: the trial
    is voided at its end (a command overlapped it) and its roll-back leaves lr to the undo, so
    the undo must put back the lr before the trial, not the trial's."""
    lp: Loop = loop()
    trial = _inside_a_trial(lp)
    number, lr_before = trial["number"], trial["before"]["opt"]["lr"]
    (cmd,) = lp.client.set({"lr": 0.05})
    lp.run(lambda: lp.lr == 0.05)
    done = lp.undo()
    assert lp.tune.trial is not None and lp.tune.trial["number"] == number  # still open
    assert done["undo_of"] == cmd and lp.lr == lr_before, done
    assert done["without_trial"]["lr"]["ended"] == "open"
    lp.run(lambda: lp.tune.trial is None and lp.tune.waiting is None)
    assert any(e["op"] == "void" and e["tune"]["trial"] == number
               for e in read_ledger(lp.kernel.run_dir))  # fmt: skip
    assert lp.lr == lr_before


def test_undo_of_a_set_after_a_kept_trial_puts_the_kept_value_back(loop: Any) -> None:
    """A trial the tuner kept is the run's value: undoing a later set brings it back."""
    lp: Loop = loop()
    lp.client.tune_enable("active", objective="loss", segment_steps=10, seed=0, space=LR_ONLY,
                          sync=True)  # fmt: skip
    lp.run(lambda: any(e["op"] == "keep" for e in read_ledger(lp.kernel.run_dir)))
    lp.client.tune_disable()
    lp.run(lambda: lp.tune.mode == "off" and lp.tune.waiting is None)
    kept = lp.lr
    lp.client.set({"lr": 0.05})
    lp.run(lambda: lp.lr == 0.05)
    done = lp.undo()
    assert lp.lr == kept and "without_trial" not in done, done

"""Every automatic change of the rule autopilot is judged by the guard (kept or undone) before
the next automatic change is made.

The guard of a rule's change needs half the rule's cooldown to settle, then ``guard.window``
values of the key metric: with ``val_loss`` every 20 steps that is longer than the cooldown, and
a rule that fired again used to replace the guard of its previous change, which was then never
judged. A real kernel and optimizer run in this process; the autopilot reads what they write,
as it does from outside a real run, and runs a round every 10 steps."""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hotcb import HotKernel, jsonl
from hotcb.autopilot.engine import RECORDS, Autopilot
from hotcb.testing import read_ledger

torch = pytest.importorskip("torch")

LR0 = 1e-2


class Loop:
    """A real kernel and optimizer; the loss is ``f(lr)`` plus a little noise, ``val_loss``
    every ``val_every`` steps."""

    def __init__(self, run_dir: Path, f: Callable[[float], float], val_every: int) -> None:
        self.run_dir = str(run_dir)
        self.kernel = HotKernel(self.run_dir, poll_interval_sec=0.0)
        self.opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=LR0)
        self.f, self.val_every, self.step, self.rng = f, val_every, 0, random.Random(0)

    @property
    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    def run(self, steps: int, pilot: Autopilot) -> None:
        for _ in range(steps):
            self.step += 1
            loss = self.f(self.lr) * (1 + 0.001 * self.rng.gauss(0, 1))
            metrics = {"loss": loss}
            if self.step % self.val_every == 0:
                metrics["val_loss"] = loss * 1.05
            self.kernel.apply({"step": self.step, "optimizer": self.opt, "metrics": metrics})
            if self.step % 10 == 0:
                pilot.step()

    def changes(self) -> list[dict[str, Any]]:
        """The autopilot's applied knob changes, in ledger order."""
        return [e for e in read_ledger(self.run_dir) if e.get("source") == "autopilot"
                and e.get("op") == "set_params" and e.get("decision") == "applied"]  # fmt: skip

    def records(self) -> list[dict[str, Any]]:
        return list(jsonl.iter_records(str(Path(self.run_dir) / RECORDS)))


@pytest.fixture
def loop(tmp_path: Path) -> Any:
    made: list[Loop] = []

    def make(f: Callable[[float], float], val_every: int) -> Loop:
        lp = Loop(tmp_path / "run", f, val_every)
        made.append(lp)
        return lp

    yield make
    for lp in made:
        lp.kernel.close()


def _rules(tmp_path: Path, text: str) -> str:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return str(path)


PLATEAU = """\
  - id: plateau_cut_lr
    when: {detector: plateau, metric: key}
    then: {action: lr_mult, params: {factor: 0.5}}
    cooldown_steps: 150
    confidence: medium
"""


TRAIN_PLATEAU = """\
  - id: train_plateau_cut_lr
    when: {detector: plateau, metric: train}
    then: {action: lr_mult, params: {factor: 0.5}}
    cooldown_steps: 150
    confidence: medium
"""


def test_each_automatic_change_is_judged_before_the_next(loop: Any, tmp_path: Path) -> None:
    """A plateau that never ends: the rule fires again and again, every 150 steps at most.
    The guard needs 75 steps to settle and 5 values of val_loss (100 steps) to judge each
    cut; the next cut waits for the verdict, and says so."""
    lp: Loop = loop(lambda _lr: 1.0, val_every=20)
    pilot = Autopilot(lp.run_dir, mode="auto", rules=_rules(tmp_path, "rules:\n" + PLATEAU))
    lp.run(1000, pilot)
    changes = lp.changes()
    assert len(changes) >= 3, changes
    records = lp.records()
    where = {r["cmd_ids"][0]: i for i, r in enumerate(records)
             if r["kind"] == "action" and r.get("state") == "applied"}  # fmt: skip
    verdicts = {r["cmd_id"]: i for i, r in enumerate(records) if r["kind"] == "guard"}
    for change, following in itertools.pairwise(changes):
        assert change["cmd_id"] in verdicts, f"the change of step {change['step']} was never judged"
        assert verdicts[change["cmd_id"]] < where[following["cmd_id"]], (change, following)
        assert following["changes"]["lr"]["old"] == pytest.approx(change["changes"]["lr"]["new"])
    assert lp.lr == pytest.approx(LR0 * 0.5 ** len(changes))  # every cut was kept (flat loss)
    waits = [r for r in records if r["kind"] == "skipped" and r["rule"] == "plateau_cut_lr"]
    assert waits, "the rule fired while the guard judged; that wait is recorded"
    first = records[where[changes[0]["cmd_id"]]]["step"]  # the round that sent it
    assert waits[0]["reason"].startswith(
        f"the guard is still judging the change of step {first} (until step {first + 75} and "
        "5 more values of val_loss)"
    ), waits[0]
    # `hotcb autopilot status` says what each verdict was, not a bare "guard"
    from hotcb.cli._autopilot import _line

    kept = [_line(r) for r in records if r["kind"] == "guard"]
    pattern = r"\[step \d+\] guard plateau_cut_lr: kept [\d.]+ -> [\d.]+ \([+-]\d+%\)"
    assert kept and all(re.fullmatch(pattern, line) for line in kept), kept


def test_a_change_after_an_undo_starts_from_the_value_the_undo_put_back(
    loop: Any, tmp_path: Path
) -> None:
    """A rule on the training loss cuts lr first and makes things worse; the guard undoes it.
    The key-metric rule, waiting meanwhile, acts only once the undo is in the ledger, so it
    halves the lr the undo put back, not the value the undo took away."""
    lp: Loop = loop(lambda lr: 1.0 if lr >= LR0 else 1.5, val_every=10)  # any cut hurts
    rules = "rules:\n" + PLATEAU + TRAIN_PLATEAU
    pilot = Autopilot(lp.run_dir, mode="auto", rules=_rules(tmp_path, rules))
    lp.run(400, pilot)
    records = lp.records()
    undone = next(r for r in records if r["kind"] == "guard" and "undo_cmd_id" in r)
    assert undone["rule"] == "train_plateau_cut_lr" and undone["worse_by"] > 0.4
    undo = next(e for e in read_ledger(lp.run_dir) if e["cmd_id"] == undone["undo_cmd_id"])
    assert undo["decision"] == "applied"
    changes = lp.changes()
    assert len(changes) >= 2, changes
    cut, after = changes[0], changes[1]
    assert after["reason"].startswith("autopilot rule plateau_cut_lr:")
    assert cut["changes"]["lr"] == {"old": LR0, "new": pytest.approx(LR0 / 2)}
    assert after["changes"]["lr"]["old"] == pytest.approx(LR0)  # the undo put LR0 back
    assert after["changes"]["lr"]["new"] == pytest.approx(LR0 / 2), after  # not LR0 / 4
    assert after["step"] > undo["step"]

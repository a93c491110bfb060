"""The rule autopilot against a real kernel and optimizer in this process: rules files,
suggest/accept, cooldowns, the guard, restarts, and a person on the same knob.

The loop logs ``loss`` every step and ``val_loss`` every 10 steps through the kernel's metrics
stream (``hotcb.metrics.jsonl``), exactly what the autopilot reads from outside a real run; the
autopilot's round runs every 10 steps."""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hotcb import HotClient, HotKernel, jsonl
from hotcb.autopilot.engine import OWNER, RECORDS, Autopilot, AutopilotBusy, decide, proposals
from hotcb.autopilot.rules import RulesError, load_rules
from hotcb.cli._autopilot import _line
from hotcb.notify._alerts import autopilot_text
from hotcb.testing import read_ledger

torch = pytest.importorskip("torch")


class Loop:
    """A real kernel and optimizer; the loss is ``f(lr, step)`` plus a little noise,
    ``val_loss`` every ``val_every`` steps."""

    def __init__(
        self,
        run_dir: Path,
        f: Callable[[float, int], float],
        lr: float = 1e-2,
        val_every: int = 10,
        val_name: str = "val_loss",
    ) -> None:
        self.run_dir, self.val_name = str(run_dir), val_name
        self.kernel = HotKernel(self.run_dir, poll_interval_sec=0.0)
        self.opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
        self.f, self.step, self.rng, self.val_every = f, 0, random.Random(0), val_every

    @property
    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    def run(self, steps: int, pilot: Autopilot | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for _ in range(steps):
            self.step += 1
            loss = self.f(self.lr, self.step) * (1 + 0.001 * self.rng.gauss(0, 1))
            metrics = {"loss": loss}
            if self.step % self.val_every == 0:
                metrics[self.val_name] = loss * 1.05
            self.kernel.apply({"step": self.step, "optimizer": self.opt, "metrics": metrics})
            if pilot is not None and self.step % 10 == 0:
                out += pilot.step()
        return out

    def autopilot_entries(self) -> list[dict[str, Any]]:
        return [e for e in read_ledger(self.run_dir) if e.get("source") == "autopilot"]

    def changes(self) -> list[dict[str, Any]]:
        """The autopilot's applied knob changes, in ledger order."""
        return [e for e in self.autopilot_entries()
                if e.get("op") == "set_params" and e.get("decision") == "applied"]  # fmt: skip

    def records(self) -> list[dict[str, Any]]:
        return list(jsonl.iter_records(str(Path(self.run_dir) / RECORDS)))


def flat(_lr: float, _step: int) -> float:
    return 1.0  # a plateau from the start


@pytest.fixture
def loop(tmp_path: Path) -> Any:
    made: list[Loop] = []

    def make(
        f: Callable[[float, int], float] = flat,
        lr: float = 1e-2,
        val_every: int = 10,
        val_name: str = "val_loss",
    ) -> Loop:
        lp = Loop(tmp_path / "run", f, lr, val_every, val_name)
        made.append(lp)
        return lp

    yield make
    for lp in made:
        lp.kernel.close()


def _rules(tmp_path: Path, text: str) -> str:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return str(path)


PLATEAU_ONLY = """\
rules:
  - id: plateau_cut_lr
    when: {detector: plateau, metric: key}
    then: {action: lr_mult, params: {factor: 0.5}}
    cooldown_steps: 150
    confidence: medium
"""


def test_a_rules_file_with_errors_lists_every_one_with_its_line(tmp_path: Path) -> None:
    path = _rules(tmp_path, """\
rules:
  - id: a
    when: {detector: plato, metric: key}
    then: {action: lr_mult, params: {factor: 5}}
    confidence: sure
  - when:
      detector: plateau
      params: {window: 1, colour: red}
    then: {action: explode}
surprise: 1
""")  # fmt: skip
    with pytest.raises(RulesError) as info:
        load_rules(path)
    problems = info.value.problems
    want = [
        "line 3: rules[0].when.detector: 'plato' is not one of",
        "line 4: rules[0].then: lr_mult factor=5 is outside its bounds [0.1, 2]",
        "line 5: rules[0].confidence: 'sure' is not one of high, medium, low",
        "line 6: rules[1].id: missing",
        "line 8: rules[1].when.params.window: must be int in [3, 1000], got 1",
        "line 8: rules[1].when.params.colour: plateau has no param 'colour'",
        "line 9: rules[1].then: unknown action 'explode'",
        "line 10: surprise: unknown key",
    ]
    for w in want:
        assert any(p.startswith(w) for p in problems), (w, problems)
    assert len(problems) == len(want), problems
    assert len(load_rules().rules) >= 6  # the shipped rules load


def test_suggest_then_accept_applies_the_action_with_its_rule(loop: Any, tmp_path: Path) -> None:
    lp: Loop = loop()
    pilot = Autopilot(lp.run_dir, mode="suggest", rules=_rules(tmp_path, PLATEAU_ONLY))
    lp.run(200, pilot)
    (proposal,) = [p for p in proposals(lp.run_dir) if p["state"] == "pending"]
    assert proposal["rule"] == "plateau_cut_lr" and "plateau on val_loss" in proposal["describe"]
    assert lp.lr == 1e-2 and not lp.autopilot_entries()  # a proposal changes nothing
    decision = decide(lp.run_dir, proposal["id"], accept=True, by="test")
    lp.run(5, pilot)
    (entry,) = lp.autopilot_entries()
    assert entry["cmd_id"] == decision["cmd_ids"][0] and entry["decision"] == "applied"
    assert entry["reason"].startswith("autopilot rule plateau_cut_lr")
    assert lp.lr == pytest.approx(5e-3)
    with pytest.raises(ValueError, match="accepted, not pending"):
        decide(lp.run_dir, proposal["id"], accept=True)


def test_a_newer_detection_renews_the_rules_waiting_proposal(loop: Any, tmp_path: Path) -> None:
    """A proposal left waiting kept its first evidence for good: the plateau seen at step 80
    stayed the one on offer at step 900. After the rule's cooldown a newer detection renews
    it under the same id (an accept typed meanwhile still applies it, once)."""
    lp: Loop = loop()
    pilot = Autopilot(lp.run_dir, mode="suggest", rules=_rules(tmp_path, PLATEAU_ONLY))
    lp.run(100, pilot)
    (first,) = proposals(lp.run_dir)
    out = lp.run(200, pilot)  # the cooldown is 150 steps: the plateau is detected again
    (renewed,) = proposals(lp.run_dir)
    assert renewed["id"] == first["id"] and renewed["state"] == "pending"
    assert renewed["step"] >= first["step"] + 150 and renewed["first_step"] == first["step"]
    said = [_line(r) for r in out if r.get("kind") == "proposal"]
    assert said == [f"[step {renewed['step']}] proposal {first['id']} (plateau_cut_lr, renewed "
                    f"(first at step {first['step']})): {renewed['describe']}"]  # fmt: skip
    assert f"steps {renewed['step'] - 70}-{renewed['step']}" in renewed["describe"]
    decide(lp.run_dir, first["id"], accept=True, by="test")
    lp.run(5, pilot)
    assert lp.lr == pytest.approx(5e-3)  # one cut, not two


NAN_ONLY = """\
rules:
  - id: nan_cut_lr
    when: {detector: nonfinite, metric: train}
    then: {action: lr_mult, params: {factor: 0.1}}
    cooldown_steps: 100
    confidence: high
"""


def test_a_nan_before_the_accept_is_dealt_with_by_the_accepted_cut(
    loop: Any, tmp_path: Path
) -> None:
    """The loss went NaN at step 40 (proposed), again at step 90 (the rule cooling down), and
    the cut was accepted at step 100. Past the cooldown the NaN of step 90 was detected anew
    and a second cut proposed for the trouble the first had dealt with. The accepted cut's
    step now restarts the rule's cooldown and ends what it saw before."""

    def nan_until_cut(lr: float, step: int) -> float:
        return math.nan if step in (40, 90) and lr >= 1e-2 else 1.0

    lp: Loop = loop(nan_until_cut)
    pilot = Autopilot(lp.run_dir, mode="suggest", rules=_rules(tmp_path, NAN_ONLY))
    lp.run(100, pilot)
    (proposal,) = proposals(lp.run_dir)
    assert proposal["step"] == 40 and proposal["state"] == "pending"
    decide(lp.run_dir, proposal["id"], accept=True, by="test")
    lp.run(300, pilot)
    assert lp.lr == pytest.approx(1e-3)
    assert [(p["id"], p["state"]) for p in proposals(lp.run_dir)] == [(proposal["id"], "accepted")]
    assert not [r for r in lp.records() if r["kind"] == "detection" and r["step"] > 40]


@pytest.mark.parametrize("mode", ["suggest", "auto"])
def test_a_proposal_whose_trouble_is_gone_expires(loop: Any, tmp_path: Path, mode: str) -> None:
    """A plateau proposal waited for good after the run left the plateau: accepted at step
    500, it cut the lr of a run that was improving again. Past the rule's cooldown with its
    detector silent, it expires, says why, and its accept is refused. In auto mode a
    low-confidence rule proposes too, and its proposals expire the same way."""

    def plateau_then_falls(_lr: float, step: int) -> float:
        return 1.0 if step <= 200 else 1.0 - 0.002 * (step - 200)

    lp: Loop = loop(plateau_then_falls)
    rules = PLATEAU_ONLY if mode == "suggest" else PLATEAU_ONLY.replace("medium", "low")
    pilot = Autopilot(lp.run_dir, mode=mode, rules=_rules(tmp_path, rules))
    lp.run(200, pilot)
    (proposal,) = [p for p in proposals(lp.run_dir) if p["state"] == "pending"]
    out = lp.run(200, pilot)
    (expired,) = [r for r in out if r["kind"] == "decision"]
    assert expired["id"] == proposal["id"] and expired["state"] == "expired"
    assert expired["step"] >= proposal["step"] + 150  # not within the rule's cooldown
    assert f"last seen at step {proposal['step']}" in expired["reason"]
    assert "expired" in _line(expired)
    with pytest.raises(ValueError, match=f"{proposal['id']} is expired, not pending \\(rule "
                       "plateau_cut_lr no longer detects its trouble"):  # fmt: skip
        decide(lp.run_dir, proposal["id"], accept=True)
    assert lp.lr == 1e-2 and not lp.autopilot_entries()


def test_a_proposal_of_a_run_that_is_over_cannot_be_accepted(
    loop: Any, tmp_path: Path, cli: Any
) -> None:
    """A proposal made at the step the run stopped stayed pending; accepting it queued a
    command for the next run in the directory. It is refused now, and can be rejected."""
    lp: Loop = loop()
    pilot = Autopilot(lp.run_dir, mode="suggest", rules=_rules(tmp_path, PLATEAU_ONLY))
    lp.run(200, pilot)
    (proposal,) = [p for p in proposals(lp.run_dir) if p["state"] == "pending"]
    lp.kernel.close()  # the run finished
    listed = cli(lp.run_dir, "autopilot", "proposals").stdout  # it said only "pending"
    assert "the run finished at step 200: its pending proposals ended with it" in listed, listed
    assert f"{proposal['id']}  step {proposal['step']}  pending (the run is over)" in listed
    status = cli(lp.run_dir, "autopilot", "status").stdout  # it said only "pending"
    assert f"pending {proposal['id']} (the run is over): " in status, status
    commands = Path(lp.run_dir) / "hotcb.commands.jsonl"
    before = commands.read_bytes() if commands.exists() else b""
    with pytest.raises(ValueError, match=rf"the run finished at step 200: proposal "
                       rf"{proposal['id']} ended with it"):  # fmt: skip
        decide(lp.run_dir, proposal["id"], accept=True, by="test")
    assert (commands.read_bytes() if commands.exists() else b"") == before  # nothing queued
    assert decide(lp.run_dir, proposal["id"], accept=False, by="test")["state"] == "rejected"


def test_a_proposal_on_a_frozen_run_waits_for_the_unfreeze(loop: Any, tmp_path: Path) -> None:
    """Accepted on a frozen run (the dashboard's Accept), the proposal was used up and its cut
    ledgered ``ignored_freeze``: nothing changed, and the page said "accepted". It is refused
    with the reason and stays pending; accepted after the unfreeze, it applies."""
    lp: Loop = loop()
    pilot = Autopilot(lp.run_dir, mode="suggest", rules=_rules(tmp_path, PLATEAU_ONLY))
    lp.run(200, pilot)
    (proposal,) = [p for p in proposals(lp.run_dir) if p["state"] == "pending"]
    client = HotClient(lp.run_dir)
    client.freeze("prod")
    lp.run(1)
    with pytest.raises(ValueError, match=r"the run is frozen \(prod\): it ignores knob changes"):
        decide(lp.run_dir, proposal["id"], accept=True, by="test")
    assert [p["state"] for p in proposals(lp.run_dir) if p["id"] == proposal["id"]] == ["pending"]
    client.freeze("off")
    lp.run(1)
    decide(lp.run_dir, proposal["id"], accept=True, by="test")
    lp.run(2)
    (entry,) = lp.autopilot_entries()
    assert entry["decision"] == "applied" and lp.lr == pytest.approx(5e-3)


def test_once_on_a_finished_run_says_what_it_found_and_proposes_nothing(
    loop: Any, tmp_path: Path, cli: Any
) -> None:
    """``autopilot --once`` on a finished run printed only its header when no rule fired, and
    when one fired it left a proposal that nothing could ever apply (accept refuses it)."""
    lp: Loop = loop()
    lp.run(120)
    lp.kernel.close()  # the run finished
    flat_only = (
        "rules:\n  - id: cut\n    when: {detector: divergence, metric: key}\n"
        "    then: {action: lr_mult, params: {factor: 0.5}}\n"
    )  # a flat loss never diverges
    quiet = cli(lp.run_dir, "autopilot", "--once", "--rules", _rules(tmp_path, flat_only))
    assert (f"one round on {lp.run_dir} up to step 120: nothing to report (the run finished "
            "at step 120)") in quiet.stdout, quiet.stdout  # fmt: skip
    out = cli(lp.run_dir, "autopilot", "--once", "--rules", _rules(tmp_path, PLATEAU_ONLY)).stdout
    assert "detection plateau_cut_lr: plateau on val_loss" in out, out
    assert "the run finished at step 120: nothing would apply it" in out, out
    assert "up to step 120: 2 record(s) above (the run finished at step 120)" in out, out
    assert not proposals(lp.run_dir)


def test_rules_lists_the_rules_the_runs_autopilot_uses(loop: Any, tmp_path: Path, cli: Any) -> None:
    """``hotcb --dir RUN autopilot rules`` ("the rules in force") printed the shipped defaults
    whatever rules file the run's autopilot ran with."""
    lp: Loop = loop()
    lp.run(30)
    before = cli(lp.run_dir, "autopilot", "rules")
    assert "no autopilot has run here yet: the shipped defaults" in before.stderr
    assert "plateau_cut_lr" in before.stdout and "nonfinite" in before.stdout
    rules = _rules(tmp_path, PLATEAU_ONLY)
    assert cli(lp.run_dir, "autopilot", "--once", "--rules", rules).returncode == 0
    out = cli(lp.run_dir, "autopilot", "rules")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("the rules of the run's autopilot (") and rules in lines[0], lines
    assert len(lines) == 2 and lines[1].startswith("plateau_cut_lr: when plateau on "), lines


def test_accept_wait_prints_what_the_run_applied(loop: Any, tmp_path: Path) -> None:
    """`hotcb autopilot accept A1 --wait`, as `tune accept --wait` and `hotcb set --wait` do:
    it returns once the run has applied the proposal's command, with its ledger entry."""
    import time

    lp: Loop = loop()
    pilot = Autopilot(lp.run_dir, mode="suggest", rules=_rules(tmp_path, PLATEAU_ONLY))
    lp.run(200, pilot)
    (proposal,) = [p for p in proposals(lp.run_dir) if p["state"] == "pending"]
    accept = subprocess.Popen(
        [sys.executable, "-m", "hotcb", "--dir", lp.run_dir, "autopilot", "accept",
         proposal["id"], "--wait", "--timeout", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while accept.poll() is None and time.monotonic() < deadline:
        lp.run(1, pilot)  # the run goes on, and applies the command when it lands
    out, err = accept.communicate(timeout=30)
    assert accept.returncode == 0, err
    assert out.startswith(f"{proposal['id']} accepted: ")
    # how old its evidence is: the proposal's step (renewed while the accept started, if the
    # rule detected again meanwhile), and how far the run has gone since
    (accepted,) = [p for p in proposals(lp.run_dir) if p["id"] == proposal["id"]]
    assert f" (proposed at step {accepted['step']}, " in out.splitlines()[0], out
    assert "applied" in out and "lr: 0.01 -> 0.005" in out, out
    assert lp.lr == pytest.approx(5e-3)


def _status(run_dir: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "hotcb", "--dir", run_dir, "autopilot", "status"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return done.stdout


def test_the_default_key_metric_is_found_under_the_hf_trainers_name(
    loop: Any, tmp_path: Path
) -> None:
    """The HF Trainer logs eval_loss, the demo val/loss: the default key metric (val_loss) is
    read under that name, for the rules and the guard, and status says so."""
    lr0 = 1e-2
    lp: Loop = loop(lambda lr, _s: 1.0 if lr >= lr0 else 1.5, lr=lr0, val_name="eval_loss")
    pilot = Autopilot(lp.run_dir, mode="auto", rules=_rules(tmp_path, PLATEAU_ONLY))
    records = lp.run(300, pilot)
    (action,) = [r for r in records if r["kind"] == "action"]
    assert "plateau on eval_loss" in action["reason"]
    (guard,) = [r for r in records if r["kind"] == "guard"]  # judged on eval_loss: undone
    assert "autopilot guard: eval_loss" in guard["reason"] and lp.lr == lr0
    assert "the run logs val_loss as eval_loss" in _status(lp.run_dir)


def test_status_says_when_the_key_metric_is_not_logged(loop: Any, tmp_path: Path) -> None:
    lp: Loop = loop(val_name="accuracy")
    pilot = Autopilot(
        lp.run_dir, mode="suggest", key_metric="f1", rules=_rules(tmp_path, PLATEAU_ONLY)
    )
    lp.run(100, pilot)
    assert not [p for p in proposals(lp.run_dir)]  # no key metric: the rule on it waits
    out = _status(lp.run_dir)
    assert "f1 is not among what the run has logged (accuracy" in out
    assert "--key-metric NAME picks another" in out


def test_reject_leaves_the_run_alone(loop: Any, tmp_path: Path) -> None:
    lp: Loop = loop()
    pilot = Autopilot(lp.run_dir, mode="suggest", rules=_rules(tmp_path, PLATEAU_ONLY))
    lp.run(200, pilot)
    (proposal,) = [p for p in proposals(lp.run_dir) if p["state"] == "pending"]
    decision = decide(lp.run_dir, proposal["id"].lower(), accept=False)  # a3 is A3
    assert decision["id"] == proposal["id"]
    lp.run(20, pilot)
    assert lp.lr == 1e-2 and not lp.autopilot_entries()
    assert next(p["state"] for p in proposals(lp.run_dir)) == "rejected"


def test_auto_mode_respects_the_cooldown(loop: Any, tmp_path: Path) -> None:
    lp: Loop = loop()
    pilot = Autopilot(lp.run_dir, mode="auto", rules=_rules(tmp_path, PLATEAU_ONLY))
    records = lp.run(600, pilot)
    actions = [r for r in records if r["kind"] == "action"]
    assert len(actions) >= 2
    gaps = [b["step"] - a["step"] for a, b in itertools.pairwise(actions)]
    assert all(g >= 150 for g in gaps), gaps  # the plateau never ended; the cooldown held it
    assert len(lp.autopilot_entries()) == len(actions)
    assert lp.lr == pytest.approx(1e-2 * 0.5 ** len(actions))


def test_the_guard_undoes_a_change_that_made_things_worse(loop: Any, tmp_path: Path) -> None:
    lr0 = 1e-2
    lp: Loop = loop(lambda lr, _s: 1.0 if lr >= lr0 else 1.5, lr=lr0)  # a smaller lr hurts
    pilot = Autopilot(lp.run_dir, mode="auto", rules=_rules(tmp_path, PLATEAU_ONLY))
    records = lp.run(300, pilot)
    (guard,) = [r for r in records if r["kind"] == "guard"]
    assert guard["worse_by"] > 0.4 and "undoing" in guard["reason"]
    undo = next(e for e in lp.autopilot_entries() if e["op"] == "undo")
    assert undo["decision"] == "applied" and undo["reason"].startswith("autopilot guard")
    assert lp.lr == lr0
    # and the rule that made the change waits longer before it acts again
    assert sum(r["kind"] == "action" for r in records) == 1


def test_the_guard_outlives_a_ledger_entry_without_a_cmd_id(loop: Any, tmp_path: Path) -> None:
    """The tuner's own entries (``tune void`` when an autopilot cut lands in its trial,
    ``tune keep``) have no cmd_id, and neither has an armed guard's undo: ``None == None``
    dropped the guard. The change went unjudged and was never undone, and the next cut went
    ahead at once."""
    lr0 = 1e-2
    lp: Loop = loop(lambda lr, _s: 1.0 if lr >= lr0 else 1.5, lr=lr0)  # a smaller lr hurts
    pilot = Autopilot(lp.run_dir, mode="auto", rules=_rules(tmp_path, PLATEAU_ONLY))
    records: list[dict[str, Any]] = []
    while not any(r["kind"] == "action" for r in records) and lp.step < 300:
        records += lp.run(10, pilot)
    assert pilot.guard is not None
    lp.kernel.record({"module": "tune", "op": "void", "source": "tune", "decision": "applied"})
    records += lp.run(300 - lp.step, pilot)
    (guard,) = [r for r in records if r["kind"] == "guard"]
    assert "undoing" in guard["reason"] and lp.lr == lr0
    assert sum(r["kind"] == "action" for r in records) == 1


def test_a_frozen_run_gets_no_change_and_an_ignored_one_is_not_judged(
    loop: Any, tmp_path: Path
) -> None:
    """Under ``freeze --mode prod`` the run ledgers an autopilot cut ``ignored_freeze``, while
    the autopilot said ``applied`` and its guard then credited the change that never happened
    ("kept 0.1491 -> 0.1213"). Frozen, the rules skip with the reason; a change the run did not
    apply anyway (frozen after it was sent) is said to be so, and not judged."""
    rules = _rules(tmp_path, PLATEAU_ONLY)
    probe = Loop(tmp_path / "probe", flat)  # the same run, to learn the step the rule acts at
    seen = Autopilot(probe.run_dir, mode="auto", rules=rules)
    while not any(r["kind"] == "action" for r in probe.run(10, seen)):
        assert probe.step < 300
    probe.kernel.close()
    lp: Loop = loop()
    pilot = Autopilot(lp.run_dir, mode="auto", rules=rules)
    records = lp.run(probe.step - 1, pilot)
    lp.run(1)  # the step the rule acts at, up to the autopilot's round:
    HotClient(lp.run_dir).freeze("prod")  # a person freezes the run just then
    records += pilot.step()
    records += lp.run(300, pilot)
    (cut,) = [e for e in lp.autopilot_entries() if e["op"] == "set_params"]
    assert cut["decision"] == "ignored_freeze" and lp.lr == 1e-2
    (missed,) = [r for r in records if r.get("state") == "not_applied"]
    assert missed["kind"] == "action" and "ignored_freeze" in missed["reason"]
    assert not [r for r in records if r["kind"] == "guard"]
    skipped = [r for r in records if r["kind"] == "skipped"]
    assert skipped and all("the run is frozen (prod)" in r["reason"] for r in skipped)
    assert "not_applied" in _line(missed) and "ignored_freeze" in autopilot_text(missed)


def test_the_guard_undoes_a_change_after_which_the_key_metric_is_nan(
    loop: Any, tmp_path: Path
) -> None:
    """NaN after a change is the worst outcome, not a value to skip until finite ones come."""
    lr0 = 1e-2
    lp: Loop = loop(lambda lr, _s: 1.0 if lr >= lr0 else math.nan, lr=lr0)
    pilot = Autopilot(lp.run_dir, mode="auto", rules=_rules(tmp_path, PLATEAU_ONLY))
    records = lp.run(300, pilot)
    (guard,) = [r for r in records if r["kind"] == "guard"]
    assert guard["non_finite"] == 5 and guard["worse_by"] is None
    assert "non-finite" in guard["reason"] and "undoing" in guard["reason"]
    assert lp.lr == lr0


def test_a_restarted_autopilot_does_not_fire_again_on_what_it_saw(
    loop: Any, tmp_path: Path
) -> None:
    lp: Loop = loop()
    rules = _rules(tmp_path, PLATEAU_ONLY.replace("150", "10000"))
    pilot = Autopilot(lp.run_dir, mode="suggest", rules=rules)
    lp.run(200, pilot)
    assert len(proposals(lp.run_dir)) == 1
    again = Autopilot(lp.run_dir, mode="suggest", rules=rules)  # a new process, same run
    assert again.step() == []
    decide(lp.run_dir, proposals(lp.run_dir)[0]["id"], accept=False)
    lp.run(100, again)  # the cooldown and the last detection came back from the state file
    assert len(proposals(lp.run_dir)) == 1
    state = json.loads((tmp_path / "run" / "hotcb.autopilot.state.json").read_text())
    assert state["cursors"]["metrics"] > 0 and "plateau_cut_lr" in state["seen"]


def test_a_lost_state_file_does_not_give_out_a_proposal_id_again(loop: Any, tmp_path: Path) -> None:
    """`hotcb.autopilot.state.json` deleted (or lost) while `hotcb.autopilot.jsonl` holds A1:
    the ids started at A1 again, two different A1 stood in the audit trail, and `accept A1`
    applied the new one. The next id comes after the highest one in the records."""
    lp: Loop = loop()
    rules = _rules(tmp_path, PLATEAU_ONLY)
    pilot = Autopilot(lp.run_dir, mode="suggest", rules=rules)
    lp.run(200, pilot)
    (first,) = proposals(lp.run_dir)
    assert first["id"] == "A1"
    decide(lp.run_dir, "A1", accept=False)
    pilot.close()
    os.unlink(tmp_path / "run" / "hotcb.autopilot.state.json")
    again = Autopilot(lp.run_dir, mode="suggest", rules=rules)
    lp.run(50, again)
    ids = [r["id"] for r in lp.records() if r["kind"] == "proposal"]
    assert ids == ["A1", "A2"], ids
    assert [(p["id"], p["state"]) for p in proposals(lp.run_dir)] == [
        ("A1", "rejected"), ("A2", "pending"),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="A1 is rejected, not pending"):
        decide(lp.run_dir, "A1", accept=True)


def test_a_person_on_the_same_knob_wins(loop: Any, tmp_path: Path) -> None:
    lp: Loop = loop()
    pilot = Autopilot(lp.run_dir, mode="auto", rules=_rules(tmp_path, PLATEAU_ONLY))
    lp.run(200, pilot)
    (first,) = lp.autopilot_entries()  # the autopilot cut lr on the plateau
    HotClient(lp.run_dir, source="cli").opt(lr=0.02)  # then a person set it
    records = lp.run(300, pilot)
    assert lp.lr == 0.02  # the person's value stands
    assert any(r["kind"] == "hold" and r["knob"] == "opt.lr" for r in records)
    skipped = [r for r in records if r["kind"] == "skipped"]
    assert skipped and "a person changed opt.lr" in skipped[0]["reason"]
    ledger = [e for e in read_ledger(lp.run_dir) if e.get("op") == "set_params"]
    assert [e["source"] for e in ledger] == ["autopilot", "cli"]  # both in the ledger
    assert first["changes"]["lr"]["new"] == pytest.approx(5e-3)


PROPOSE_THEN_ACT = """\
rules:
  - id: plateau_propose_cut
    when: {detector: plateau, metric: key}
    then: {action: lr_mult, params: {factor: 0.5}}
    cooldown_steps: 1000
    confidence: low
  - id: train_plateau_cut
    when: {detector: plateau, metric: train, params: {window: 150}}
    then: {action: lr_mult, params: {factor: 0.3}}
    cooldown_steps: 1000
    confidence: medium
"""


def test_an_automatic_change_supersedes_a_proposal_on_the_same_knob(
    loop: Any, tmp_path: Path
) -> None:
    """Auto mode: a low-confidence rule's lr cut waits for a person, then a medium-confidence
    rule cuts the lr itself. Accepting the waiting one afterwards cut the lr twice; it is now
    closed as superseded, and its accept is refused with the reason."""
    lp: Loop = loop()
    pilot = Autopilot(lp.run_dir, mode="auto", rules=_rules(tmp_path, PROPOSE_THEN_ACT))
    records = lp.run(300, pilot)
    (proposal,) = [r for r in records if r["kind"] == "proposal"]
    (superseded,) = [r for r in records if r["kind"] == "decision"]
    assert superseded["id"] == proposal["id"] and superseded["state"] == "superseded"
    assert superseded["reason"].startswith("rule train_plateau_cut changed opt.lr itself")
    assert "superseded" in _line(superseded) and proposal["id"] in _line(superseded)
    assert not [p for p in proposals(lp.run_dir) if p["state"] == "pending"]
    with pytest.raises(ValueError, match=f"{proposal['id']} is superseded, not pending "
                       r"\(rule train_plateau_cut changed opt.lr"):  # fmt: skip
        decide(lp.run_dir, proposal["id"], accept=True)
    lp.run(20)
    (cut,) = lp.changes()  # one cut, the automatic one
    assert cut["changes"]["lr"]["new"] == pytest.approx(3e-3)
    assert lp.lr == pytest.approx(3e-3)


def test_a_restarted_run_is_a_new_life_for_the_autopilot(loop: Any, tmp_path: Path) -> None:
    """The trainer restarts from step 0 in the same directory: the person's hold made at step
    ~200 ("until step ~500") blocked the new life's first 500 steps, and the old life's points
    stayed in the series the detectors read. The autopilot now says the run went back and
    forgets what it saw after that step."""
    lp: Loop = loop()
    pilot = Autopilot(lp.run_dir, mode="auto", rules=_rules(tmp_path, PLATEAU_ONLY))
    lp.run(200, pilot)
    HotClient(lp.run_dir, source="cli").opt(lr=0.02)
    held = [r for r in lp.run(100, pilot) if r["kind"] == "hold"]
    assert held and held[0]["until"] > 400
    lp.kernel.close()
    again: Loop = loop()  # a new trainer in the same directory, from step 0
    records = again.run(300, pilot)
    (back,) = [r for r in records if r["kind"] == "resumed"]
    assert back["was"] == 300 and back["step"] < 10
    assert "went back from step 300" in back["reason"]
    assert not [r for r in records if r["kind"] == "skipped"]  # no hold of the old life
    cuts = [r for r in records if r["kind"] == "action" and r["state"] == "applied"]
    assert cuts and cuts[0]["step"] < 300  # the plateau of the new life is acted on
    steps = [s for s, _ in pilot.series["loss"]]
    assert steps == sorted(set(steps))  # one curve: the old life's points are gone


def test_a_proposal_of_a_life_the_run_left_expires_and_cannot_be_accepted(
    loop: Any, tmp_path: Path
) -> None:
    """The trainer was killed with a plateau proposal waiting and started again from step 0:
    the proposal stayed pending, and its accept cut the new life's lr on the old life's
    plateau (its evidence, steps that no longer exist)."""
    lp: Loop = loop()
    pilot = Autopilot(lp.run_dir, mode="suggest", rules=_rules(tmp_path, PLATEAU_ONLY))
    lp.run(200, pilot)
    (proposal,) = [p for p in proposals(lp.run_dir) if p["state"] == "pending"]
    again: Loop = loop()  # a new trainer in the same directory, from step 0 (the old one died)
    out = again.run(10, pilot)
    (expired,) = [r for r in out if r["kind"] == "decision"]
    assert expired["id"] == proposal["id"] and expired["state"] == "expired"
    assert f"made at step {proposal['step']} in a life the run left" in expired["reason"]
    with pytest.raises(ValueError, match=f"{proposal['id']} is expired, not pending"):
        decide(lp.run_dir, proposal["id"], accept=True)
    again.run(10, pilot)
    assert again.lr == 1e-2 and not again.autopilot_entries()


def test_an_accept_with_no_autopilot_running_refuses_a_proposal_of_a_gone_life(
    loop: Any, tmp_path: Path, cli: Any
) -> None:
    """``hotcb autopilot`` ends with the trainer it watched: a proposal of the killed life
    stayed pending until an autopilot saw the new life's steps go back, and an accept in that
    gap applied it to the new life. One the checkpoint the run resumed from holds is this
    life's, and is accepted."""
    lp: Loop = loop()
    pilot = Autopilot(lp.run_dir, mode="suggest", rules=_rules(tmp_path, PLATEAU_ONLY))
    lp.run(200, pilot)
    (proposal,) = [p for p in proposals(lp.run_dir) if p["state"] == "pending"]
    state, step = lp.kernel.state_dict(), lp.step  # a checkpoint after it was made

    afresh: Loop = loop()  # the trainer killed and started again from step 0; no autopilot
    afresh.run(proposal["step"] + 20)  # and past the proposal's step: still not its evidence
    listed = cli(lp.run_dir, "autopilot", "proposals").stdout
    assert f"{proposal['id']}  step {proposal['step']}  pending (of a life the run left)" in listed
    status = cli(lp.run_dir, "autopilot", "status").stdout
    assert f"pending {proposal['id']} (of a life the run left): " in status, status
    with pytest.raises(ValueError, match=f"proposal {proposal['id']} was made at step "
                       f"{proposal['step']} in a life the run left: it started again since, "
                       "not from a checkpoint"):  # fmt: skip
        decide(lp.run_dir, proposal["id"], accept=True)
    assert not afresh.autopilot_entries()

    resumed: Loop = loop()  # started again from that checkpoint: the proposal came with it
    resumed.kernel.load_state_dict(state)
    resumed.step = step
    resumed.run(1)
    decide(lp.run_dir, proposal["id"], accept=True)
    resumed.run(2)
    assert resumed.lr == pytest.approx(0.5e-2) and len(resumed.changes()) == 1


def test_records_carry_the_evidence(loop: Any, tmp_path: Path) -> None:
    lp: Loop = loop()
    pilot = Autopilot(lp.run_dir, mode="suggest", rules=_rules(tmp_path, PLATEAU_ONLY))
    lp.run(200, pilot)
    recs = [json.loads(x) for x in (tmp_path / "run" / RECORDS).read_text().splitlines()]
    detection = next(r for r in recs if r["kind"] == "detection")
    assert detection["metric"] == "val_loss" and detection["evidence"]["n"] >= 8
    assert {"detection", "proposal"} <= {r["kind"] for r in recs}


def test_two_accepts_at_once_send_the_action_once(loop: Any, tmp_path: Path) -> None:
    """The CLI and the dashboard accept the same proposal at the same moment: one wins, the
    other is told it is no longer pending, and one command is written."""
    import threading

    from hotcb.runfiles import RunPaths

    lp: Loop = loop()
    pilot = Autopilot(lp.run_dir, mode="suggest", rules=_rules(tmp_path, PLATEAU_ONLY))
    lp.run(200, pilot)
    (proposal,) = proposals(lp.run_dir)
    results: list[Any] = []
    start = threading.Barrier(4)

    def accept() -> None:
        start.wait()
        try:
            results.append(decide(lp.run_dir, proposal["id"], accept=True, by="race"))
        except ValueError as exc:
            results.append(exc)

    threads = [threading.Thread(target=accept) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(isinstance(r, dict) for r in results) == 1
    assert all("not pending" in str(r) for r in results if not isinstance(r, dict))
    sent = [r for r in jsonl_records(RunPaths(lp.run_dir).commands) if r["source"] == "autopilot"]
    assert len(sent) == 1


def jsonl_records(path: str) -> list[dict[str, Any]]:
    from hotcb import jsonl

    return list(jsonl.iter_records(path))


def test_one_autopilot_per_run(loop: Any, tmp_path: Path) -> None:
    """A run has one autopilot: a second live process is refused (both would act on every
    detection); a dead owner's claim is taken over; this process may restart its own."""
    lp: Loop = loop()
    owner = tmp_path / "run" / OWNER
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        jsonl.write_json_atomic(owner, {"pid": other.pid, "host": socket.gethostname(),
                                        "mode": "auto", "started": 0.0})  # fmt: skip
        with pytest.raises(AutopilotBusy, match=f"another autopilot \\(pid {other.pid}, mode auto"):
            Autopilot(lp.run_dir, mode="suggest")
    finally:
        other.kill()
        other.wait()
    pilot = Autopilot(lp.run_dir, mode="suggest")  # the owner is gone: taken over
    assert json.loads(owner.read_text())["pid"] == os.getpid()
    Autopilot(lp.run_dir, mode="suggest")  # a restart in this process
    pilot.close()
    assert not owner.exists()


# -- one automatic change at a time: each is judged before the next ------------------------
LR0 = 1e-2

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
    lp: Loop = loop(flat, val_every=20)
    pilot = Autopilot(lp.run_dir, mode="auto", rules=_rules(tmp_path, PLATEAU_ONLY))
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
    kept = [_line(r) for r in records if r["kind"] == "guard"]
    pattern = r"\[step \d+\] guard plateau_cut_lr: kept [\d.]+ -> [\d.]+ \([+-]\d+%\)"
    assert kept and all(re.fullmatch(pattern, line) for line in kept), kept
    # and so does a notify alert on them, naming the key metric (it said "autopilot guard
    # plateau_cut_lr", no more)
    alerts = [autopilot_text(r) for r in records if r["kind"] == "guard"]
    pattern = r"autopilot guard plateau_cut_lr: kept, val_loss [\d.]+ -> [\d.]+ \([+-]\d+%\)"
    assert all(re.fullmatch(pattern, line) for line in alerts), alerts


def test_a_change_after_an_undo_starts_from_the_value_the_undo_put_back(
    loop: Any, tmp_path: Path
) -> None:
    """A rule on the training loss cuts lr first and makes things worse; the guard undoes it.
    The key-metric rule, waiting meanwhile, acts only once the undo is in the ledger, so it
    halves the lr the undo put back, not the value the undo took away."""
    lp: Loop = loop(lambda lr, _step: 1.0 if lr >= LR0 else 1.5)  # any cut hurts
    rules = PLATEAU_ONLY + TRAIN_PLATEAU
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


NAN_AND_PLATEAU = (
    PLATEAU_ONLY
    + """\
  - id: nan_cut_lr
    when: {detector: nonfinite, metric: train}
    then: {action: lr_mult, params: {factor: 0.1}}
    cooldown_steps: 1000
    confidence: high
"""
)


@pytest.mark.parametrize("tuner", ["active", "suggest"])
def test_a_plateau_cut_of_a_knob_an_active_tuner_tunes_is_left_to_it(
    loop: Any, tmp_path: Path, tuner: str
) -> None:
    """The tuner (active) tunes lr: the autopilot's plateau cut would void its trials and
    be judged on their moves, so it is skipped, said why; a NaN still cuts the lr. A tuner
    in suggest mode changes nothing itself: the autopilot acts as before."""
    pytest.importorskip("optuna")
    lp: Loop = loop(lambda _lr, s: float("nan") if s == 450 else 1.0)
    HotClient(lp.run_dir).tune_enable(tuner, objective="val_loss", segment_steps=50, sync=True)
    pilot = Autopilot(lp.run_dir, mode="auto", rules=_rules(tmp_path, NAN_AND_PLATEAU))
    records = lp.run(600, pilot)
    acted = [r["rule"] for r in records if r["kind"] == "action" and r["state"] == "applied"]
    if tuner == "suggest":
        assert "plateau_cut_lr" in acted, records
        return
    assert acted == ["nan_cut_lr"], records  # safety acts; the plateau is the tuner's
    skipped = [r for r in records if r["kind"] == "skipped" and r["rule"] == "plateau_cut_lr"]
    assert skipped, records
    assert skipped[0]["reason"] == ("the online tuner (active) tunes opt.lr: changes for a "
                                    "plateau or overfitting are left to it")  # fmt: skip


def test_the_guard_leaves_a_change_a_person_set_over_since_alone(loop: Any, tmp_path: Path) -> None:
    """A person set lr after the autopilot's cut, inside the guard's window; the key metric
    got worse (their lr, not the cut, did it), and the guard's undo put back the value from
    before the cut, over the person's. It now judges nothing and says why."""
    lr0 = 1e-2
    lp: Loop = loop(lambda lr, _s: 1.0 if lr <= lr0 else 1.5, lr=lr0)  # a higher lr hurts
    pilot = Autopilot(lp.run_dir, mode="auto", rules=_rules(tmp_path, PLATEAU_ONLY))
    records: list[dict[str, Any]] = []
    while not lp.changes() and lp.step < 300:
        records += lp.run(10, pilot)
    assert pilot.guard is not None and lp.lr == pytest.approx(lr0 / 2)
    HotClient(lp.run_dir).opt(lr=3.0)  # a person, while the guard judges the cut
    records += lp.run(300, pilot)
    assert lp.lr == 3.0  # the person's value stands
    assert not [e for e in lp.autopilot_entries() if e["op"] == "undo"]
    (moved,) = [r for r in records if r.get("state") == "not_judged"]
    assert moved["kind"] == "action" and moved["cmd_ids"] == [lp.changes()[0]["cmd_id"]]
    assert moved["reason"].startswith("lr changed since the change of step ")
    assert "set_params by python" in moved["reason"] and "not_judged" in _line(moved)


def test_a_person_who_undid_an_automatic_change_holds_its_knob(loop: Any, tmp_path: Path) -> None:
    """``hotcb undo`` of the autopilot's cut made no hold: the same rule cut the lr again at
    its next chance, inside the hold a person's change would have had."""
    lp: Loop = loop()
    pilot = Autopilot(lp.run_dir, mode="auto", rules=_rules(tmp_path, PLATEAU_ONLY))
    records: list[dict[str, Any]] = []
    while not lp.changes() and lp.step < 300:
        records += lp.run(10, pilot)
    (cut,) = lp.changes()
    HotClient(lp.run_dir).send("control", "undo", params={"cmd_id": cut["cmd_id"]})
    records += lp.run(10, pilot)
    undone_at = lp.step
    assert lp.lr == 1e-2
    records += lp.run(pilot.person_hold_steps - 20, pilot)
    assert lp.changes() == [cut] and lp.lr == 1e-2  # held: no cut again
    holds = [r for r in records if r["kind"] == "hold" and r["knob"] == "opt.lr"]
    assert holds and "took back a change of opt.lr" in holds[-1]["reason"]
    assert holds[-1]["until"] >= undone_at - 10 + pilot.person_hold_steps


def test_a_persons_change_a_resume_reapplies_still_holds_its_knob(
    loop: Any, tmp_path: Path
) -> None:
    """A resume re-applies a person's ``set lr`` (``source: resume``) after the autopilot saw
    the run go back and dropped the holds of the replaced life: the autopilot took it for
    nobody's change and cut the person's lr at once."""
    lp: Loop = loop()
    pilot = Autopilot(lp.run_dir, mode="auto", rules=_rules(tmp_path, PLATEAU_ONLY))
    lp.run(20, pilot)
    saved = lp.kernel.state_dict()  # a checkpoint at step 20
    HotClient(lp.run_dir).opt(lr=0.02)  # a person, after the checkpoint
    lp.run(20, pilot)
    assert lp.lr == 0.02 and not lp.changes()
    lp.kernel.close()  # the trainer dies; started again from the checkpoint
    lp.kernel = HotKernel(lp.run_dir, poll_interval_sec=0.0)
    lp.kernel.load_state_dict(saved)
    lp.step = 20
    lp.opt.param_groups[0]["lr"] = 1e-2
    records = lp.run(pilot.person_hold_steps - 40, pilot)
    assert any(r["kind"] == "resumed" for r in records)
    assert lp.lr == 0.02 and not lp.changes()  # the person's re-applied lr stands
    holds = [r for r in records if r["kind"] == "hold" and r["knob"] == "opt.lr"]
    assert holds and holds[-1]["reason"].startswith(
        "python changed (re-applied by a resume) opt.lr at step "
    )


def test_an_automatic_cut_a_resume_reapplies_is_not_made_again(loop: Any, tmp_path: Path) -> None:
    """The trainer dies just after the autopilot cut the lr and resumes from a checkpoint 30
    steps before it. The resume re-applies the cut at its step (``source: resume``), but the
    run going back had ended the rule's cooldown and guard: the same rule cut again in the new
    life, and the re-applied cut compounded with it (lr ×0.25 where the dead life had ×0.5).
    The rule stays cooled down until its re-applied cut, which the guard then judges as it did
    the first time."""
    lp: Loop = loop()
    pilot = Autopilot(lp.run_dir, mode="auto", rules=_rules(tmp_path, PLATEAU_ONLY))
    checkpoints = []
    while not lp.changes():
        checkpoints.append((lp.kernel.state_dict(), lp.step))  # one every 10 steps
        lp.run(10, pilot)
        assert lp.step < 2000, "the plateau rule never fired"
    (cut,) = lp.changes()
    saved, at = checkpoints[-4]  # 30 steps before the cut's round
    assert at < cut["step"] - 20
    assert lp.lr == pytest.approx(5e-3)
    lp.run(5)  # a few steps more, then the trainer dies
    lp.kernel.close()
    lp.kernel = HotKernel(lp.run_dir, poll_interval_sec=0.0)  # resumed from the checkpoint
    lp.kernel.load_state_dict(saved)
    lp.step, lp.opt.param_groups[0]["lr"] = at, 1e-2
    records = lp.run(cut["step"] - at + 140, pilot)  # to just before the cooldown's end
    assert any(r["kind"] == "resumed" for r in records)
    again = [e for e in read_ledger(lp.run_dir)
             if e.get("source") == "resume" and e.get("cmd_id") == cut["cmd_id"]]  # fmt: skip
    assert [e["decision"] for e in again] == ["applied"]
    assert lp.changes() == [cut]  # no second cut by the rule
    assert lp.lr == pytest.approx(5e-3)
    judged = [r for r in records if r["kind"] == "guard" and r["cmd_id"] == cut["cmd_id"]]
    assert judged and judged[0]["step"] >= again[0]["step"] + 75  # half the cooldown settles


@pytest.mark.parametrize("mode", ["auto", "suggest"])
def test_a_nan_the_resumed_run_logs_again_is_dealt_with_by_the_reapplied_cut(
    loop: Any, tmp_path: Path, mode: str
) -> None:
    """The loss went NaN at step 40 and the lr was cut (by the rule, or by an accepted
    proposal); the trainer died and resumed from its checkpoint at step 30, so it logged the
    NaN of step 40 again before the resume re-applied the cut. Once the rule's cooldown ran
    out it cut (or proposed to cut) again for that NaN: lr ×0.01 for one NaN. The re-applied
    cut now deals with what came before it, as the first cut did."""

    def nan_until_cut(lr: float, step: int) -> float:
        return math.nan if step == 40 and lr >= 1e-2 else 1.0

    lp: Loop = loop(nan_until_cut)
    pilot = Autopilot(lp.run_dir, mode=mode, rules=_rules(tmp_path, NAN_ONLY))
    lp.run(30, pilot)
    saved = lp.kernel.state_dict()
    lp.run(10, pilot)
    if mode == "suggest":
        (proposal,) = proposals(lp.run_dir)
        decide(lp.run_dir, proposal["id"], accept=True, by="test")
    lp.run(20, pilot)
    assert lp.lr == pytest.approx(1e-3)
    cuts = [e for e in read_ledger(lp.run_dir) if e.get("source") == "autopilot"]
    lp.kernel.close()
    lp.kernel = HotKernel(lp.run_dir, poll_interval_sec=0.0)  # resumed from the checkpoint
    lp.kernel.load_state_dict(saved)
    lp.step, lp.opt.param_groups[0]["lr"] = 30, 1e-2
    lp.run(300, pilot)
    again = [e for e in read_ledger(lp.run_dir) if e.get("source") == "resume"]
    assert [e["cmd_id"] for e in again] == [cuts[0]["cmd_id"]]  # the cut, re-applied
    assert [e for e in read_ledger(lp.run_dir) if e.get("source") == "autopilot"] == cuts
    assert lp.lr == pytest.approx(1e-3)
    assert len({p["id"] for p in proposals(lp.run_dir)}) == (mode == "suggest")


DIVERGENCE_CUT = """\
rules:
  - id: divergence_cut_lr
    when: {detector: divergence, metric: train}
    then: {action: lr_mult, params: {factor: 0.5}}
    cooldown_steps: 100
    confidence: high
"""


@pytest.mark.parametrize("bracket", ["under way", "over"])
def test_a_safety_cut_leaves_the_lr_to_a_start_bracket_under_way(
    loop: Any, tmp_path: Path, bracket: str
) -> None:
    """The tuner's start bracket tries lrs up to 4x and takes each arm back to the weights it
    began with: the training loss jumps, the divergence rule cut the lr, and the bracket
    ended at the wrong value. While it runs (``bracket`` in ``hotcb.tune.json`` without
    ``ended_at``), the autopilot leaves the tuner's knobs to it; once over, safety acts."""
    lp: Loop = loop(lambda _lr, s: 1.0 if s < 150 else 1.0 * 1.05 ** (s - 150))
    state = {"mode": "active", "settings": {"space": [{"module": "opt", "key": "lr"}]},
             "bracket": {"round": 1, "factor": 4.0}}  # fmt: skip
    if bracket == "over":
        state["bracket"]["ended_at"] = 120
    jsonl.write_json_atomic(os.path.join(lp.run_dir, "hotcb.tune.json"), state)
    pilot = Autopilot(lp.run_dir, mode="auto", rules=_rules(tmp_path, DIVERGENCE_CUT))
    records = lp.run(250, pilot)
    if bracket == "over":
        assert lp.changes(), records
        return
    assert not lp.changes() and lp.lr == 1e-2
    skipped = [r for r in records if r["kind"] == "skipped"]
    assert skipped and skipped[0]["reason"].startswith(
        "the online tuner's start bracket is under way on opt.lr"
    )


def test_in_auto_mode_a_rules_own_proposal_from_suggest_mode_no_longer_silences_it(
    loop: Any, tmp_path: Path
) -> None:
    """An autopilot restarted from suggest to auto mode: the rule's proposal still waited, and
    the rule detected its plateau again and again with no action, no record, and no end. It
    acts now, and its waiting proposal is closed first (accepted after, it would cut twice)."""
    lp: Loop = loop()
    rules = _rules(tmp_path, PLATEAU_ONLY)
    lp.run(100, Autopilot(lp.run_dir, mode="suggest", rules=rules))
    (waiting,) = [p for p in proposals(lp.run_dir) if p["state"] == "pending"]
    out = lp.run(200, Autopilot(lp.run_dir, mode="auto", rules=rules))
    (closed,) = [r for r in out if r["kind"] == "decision"]
    assert closed["id"] == waiting["id"] and closed["state"] == "superseded"
    assert closed["reason"].startswith("rule plateau_cut_lr acts on opt.lr itself at step ")
    (acted,) = [r for r in out if r["kind"] == "action"]
    assert acted["state"] == "applied" and acted["step"] == closed["step"]
    lp.run(10)
    (cut,) = lp.changes()
    assert lp.lr == pytest.approx(5e-3) and cut["cmd_id"] == acted["cmd_ids"][0]
    with pytest.raises(ValueError, match="superseded, not pending"):
        decide(lp.run_dir, waiting["id"], accept=True)

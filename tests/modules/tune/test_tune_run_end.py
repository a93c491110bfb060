"""A run that ends (``kernel.close()``) leaves no trial RUNNING in its study: an open trial, a
mutation not applied yet, a trial being asked for and a pending proposal are told FAIL, with
the reason in the ledger and ``tune status`` (docs/tune.md, "Resume, crashes and
torch.distributed"). A shared study otherwise kept them open for good."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import optuna
from tune_helpers import Toy, log_level

from hotcb import HotClient, HotKernel
from hotcb.testing import wait_for

LR_ONLY = [{"key": "lr", "module": "opt", "mode": "mult", "low": 0.5, "high": 2.0, "max": 10.0}]
FAIL = optuna.trial.TrialState.FAIL


def _trials(run_dir: str, name: str = "hotcb-run") -> dict[int, optuna.trial.FrozenTrial]:
    """The study as Optuna has it on disk (read by a storage of its own)."""
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{run_dir}/hotcb.tune.db")
    return {t.number: t for t in study.get_trials(deepcopy=False)}


def _voids(t: Toy) -> dict[int, str]:
    t.kernel.flush()
    return {e["tune"]["trial"]: e["tune"]["reason"] for e in t.ledger("void")}


def _step_until(t: Toy, done: Any, what: str) -> None:
    """Step the loop one step at a time until ``done()``, within a deadline (a command lands at
    a poll, which is timed, not counted in steps)."""

    def stepped() -> bool:
        t.run(1)
        return bool(done())

    wait_for(stepped, timeout=120, what=what)


def test_a_trial_open_when_the_run_ends_is_told_fail_with_the_reason(toy: Any, cli: Any) -> None:
    t: Toy = toy(log_level, lr=1e-4)
    tune = lambda: t.kernel.module("tune")  # noqa: E731
    HotClient(t.kernel.run_dir).tune_enable("active", objective="loss", segment_steps=10,
                                            seed=0, space=LR_ONLY, sync=True)  # fmt: skip
    t.run(1000, until=lambda: tune() is not None and tune().phase == "trial")
    number = tune().trial["number"]
    assert _trials(t.kernel.run_dir)[number].state == optuna.trial.TrialState.RUNNING
    t.run(3)
    t.kernel.close()

    told = _trials(t.kernel.run_dir)[number]
    assert told.state == FAIL
    why = "the run ended during the trial: not judged"
    assert told.user_attrs["hotcb"]["reason"] == why
    assert _voids(t)[number] == why  # the ledger: `hotcb log` prints it
    assert why in cli(t.kernel.run_dir, "log", "-n", "0").stdout
    st = json.loads(cli(t.kernel.run_dir, "tune", "status", "--json").stdout)
    (row,) = [r for r in st["trials"] if r["trial"] == number]
    assert row["decision"] == "failed" and row["detail"]["reason"] == why
    assert row["end_step"] == t.step and st["trial"] is None
    assert not [n for n, tr in _trials(t.kernel.run_dir).items() if not tr.state.is_finished()]


def test_a_mutation_not_applied_when_the_run_ends_is_told_fail(toy: Any) -> None:
    t: Toy = toy(log_level, lr=1e-4)
    tune = lambda: t.kernel.module("tune")  # noqa: E731
    HotClient(t.kernel.run_dir).tune_enable("active", objective="loss", segment_steps=10,
                                            seed=0, space=LR_ONLY, sync=True)  # fmt: skip
    # the mutate command is written at the boundary and applied at the next step's poll
    t.run(1000, until=lambda: tune() is not None and tune().waiting is not None
          and tune().waiting["kind"] == "mutate")  # fmt: skip
    number = tune().waiting["trial"]
    t.kernel.close()
    assert _trials(t.kernel.run_dir)[number].state == FAIL
    assert _voids(t)[number] == "the run ended before its mutation was applied: not judged"
    assert tune().counts["failed"] == 1


def test_a_trial_being_asked_for_when_the_run_ends_is_told_fail(toy: Any, held_ask: Any) -> None:
    gate = held_ask
    t: Toy = toy(log_level, lr=1e-4)
    tune = lambda: t.kernel.module("tune")  # noqa: E731
    HotClient(t.kernel.run_dir).tune_enable("active", objective="loss", segment_steps=10,
                                            seed=0, space=LR_ONLY)  # fmt: skip
    t.run(100, until=lambda: tune() is not None)
    wait_for(lambda: tune().study is not None or tune().opening.done(), timeout=60,
             what="the study to open")  # fmt: skip
    t.run(100, until=lambda: tune().phase == "asking")
    assert tune().phase == "asking"
    gate.set()  # Optuna answers while the run closes: close waits for it, then fails it
    t.kernel.close()
    trials = _trials(t.kernel.run_dir)
    assert len(trials) == 1 and all(tr.state == FAIL for tr in trials.values())
    (number,) = trials
    why = "the run ended while the trial was asked for (not started): not judged"
    assert _voids(t) == {number: why}  # the count, the rows and the ledger agree
    state = json.loads((Path(t.kernel.run_dir) / "hotcb.tune.json").read_text())
    assert [r["decision"] for r in state["trials"] if r["trial"] == number] == ["failed"]
    assert state["counts"]["failed"] == 1


def test_a_trial_being_asked_for_when_the_tuner_is_disabled_gets_a_row(
    toy: Any, held_ask: Any, cli: Any
) -> None:
    """The study and the count had a failed trial that `tune status`'s rows and the ledger
    skipped: trial numbers jumped with no trace of the one in between."""
    gate = held_ask
    t: Toy = toy(log_level, lr=1e-4)
    tune = lambda: t.kernel.module("tune")  # noqa: E731
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("active", objective="loss", segment_steps=10, seed=0, space=LR_ONLY)
    t.run(100, until=lambda: tune() is not None)
    wait_for(lambda: tune().study is not None or tune().opening.done(), timeout=60,
             what="the study to open")  # fmt: skip
    _step_until(t, lambda: tune().phase == "asking", "the trial's ask")
    client.tune_disable()
    # the disable lands at a poll (once a second): steps until then, not a count of them
    _step_until(t, lambda: tune().mode == "off", "the disable")
    gate.set()  # Optuna answers after the disable landed
    _step_until(t, lambda: bool(_voids(t)), "the dropped trial's ledger entry")
    (number,) = _trials(t.kernel.run_dir)
    why = "tuner disabled (not started): not judged"
    assert _voids(t) == {number: why}
    st = json.loads(cli(t.kernel.run_dir, "tune", "status", "--json").stdout)
    (row,) = [r for r in st["trials"] if r["trial"] == number]
    assert row["decision"] == "failed" and row["detail"]["reason"] == why
    assert st["counts"]["failed"] == 1
    t.kernel.close()
    assert _trials(t.kernel.run_dir)[number].state == FAIL


def test_a_pending_proposal_when_the_run_ends_is_told_fail_and_shown_ended(
    toy: Any, cli: Any
) -> None:
    t: Toy = toy(log_level, lr=1e-4)
    tune = lambda: t.kernel.module("tune")  # noqa: E731
    HotClient(t.kernel.run_dir).tune_enable("suggest", objective="loss", segment_steps=10,
                                            seed=0, space=LR_ONLY, sync=True)  # fmt: skip
    t.run(1000, until=lambda: tune() is not None and bool(tune().proposals))
    (p,) = tune().proposals
    t.kernel.close()

    assert _trials(t.kernel.run_dir)[p["trial"]].state == FAIL
    why = "the run ended before a person answered it"
    t.kernel.flush()
    (expired,) = t.ledger("expire")
    assert expired["tune"] == {"proposal": p["id"], "trial": p["trial"], "reason": why}
    st = json.loads(cli(t.kernel.run_dir, "tune", "status", "--json").stdout)
    assert [q["state"] for q in st["proposals"]] == ["ended"]
    (row,) = [r for r in st["trials"] if r["trial"] == p["trial"]]
    assert row["decision"] == "expired" and row["detail"]["reason"] == why
    assert st["counts"]["expired"] == 1
    assert "expired: 1" in cli(t.kernel.run_dir, "tune", "status").stdout


def test_a_copied_run_s_proposal_is_told_fail_when_the_copy_ends(toy: Any, tmp_path: Any) -> None:
    """A checkpoint with a proposal pending, resumed in a copy of the run directory (which goes
    on in the original's study): the copy's end tells that trial FAIL, though another run
    directory opened it (the original was killed, and no life of it will)."""
    t: Toy = toy(log_level, lr=1e-4)
    tune = lambda: t.kernel.module("tune")  # noqa: E731
    HotClient(t.kernel.run_dir).tune_enable("suggest", objective="loss", segment_steps=10,
                                            seed=0, space=LR_ONLY, sync=True)  # fmt: skip
    t.run(1000, until=lambda: tune() is not None and bool(tune().proposals))
    (p,) = tune().proposals
    checkpoint = copy.deepcopy(t.kernel.state_dict())
    copied = str(tmp_path / "copy")
    shutil.copytree(t.kernel.run_dir, copied)

    resumed = HotKernel(copied)
    resumed.load_state_dict(checkpoint)
    assert _trials(t.kernel.run_dir)[p["trial"]].state == optuna.trial.TrialState.RUNNING
    resumed.close()  # (the original's kernel is never closed before this: "killed")
    assert _trials(t.kernel.run_dir)[p["trial"]].state == FAIL


def test_a_resume_after_a_clean_end_judges_the_trial_again_and_tells_nothing_twice(
    toy: Any,
) -> None:
    """A checkpoint inside a trial, then the run ends (the trial told FAIL), then a resume from
    the checkpoint: the resumed life judges the trial again and acts on its score, the study
    keeps FAIL (the row says so), and new trials are numbered after every trial in it."""
    t: Toy = toy(log_level, lr=1e-4)
    tune = lambda: t.kernel.module("tune")  # noqa: E731
    HotClient(t.kernel.run_dir).tune_enable("active", objective="loss", segment_steps=10,
                                            seed=0, space=LR_ONLY, sync=True)  # fmt: skip
    t.run(1000, until=lambda: tune() is not None and tune().phase == "trial")
    number = tune().trial["number"]
    checkpoint = copy.deepcopy(t.kernel.state_dict())
    t.run(3)
    t.kernel.close()
    assert _trials(t.kernel.run_dir)[number].state == FAIL

    resumed = HotKernel(t.kernel.run_dir)
    t.kernel = resumed  # the loop goes on (the resumed life re-observes the trial's segment)
    resumed.load_state_dict(checkpoint)
    again = resumed.module("tune")
    (row,) = [r for r in again.trials if r["trial"] == number]
    assert row["study_score"] is None and "the study keeps FAIL" in row["note"], row
    t.run(1000, until=lambda: again.counts["kept"] + again.counts["rolled_back"] >= 2)
    resumed.close()
    trials = _trials(t.kernel.run_dir)
    assert trials[number].state == FAIL  # told once
    assert sorted(trials) == list(range(len(trials)))  # no number used twice, no gap
    assert trials[number + 1].user_attrs["run"] == t.kernel.run_dir
    assert not [n for n, tr in trials.items() if not tr.state.is_finished()]


def test_a_mutation_read_after_a_stop_is_not_applied_and_told_fail(toy: Any, cli: Any) -> None:
    """A person's stop written before the tuner's mutation, read in the same poll (under
    torch.distributed a signal's stop in the same batch): the run ends at that step, so the
    trial would never be judged. It was applied after the stop, then voided at the close."""
    space = dict(objective="loss", segment_steps=10, seed=0, space=LR_ONLY, sync=True)
    first: Toy = toy(log_level, "first", lr=1e-4, poll=3600.0)  # polls only when asked to
    tune = lambda t: t.kernel.module("tune")  # noqa: E731
    HotClient(first.kernel.run_dir).tune_enable("active", **space)
    first.run(1000, until=lambda: tune(first).waiting is not None)
    boundary = first.step  # where the tuner writes its first mutation (a seeded, sync ask)

    def stop_at_the_boundary(lr: float, step: int) -> float:  # before that step's safe point
        if step == boundary:
            HotClient(t.kernel.run_dir).send("control", "stop")
        return log_level(lr, step)

    t: Toy = toy(stop_at_the_boundary, "second", lr=1e-4, poll=3600.0)
    HotClient(t.kernel.run_dir).tune_enable("active", **space)
    t.run(boundary)
    number = tune(t).waiting["trial"]
    t.run(1)  # the next safe point reads the stop, then the mutation
    t.kernel.close()

    assert t.kernel.stop_requested and t.lr == 1e-4  # the trial's lr never came in
    entries = [e for e in t.ledger() if e["op"] in ("mutate", "void")]
    why = "the run stopped before this trial's mutation was applied: not judged"
    assert [(e["op"], e["decision"], e.get("error")) for e in entries] == [("mutate", "noop", why)]
    assert _trials(t.kernel.run_dir, "hotcb-second")[number].state == FAIL
    st = json.loads(cli(t.kernel.run_dir, "tune", "status", "--json").stdout)
    (row,) = [r for r in st["trials"] if r["trial"] == number]
    assert row["decision"] == "failed" and row["detail"]["reason"] == why


def test_a_resume_from_before_the_enable_turns_the_tuner_on_at_the_enable_s_step(
    toy: Any,
) -> None:
    """The checkpoint predates `tune enable`: the resumed life turned the tuner on at the
    checkpoint's step, from the state file the killed life left (`[resume] tune enable` at
    step 11), and the enable re-applied at its own step said "already". The new life then
    tuned from another step than the old one did. The enable comes back at its own step."""
    from hotcb.testing import read_ledger

    t: Toy = toy(log_level, lr=1e-4, poll=0)
    t.run(10)
    checkpoint = copy.deepcopy(t.kernel.state_dict())  # no tuner in it yet
    t.run(5)
    HotClient(t.kernel.run_dir).tune_enable("suggest", objective="loss", segment_steps=10,
                                            seed=0, space=LR_ONLY, sync=True)  # fmt: skip
    t.run(30)
    (enabled,) = [e for e in t.ledger("enable") if e["decision"] == "applied"]
    assert enabled["step"] == 16
    t.kernel.flush()  # killed: this kernel is never closed

    again = Toy(t.kernel.run_dir, log_level, lr=1e-4, poll=0)
    again.step = 10
    again.kernel.load_state_dict(checkpoint)
    try:
        again.run(30)
        again.kernel.flush()
        entries = read_ledger(t.kernel.run_dir)
        life = entries[max(i for i, e in enumerate(entries) if e.get("op") == "resume") + 1 :]
        enables = [e for e in life if e.get("module") == "tune" and e.get("op") == "enable"]
        assert [(e["step"], e["decision"]) for e in enables] == [(16, "applied")], enables
        assert again.kernel.module("tune").mode == "suggest"
    finally:
        again.kernel.close()


def _killed_and_resumed(t: Toy, checkpoint: dict[str, Any], at: int) -> Toy:
    """``t``'s process killed (its kernel never closed), a new one resumed from
    ``checkpoint`` (taken at step ``at``) in the same run directory; the caller closes it."""
    t.kernel.flush()
    again = Toy(t.kernel.run_dir, log_level, lr=1e-4, poll=0)
    again.step = at
    again.kernel.load_state_dict(checkpoint)
    return again


def _one_proposal_pending(toy: Any) -> tuple[Toy, HotClient, dict[str, Any]]:
    """A suggest-mode run (polled every step) with its first proposal pending."""
    t: Toy = toy(log_level, lr=1e-4, poll=0)
    tune = lambda: t.kernel.module("tune")  # noqa: E731
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("suggest", objective="loss", segment_steps=10, seed=0, space=LR_ONLY,
                       sync=True)  # fmt: skip
    t.run(1000, until=lambda: tune() is not None and bool(tune().proposals))
    (p,) = tune().proposals
    return t, client, p


def test_a_proposal_a_killed_process_left_is_expired_not_failed(toy: Any) -> None:
    """Suggest mode, a proposal pending, the trainer killed and started again (no checkpoint):
    the proposal's trial was told FAIL with "left open by a process … that ended before
    judging it" and counted as a failed trial, in `tune status` and the Tune panel, though it
    never ran. It is counted and shown as an expired proposal now (Optuna hears FAIL)."""
    t, client, p = _one_proposal_pending(toy)
    t.kernel.flush()  # killed: never closed

    again = Toy(t.kernel.run_dir, log_level, lr=1e-4, poll=0)
    try:
        again.run(3)  # a restart from step 1: the tuner comes back on, as it was
        st = client.tune_status()
        assert st["mode"] == "suggest"
        assert st["counts"]["failed"] == 0 and st["counts"]["expired"] == 1, st["counts"]
        (row,) = [r for r in st["trials"] if r["trial"] == p["trial"]]
        assert row["decision"] == "expired"
        assert "before a person answered it" in row["detail"]["reason"]
        (expired,) = again.ledger("expire")
        assert expired["tune"]["proposal"] == p["id"] and expired["tune"]["trial"] == p["trial"]
        assert _trials(t.kernel.run_dir)[p["trial"]].state == FAIL
    finally:
        again.kernel.close()


def test_a_proposal_the_checkpoint_holds_is_still_offered_and_its_score_counts(
    toy: Any,
) -> None:
    """A proposal pending at the checkpoint, the trainer killed after it, the run resumed from
    it: its trial was told FAIL ("opened after the checkpoint…", though it was opened before)
    and counted failed, while `tune proposals` still offered it; accepted, its score never
    reached the sampler. Its trial stays open now, and an accept is scored."""
    from hotcb.testing import read_ledger

    t, client, p = _one_proposal_pending(toy)
    checkpoint, at = copy.deepcopy(t.kernel.state_dict()), t.step
    t.run(3)
    again = _killed_and_resumed(t, checkpoint, at)
    mine = lambda: again.kernel.module("tune")  # noqa: E731
    try:
        again.run(2)
        voids = [e for e in read_ledger(t.kernel.run_dir)
                 if e.get("op") == "void" and (e.get("tune") or {}).get("trial") == p["trial"]]  # fmt: skip
        assert not voids, voids
        assert _trials(t.kernel.run_dir)[p["trial"]].state == optuna.trial.TrialState.RUNNING
        assert [q["id"] for q in client.tune_status()["proposals"] if q["state"] == "pending"] == [
            p["id"]
        ]
        client.tune_accept(p["id"])
        again.run(1000, until=lambda: mine().counts["kept"] + mine().counts["rolled_back"] == 1)
        assert mine().counts["failed"] == 0
        assert _trials(t.kernel.run_dir)[p["trial"]].state == optuna.trial.TrialState.COMPLETE
    finally:
        again.kernel.close()


def test_a_resumed_life_does_not_name_a_proposal_like_the_replaced_life_s(toy: Any) -> None:
    """The killed life answered P1 and proposed P2 after the checkpoint: the resumed life's
    next proposal was P2 again, which a person holding the old P2 could accept."""
    t, client, p = _one_proposal_pending(toy)
    checkpoint, at = copy.deepcopy(t.kernel.state_dict()), t.step
    client.tune_reject(p["id"])
    t.run(1000, until=lambda: len(t.kernel.module("tune").proposals) == 2)
    assert t.kernel.module("tune").proposals[-1]["id"] == "P2"
    again = _killed_and_resumed(t, checkpoint, at)
    mine = lambda: again.kernel.module("tune")  # noqa: E731
    try:
        again.run(2)
        client.tune_reject(p["id"])  # offered again: the checkpoint holds it
        again.run(1000, until=lambda: len(mine().proposals) == 2)
        assert mine().proposals[-1]["id"] == "P3", mine().proposals
    finally:
        again.kernel.close()

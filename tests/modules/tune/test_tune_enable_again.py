"""``tune enable`` on a tuner that is on, in the middle of a trial: the same settings change
nothing (a launch resuming a tuned run sends its enable again), other settings end the trial
and take its change back, as a disable does."""

from __future__ import annotations

from typing import Any

from tune_helpers import Toy, log_level

from hotcb import HotClient

LR_ONLY = [{"key": "lr", "module": "opt", "mode": "mult", "low": 0.5, "high": 2.0, "max": 10.0}]
SETTINGS: dict[str, Any] = {"objective": "loss", "segment_steps": 10, "seed": 0,
                            "space": LR_ONLY, "sync": True}  # fmt: skip


def _in_a_trial(toy: Any) -> tuple[Toy, dict[str, Any]]:
    t: Toy = toy(log_level, lr=1e-3, poll=0.0)
    HotClient(t.kernel.run_dir).tune_enable("active", **SETTINGS)
    tune = t.kernel.module
    t.run(100_000, until=lambda: tune("tune") is not None and tune("tune").phase == "trial")
    trial = dict(tune("tune").trial)
    assert t.lr != 1e-3  # the trial's move is in force
    return t, trial


def test_the_same_enable_again_lets_the_open_trial_go_on(toy: Any) -> None:
    """`hotcb launch --resume-from CKPT --tune active` over a checkpoint with the tuner on:
    the trial open at the checkpoint was failed and its lr stayed in force, the baseline of the
    next trial."""
    t, trial = _in_a_trial(toy)
    cid = HotClient(t.kernel.run_dir).tune_enable("active", **SETTINGS)
    t.run(2)
    (entry,) = [e for e in t.ledger("enable") if e["cmd_id"] == cid]
    assert entry["decision"] == "applied" and entry["changes"] == {
        "mode": {"old": "active", "new": "active"}
    }
    tune = t.kernel.module("tune")
    assert tune.trial is not None and tune.trial["number"] == trial["number"]
    t.run(100_000, until=lambda: tune.trial is None)
    (row,) = [r for r in tune.trials if r["trial"] == trial["number"]]
    assert row["decision"] in ("kept", "rolled_back")  # judged, not failed


def test_an_enable_with_other_settings_takes_the_open_trials_change_back(toy: Any) -> None:
    t, trial = _in_a_trial(toy)
    HotClient(t.kernel.run_dir).tune_enable("active", threshold=0.05)
    tune = t.kernel.module("tune")
    t.run(100_000, until=lambda: bool(t.ledger("rollback")))
    t.run(2)
    (rollback,) = t.ledger("rollback")
    assert rollback["decision"] == "applied"
    assert rollback["tune"]["trial"] == trial["number"]
    assert "enabled again with other settings" in rollback["tune"]["reason"]
    assert t.lr == 1e-3  # the value before the trial
    (row,) = [r for r in tune.trials if r["trial"] == trial["number"]]
    assert row["decision"] == "failed"
    assert tune.settings.threshold == 0.05 and tune.mode == "active"

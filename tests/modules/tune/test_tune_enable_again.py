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
    # (`hotcb log` said "mode: active -> active", as if it had changed something)
    assert entry["decision"] == "noop" and not entry.get("changes")
    assert entry["error"] == (
        "the tuner runs in active mode with these settings already: nothing to change"
    )
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


def test_a_mode_switch_during_a_trial_counts_it_failed_once(toy: Any) -> None:
    """The study opened again for the new mode found the trial still RUNNING and counted it
    failed too: `tune status` said `failed: 2` for one trial (Optuna: one FAIL)."""
    t: Toy = toy(log_level, lr=1e-3, poll=0.0)
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("active", **{**SETTINGS, "sync": False})
    tune = lambda: t.kernel.module("tune")  # noqa: E731
    t.run(100_000, until=lambda: tune() is not None and tune().phase == "trial")
    client.tune_enable("observe")
    t.run(100_000, until=lambda: tune().mode == "observe" and tune().study is not None
          and tune().opening is None)  # fmt: skip
    t.run(30)
    assert tune().counts["failed"] == 1
    states = [tr.state.name for tr in tune().study.study.get_trials()]
    assert states.count("FAIL") == 1


def test_an_expired_proposal_says_so_in_its_row_and_the_ledger(toy: Any) -> None:
    """suggest → active with P1 pending: Optuna heard FAIL and `tune proposals` said expired,
    but the trial's row said `proposed` for good and the ledger said nothing."""
    from hotcb.cli._common import fmt_entry

    t: Toy = toy(log_level, lr=1e-3, poll=0.0)
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("suggest", **SETTINGS)
    tune = lambda: t.kernel.module("tune")  # noqa: E731
    t.run(100_000, until=lambda: tune() is not None and any(
        p["state"] == "pending" for p in tune().proposals))  # fmt: skip
    (p,) = tune().proposals
    client.tune_enable("active")
    t.run(3)
    (row,) = [r for r in tune().trials if r["trial"] == p["trial"]]
    assert row["decision"] == "expired" and row["detail"]["reason"] == "tuner enabled again"
    (entry,) = t.ledger("expire")
    assert entry["tune"] == {"proposal": p["id"], "trial": p["trial"],
                             "reason": "tuner enabled again"}  # fmt: skip
    assert f"[{p['id']}, trial {p['trial']}, tuner enabled again]" in fmt_entry(
        entry, t.kernel.run_dir
    )
    # counted as expired, as its row says, not as a failed trial
    counts = client.tune_status()["counts"]
    assert (counts["expired"], counts["failed"]) == (1, 0), counts


def test_a_switch_to_segments_in_evaluations_lists_no_segment_steps(toy: Any) -> None:
    """`tune enable --segment-evals 2` on a tuner counting 20-step segments: its ledger entry
    said `segment_steps: 20 -> 200` (a default no segment uses) beside `segment_evals`."""
    t, _ = _in_a_trial(toy)
    cid = HotClient(t.kernel.run_dir).tune_enable("active", segment_evals=2)
    t.run(2)
    (entry,) = [e for e in t.ledger("enable") if e["cmd_id"] == cid]
    assert entry["changes"]["segment_evals"] == {"old": None, "new": 2}
    assert "segment_steps" not in entry["changes"], entry["changes"]


def test_a_new_recipe_that_draws_a_knob_another_way_goes_on_trying(toy: Any) -> None:
    """The lr as a log multiplier, then a recipe that sets it on a linear scale: the study
    held `opt.lr` as one kind of draw, Optuna refused every trial after the enable ("Cannot
    set different log configuration to the same parameter name") and the tuner only ran
    baseline segments, its warning repeated at every boundary."""
    t, _trial = _in_a_trial(toy)
    client = HotClient(t.kernel.run_dir)
    set_lr = [{"key": "lr", "module": "opt", "mode": "set", "low": 1e-3, "high": 9e-3,
               "log": False}]  # fmt: skip
    cid = client.tune_enable("active", **{**SETTINGS, "space": set_lr})
    t.run(100_000, until=lambda: any(e["cmd_id"] == cid for e in t.ledger("enable")))
    since = len(t.ledger("mutate"))
    t.run(2_000, until=lambda: len(t.ledger("mutate")) >= since + 3)
    later = t.ledger("mutate")[since:]
    assert len(later) >= 3, client.tune_status()["warnings"]
    assert all(1e-3 <= e["changes"]["lr"]["new"] <= 9e-3 for e in later), later
    assert not [w for w in client.tune_status()["warnings"] if "could not ask" in w]
    import optuna

    st = client.tune_status()
    study = optuna.load_study(study_name=st["study"], storage=st["storage"])
    drawn = [tr.params for tr in study.trials if tr.number == later[-1]["tune"]["trial"]]
    assert drawn == [{"opt.lr (set, linear)": later[-1]["changes"]["lr"]["new"]}]


def test_the_best_trial_shown_is_one_of_the_study_in_use(toy: Any) -> None:
    """`tune disable`, then `tune enable --study other`: `tune status` went on showing the
    old study's best trial as the new study's (its trial 2 there had been rolled back)."""
    t: Toy = toy(log_level, lr=1e-3, poll=0.0)
    client = HotClient(t.kernel.run_dir)
    client.tune_enable("active", **SETTINGS)
    tune = t.kernel.module
    t.run(100_000, until=lambda: tune("tune") is not None and tune("tune").best is not None)
    client.tune_disable()
    t.run(100_000, until=lambda: tune("tune").mode == "off")
    client.tune_enable("active", **{**SETTINGS, "study": "other"})
    t.run(100_000, until=lambda: tune("tune").mode == "active")
    t.run(3)  # the state file written
    st = client.tune_status()
    assert st["study"] == "other" and st["best"] is None, st["best"]
    t.run(100_000, until=lambda: tune("tune").best is not None)
    best = tune("tune").best
    (row,) = [r for r in tune("tune").trials if r["trial"] == best["trial"] and "study" not in r]
    assert row["decision"] == "kept"

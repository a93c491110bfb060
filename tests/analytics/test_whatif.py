"""What-if from a synthetic ledger and metrics: a run whose metric drops 20 % below its trend
after each lr ×0.5, and a branch that inherited part of its parent's ledger."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from hotcb.analytics import RunHistory, forecast, join_branch, past_changes, similar, whatif

DROP = 0.8  # the metric runs at 80 % of its trend after each halving of the lr


def entry(step: int, old: float, new: float, key: str = "lr", **kw: Any) -> dict[str, Any]:
    return {"seq": step, "step": step, "module": "opt", "op": "set_params", "source": "cli",
            "decision": "applied", "changes": {key: {"old": old, "new": new}}, **kw}  # fmt: skip


def synthetic(changes_at: tuple[int, ...] = (500, 1000), steps: int = 1500) -> RunHistory:
    x = np.arange(0, steps, 10, dtype=float)
    y = 2.0 * (x + 10.0) ** -0.5
    for s in changes_at:
        y[x > s] *= DROP
    lr, entries = 0.1, []
    for s in changes_at:
        entries.append(entry(s, lr, lr / 2))
        lr /= 2
    entries.append({"seq": 0, "step": 5, "module": "control", "op": "checkpoint",
                    "decision": "applied", "changes": None})  # fmt: skip
    entries.append(entry(700, 0.01, 0.02, key="weight_decay"))
    entries.append(entry(1200, 1.0, 0.5, decision="rejected"))
    return RunHistory("run", entries, x, y)


def test_past_changes_measure_the_level_after_against_the_trend_before() -> None:
    found = past_changes(synthetic(), "lr", horizon=200)
    assert [(c.step, c.old, c.new) for c in found] == [(500, 0.1, 0.05), (1000, 0.05, 0.025)]
    for c in found:
        assert c.impact == pytest.approx(math.log(DROP), abs=0.03)
        assert c.log_ratio == pytest.approx(math.log(0.5))
        assert c.log_space and c.points_after > 3
    # the 500 change's window stops at the next applied change (weight decay at 700)
    assert found[0].points_after == 20  # steps 510…700
    # the tuner's spelling: module.key
    assert len(past_changes(synthetic(), "opt.lr")) == 2
    assert past_changes(synthetic(), "loss.lr") == []


def test_a_change_a_resume_replaced_counts_once() -> None:
    """Killed after the lr cut at step 1000 and resumed from a checkpoint before it, the run
    made the cut again (``source: resume``): the what-if counted the dead life's entry and the
    copy as two similar changes, a band built on a duplicate."""
    hist = synthetic()
    cut = next(e for e in hist.entries if e["step"] == 1000)
    entries = [
        *hist.entries,
        {"seq": 1001, "step": 950, "module": "kernel", "op": "resume", "decision": "noop",
         "resumed_from": {"seq": 999, "step": 950}},
        {**cut, "seq": 1002, "source": "resume"},
    ]  # fmt: skip
    found = past_changes(RunHistory("run", entries, hist.steps, hist.values), "lr")
    assert [(c.step, c.source) for c in found] == [(500, "cli"), (1000, "resume")]
    # a restart from step 0 with no state loaded writes no resume entry: the new life's same
    # cut at the same step is the one change too
    restarted = [*hist.entries, {**cut, "seq": 2000, "source": "autopilot"}]
    found = past_changes(RunHistory("run", restarted, hist.steps, hist.values), "lr")
    assert [(c.step, c.source) for c in found] == [(500, "cli"), (1000, "autopilot")]


def test_a_ramp_counts_once_at_its_start() -> None:
    """``set lr=0.025 --ramp 100`` at step 1000: the ramp's end entry at step 1100 repeats its
    values (``source: ramp``), and the what-if took it for a second similar change, credited
    with the whole ramp's factor where the lr had nearly stopped moving."""
    hist = synthetic()
    cut = next(e for e in hist.entries if e["step"] == 1000)
    end = {**cut, "seq": 1100, "step": 1100, "source": "ramp", "ramp": "complete"}
    found = past_changes(RunHistory("run", [*hist.entries, end], hist.steps, hist.values), "lr")
    assert [(c.step, c.source) for c in found] == [(500, "cli"), (1000, "cli")]


def test_whatif_band_shifts_the_forecast_by_the_similar_impacts() -> None:
    hist = synthetic()
    changes = past_changes(hist, "lr", horizon=200)
    fc = forecast(hist.steps, hist.values, 200)
    w = whatif("lr", 0.5, changes, fc)
    assert w.note is None and len(w.similar) == 2 and w.considered == 2
    assert w.impact is not None and w.impact["median"] == pytest.approx(math.log(DROP), abs=0.03)
    assert fc is not None and w.band is not None
    np.testing.assert_allclose(np.array(w.band["median"]) / fc.median, DROP, rtol=0.04)
    assert all(
        lo <= m <= hi
        for lo, m, hi in zip(w.band["lo"], w.band["median"], w.band["hi"], strict=True)
    )
    d = w.to_dict()
    assert d["similar"][0]["factor"] == pytest.approx(0.5) and d["note"] is None


def test_log_ratio_impacts_scale_a_forecast_that_is_not_in_log_space() -> None:
    """The changes' impacts were log-ratios (about 20 % below trend) but the run's forecast
    was fitted in the metric's units (a loss near 0): the band added the log-ratios as units,
    a drop several times the loss itself. A log-ratio scales the forecast whatever its fit."""
    import dataclasses

    hist = synthetic()
    changes = past_changes(hist, "lr", horizon=200)
    fc = forecast(hist.steps, hist.values, 200)
    assert fc is not None and all(c.log_space for c in changes)
    units = dataclasses.replace(fc, trend=dataclasses.replace(fc.trend, log_space=False))
    w = whatif("lr", 0.5, changes, units)
    assert w.band is not None and w.impact is not None and w.impact["log_space"] is True
    np.testing.assert_allclose(np.array(w.band["median"]) / fc.median, DROP, rtol=0.04)


def test_no_similar_change_yet() -> None:
    hist = synthetic()
    changes = past_changes(hist, "lr")
    fc = forecast(hist.steps, hist.values, 200)
    for factor in (2.0, 0.1, 0.9):  # the other direction; too far; too close to 1
        w = whatif("lr", factor, changes, fc)
        assert w.similar == [] and w.band is None and w.note == "no similar change yet"
    assert similar(changes, 0.3)  # ×0.3 is within 2× of log(0.5)
    w = whatif("momentum", 0.5, past_changes(hist, "momentum"), fc)
    assert w.considered == 0 and w.note == "no similar change yet"
    with pytest.raises(ValueError, match="factor"):
        similar(changes, 1.0)


def test_a_branch_change_is_measured_against_the_parents_trend() -> None:
    parent = synthetic(changes_at=())
    # the child branched at step 600 with lr ×0.5 at its first step; its ledger starts with
    # the parent's entries, inherited, which are not counted again
    cx = parent.steps[parent.steps > 600]
    cy = parent.values[parent.steps > 600] * DROP
    x, y = join_branch(parent.steps, parent.values, 600, cx, cy)
    assert x[0] == 0 and np.all(np.diff(x) > 0) and x.size == parent.steps.size
    inherited = [entry(300, 0.2, 0.1, inherited=True)]
    child = RunHistory("child", [*inherited, entry(600, 0.1, 0.05)], x, y)
    found = past_changes(child, "lr")
    assert [c.step for c in found] == [600] and found[0].run == "child"
    assert found[0].impact == pytest.approx(math.log(DROP), abs=0.03)
    # without the parent's points the child has no trend before its change
    alone = RunHistory("child", [entry(600, 0.1, 0.05)], cx, cy)
    assert past_changes(alone, "lr")[0].impact is None


def test_a_similar_change_without_points_around_it_is_named_not_measured() -> None:
    x = np.arange(600, 1000, 10, dtype=float)
    alone = RunHistory("child", [entry(600, 0.1, 0.05)], x, 1.0 / np.sqrt(x))
    changes = past_changes(alone, "lr")
    w = whatif("lr", 0.5, changes, forecast(alone.steps, alone.values, 100))
    assert w.similar == [] and w.unmeasured == 1 and w.band is None
    assert w.note == "1 similar change, not measurable yet (too few points around it)"


def test_sparse_metrics_get_windows_wide_enough() -> None:
    # val_loss every 100 steps: 300 steps before a change would hold 3 points, too few to fit
    x = np.arange(0, 5000, 100, dtype=float)
    y = 2.0 * (x + 10.0) ** -0.5
    y[x > 2500] *= DROP
    found = past_changes(RunHistory("r", [entry(2500, 0.1, 0.05)], x, y), "lr", horizon=200)
    assert found[0].impact == pytest.approx(math.log(DROP), abs=0.03)

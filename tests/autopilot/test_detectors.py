"""The autopilot's detectors (``hotcb.autopilot.detectors``).

For each detector: synthetic series it must fire on and noise it must stay silent on, edge
cases (short, constant, NaN among the values, odd input), and real series recorded from tiny
digits runs (``series/*.json``, written by ``record_series.py``; nothing trains here). The
recorded runs are scanned the way the autopilot reads a run: the detector is asked again after
every new point, and the test checks what a user would: when it first fires, and that a healthy
run never makes it fire.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import random
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotcb.autopilot.detectors import (
    DETECTORS,
    DIRECTIONS,
    PARAMS,
    Detection,
    divergence,
    grad_explosion,
    nonfinite,
    overfitting,
    plateau,
    spike,
)

SERIES = os.path.join(os.path.dirname(__file__), "series")

Series = tuple[list[int], list[float | None]]


# ----------------------------------------------------------------------------- helpers


def noisy_decay(
    n: int, *, seed: int, start: float = 2.3, end: float = 0.1, noise: float = 0.3, every: int = 1
) -> Series:
    """A loss falling geometrically from ``start`` to ``end`` with log-normal noise (sigma
    ``noise``): heavy upper tails, like per-batch losses."""
    rng = random.Random(seed)
    rate = math.log(end / start) / (n - 1)
    values: list[float | None] = [
        start * math.exp(rate * i) * math.exp(rng.gauss(0.0, noise)) for i in range(n)
    ]
    return [every * (i + 1) for i in range(n)], values


def flat(n: int, level: float, *, seed: int, noise: float = 0.0, every: int = 1) -> Series:
    rng = random.Random(seed)
    values: list[float | None] = [level * (1.0 + rng.gauss(0.0, noise)) for _ in range(n)]
    return [every * (i + 1) for i in range(n)], values


def scan(
    detect: Callable[[list[int], list[float | None]], Detection | None], s: Series
) -> list[Detection]:
    """Every detection when the detector is asked after each new point, as the autopilot does."""
    steps, values = s
    found = []
    for i in range(1, len(values) + 1):
        hit = detect(steps[:i], values[:i])
        if hit is not None:
            found.append(hit)
    return found


def scan_overfitting(train: Series, val: Series, **params: Any) -> list[Detection]:
    """overfitting asked at each evaluation, with the train points logged up to it."""
    found = []
    for i in range(1, len(val[0]) + 1):
        step = val[0][i - 1]
        j = sum(1 for s in train[0] if s <= step)
        hit = overfitting(train[0][:j], train[1][:j], val[0][:i], val[1][:i], **params)
        if hit is not None:
            found.append(hit)
    return found


def load(run: str) -> dict[str, Series]:
    """A recorded run's series as ``{name: (steps, values)}``."""
    with open(os.path.join(SERIES, f"{run}.json")) as f:
        data = json.load(f)
    out: dict[str, Series] = {}
    for name, s in data["series"].items():
        values = s["values"]
        out[name] = ([s["start"] + i * s["every"] for i in range(len(values))], values)
    return out


def first(found: Sequence[Detection]) -> int:
    """The step of the first detection (there must be one)."""
    assert found, "expected at least one detection"
    return found[0].step


def check(found: Detection | None, detector: str) -> Detection:
    """A detection of ``detector``, well-formed: severity >= 1 (past its threshold), evidence
    that JSON can write, and a one-line description."""
    assert found is not None, f"expected {detector} to fire"
    assert found.detector == detector
    assert found.severity >= 1.0 and math.isfinite(found.severity)
    json.dumps(found.evidence, allow_nan=False)
    line = found.describe()
    assert line.startswith(f"{detector} on ") and "\n" not in line
    return found


# ----------------------------------------------------------------------------- plateau


def test_plateau_fires_when_the_smoothed_level_stops_improving() -> None:
    steps = [400 + 50 * i for i in range(8)]
    values: list[float | None] = [0.5, 0.499, 0.4985, 0.498, 0.4975, 0.497, 0.4968, 0.4965]
    found = check(plateau(steps, values, metric="val_loss"), "plateau")
    assert found.step == 750 and found.metric == "val_loss"
    assert 0 < float(found.evidence["improvement"]) < 0.01
    assert found.evidence["n"] == 8 and found.evidence["first_step"] == 400
    assert found.describe() == (
        "plateau on val_loss: 0.5% better over the last 8 values (steps 400-750), below 1.0%"
    )
    # just under the threshold: not "1.0% better …, below 1.0%"
    close = dataclasses.replace(found, evidence={**found.evidence, "improvement": 0.0097})
    assert close.describe().startswith("plateau on val_loss: 0.97% better over the last 8")


def test_plateau_is_silent_while_the_metric_improves() -> None:
    # a validation loss evaluated every 20 steps, falling 3 % per evaluation, with noise
    s = noisy_decay(40, seed=1, start=2.3, end=0.7, noise=0.01, every=20)
    assert scan(plateau, s) == []


def test_plateau_on_a_constant_series_and_a_worsening_one() -> None:
    steps = list(range(10, 90, 10))
    constant = check(plateau(steps, [0.3] * 8), "plateau")
    assert constant.evidence["improvement"] == 0.0 and constant.severity == 2.0
    rising = check(plateau(steps, [0.30, 0.31, 0.32, 0.33, 0.34, 0.35, 0.36, 0.37]), "plateau")
    assert rising.severity > 2.0
    # not "x% worse ..., below 1%": worse is not a small improvement
    assert rising.describe().endswith(
        "% worse over the last 8 values (steps 10-80), not the 1.0% better of a run still learning"
    ), rising.describe()


def test_plateau_direction_maximize_reads_accuracy() -> None:
    steps = list(range(8))
    climbing: list[float | None] = [0.80, 0.82, 0.84, 0.86, 0.88, 0.90, 0.92, 0.94]
    assert plateau(steps, climbing, direction="maximize") is None
    assert plateau(steps, climbing) is not None  # read as a loss, a climb is no improvement
    check(
        plateau(steps, [0.97, 0.971, 0.97, 0.972, 0.971, 0.97, 0.971, 0.97], direction="maximize"),
        "plateau",
    )


def test_plateau_smoothing_keeps_one_lucky_evaluation_from_hiding_a_plateau() -> None:
    steps = list(range(8))
    values: list[float | None] = [0.5, 0.5, 0.5, 0.5, 0.47, 0.5, 0.5, 0.5]  # one 6 % dip
    assert plateau(steps, values, smooth=1) is None  # raw, the dip reads as a 6 % improvement
    check(plateau(steps, values, smooth=3, eps=0.025), "plateau")  # smoothed, only 2 %


def test_plateau_edge_cases() -> None:
    assert plateau([], []) is None
    assert plateau(list(range(7)), [0.3] * 7) is None  # fewer than window points
    assert plateau(list(range(8)), [0.3] * 7) is None  # steps and values disagree
    mixed: list[float | None] = [0.3, math.nan, 0.3, 0.3, None, 0.3, math.inf, 0.3]
    check(plateau(list(range(8)), mixed), "plateau")  # 5 finite points out of 8 is enough
    sparse: list[float | None] = [0.3, math.nan, math.nan, 0.3, math.nan, math.nan, 0.3, None]
    assert plateau(list(range(8)), sparse) is None  # 3 finite out of 8: fewer than half
    assert plateau(list(range(8)), [0.3] * 8, window=3, smooth=3) is None  # needs window > smooth
    assert plateau(list(range(8)), [0.3] * 8, eps=0.0) is None
    assert plateau(list(range(8)), [0.3] * 8, direction="up") is None
    assert plateau(list(range(8)), [0.0] * 8) is not None  # a level of 0 divides by nothing


# ----------------------------------------------------------------------------- divergence


def test_divergence_fires_on_a_blow_up() -> None:
    steps, values = flat(64, 0.5, seed=2, noise=0.1)
    values[-5:] = [3.0, 3.2, 2.9, 3.5, 3.1]  # a sustained jump to 6x
    found = check(divergence(steps, values, metric="loss"), "divergence")
    assert found.evidence["cause"] == "blow-up" and float(found.evidence["ratio"]) > 5
    assert "above its best level" in found.describe()


def test_divergence_fires_on_a_steady_climb() -> None:
    steps = list(range(1, 65))
    rng = random.Random(3)
    values: list[float | None] = [0.5 * (1 + 0.01 * i) * (1 + rng.gauss(0, 0.05)) for i in steps]
    found = check(divergence(steps, values), "divergence")
    assert found.evidence["cause"] == "trend" and float(found.evidence["rise"]) > 0.5
    assert float(found.evidence["slope"]) > 0 and "rising" in found.describe()


def test_divergence_is_silent_on_a_noisy_falling_loss() -> None:
    for seed in range(5):
        assert scan(divergence, noisy_decay(600, seed=seed, noise=0.4)) == []


def test_divergence_is_silent_on_one_spike_and_on_a_noisy_flat_loss() -> None:
    steps, values = flat(64, 0.5, seed=4, noise=0.1)
    values[-1] = 20.0
    assert divergence(steps, values) is None  # one bad batch is spike's, not divergence's
    values[-2] = 20.0
    assert divergence(steps, values) is None  # two out of the last 8 are still not the level
    assert scan(divergence, flat(600, 0.5, seed=5, noise=0.3)) == []


def test_divergence_on_an_evaluated_metric_with_a_short_window() -> None:
    steps = [20 * i for i in range(1, 9)]
    values: list[float | None] = [0.4, 0.35, 0.3, 0.28, 0.3, 0.5, 0.7, 0.9]
    assert divergence(steps, values) is None  # 8 points: not enough for the default 64
    found = check(divergence(steps, values, window=8, k=2.0), "divergence")
    assert found.evidence["best"] == 0.28 and found.step == 160


def test_divergence_direction_maximize() -> None:
    steps = [20 * i for i in range(1, 9)]
    falling: list[float | None] = [0.9, 0.91, 0.9, 0.92, 0.6, 0.4, 0.3, 0.2]
    found = check(divergence(steps, falling, window=8, k=2.0, direction="maximize"), "divergence")
    assert "below its best level" in found.describe()
    rising: list[float | None] = [0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.92]
    assert divergence(steps, rising, window=8, k=2.0, direction="maximize") is None


def test_divergence_floor_silences_a_climb_of_a_loss_near_zero() -> None:
    """Late in a run a training loss of 0.001 that climbs to 0.003 is three times its best and
    a significant trend, and noise: with a floor in the loss's units it is not a divergence,
    while a real blow-up past the floor still is."""
    steps = list(range(1, 65))
    rng = random.Random(7)
    tiny: list[float | None] = [0.001 * (1 + 0.03 * i) * (1 + rng.gauss(0, 0.05)) for i in steps]
    found = check(divergence(steps, tiny), "divergence")  # no floor: it fires
    assert found.evidence["cause"] == "trend" and "floor" not in found.evidence
    assert divergence(steps, tiny, floor=0.05) is None
    blown = [*tiny[:-8], *[0.8] * 8]
    found = check(divergence(steps, blown, floor=0.05), "divergence")
    assert found.evidence["floor"] == 0.05
    # maximising, the floor is a level at or above which a fall is noise (an accuracy of 0.99)
    acc: list[float | None] = [0.999, 0.999, 0.998, 0.997, 0.995, 0.993, 0.99, 0.985]
    kw: dict[str, Any] = {"window": 8, "k": 2.0, "min_rise": 0.005, "direction": "maximize"}
    assert divergence(steps[:8], acc, **kw) is not None
    assert divergence(steps[:8], acc, floor=0.98, **kw) is None


def test_spike_floor_and_the_shipped_rules_leave_a_loss_converged_to_float_noise_alone() -> None:
    """A loss at 0 that shows 1e-8 once is 10000 robust SDs off its median and, over its best
    of 0, a rise of millions of per cent: the shipped rules checkpointed and halved the lr of
    a finished run. Their floors (1e-4) keep it quiet; a real spike still fires."""
    from hotcb.autopilot.rules import load_rules

    steps = list(range(300))
    flat: list[float | None] = [1e-8 if s in (150, 299) else 0.0 for s in steps]
    check(spike(steps, flat), "spike")  # no floor: it fires
    assert spike(steps, flat, floor=1e-4) is None
    jumped = [*flat[:-1], 0.5]
    check(spike(steps, jumped, floor=1e-4), "spike")
    by_id = {r.id: r for r in load_rules().rules}
    for rid, fn in (("spike_checkpoint", spike), ("divergence_cut_lr", divergence)):
        params = by_id[rid].params
        assert fn(steps, flat, **params) is None, rid
        check(fn(steps, [*flat[:-8], *[0.5] * 8] if fn is divergence else jumped, **params),
              fn.__name__)  # fmt: skip


def test_divergence_edge_cases() -> None:
    assert divergence([], []) is None
    assert divergence(list(range(63)), [1.0] * 63) is None
    assert divergence(list(range(64)), [1.0] * 64) is None  # constant: no climb, ratio 1
    assert divergence(list(range(64)), [math.nan] * 64) is None
    from_zero = check(divergence(list(range(64)), [0.0] * 60 + [5.0] * 4), "divergence")
    assert from_zero.evidence["cause"] == "trend" and from_zero.severity <= 1e7  # capped
    negative = divergence(list(range(8)), [-1.0, -1, -1, -1, -1, 3, 3, 3], window=8, k=2)
    assert check(negative, "divergence").evidence["ratio"] == 0.0  # no ratio below 0, a trend
    assert divergence(list(range(64)), [1.0] * 64, k=1.0) is None
    assert divergence(list(range(64)), [1.0] * 64, direction="sideways") is None
    same_step = divergence([5] * 8, [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7], window=8, k=2)
    check(same_step, "divergence")  # steps all equal: the point index stands in


# ----------------------------------------------------------------------------- spike


def test_spike_fires_on_an_outlier_above_the_window() -> None:
    steps, values = flat(50, 0.5, seed=6, noise=0.05)
    values[-1] = 5.0
    found = check(spike(steps, values, metric="train_loss"), "spike")
    assert found.evidence["side"] == "up" and float(found.evidence["z"]) >= 10
    assert found.step == 50 and found.evidence["n"] == 49
    assert "robust SDs above the median" in found.describe()


def test_spike_is_two_sided() -> None:
    steps, values = flat(50, 0.9, seed=7, noise=0.01)
    values[-1] = 0.2  # accuracy collapsing in one step
    found = check(spike(steps, values), "spike")
    assert found.evidence["side"] == "down" and float(found.evidence["z"]) <= -10


def test_spike_is_silent_on_heavy_tailed_per_step_noise() -> None:
    for seed in range(5):
        assert scan(spike, noisy_decay(600, seed=seed, noise=0.4)) == []


def test_spike_scale_floor_on_a_constant_series() -> None:
    steps = list(range(50))
    assert spike(steps, [1.0] * 49 + [1.05]) is None  # 5 % off a constant: under the 1 % floor x 10
    check(spike(steps, [1.0] * 49 + [1.5]), "spike")
    assert spike(steps, [1.0] * 50) is None


def test_spike_edge_cases() -> None:
    steps, values = flat(50, 0.5, seed=8, noise=0.05)
    assert spike(steps[:-1], values[:-1]) is None  # 49 < window
    values[-1] = math.nan
    assert spike(steps, values) is None  # a NaN is nonfinite's
    values[-1] = 5.0
    values[3] = values[10] = None
    check(spike(steps, values), "spike")  # NaNs in the baseline are left out
    assert spike(steps, values, z=0) is None
    assert spike(steps[:1], values[:1], window=1) is None


# ----------------------------------------------------------------------------- nonfinite


@pytest.mark.parametrize(
    ("bad", "shown"), [(math.nan, "nan"), (math.inf, "inf"), (-math.inf, "-inf"), (None, "null")]
)
def test_nonfinite_fires_on_a_single_bad_value(bad: float | None, shown: str) -> None:
    found = check(nonfinite([1, 2, 3], [0.5, 0.4, bad], metric="loss"), "nonfinite")
    assert found.step == 3 and found.severity == 1.0
    assert found.evidence == {"value": shown, "streak": 1, "since_step": 3, "last_step": 3}
    assert found.describe() == f"nonfinite on loss: {shown} at step 3"


def test_nonfinite_counts_the_streak() -> None:
    found = check(nonfinite([10, 20, 30, 40], [0.5, math.nan, math.inf, math.nan]), "nonfinite")
    assert found.evidence["streak"] == 3 and found.evidence["since_step"] == 20
    assert found.severity == 3.0 and "(3 in a row since step 20)" in found.describe()
    only_bad = check(nonfinite([1, 2], [math.nan, math.nan]), "nonfinite")
    assert only_bad.evidence["streak"] == 2


def test_nonfinite_reads_only_the_latest_value() -> None:
    assert nonfinite([1, 2, 3], [0.5, math.nan, 0.4]) is None  # recovered
    assert nonfinite([1, 2, 3], [0.5, 0.4, 0.3]) is None
    assert nonfinite([], []) is None
    assert nonfinite([1], [math.nan, math.nan]) is None  # steps and values disagree


# ----------------------------------------------------------------------------- overfitting


def _train_and_val(
    val_shape: Callable[[int], float],
    train_shape: Callable[[int], float],
    *,
    seed: int,
    val_noise: float = 0.0,
) -> tuple[Series, Series]:
    """A train loss logged every step (log-normal noise) and a validation loss evaluated
    every 20 steps (relative noise ``val_noise``), 400 steps."""
    rng = random.Random(seed)
    train_steps = list(range(1, 401))
    train: list[float | None] = [
        train_shape(s) * math.exp(rng.gauss(0.0, 0.2)) for s in train_steps
    ]
    val_steps = list(range(20, 401, 20))
    val: list[float | None] = [val_shape(s) * (1.0 + rng.gauss(0.0, val_noise)) for s in val_steps]
    return (train_steps, train), (val_steps, val)


def test_overfitting_fires_when_val_rises_while_train_falls() -> None:
    train, val = _train_and_val(
        lambda s: 0.5 + ((s - 150) / 200) ** 2 if s > 150 else 0.5 + (150 - s) / 300,
        lambda s: 1.5 * math.exp(-s / 100),
        seed=9,
    )
    found = scan_overfitting(train, val, metric="val_loss")
    assert found, "expected overfitting to fire"
    assert 200 <= first(found) <= 300
    last = check(found[-1], "overfitting")
    assert last.step == 400 and float(last.evidence["train_change"]) < 0
    assert float(last.evidence["gap_last"]) > float(last.evidence["gap_first"])
    assert "validation-train gap grew" in last.describe()


def test_overfitting_is_not_a_val_loss_rising_with_train() -> None:
    train, val = _train_and_val(lambda s: 0.5 + s / 400, lambda s: 0.3 + s / 500, seed=10)
    assert scan_overfitting(train, val) == []


def test_overfitting_is_not_a_healthy_widening_gap() -> None:
    # both fall; train faster: the gap widens, as in every healthy run
    train, val = _train_and_val(
        lambda s: 0.3 + 1.5 * math.exp(-s / 150),
        lambda s: 1.8 * math.exp(-s / 80),
        seed=11,
        val_noise=0.02,
    )
    assert scan_overfitting(train, val) == []


def test_overfitting_needs_train_to_fall_and_val_to_rise() -> None:
    for seed in range(5):
        # val flat and noisy, train flat too: nothing is learned, nothing overfits
        train, val = _train_and_val(lambda s: 0.3, lambda s: 0.2, seed=seed, val_noise=0.08)
        assert scan_overfitting(train, val) == [], seed
        # val falls slowly and noisily while train falls fast: healthy
        train, val = _train_and_val(
            lambda s: 0.5 * math.exp(-s / 1000),
            lambda s: 0.3 * math.exp(-s / 200),
            seed=seed,
            val_noise=0.02,
        )
        assert scan_overfitting(train, val) == [], seed


def test_overfitting_edge_cases() -> None:
    val_steps = [20, 40, 60, 80, 100, 120]
    rising: list[float | None] = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75]
    train_steps = list(range(1, 121))
    falling: list[float | None] = [1.0 - s / 200 for s in train_steps]
    check(overfitting(train_steps, falling, val_steps, rising), "overfitting")
    assert overfitting([], [], val_steps, rising) is None  # no train points
    assert overfitting(train_steps, falling, val_steps[:5], rising[:5]) is None
    assert overfitting(train_steps, falling[:-1], val_steps, rising) is None  # disagree
    assert overfitting(train_steps, falling, val_steps, [math.nan] * 6) is None
    assert overfitting(train_steps, falling, val_steps, rising, min_gap_rise=0) is None
    # train logged only every 50 steps: an evaluation without train points since the last one
    # uses the latest train value before it
    sparse_steps = [1, 50, 100, 120]
    sparse: list[float | None] = [1.0, 0.8, 0.6, 0.5]
    check(overfitting(sparse_steps, sparse, val_steps, rising), "overfitting")


# ----------------------------------------------------------------------------- grad_explosion


def test_grad_explosion_fires_on_a_tenfold_gradient_norm() -> None:
    steps, values = flat(20, 0.8, seed=12, noise=0.2)
    values[-1] = 12.0
    found = check(grad_explosion(steps, values, metric="grad_norm"), "grad_explosion")
    assert float(found.evidence["ratio"]) >= 10 and found.step == 20
    assert "the median" in found.describe()


def test_grad_explosion_is_silent_on_a_steady_noisy_norm() -> None:
    for seed in range(5):
        assert scan(grad_explosion, flat(500, 0.8, seed=seed, noise=0.3)) == []
    steps, values = flat(20, 0.8, seed=13, noise=0.1)
    values[-1] = 6.0  # 7.5x: large, still under the factor
    assert grad_explosion(steps, values) is None


def test_grad_explosion_edge_cases() -> None:
    steps, values = flat(20, 0.8, seed=14, noise=0.1)
    assert grad_explosion(steps[:-1], values[:-1]) is None
    values[-1] = math.inf
    assert grad_explosion(steps, values) is None  # nonfinite's
    assert grad_explosion(list(range(20)), [0.0] * 19 + [5.0]) is None  # baseline 0
    assert grad_explosion(steps, values, factor=1.0) is None


# ----------------------------------------------------------------------------- contracts


def test_detectors_and_params_agree_with_the_signatures() -> None:
    assert set(DETECTORS) == set(PARAMS) == {
        "plateau", "divergence", "spike", "nonfinite", "overfitting", "grad_explosion"
    }  # fmt: skip
    for name, fn in DETECTORS.items():
        signature = inspect.signature(fn)
        tunable = {
            p.name: p.default
            for p in signature.parameters.values()
            if p.kind is p.KEYWORD_ONLY and p.name != "metric"
        }
        assert set(tunable) == set(PARAMS[name]), name
        for param, (kind, lo, hi) in PARAMS[name].items():
            default = tunable[param]
            if default is None:  # an optional parameter, off by default
                assert kind is float and lo is not None and hi is not None, (name, param)
                continue
            assert isinstance(default, kind), (name, param)
            if kind is str:
                assert default in DIRECTIONS
            else:
                assert lo is not None and hi is not None and lo <= default <= hi, (name, param)


def test_detectors_look_only_at_their_window() -> None:
    steps, values = noisy_decay(200_000, seed=15, noise=0.3)
    values[-1] = 50.0
    for name in ("plateau", "divergence", "spike", "grad_explosion", "nonfinite"):
        fn = DETECTORS[name]
        assert fn(steps, values) == fn(steps[-1000:], values[-1000:]), name
    n = 200_000
    train_steps = list(range(1, n + 1))
    train_values: list[float | None] = [
        1.0 if s < n - 200 else 0.5 + (n - s) / 400 for s in train_steps
    ]
    val_steps = list(range(20, n + 1, 20))
    val_values: list[float | None] = [0.5] * (len(val_steps) - 6) + [
        0.5,
        0.55,
        0.6,
        0.65,
        0.7,
        0.72,
    ]
    full = overfitting(train_steps, train_values, val_steps, val_values)
    cut = overfitting(train_steps[-1000:], train_values[-1000:], val_steps[-10:], val_values[-10:])
    assert full is not None and full == cut


odd_values = st.lists(
    st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.none(), st.integers(-5, 5)),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(
    values=odd_values,
    window=st.integers(-2, 45),
    steps_kind=st.sampled_from(["rising", "same", "short"]),
)
def test_detectors_never_raise(values: list[float | None], window: int, steps_kind: str) -> None:
    n = len(values)
    steps = {"rising": list(range(n)), "same": [7] * n, "short": list(range(max(0, n - 1)))}[
        steps_kind
    ]
    results = [
        plateau(steps, values, window=window, smooth=min(3, max(1, window - 1))),
        plateau(steps, values, window=window, direction="maximize"),
        divergence(steps, values, window=window),
        divergence(steps, values, window=window, k=2.0, direction="maximize"),
        spike(steps, values, window=window),
        nonfinite(steps, values),
        overfitting(steps, values, steps[::3], values[::3], window=window),
        grad_explosion(steps, values, window=window),
    ]
    for found in results:
        if found is not None:
            assert found.severity >= 0 and math.isfinite(found.severity)
            json.dumps(found.evidence, allow_nan=False)
            assert found.describe()


def test_describe_falls_back_on_foreign_evidence() -> None:
    found = Detection("plateau", "val_loss", 7, 1.5, {"note": "written by hand"})
    assert found.describe() == "plateau on val_loss at step 7 (severity 1.5)"
    assert (
        Detection("custom", "", 3, 2.0, {}).describe() == "custom on metric at step 3 (severity 2)"
    )


# ----------------------------------------------------------------------------- recorded runs


def fired(run: dict[str, Series]) -> dict[str, list[int]]:
    """The steps at which each detector fires on a recorded run, read as the default rules
    read it (train loss, gradient norm and validation loss)."""
    train, grad, val = run["train_loss"], run["grad_norm"], run["val_loss"]
    return {
        "divergence(train)": [d.step for d in scan(divergence, train)],
        "divergence(val, window=8, k=2)": [
            d.step for d in scan(lambda s, v: divergence(s, v, window=8, k=2.0), val)
        ],
        "spike(train)": [d.step for d in scan(spike, train)],
        "grad_explosion": [d.step for d in scan(grad_explosion, grad)],
        "nonfinite(train)": [d.step for d in scan(nonfinite, train)],
        "overfitting": [d.step for d in scan_overfitting(train, val)],
    }


@pytest.mark.parametrize("name", ["good", "noisy"])
def test_recorded_healthy_runs_fire_nothing(name: str) -> None:
    run = load(name)
    steps = fired(run)
    assert steps == {key: [] for key in steps}
    assert scan(plateau, run["val_loss"]) == []  # both still learn at step 500


def test_recorded_divergence_is_caught_soon_after_it_starts() -> None:
    run = load("diverge")  # lr 0.1 until step 150, raised to 1.0 by step 250
    train = scan(divergence, run["train_loss"])
    assert train and all(d.step > 150 for d in train)  # nothing while the lr was sound
    assert first(train) <= 200
    check(train[0], "divergence")
    val = scan(lambda s, v: divergence(s, v, window=8, k=2.0), run["val_loss"])
    assert val and 150 < val[0].step <= 220
    assert val[-1].step == 500  # still diverged at the end
    # on the way, the train loss spikes and the gradient norm explodes, never before step 150
    for found in (scan(spike, run["train_loss"]), scan(grad_explosion, run["grad_norm"])):
        assert found and all(d.step > 150 for d in found)


def test_recorded_overfitting_is_caught_and_only_there() -> None:
    run = load("overfit")  # validation loss bottoms out at step 60, train keeps falling
    found = scan_overfitting(run["train_loss"], run["val_loss"], metric="val_loss")
    assert first(found) <= 240
    assert len(found) >= 8  # and it keeps firing while the gap grows
    check(found[-1], "overfitting")
    assert scan(divergence, run["train_loss"]) == []  # train itself is fine
    for healthy in ("good", "noisy", "plateau"):
        other = load(healthy)
        assert scan_overfitting(other["train_loss"], other["val_loss"]) == [], healthy


def test_recorded_plateau_fires_only_after_learning_stops() -> None:
    run = load("plateau")  # the learning rate drops 1000x after step 200
    found = scan(plateau, run["val_loss"])
    assert first(found) >= 300
    assert [d.step for d in found] == list(range(first(found), 501, 20))
    check(found[-1], "plateau")
    steps = fired(run)
    assert steps == {key: [] for key in steps}

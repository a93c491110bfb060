"""The forecast: close on an exact decay, an honest band on noise, the backtest's verdict."""

from __future__ import annotations

import numpy as np
import pytest

from hotcb.analytics import backtest, fit_trend, forecast
from hotcb.analytics.forecast import huber_line, sklearn_available

BACKENDS = ["numpy", pytest.param("sklearn", marks=pytest.mark.skipif(
    not sklearn_available(), reason="scikit-learn is not installed"))]  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_exponential_decay_is_forecast_closely(backend: str) -> None:
    steps = np.arange(1000)
    values = 2.0 * np.exp(-steps / 300)
    fc = forecast(steps, values, 200, backend=backend)
    assert fc is not None
    truth = 2.0 * np.exp(-fc.steps / 300)
    assert fc.steps[-1] == 999 + 200
    np.testing.assert_allclose(fc.median, truth, rtol=0.02)
    assert np.all(fc.lo <= fc.median) and np.all(fc.median <= fc.hi)
    assert fc.trend.form == "exp" and fc.trend.log_space


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_power_law_is_forecast_closely(backend: str) -> None:
    steps = np.arange(0, 2000, 10)
    values = 3.0 * (steps + 1.0) ** -0.5
    fc = forecast(steps, values, 500, backend=backend)
    assert fc is not None and fc.trend.form == "power"
    np.testing.assert_allclose(fc.median, 3.0 * (fc.steps + 1.0) ** -0.5, rtol=0.02)
    assert fc.steps[1] - fc.steps[0] == 10  # the grid follows the metric's logging gap


def test_band_covers_about_80_percent_of_future_noise() -> None:
    rng = np.random.default_rng(0)
    covered = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        y = 1.0 + rng.normal(0, 0.1, 1400)
        fc = forecast(np.arange(1000), y[:1000], 400, backend="numpy")
        assert fc is not None
        future = np.arange(1000, 1400)
        lo, hi = np.interp(future, fc.steps, fc.lo), np.interp(future, fc.steps, fc.hi)
        covered.append(np.mean((y[1000:] >= lo) & (y[1000:] <= hi)))
    assert 0.72 <= np.mean(covered) <= 0.9, covered


def _drifting_decay(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A power-law loss with log-normal noise (sd 0.05) and a slow random walk in log space
    (sd 0.004 a step, so 0.057 over 200 steps): the drift that a fit's residuals do not see."""
    rng = np.random.default_rng(seed)
    steps = np.arange(n)
    walk = np.cumsum(rng.normal(0, 0.004, n))
    return steps, (0.1 + 2.0 * (steps + 10.0) ** -0.5) * np.exp(walk + rng.normal(0, 0.05, n))


def test_calibrated_band_covers_about_80_percent_where_the_fits_band_does_not() -> None:
    h, n, seeds = 200, 1500, 40
    inside_fit = inside_cal = 0
    for seed in range(seeds):
        steps, y = _drifting_decay(seed, n + h)
        bt = backtest(steps[:n], y[:n], h)
        fit = forecast(steps[:n], y[:n], h, backend="numpy")
        cal = forecast(steps[:n], y[:n], h, backend="numpy", calibration=bt)
        assert fit is not None and cal is not None
        assert cal.calibrated == bt.origins == 12 and fit.calibrated == 0
        np.testing.assert_allclose(cal.median, fit.median)  # the same forecast, another band
        assert np.all(cal.lo <= cal.median) and np.all(cal.median <= cal.hi)
        target = y[n - 1 + h]
        inside_fit += int(fit.lo[-1] <= target <= fit.hi[-1])
        inside_cal += int(cal.lo[-1] <= target <= cal.hi[-1])
    # nominal 80 %; 40 seeds: a standard error of about 6 points
    assert 0.7 <= inside_cal / seeds <= 0.92, (inside_cal, inside_fit)
    assert inside_fit / seeds < 0.7, (inside_cal, inside_fit)  # the fit's band is too narrow


def test_backtest_coverage_is_calibrated_on_earlier_origins_only() -> None:
    steps, y = _drifting_decay(7, 3000)
    bt = backtest(steps, y, 200, origins=40)
    assert bt.origins == 40 and bt.coverage is not None and bt.coverage_fit is not None
    assert bt.coverage > bt.coverage_fit and 0.7 <= bt.coverage <= 0.95, bt.to_dict()
    cal = bt.calibration(log_space=True)
    assert cal.horizon == 200 and cal.errors.size == 40
    assert bt.calibration(log_space=False).errors.size == 0
    assert set(bt.to_dict()) >= {"coverage", "coverage_fit"}


def test_calibration_needs_enough_past_forecasts_and_the_same_horizon() -> None:
    steps, y = _drifting_decay(3, 300)
    few = backtest(steps, y, 200, origins=4)
    assert few.origins == 4
    fc = forecast(steps, y, 200, calibration=few)
    assert fc is not None and fc.calibrated == 0
    assert fc.to_dict()["band"] == "fit" and fc.to_dict()["calibrated_on"] == 0
    plain = forecast(steps, y, 200)
    assert plain is not None
    np.testing.assert_allclose(fc.hi, plain.hi)
    bt = backtest(steps, y, 50)
    assert forecast(steps, y, 50, calibration=bt).to_dict()["band"] == "calibrated"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="50 steps ahead, not 200"):
        forecast(steps, y, 200, calibration=bt)


def test_noisy_decay_band_holds_the_truth_and_beats_the_baselines() -> None:
    rng = np.random.default_rng(1)
    steps = np.arange(1600)
    clean = 0.1 + 2.0 * (steps + 10.0) ** -0.7
    noisy = clean * np.exp(rng.normal(0, 0.1, steps.size))
    fc = forecast(steps[:1200], noisy[:1200], 400)
    assert fc is not None
    truth = np.interp(fc.steps, steps, clean)
    assert np.all((fc.lo <= truth) & (truth <= fc.hi))
    bt = backtest(steps, noisy, 200)
    assert bt.origins == 12 and bt.better, bt
    assert bt.mae_model is not None and bt.mae_last_value is not None
    assert bt.mae_model < bt.mae_last_value
    assert bt.to_dict()["better"] is True


def test_backtest_says_not_better_where_a_straight_line_is_the_truth() -> None:
    # a metric that grows exactly linearly: the linear baseline is exact, the model is not
    steps = np.arange(0, 3000, 10)
    bt = backtest(steps, 5.0 + 0.002 * steps, 200)
    assert bt.origins > 0 and bt.mae_linear == pytest.approx(0.0, abs=1e-9)
    assert not bt.better


def test_backtest_without_enough_history_has_no_origins() -> None:
    bt = backtest(np.arange(30), np.ones(30), 200)
    assert bt.origins == 0 and bt.mae_model is None and not bt.better


def test_too_few_points_and_bad_arguments() -> None:
    assert forecast([0, 1, 2], [1.0, 0.9, 0.8], 10) is None
    assert fit_trend([0, 1], [1.0, 0.5]) is None
    with pytest.raises(ValueError, match="horizon"):
        forecast(np.arange(20), np.ones(20), 0)
    with pytest.raises(ValueError, match="quantiles"):
        forecast(np.arange(20), np.ones(20), 5, quantiles=(0.9, 0.1))
    with pytest.raises(ValueError, match="length"):
        forecast(np.arange(20), np.ones(19), 5)


def test_nan_duplicates_and_negative_values() -> None:
    steps = np.r_[np.arange(100), 50]  # step 50 logged again (the last one wins)
    values = np.r_[np.linspace(1.0, -1.0, 100), -0.0]
    values[10] = np.nan
    fc = forecast(steps, values, 20, backend="numpy")
    assert fc is not None and not fc.trend.log_space  # negative values: the metric's own units
    assert np.all(np.isfinite(fc.median)) and fc.median[-1] < -1.0
    d = fc.to_dict()
    assert d["steps"][-1] == 119 and len(d["median"]) == len(d["steps"]) == len(d["lo"])


def test_constant_series_is_a_flat_forecast() -> None:
    fc = forecast(np.arange(50), np.full(50, 0.5), 10)
    assert fc is not None
    np.testing.assert_allclose(fc.median, 0.5)
    np.testing.assert_allclose(fc.lo, 0.5)


def test_huber_fallback_resists_outliers_and_matches_sklearn() -> None:
    x = np.linspace(0, 5, 200)
    y = 1.0 - 0.5 * x
    y[::20] += 10.0  # spikes
    a, b = huber_line(x, y)
    assert a == pytest.approx(1.0, abs=0.05) and b == pytest.approx(-0.5, abs=0.02)
    if sklearn_available():
        from hotcb.analytics.forecast import _sklearn_line

        rng = np.random.default_rng(3)
        yn = 1.0 - 0.5 * x + rng.normal(0, 0.1, x.size)
        np.testing.assert_allclose(_sklearn_line(x, yn), huber_line(x, yn), atol=0.02)


def test_a_long_horizon_is_thinned_not_materialised() -> None:
    fc = forecast(np.arange(100), 1.0 / np.arange(1, 101), 10_000_000, out_points=60)
    assert fc is not None and len(fc.steps) <= 60
    assert fc.steps[-1] == 99 + 10_000_000 and np.all(np.diff(fc.steps) > 0)

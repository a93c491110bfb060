"""The key metric's projection ``horizon`` steps ahead, with a quantile band, from its recent trend.

The model (the same with or without scikit-learn):

- **Space.** A metric that is positive throughout the window is modelled in log space (loss
  curves fall multiplicatively, and the band stays positive); any other metric in its own units.
- **Trend.** A straight line in ``log(step + 1)``, i.e. a power law ``y ≈ a·(step+1)^b`` for a
  positive metric: the shape of most training curves, which flattens by itself instead of
  running off like a straight line in ``step``. It is fitted on the last part of the history (the
  *window*: the last half of the points, at least ``min_points``, at most ``max_points``) with a
  robust (Huber) loss, so a spike or a minibatch outlier does not tilt it. With scikit-learn
  installed the fit is :class:`sklearn.linear_model.HuberRegressor`; without it, the numpy
  fallback does the same fit by iteratively reweighted least squares (:func:`huber_line`).
  (statsmodels is not used: it is not a dependency of any extra.)
- **Band.** The residuals of the fit give the spread of a single future observation: the
  *fit's band* is the forecast plus the residuals' ``q_lo`` and ``q_hi`` quantiles (10 % and
  90 % by default), widened by the line's own standard error at that step. It is too narrow far
  out (a trend that bends is outside the residuals it was fitted on: 67-72 % coverage at 200
  steps on real runs), so where a :func:`backtest` of the same series at the same horizon is
  given (``calibration=``) and holds at least :data:`MIN_CALIBRATION` past forecasts, the band
  is *calibrated* (split conformal): at the horizon it is the forecast plus the ``q_lo`` and
  ``q_hi`` quantiles of those forecasts' signed errors ``actual - forecast`` (in log space: of
  the log ratio), at levels widened by ``1/n``, after cutting each error at Tukey's far-out
  fences (3 interquartile ranges past the quartiles), so one wild past forecast does not set
  the band alone; between the last step and the horizon it moves linearly from the fit's band
  to that one. The band always holds the median. A metric that is a share (:func:`unit_bounds`)
  is clipped to ``[0, 1]``.

:func:`backtest` replays the model on the run's own past: from several origins it forecasts
``horizon`` steps ahead and compares the mean absolute error with two baselines, the last value
and a straight line in ``step`` fitted on the same window. Its origins have at least
:func:`min_history` points behind them (a quarter of the history, up to 800 points), so their
fits look like the live one. A forecast is worth showing only where it beats both
(:attr:`Backtest.better`) and its band held enough of the backtest's targets
(:meth:`Backtest.coverage_poor`); the dashboard shows it only then.

numpy is needed here (the ``dashboard`` extra); ``import hotcb`` never imports this module.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = [
    "Backtest",
    "Forecast",
    "backtest",
    "fit_trend",
    "forecast",
    "huber_line",
    "min_history",
    "nonfinite_tail",
    "origin_indices",
    "sklearn_available",
    "unit_bounds",
]

Backend = Literal["auto", "sklearn", "numpy"]
Form = Literal["power", "exp", "level"]

#: The trend forms, in the order a tie is broken.
FORMS: tuple[Form, ...] = ("power", "exp", "level")

#: Fewer points than this in the window: no forecast (a line through noise is not a trend).
MIN_POINTS = 8
#: At most this many of the last points are fitted (older history says little about what's next).
MAX_POINTS = 400
#: Points in a forecast's output (the future grid is thinned to this many).
OUT_POINTS = 60


def sklearn_available() -> bool:
    try:
        import sklearn.linear_model  # noqa: F401
    except ImportError:
        return False
    return True


def _clean(steps: Any, values: Any) -> tuple[np.ndarray, np.ndarray]:
    """Float arrays of the finite points, sorted by step, one value per step (the last)."""
    x = np.asarray(steps, dtype=float).ravel()
    y = np.asarray(values, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"steps and values differ in length: {x.size} and {y.size}")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size and np.any(np.diff(x) <= 0):
        order = np.argsort(x, kind="stable")
        x, y = x[order], y[order]
        keep = np.append(x[1:] != x[:-1], True)  # a step logged twice: its last value
        x, y = x[keep], y[keep]
    return x, y


def nonfinite_tail(steps: Any, values: Any) -> tuple[float, str] | None:
    """``(first_step, kind)`` when the metric's last logged value is not finite: the step from
    which every value it logged is NaN or infinite, and which (``"NaN"``, ``"inf"``, ``"-inf"``,
    or several joined with ``/``); ``None`` when the last value is a number or nothing is
    logged. The forecast fits the finite points only, so it would continue the curve from
    before the metric broke as if nothing had happened."""
    x = np.asarray(steps, dtype=float).ravel()
    y = np.asarray(values, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"steps and values differ in length: {x.size} and {y.size}")
    ok = np.isfinite(x)
    x, y = x[ok], y[ok]
    if not x.size:
        return None
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    keep = np.append(x[1:] != x[:-1], True)  # a step logged twice: its last value
    x, y = x[keep], y[keep]
    if not y.size or np.isfinite(y[-1]):
        return None
    finite = np.nonzero(np.isfinite(y))[0]
    first = int(finite[-1]) + 1 if finite.size else 0
    tail = y[first:]
    kinds = [k for k, hit in (("NaN", np.isnan(tail).any()), ("inf", (tail == np.inf).any()),
                              ("-inf", (tail == -np.inf).any())) if hit]  # fmt: skip
    return float(x[first]), "/".join(kinds)


#: Words of a metric's name that say it is a share or a score that cannot pass 1 (``val_acc``,
#: ``eval/f1``, ``auroc``, ``top1``): :func:`unit_bounds`.
UNIT_SCORES = ("acc", "f1", "auc", "auroc", "auprc", "precision", "recall", "iou", "miou",
               "dice", "map", "ndcg", "ssim", "top1", "top5", "bleu", "rouge", "correct")  # fmt: skip


def unit_bounds(name: str, values: Any) -> tuple[float, float] | None:
    """``(0.0, 1.0)`` for a metric that is a share or a score bounded by 1: its name says it
    is maximized (:func:`hotcb.metrics.guess_direction`) and names such a score (a word of it
    starts with one of :data:`UNIT_SCORES`), and every finite value it logged lies in
    ``[0, 1]``; else ``None``. Its forecast is clipped to that range: an accuracy rising
    toward 1 is not forecast at 1.01. An accuracy logged in percent (values above 1), or a
    reward, is not bounded this way."""
    from ..metrics import guess_direction

    if guess_direction(name) != "maximize":
        return None
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]
    if not any(w.startswith(UNIT_SCORES) for w in words):
        return None
    y = np.asarray(values, dtype=float).ravel()
    y = y[np.isfinite(y)]
    if not y.size or float(y.min()) < 0.0 or float(y.max()) > 1.0:
        return None
    return 0.0, 1.0


def huber_line(x: np.ndarray, y: np.ndarray, epsilon: float = 1.35, iters: int = 30) -> np.ndarray:
    """``(intercept, slope)`` of a straight line fitted with Huber's loss (the numpy fallback
    for :class:`sklearn.linear_model.HuberRegressor`): iteratively reweighted least squares,
    the scale re-estimated each round from the residuals' median absolute deviation."""
    a = np.column_stack([np.ones_like(x), x])
    coef = np.linalg.lstsq(a, y, rcond=None)[0]
    for _ in range(iters):
        r = y - a @ coef
        scale = 1.4826 * float(np.median(np.abs(r - np.median(r))))
        if scale <= 1e-12:
            break
        u = np.abs(r) / (epsilon * scale)
        w = np.where(u <= 1.0, 1.0, 1.0 / np.maximum(u, 1e-12))
        sw = np.sqrt(w)
        new = np.linalg.lstsq(a * sw[:, None], y * sw, rcond=None)[0]
        if np.allclose(new, coef, rtol=1e-9, atol=1e-12):
            coef = new
            break
        coef = new
    return np.asarray(coef, dtype=float)


def _sklearn_line(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import HuberRegressor

    # scale x to about unit range: HuberRegressor's L-BFGS converges far better on it
    mx, sx = float(x.mean()), float(x.std()) or 1.0
    model = HuberRegressor(alpha=0.0, epsilon=1.35, max_iter=200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the last iterate is still a fit
        model.fit(((x - mx) / sx)[:, None], y)
    slope = float(model.coef_[0]) / sx
    return np.array([float(model.intercept_) - slope * mx, slope])


@dataclass(frozen=True)
class Trend:
    """A fitted trend ``z = intercept + slope·u(step)``: ``z`` is ``log(y)`` (``log_space``) or
    ``y``; ``u`` is ``log(step+1)`` (form ``power``), ``step`` (``exp``) or 0 (``level``)."""

    form: Form
    intercept: float
    slope: float
    log_space: bool
    residuals: np.ndarray
    u_mean: float
    suu: float
    backend: str
    first_step: float
    last_step: float

    def u(self, steps: np.ndarray) -> np.ndarray:
        return _u(self.form, steps)

    def z(self, steps: np.ndarray) -> np.ndarray:
        return self.intercept + self.slope * self.u(steps)

    def value(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(np.exp(np.minimum(z, 700.0))) if self.log_space else z

    def predict(self, steps: Any) -> np.ndarray:
        return self.value(self.z(np.asarray(steps, dtype=float)))

    @property
    def scale(self) -> float:
        """The residuals' root mean square (per degree of freedom): the noise around the trend."""
        r = self.residuals
        dof = max(1, r.size - (1 if self.form == "level" else 2))
        return float(np.sqrt(np.sum(r**2) / dof))

    def offsets(self, steps: np.ndarray, q_lo: float, q_hi: float) -> tuple[np.ndarray, np.ndarray]:
        """The fit's band around the trend at ``steps``, in ``z``: the residuals' quantiles
        widened by the line's standard error there (``lo <= 0 <= hi``: it holds the median)."""
        r = self.residuals
        lever = (self.u(steps) - self.u_mean) ** 2 / self.suu if self.suu > 0 else 0.0
        se = self.scale * np.sqrt(1.0 / r.size + lever)
        k = _normal_quantile(q_hi)
        lo = min(0.0, float(np.quantile(r, q_lo))) - k * se
        hi = max(0.0, float(np.quantile(r, q_hi))) + k * se
        shape = np.shape(steps)
        return np.broadcast_to(lo, shape).astype(float), np.broadcast_to(hi, shape).astype(float)

    def band(
        self,
        steps: np.ndarray,
        q_lo: float,
        q_hi: float,
        calibration: Calibration | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(lo, hi)`` at ``steps``: the fit's band, or with ``calibration`` (past forecasts'
        errors at its horizon, in this trend's space) the calibrated one (see the module's
        docstring)."""
        z = self.z(steps)
        lo, hi = self.offsets(steps, q_lo, q_hi)
        if calibration is not None and calibration.usable(self):
            c_lo, c_hi = calibration.offsets(q_lo, q_hi)
            end = np.array([self.last_step + calibration.horizon], dtype=float)
            f_lo, f_hi = self.offsets(end, q_lo, q_hi)
            # from the fit's band one step out to the calibrated one at the horizon
            d = np.clip((steps - self.last_step) / calibration.horizon, 0.0, 1.0)
            lo = np.minimum(0.0, lo + (c_lo - f_lo[0]) * d)
            hi = np.maximum(0.0, hi + (c_hi - f_hi[0]) * d)
        return self.value(z + lo), self.value(z + hi)


#: Fewer past forecasts than this at a horizon: the band is the fit's, not calibrated.
MIN_CALIBRATION = 6


@dataclass(frozen=True)
class Calibration:
    """Signed errors ``actual - forecast`` of past forecasts ``horizon`` steps ahead, in the
    trend's space (``log_space``: the log of the ratio)."""

    horizon: int
    log_space: bool
    errors: np.ndarray

    def usable(self, trend: Trend) -> bool:
        return self.log_space == trend.log_space and self.errors.size >= MIN_CALIBRATION

    def offsets(self, q_lo: float, q_hi: float) -> tuple[float, float]:
        """The band's ``(lo, hi)`` around the trend at the horizon, in ``z``: the errors'
        quantiles, at levels widened by split conformal's ``1/n`` for ``n`` errors (with few
        errors the plain empirical quantiles are too narrow)."""
        n = self.errors.size
        lo_q = max(0.0, q_lo - (1.0 - q_lo) / n)
        hi_q = min(1.0, q_hi + q_hi / n)
        lo, hi = np.quantile(_fenced(self.errors), [lo_q, hi_q])
        return min(0.0, float(lo)), max(0.0, float(hi))


#: Interquartile ranges past the quartiles where a past forecast's error is cut (Tukey's
#: "far out" fences): with a dozen errors the band's widened levels are their smallest and
#: largest, so one wild error would otherwise set the band alone.
FENCE = 3.0


def _fenced(errors: np.ndarray) -> np.ndarray:
    """``errors`` with each one beyond Tukey's far-out fences (:data:`FENCE`) moved onto the
    fence. A normal error lies beyond them about once in 400 000; an error that does is
    one origin gone wild (its forecast from a window on the run's first transient, say), and it
    counts as a large error, not as a band a hundred times wider."""
    q1, q3 = np.quantile(errors, [0.25, 0.75])
    reach = FENCE * float(q3 - q1)
    return np.asarray(np.clip(errors, q1 - reach, q3 + reach), dtype=float)


def _u(form: str, steps: np.ndarray) -> np.ndarray:
    if form == "power":
        return np.asarray(np.log1p(np.maximum(steps, 0.0)))
    if form == "exp":
        return np.asarray(steps, dtype=float)
    return np.zeros_like(steps, dtype=float)


def _normal_quantile(q: float) -> float:
    """The standard normal's quantile (Acklam's rational approximation; no scipy needed)."""
    q = min(max(q, 1e-9), 1 - 1e-9)
    a = (-39.6968302866538, 220.946098424521, -275.928510446969,
         138.357751867269, -30.6647980661472, 2.50662827745924)  # fmt: skip
    b = (-54.4760987982241, 161.585836858041, -155.698979859887,
         66.8013118877197, -13.2806815528857)  # fmt: skip
    c = (-0.00778489400243029, -0.322396458041136, -2.40075827716184,
         -2.54973253934373, 4.37466414146497, 2.93816398269878)  # fmt: skip
    d = (0.00778469570904146, 0.32246712907004, 2.445134137143, 3.75440866190742)
    if q < 0.02425:
        t = math.sqrt(-2 * math.log(q))
        num = ((((c[0] * t + c[1]) * t + c[2]) * t + c[3]) * t + c[4]) * t + c[5]
        return num / ((((d[0] * t + d[1]) * t + d[2]) * t + d[3]) * t + 1)
    if q > 1 - 0.02425:
        return -_normal_quantile(1 - q)
    t = q - 0.5
    r = t * t
    num = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * t
    return num / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)


def _window(n: int, min_points: int, max_points: int) -> int:
    return int(min(n, max(min_points, min(max_points, n // 2))))


def fit_trend(
    steps: Any,
    values: Any,
    *,
    min_points: int = MIN_POINTS,
    max_points: int = MAX_POINTS,
    backend: Backend = "auto",
) -> Trend | None:
    """The trend of the last window of ``(steps, values)``; ``None`` with fewer than
    ``min_points`` finite points."""
    x, y = _clean(steps, values)
    return _fit(x, y, min_points, max_points, backend)


def _line(u: np.ndarray, z: np.ndarray, backend: str) -> np.ndarray:
    if backend == "sklearn":
        return _sklearn_line(u, z)
    return huber_line(u, z)


def _coef(form: Form, u: np.ndarray, z: np.ndarray, backend: str) -> np.ndarray:
    if form == "level" or float(np.ptp(u)) == 0.0:
        return np.array([float(np.median(z)), 0.0])
    return _line(u, z, backend)


def _pick_form(xs: np.ndarray, z: np.ndarray, min_points: int) -> Form:
    """The form that best extrapolates the window's last third from its first two thirds
    (mean absolute error in ``z``; numpy fits, a tie keeps the earlier form in :data:`FORMS`)."""
    k = (2 * xs.size) // 3
    if k < max(4, min_points // 2) or xs.size - k < 2:
        return "power"
    best: tuple[float, Form] | None = None
    for form in FORMS:
        u = _u(form, xs)
        c = _coef(form, u[:k], z[:k], "numpy")
        err = float(np.mean(np.abs(z[k:] - (c[0] + c[1] * u[k:]))))
        if best is None or err < best[0] - 1e-12:
            best = (err, form)
    assert best is not None
    return best[1]


def _fit(
    x: np.ndarray, y: np.ndarray, min_points: int, max_points: int, backend: Backend
) -> Trend | None:
    if x.size < min_points:
        return None
    w = _window(x.size, min_points, max_points)
    xs, ys = x[-w:], y[-w:]
    log_space = bool(np.all(ys > 0))
    z = np.log(ys) if log_space else ys
    form = _pick_form(xs, z, min_points)
    use = (
        "sklearn"
        if backend == "sklearn" or (backend == "auto" and sklearn_available())
        else "numpy"
    )
    u = _u(form, xs)
    coef = _coef(form, u, z, use)
    name = "median" if form == "level" else f"{use}-huber"
    resid = z - (coef[0] + coef[1] * u)
    um = float(u.mean())
    return Trend(
        form=form,
        intercept=float(coef[0]),
        slope=float(coef[1]),
        log_space=log_space,
        residuals=resid,
        u_mean=um,
        suu=float(np.sum((u - um) ** 2)),
        backend=name,
        first_step=float(xs[0]),
        last_step=float(xs[-1]),
    )


@dataclass(frozen=True)
class Forecast:
    """A projection: at each future ``steps``, the ``median`` and the ``lo``/``hi`` band."""

    steps: np.ndarray
    median: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    quantiles: tuple[float, float]
    trend: Trend
    last_step: float
    last_value: float
    calibrated: int = 0  # past forecasts the band is calibrated on (0: the fit's band)
    bounds: tuple[float, float] | None = None  # the range median and band are clipped to

    def to_dict(self) -> dict[str, Any]:
        t = self.trend
        return {
            "steps": [int(s) for s in self.steps],
            "median": _floats(self.median),
            "lo": _floats(self.lo),
            "hi": _floats(self.hi),
            "quantiles": list(self.quantiles),
            "last_step": int(self.last_step),
            "last_value": self.last_value,
            "band": "calibrated" if self.calibrated else "fit",
            "calibrated_on": self.calibrated,
            "bounds": list(self.bounds) if self.bounds is not None else None,
            "model": {
                "form": t.form,
                "log_space": t.log_space,
                "backend": t.backend,
                "slope": t.slope,
                "window": [int(t.first_step), int(t.last_step)],
                "points": int(t.residuals.size),
            },
        }


def _floats(a: np.ndarray) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in a.tolist()]


def _grid(last: float, step_gap: float, horizon: int, points: int) -> np.ndarray:
    gap = max(1.0, step_gap)
    n = max(1, int(horizon // gap))
    k = np.arange(1, n + 1) if n <= points else np.unique(np.linspace(1, n, points).round())
    grid = last + gap * k
    if grid[-1] < last + horizon:
        grid = np.append(grid[: points - 1] if grid.size >= points else grid, last + horizon)
    return np.round(grid)


def forecast(
    steps: Any,
    values: Any,
    horizon: int,
    *,
    quantiles: tuple[float, float] = (0.1, 0.9),
    min_points: int = MIN_POINTS,
    max_points: int = MAX_POINTS,
    out_points: int = OUT_POINTS,
    backend: Backend = "auto",
    calibration: Backtest | None = None,
    bounds: tuple[float, float] | None = None,
) -> Forecast | None:
    """Project ``values`` (logged at ``steps``) ``horizon`` steps past the last one.

    Returns ``None`` with fewer than ``min_points`` finite points. The future grid follows the
    metric's own logging gap (every 10 steps for a metric logged every 10), thinned to
    ``out_points`` points, and always ends at ``last_step + horizon``.

    ``calibration``: the :func:`backtest` of the same series at the same ``horizon``; where it
    has at least :data:`MIN_CALIBRATION` past forecasts in the trend's space, the band is
    calibrated on their errors (see the module's docstring), else it is the fit's.

    ``bounds``: ``(low, high)`` the metric cannot leave (:func:`unit_bounds` for a share such
    as an accuracy); the median and the band are clipped to it."""
    if horizon < 1:
        raise ValueError(f"horizon must be at least 1 step, got {horizon}")
    q_lo, q_hi = quantiles
    if not 0 < q_lo < q_hi < 1:
        raise ValueError(f"quantiles must satisfy 0 < lo < hi < 1, got {quantiles}")
    x, y = _clean(steps, values)
    trend = _fit(x, y, min_points, max_points, backend)
    if trend is None:
        return None
    gap = float(np.median(np.diff(x[-min(x.size, 50) :])))
    grid = _grid(float(x[-1]), gap, horizon, out_points)
    cal = calibration.calibration(trend.log_space) if calibration is not None else None
    if cal is not None and cal.horizon != horizon:
        raise ValueError(f"the calibration is for {cal.horizon} steps ahead, not {horizon}")
    lo, hi = trend.band(grid, q_lo, q_hi, cal)
    median = trend.predict(grid)
    if bounds is not None:
        median, lo, hi = (np.clip(a, *bounds) for a in (median, lo, hi))
    return Forecast(
        steps=grid,
        median=median,
        lo=lo,
        hi=hi,
        quantiles=(q_lo, q_hi),
        trend=trend,
        last_step=float(x[-1]),
        last_value=float(y[-1]),
        calibrated=cal.errors.size if cal is not None and cal.usable(trend) else 0,
        bounds=bounds,
    )


# ----------------------------------------------------------------------------------- backtest
def _linear(xs: np.ndarray, ys: np.ndarray, at: float) -> float:
    if xs.size < 2 or float(np.ptp(xs)) == 0.0:
        return float(ys[-1])
    slope, icpt = np.polyfit(xs, ys, 1)
    return float(icpt + slope * at)


def _observed(x: np.ndarray, y: np.ndarray, at: float) -> float | None:
    """The value at step ``at``: logged there, or interpolated between the two nearest steps."""
    if at > x[-1] or at < x[0]:
        return None
    return float(np.interp(at, x, y))


@dataclass(frozen=True)
class Backtest:
    """Mean absolute errors of the model and the baselines at ``horizon`` over ``origins``, and
    the model's signed errors there (the band's calibration)."""

    horizon: int
    origins: int
    mae_model: float | None
    mae_last_value: float | None
    mae_linear: float | None
    coverage: float | None = None  # share of the targets inside the band (calibrated on the past)
    coverage_fit: float | None = None  # the same for the fit's band (never calibrated)
    # the share inside at the origins whose band was calibrated (enough earlier errors), and
    # how many there were: the band the page draws once it is calibrated
    coverage_calibrated: float | None = None
    calibrated_origins: int = 0
    nominal: float = 0.8  # the share of targets the band should hold (q_hi - q_lo)
    errors: dict[str, list[float]] = field(default_factory=dict, repr=False)
    # per origin: the model's signed error in its trend's space, and whether that is log space
    signed: tuple[tuple[float, bool], ...] = field(default=(), repr=False)

    @property
    def better(self) -> bool:
        """The model beats both baselines (strictly) on this history."""
        m, b1, b2 = self.mae_model, self.mae_last_value, self.mae_linear
        return m is not None and b1 is not None and b2 is not None and m < b1 and m < b2

    def band_record(self, calibrated: bool) -> tuple[int, int]:
        """``(inside, of)``: how many of this backtest's targets fell inside the band of the
        kind a forecast draws: with ``calibrated``, at the origins whose band was calibrated
        (:attr:`coverage_calibrated`); else the fit's band at every origin
        (:attr:`coverage_fit`). The origins that drew the fit's band say nothing of the
        calibrated band (on a smooth metric the fit's band is a hair wide and misses)."""
        share, of = (
            (self.coverage_calibrated, self.calibrated_origins)
            if calibrated
            else (self.coverage_fit, self.origins)
        )
        return (round(share * of), of) if share is not None else (0, 0)

    def coverage_poor(self, calibrated: bool) -> bool:
        """The band (of the kind :meth:`band_record` says) held so few of the targets that a
        band holding its :attr:`nominal` share would do so less than :data:`COVERAGE_ALPHA` of
        the time (a one-sided binomial test): 6 or fewer of 12 inside an 80 % band, 2 or fewer
        of 6, none of 4. Such a band is not shown, whatever :attr:`better` says of the
        median."""
        inside, of = self.band_record(calibrated)
        return of > 0 and _binomial_cdf(inside, of, self.nominal) < COVERAGE_ALPHA

    def calibration(self, log_space: bool) -> Calibration:
        """The errors of the forecasts made in ``log_space`` (or not), for :meth:`Trend.band`."""
        e = np.array([e for e, ls in self.signed if ls == log_space], dtype=float)
        return Calibration(self.horizon, log_space, e)

    def to_dict(self) -> dict[str, Any]:
        return {
            "horizon": self.horizon,
            "origins": self.origins,
            "mae": {
                "model": self.mae_model,
                "last_value": self.mae_last_value,
                "linear": self.mae_linear,
            },
            "coverage": self.coverage,
            "coverage_fit": self.coverage_fit,
            "coverage_calibrated": self.coverage_calibrated,
            "calibrated_origins": self.calibrated_origins,
            "better": self.better,
        }


#: A band that held fewer of the backtest's targets than a band of its nominal coverage would
#: hold this rarely is not shown (:attr:`Backtest.coverage_poor`).
COVERAGE_ALPHA = 0.02


def _binomial_cdf(k: int, n: int, p: float) -> float:
    """``P(X <= k)`` for ``X`` binomial with ``n`` trials of probability ``p``."""
    return float(sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1)))


def _z(trend: Trend, v: float) -> float | None:
    if not trend.log_space:
        return v
    return math.log(v) if v > 0 else None


def min_history(n: int, min_points: int = MIN_POINTS, max_points: int = MAX_POINTS) -> int:
    """The points an origin of a backtest of ``n`` points needs before it (its own counted):
    ``2·min_points``, or a quarter of the history when that is more, up to ``2·max_points``
    (from there on an origin's window is as long as the live forecast's).

    An origin with far less history than the live forecast fits a window of a few points,
    often on the run's first transient (a loss falling by 10× in its first 20 steps), and its
    forecast far ahead can be off by a factor of ``e**100``: one such error would set the band
    that the live forecast, fitted on 400 points, is calibrated on."""
    return int(max(2 * min_points, min(2 * max_points, n // 4)))


def origin_indices(
    x: np.ndarray,
    horizon: int,
    origins: int,
    min_points: int = MIN_POINTS,
    max_points: int = MAX_POINTS,
) -> np.ndarray:
    """Indices into the sorted steps ``x`` of up to ``origins`` forecast origins, spread evenly
    over the points with at least :func:`min_history` points before them (counting their own)
    and ``horizon`` steps after them."""
    if not x.size:
        return np.array([], dtype=int)
    cands = np.nonzero(x <= x[-1] - horizon)[0]
    cands = cands[cands >= min_history(x.size, min_points, max_points) - 1]
    if not cands.size:
        return cands
    picks = np.unique(np.linspace(0, cands.size - 1, min(origins, cands.size)).round())
    return np.asarray(cands[picks.astype(int)])


def _clip(
    band: tuple[np.ndarray, np.ndarray], bounds: tuple[float, float] | None
) -> tuple[float, float]:
    lo, hi = float(band[0][0]), float(band[1][0])
    if bounds is None:
        return lo, hi
    return min(max(lo, bounds[0]), bounds[1]), min(max(hi, bounds[0]), bounds[1])


def backtest(
    steps: Any,
    values: Any,
    horizon: int,
    *,
    origins: int = 12,
    quantiles: tuple[float, float] = (0.1, 0.9),
    min_points: int = MIN_POINTS,
    max_points: int = MAX_POINTS,
    backend: Backend = "numpy",
    bounds: tuple[float, float] | None = None,
) -> Backtest:
    """Forecast from up to ``origins`` past points, each ``horizon`` steps ahead, and score the
    model, the last value and a straight line in ``step`` (fitted on the model's window)
    against what was logged there. Origins are spread evenly over the history that has at
    least ``2·min_points`` points before it and ``horizon`` steps after it.

    ``coverage`` is measured as the band would have been drawn at each origin: calibrated on
    the errors of the earlier origins whose targets were logged by then (the fit's band while
    there are fewer than :data:`MIN_CALIBRATION`); ``coverage_fit`` is the fit's band's.
    ``bounds``: as for :func:`forecast` (the forecasts and bands are clipped to it)."""
    x, y = _clean(steps, values)
    errs: dict[str, list[float]] = {"model": [], "last_value": [], "linear": []}
    signed: list[tuple[float, bool]] = []
    known: list[tuple[float, float, bool]] = []  # target step, signed error, log space
    inside = inside_fit = 0
    calibrated: list[bool] = []  # inside or not, at the origins whose band was calibrated
    q_lo, q_hi = quantiles
    for i in origin_indices(x, horizon, origins, min_points, max_points):
        hx, hy = x[: i + 1], y[: i + 1]
        trend = _fit(hx, hy, min_points, max_points, backend)
        at = float(hx[-1]) + horizon
        target = _observed(x, y, at)
        if trend is None or target is None:
            continue
        w = _window(hx.size, min_points, max_points)
        z_at = float(trend.z(np.array([at]))[0])
        pred = float(trend.value(np.array([z_at]))[0])
        if bounds is not None:
            pred = min(max(pred, bounds[0]), bounds[1])
        errs["model"].append(abs(pred - target))
        errs["last_value"].append(abs(float(hy[-1]) - target))
        errs["linear"].append(abs(_linear(hx[-w:], hy[-w:], at) - target))
        lo, hi = _clip(trend.band(np.array([at]), q_lo, q_hi), bounds)
        inside_fit += int(lo <= target <= hi)
        past = [e for t, e, ls in known if t <= hx[-1] and ls == trend.log_space]
        cal = Calibration(horizon, trend.log_space, np.array(past, dtype=float))
        lo, hi = _clip(trend.band(np.array([at]), q_lo, q_hi, cal), bounds)
        inside += int(lo <= target <= hi)
        if cal.usable(trend):
            calibrated.append(lo <= target <= hi)
        zt = _z(trend, target)
        if zt is not None:
            signed.append((zt - z_at, trend.log_space))
            known.append((at, zt - z_at, trend.log_space))
    n = len(errs["model"])

    def mae(k: str) -> float | None:
        return float(np.mean(errs[k])) if n else None

    return Backtest(
        horizon=horizon,
        origins=n,
        mae_model=mae("model"),
        mae_last_value=mae("last_value"),
        mae_linear=mae("linear"),
        coverage=inside / n if n else None,
        coverage_fit=inside_fit / n if n else None,
        coverage_calibrated=float(np.mean(calibrated)) if calibrated else None,
        calibrated_origins=len(calibrated),
        nominal=q_hi - q_lo,
        errors=errs,
        signed=tuple(signed),
    )

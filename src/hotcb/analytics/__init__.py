"""Run analytics for the dashboard: the key metric's forecast with a quantile band
(:mod:`.forecast`), the what-if of a proposed change from similar past changes (:mod:`.whatif`),
and the run's trajectory in metric space (:mod:`.trajectory`). See docs/analytics.md.

Needs numpy (the ``dashboard`` extra); scikit-learn and umap-learn are used when installed.
``import hotcb`` never imports this package.
"""

from __future__ import annotations

try:
    import numpy  # noqa: F401
except ImportError as exc:  # pragma: no cover - the dashboard extra installs numpy
    raise ImportError('hotcb.analytics needs numpy: pip install "hotcb[dashboard]"') from exc

from .forecast import Backtest, Forecast, backtest, fit_trend, forecast
from .trajectory import Trajectory, trajectory
from .whatif import PastChange, RunHistory, WhatIf, join_branch, past_changes, similar, whatif

__all__ = [
    "Backtest",
    "Forecast",
    "PastChange",
    "RunHistory",
    "Trajectory",
    "WhatIf",
    "backtest",
    "fit_trend",
    "forecast",
    "join_branch",
    "past_changes",
    "similar",
    "trajectory",
    "whatif",
]

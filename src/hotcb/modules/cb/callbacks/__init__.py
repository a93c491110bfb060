"""Bundled callbacks: load them into a running job with
``hotcb cb load ID --path hotcb.modules.cb.callbacks --symbol NAME [--init k=v ...]``.

They stay loadable when the run forbids code loading (they ship with hotcb). Diagnostics write
their figures to the run's metrics stream (``hotcb.metrics.jsonl``) so the dashboard charts them;
``FeatureCapture`` (from :mod:`hotcb.features`) writes activation statistics to
``hotcb.features.jsonl``.
"""

from ....features import FeatureCapture
from ._anomaly import AnomalyGuardCallback
from ._basic import HeartbeatCallback, JSONLLoggerCallback, TimingCallback
from ._stats import GradStatsCallback, SystemStatsCallback, TensorStatsCallback

__all__ = [
    "AnomalyGuardCallback",
    "FeatureCapture",
    "GradStatsCallback",
    "HeartbeatCallback",
    "JSONLLoggerCallback",
    "SystemStatsCallback",
    "TensorStatsCallback",
    "TimingCallback",
]

"""Metrics stream: ``hotcb.metrics.jsonl``, one record per logged step; activation summaries:
``hotcb.features.jsonl`` (:class:`FeatureCapture`, defined in :mod:`hotcb.features`)."""

from ..features import FeatureCapture
from ._collector import METRIC_ALIASES, VAL_LOSS_NAMES, MetricsCollector, guess_direction

__all__ = [
    "METRIC_ALIASES",
    "VAL_LOSS_NAMES",
    "FeatureCapture",
    "MetricsCollector",
    "guess_direction",
]

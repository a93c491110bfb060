"""Metrics stream: ``hotcb.metrics.jsonl``, one record per logged step."""

from ._collector import METRIC_ALIASES, MetricsCollector

__all__ = ["METRIC_ALIASES", "MetricsCollector"]

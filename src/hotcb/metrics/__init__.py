"""Metrics stream: ``hotcb.metrics.jsonl``, one record per logged step."""

from ._collector import MetricsCollector

__all__ = ["MetricsCollector"]

"""The metric-space trajectory: shapes, alignment of metrics logged at other rates, PCA facts."""

from __future__ import annotations

import numpy as np
import pytest

from hotcb.analytics import trajectory
from hotcb.analytics.trajectory import umap_available


def test_pca_shapes_and_alignment() -> None:
    steps = np.arange(1000)
    series = {
        "loss": (steps, np.exp(-steps / 300)),
        "val_loss": (steps[9::10], np.exp(-steps[9::10] / 250) + 0.1),
        "acc": (steps[9::10], 1 - np.exp(-steps[9::10] / 200)),
        "const": (steps, np.ones(1000)),  # no variance: left out
        "short": ([1, 2], [0.1, 0.2]),  # too few points: left out
    }
    tr = trajectory(series, max_points=200, method="pca")
    d = tr.to_dict()
    assert tr.metrics == ["acc", "loss", "val_loss"] and d["method"] == "pca"
    assert tr.points.shape == (len(tr.steps), 2) and 100 <= len(tr.steps) <= 200
    assert tr.steps[0] >= 9  # before step 9 val_loss and acc have no value yet
    assert len(d["x"]) == len(d["y"]) == len(d["steps"])
    assert d["explained"][0] > 0.9 and sum(d["explained"]) <= 1 + 1e-9
    assert set(d["loadings"]) == set(tr.metrics)
    # the path is monotone along the first component for monotone metrics
    pc1 = tr.points[:, 0]
    steps_diff = np.diff(pc1)
    assert np.all(steps_diff >= -1e-9) or np.all(steps_diff <= 1e-9)


def test_fewer_than_two_metrics_is_empty() -> None:
    tr = trajectory({"loss": (np.arange(10), np.arange(10.0))})
    assert tr.points.shape == (0, 2) and tr.metrics == ["loss"]
    assert tr.to_dict()["x"] == []


@pytest.mark.allow_skip(reason="the missing-package path: it skips where umap-learn is installed")
def test_umap_is_refused_clearly_when_missing() -> None:
    if umap_available():
        pytest.skip("umap-learn is installed here")
    with pytest.raises(ImportError, match="umap-learn"):
        trajectory({"a": ([1, 2, 3], [1, 2, 3])}, method="umap")


def test_long_runs_use_an_even_grid() -> None:
    steps = np.arange(100_000)
    series = {"loss": (steps, 1 / (steps + 1.0)), "acc": (steps[::10], 1 - 1 / (steps[::10] + 1.0))}
    tr = trajectory(series, max_points=50)
    assert tr.points.shape == (len(tr.steps), 2) and 40 <= len(tr.steps) <= 50
    assert tr.steps[-1] == 99_999 and np.all(np.diff(tr.steps) > 0)

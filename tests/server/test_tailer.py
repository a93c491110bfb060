"""The metrics index and the downsampler, without a server (fast, property-based)."""

from __future__ import annotations

import json
import os
from array import array
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotcb import jsonl
from hotcb.server.downsample import _picked_numpy, _picked_python, minmax_downsample
from hotcb.server.tailer import LedgerState, MetricsIndex


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 60),
    cuts=st.lists(st.integers(1, 400), max_size=30),
)
def test_index_sees_every_complete_line_once_whatever_the_chunking(tmp_path_factory, n, cuts):
    path = os.fspath(tmp_path_factory.mktemp("m") / "hotcb.metrics.jsonl")
    data = "".join(
        jsonl.dumps({"step": s, "wall_time": 1.0, "metrics": {"loss": s / 2, "acc": None}}) + "\n"
        for s in range(n)
    ).encode()
    index = MetricsIndex(path)
    pushed: list[int] = []
    pos = 0
    with open(path, "wb") as f:
        for cut in [*cuts, len(data)]:
            chunk = data[pos : pos + cut]
            pos += len(chunk)
            f.write(chunk)
            f.flush()
            pushed += [r["step"] for r in index.update(collect=10_000)]
    pushed += [r["step"] for r in index.update(collect=10_000)]
    assert pushed == list(range(n))
    assert list(index.series["loss"].steps) == list(range(n))
    assert list(index.series["loss"].values) == [s / 2 for s in range(n)]
    assert all(v != v for v in index.series["acc"].values)  # null → NaN, kept as a gap
    assert index.last_step == n - 1 and index.lines == n


def test_resumed_run_replaces_the_abandoned_steps(tmp_path):
    path = os.fspath(tmp_path / "hotcb.metrics.jsonl")
    index = MetricsIndex(path)
    jsonl.append_many(path, [{"step": s, "metrics": {"loss": 1.0}} for s in range(10)])
    index.update()
    # resumed from a checkpoint at step 5: steps 6.. are logged again with new values
    jsonl.append_many(path, [{"step": s, "metrics": {"loss": 2.0}} for s in range(6, 12)])
    index.update()
    s = index.series["loss"]
    assert list(s.steps) == list(range(12))
    assert list(s.values) == [1.0] * 6 + [2.0] * 6


def test_truncated_file_starts_over(tmp_path):
    path = os.fspath(tmp_path / "hotcb.metrics.jsonl")
    index = MetricsIndex(path)
    jsonl.append_many(path, [{"step": s, "metrics": {"loss": 1.0}} for s in range(50)])
    index.update()
    with open(path, "w") as f:
        f.write(jsonl.dumps({"step": 0, "metrics": {"loss": 3.0}}) + "\n")
    index.update()
    assert list(index.series["loss"].values) == [3.0]


def test_ledger_state_tracks_pending_and_pause(tmp_path):
    path = os.fspath(tmp_path / "hotcb.applied.jsonl")
    led = LedgerState(path, max_entries=100)
    jsonl.append_many(
        path,
        [
            {"seq": 1, "step": 1, "cmd_id": "a", "decision": "scheduled", "at_step": 9},
            {"seq": 2, "step": 2, "cmd_id": "b", "decision": "scheduled", "at_step": 5},
            {
                "seq": 3,
                "step": 3,
                "cmd_id": "p",
                "module": "control",
                "op": "pause",
                "decision": "applied",
            },
        ],
    )
    led.update()
    assert set(led.pending) == {"a", "b"} and led.paused is True
    jsonl.append_many(
        path,
        [
            {"seq": 4, "step": 5, "cmd_id": "b", "decision": "applied"},
            {
                "seq": 5,
                "step": 5,
                "cmd_id": "r",
                "module": "control",
                "op": "resume",
                "decision": "applied",
            },
        ],
    )
    assert [e["seq"] for e in led.update(collect=10)] == [4, 5]
    assert set(led.pending) == {"a"} and led.paused is False


finite = st.floats(-1e6, 1e6, allow_nan=False)


@settings(max_examples=100, deadline=None)
@given(values=st.lists(finite, min_size=1, max_size=3000), max_points=st.integers(4, 300))
def test_downsample_bounds_order_and_extremes(values, max_points):
    steps = array("q", range(0, 3 * len(values), 3))
    vals = array("d", values)
    xs, ys = minmax_downsample(steps, vals, max_points)
    assert len(xs) == len(ys) <= max_points or (len(values) <= max_points and xs == list(steps))
    assert xs == sorted(set(xs))  # strictly increasing: no point twice, original order
    assert xs[0] == steps[0] and xs[-1] == steps[-1]
    assert max(ys) == max(values) and min(ys) == min(values)  # spikes survive
    assert all(vals[x // 3] == y for x, y in zip(xs, ys, strict=True))  # real points, not averages


def test_downsample_skips_nan_in_a_bucket():
    nan = float("nan")
    vals = array("d", [nan] * 50 + [5.0] + [nan] * 49 + [1.0] * 100)
    xs, ys = minmax_downsample(array("q", range(200)), vals, 10)
    assert len(xs) <= 10 and 5.0 in ys


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.one_of(finite, st.just(float("nan"))), min_size=5, max_size=2000),
    max_points=st.integers(4, 200),
)
def test_numpy_and_python_downsamplers_pick_the_same_points(values, max_points):
    np = pytest.importorskip("numpy")
    if len(values) <= max_points:
        return
    vals = array("d", values)
    buckets = (max_points - 2) // 2
    picked = _picked_python(vals, 0, len(values), buckets)
    assert _picked_numpy(np, vals, 0, len(values), buckets) == picked


def test_a_command_line_too_long_to_be_a_command_is_not_pushed(tmp_path: Any) -> None:
    """Anyone who can append to a shared run's commands file wrote one 300 MB line: the
    trainer refused it unread, but the server parsed it whole (a gigabyte held) and pushed it
    to every page, whose socket closed on it. Such a line is skipped; the commands around it
    are pushed."""
    from hotcb.ops import MAX_COMMAND_BYTES
    from hotcb.server.tailer import CommandsTail

    path = tmp_path / "hotcb.commands.jsonl"
    path.touch()
    tail = CommandsTail(str(path))
    huge = {"module": "opt", "op": "set_params", "params": {"lr": 0.1},
            "reason": "B" * (4 * MAX_COMMAND_BYTES)}  # fmt: skip
    with open(path, "a") as f:
        for rec in ({"cmd_id": "a", "module": "opt"}, huge, {"cmd_id": "b", "module": "opt"}):
            f.write(json.dumps(rec) + "\n")
    assert [r.get("cmd_id") for r in tail.update(100)] == ["a", "b"]

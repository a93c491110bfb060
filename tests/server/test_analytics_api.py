"""The analytics endpoints against a real server over real runs: a real HotKernel applies lr
changes (queued with HotClient) in a loop whose metric falls 20 % below its trend after each
halving of the lr, and records the metrics and the ledger as any run does."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import pytest

from hotcb import HotKernel, jsonl
from hotcb.client import HotClient
from hotcb.metrics import MetricsCollector
from hotcb.runfiles import RunPaths
from hotcb.server.routers._analytics import NOT_BETTER

pytestmark = pytest.mark.slow

DROP = 0.8  # the metric's level after each lr halving, relative to its trend


class _Opt:
    def __init__(self, lr: float) -> None:
        self.param_groups = [{"lr": lr, "weight_decay": 0.0}]


def steered_run(path: Any, steps: int, halve_at: tuple[int, ...] = (), *, lr: float = 0.1,
                start: int = 0, seed: int = 0) -> str:  # fmt: skip
    """A real kernel's run: ``loss`` every step and ``val_loss`` every 10; the lr halves at the
    steps in ``halve_at`` (commands applied by the kernel); the metrics follow the lr applied."""
    run = os.fspath(path)
    os.makedirs(run, exist_ok=True)
    client = HotClient(run, source="test")
    for i, s in enumerate(halve_at):
        client.set_params("opt", {"lr": lr / 2 ** (i + 1)}, at_step=s)
    opt = _Opt(lr)
    rng = np.random.default_rng(seed)
    kernel = HotKernel(run, poll_interval_sec=0.0)
    try:
        for step in range(start, start + steps):
            level = DROP ** math.log2(lr / opt.param_groups[0]["lr"])
            trend = 2.0 * (step + 10.0) ** -0.5 * level
            metrics = {"loss": trend * math.exp(rng.normal(0, 0.05))}
            if step % 10 == 9:
                metrics["val_loss"] = trend * 1.1
            kernel.apply({"step": step, "optimizer": opt, "metrics": metrics})
    finally:
        kernel.close()
    return run


def test_forecast_band_backtest_and_notes(tmp_path: Any, live_server: Any) -> None:
    steered_run(tmp_path / "decay", 800)
    with MetricsCollector(os.fspath(tmp_path / "linear")) as m:
        for s in range(600):
            m.log(s, {"acc": 0.1 + 0.001 * s})
    with MetricsCollector(os.fspath(tmp_path / "short")) as m:
        for s in range(20):
            m.log(s, {"loss": 1.0 / (s + 1)})
    with MetricsCollector(os.fspath(tmp_path / "broken")) as m:  # NaN from step 551 on
        for s in range(600):
            m.log(s, {"loss": 2.0 * (s + 10.0) ** -0.5 if s <= 550 else float("nan")})
    with MetricsCollector(os.fspath(tmp_path / "slashed")) as m:  # the demo's names
        for s in range(100):
            m.log(s, {"grad_norm": 1.0, "lr": 0.1, "train/loss": 2.0 / (s + 1),
                      **({"val/loss": 2.2 / (s + 1)} if s % 10 == 9 else {})})  # fmt: skip
    srv = live_server()
    with srv.client() as c:
        d = c.get("/api/runs/decay/forecast", params={"horizon": 100}).json()
        assert d["metric"] == "val_loss"  # the autopilot's key metric by default
        assert d["show"] is True and d["note"] is None, d
        fc, bt = d["forecast"], d["backtest"]
        assert fc["steps"][-1] == 799 + 100 and fc["last_step"] == 799
        assert all(
            lo <= m <= hi for lo, m, hi in zip(fc["lo"], fc["median"], fc["hi"], strict=True)
        )
        truth = [2.2 * (s + 10.0) ** -0.5 for s in fc["steps"]]
        assert all(abs(m - t) / t < 0.05 for m, t in zip(fc["median"], truth, strict=True))
        assert bt["better"] and bt["origins"] > 0
        assert bt["mae"]["model"] < min(bt["mae"]["last_value"], bt["mae"]["linear"])
        assert fc["model"]["form"] in ("power", "exp", "level")

        loss = c.get("/api/runs/decay/forecast?metric=loss&horizon=50").json()
        assert loss["metric"] == "loss" and loss["forecast"]["last_step"] == 799

        # a straight line: the linear baseline is exact, so no band, and the note says why
        lin = c.get("/api/runs/linear/forecast?horizon=100").json()
        assert lin["metric"] == "acc" and lin["show"] is False and lin["note"] == NOT_BETTER
        assert lin["forecast"] is not None and lin["backtest"]["better"] is False

        # not the configured key metric: the validation loss by its usual names, not the
        # first name in the list (grad_norm)
        slashed = c.get("/api/runs/slashed/forecast?horizon=50").json()
        assert slashed["metric"] == "val/loss"

        # the collector wrote the NaNs as null: the forecast says so instead of continuing
        # the curve from step 550
        broken = c.get("/api/runs/broken/forecast?horizon=50").json()
        assert broken["metric"] == "loss" and broken["show"] is False
        assert broken["note"] == "loss is no longer finite (NaN since step 551): no forecast"

        short = c.get("/api/runs/short/forecast?horizon=100").json()
        assert short["show"] is False and "not enough history" in short["note"]
        assert c.get("/api/runs/short/forecast?horizon=5").json()["show"] in (True, False)

        # a run that logged nothing yet: a note, not an error (the page asks for every run)
        os.makedirs(tmp_path / "empty")
        jsonl.write_json_atomic(RunPaths(os.fspath(tmp_path / "empty")).run_meta, {"name": "e"})
        empty = c.get("/api/runs/empty/forecast").json()
        assert empty["forecast"] is None and empty["show"] is False
        assert "not enough points" in empty["note"]
        assert c.get("/api/runs/empty/whatif?knob=lr&factor=0.5").json()["band"] is None
        assert c.get("/api/runs/empty/trajectory").json()["x"] == []

        r = c.get("/api/runs/decay/forecast?metric=nope")
        assert r.status_code == 404 and "val_loss" in r.json()["detail"]
        assert c.get("/api/runs/decay/forecast?horizon=0").status_code == 422
        assert c.get("/api/runs/missing/forecast").status_code == 404
        assert c.get("/api/runs/decay/forecast", params={"horizon": 100}).json() == d  # cached
    with srv.client(auth=False) as c:
        assert c.get("/api/runs/decay/forecast").status_code == 401


def test_whatif_from_the_runs_own_changes(tmp_path: Any, live_server: Any) -> None:
    run = steered_run(tmp_path / "r", 1200, halve_at=(300, 700))
    applied = [e for e in jsonl.iter_records(RunPaths(run).ledger) if e.get("changes")]
    assert [e["step"] for e in applied] == [300, 700]
    srv = live_server()
    with srv.client() as c:
        d = c.get("/api/runs/r/whatif", params={"knob": "lr", "factor": 0.5}).json()
        assert d["metric"] == "val_loss" and d["runs"] == ["r"] and d["note"] is None, d
        assert [s["step"] for s in d["similar"]] == [300, 700]
        assert d["impact"]["median"] == pytest.approx(math.log(DROP), abs=0.05)
        fc, band = d["forecast"], d["band"]
        ratio = [b / m for b, m in zip(band["median"], fc["median"], strict=True)]
        assert all(r == pytest.approx(DROP, rel=0.06) for r in ratio)

        up = c.get("/api/runs/r/whatif?knob=lr&factor=2").json()
        assert up["note"] == "no similar change yet" and up["band"] is None
        assert up["considered"] == 2 and up["similar"] == []
        other = c.get("/api/runs/r/whatif?knob=weight_decay&factor=0.5").json()
        assert other["note"] == "no similar change yet" and other["considered"] == 0
        assert c.get("/api/runs/r/whatif?knob=lr&factor=1").status_code == 422
        assert c.get("/api/runs/r/whatif?knob=lr&factor=-1").status_code == 422
        assert c.get("/api/runs/r/whatif?factor=0.5").status_code == 422
        # a knob the run does not have is not "no similar change yet"
        nosuch = c.get("/api/runs/r/whatif?knob=nosuch&factor=0.5")
        assert nosuch.status_code == 404 and "the run has no knob 'nosuch'" in nosuch.text
        assert c.get("/api/runs/r/whatif?knob=opt.lr&factor=2").status_code == 200
        assert c.get("/api/runs/r/whatif?knob=loss.lr&factor=2").status_code == 404


def test_whatif_draws_no_band_for_a_metric_that_is_no_longer_finite(
    tmp_path: Any, live_server: Any
) -> None:
    """The loss went NaN after two lr halvings: ``/forecast`` said so and drew nothing, but the
    what-if drew a full band continuing the curve from before the NaN."""
    run = steered_run(tmp_path / "r", 1000, halve_at=(300, 700))
    with MetricsCollector(run) as m:
        for s in range(1000, 1020):
            m.log(s, {"loss": math.nan})
    with live_server().client() as c:
        d = c.get("/api/runs/r/whatif?knob=lr&factor=0.5&metric=loss&horizon=50").json()
    assert d["band"] is None and d["forecast"] is None, d
    assert d["note"] == "loss is no longer finite (NaN since step 1000): no forecast to shift"
    assert [s["step"] for s in d["similar"]] == [300, 700]  # what it would have shifted by


def test_whatif_reads_the_parent_and_the_branches(tmp_path: Any, live_server: Any) -> None:
    root = tmp_path / "runs"
    parent = steered_run(root / "parent", 900)  # no change of its own
    # a branch at step 400 that halved the lr at its first step
    child = steered_run(root / "child", 500, halve_at=(400,), start=400, seed=1)
    meta = {"run_dir": child, "branch": {"parent": parent, "step": 400, "seq": 0}}
    jsonl.write_json_atomic(RunPaths(child).run_meta, meta)
    srv = live_server(os.fspath(root))
    with srv.client() as c:
        d = c.get("/api/runs/parent/whatif?knob=lr&factor=0.5&metric=loss").json()
        assert sorted(d["runs"]) == ["child", "parent"]
        assert [(s["run"], s["step"]) for s in d["similar"]] == [("child", 400)]
        assert d["similar"][0]["impact"] == pytest.approx(math.log(DROP), abs=0.06)
        assert d["band"] is not None
        # asked from the child: the same change, measured against the parent's trend
        d2 = c.get("/api/runs/child/whatif?knob=lr&factor=0.5&metric=loss").json()
        assert d2["runs"][0] == "child" and "parent" in d2["runs"]
        assert [(s["run"], s["step"]) for s in d2["similar"]] == [("child", 400)]
        # the child's forecast starts from the parent's history (joined at the branch step)
        f = c.get("/api/runs/child/forecast?metric=loss&horizon=50").json()
        assert f["points"] == 900
        # and so does the impact of the change at its first step (its "before" was one point)
        (imp,) = c.get("/api/runs/child/impact?metric=loss&window=50").json()["impacts"]
        assert imp["step"] == 400 and imp["before"]["n"] == 50 and imp["after"]["n"] == 50
        assert imp["after"]["mean"] / imp["before"]["mean"] == pytest.approx(DROP, rel=0.1)


def test_trajectory(tmp_path: Any, live_server: Any) -> None:
    steered_run(tmp_path / "r", 400, halve_at=(200,))
    srv = live_server()
    with srv.client() as c:
        d = c.get("/api/runs/r/trajectory?max_points=100").json()
        assert d["method"] == "pca" and d["metrics"] == ["loss", "val_loss"]
        assert len(d["x"]) == len(d["y"]) == len(d["steps"]) and 50 <= len(d["x"]) <= 100
        assert d["explained"][0] > 0.5
        assert d["note"] is None
        one = c.get("/api/runs/r/trajectory?names=loss").json()
        assert one["x"] == [] and one["metrics"] == ["loss"]
        assert one["note"].startswith("a trajectory needs two or more metrics")
        assert c.get("/api/runs/r/trajectory?method=tsne").status_code == 422


def test_trajectory_ends_where_a_metric_goes_nan(tmp_path: Any, live_server: Any) -> None:
    """A run that diverges: ``loss`` and ``val_loss`` are NaN from step 300 on (recorded as
    ``null``), ``acc`` goes on. The trajectory is not drawn on with their last finite values
    carried forward: it ends before step 300 and its note names them and where they broke."""
    with MetricsCollector(os.fspath(tmp_path / "nan")) as m:
        for s in range(600):
            rec = {"loss": 2.0 * (s + 10.0) ** -0.5 if s < 300 else math.nan,
                   "acc": 1.0 - math.exp(-s / 100)}  # fmt: skip
            if s % 10 == 9:
                rec["val_loss"] = 2.2 * (s + 10.0) ** -0.5 if s < 300 else math.nan
            m.log(s, rec)
    with MetricsCollector(os.fspath(tmp_path / "blip")) as m:  # one NaN, then numbers again
        for s in range(600):
            loss = math.nan if s == 100 else 2.0 * (s + 10.0) ** -0.5
            m.log(s, {"loss": loss, "acc": 1.0 - math.exp(-s / 100)})
    srv = live_server()
    with srv.client() as c:
        d = c.get("/api/runs/nan/trajectory?max_points=100").json()
        assert d["metrics"] == ["acc", "loss", "val_loss"]
        assert d["steps"] and max(d["steps"]) < 300, d["steps"][-5:]
        assert len(d["x"]) == len(d["steps"]) >= 3
        assert d["note"] == (
            "loss is no longer finite (NaN since step 300), val_loss is no longer finite "
            f"(NaN since step 309): the trajectory ends at step {d['steps'][-1]}"
        )
        blip = c.get("/api/runs/blip/trajectory?max_points=100").json()
        assert blip["note"] is None and blip["steps"][-1] == 599

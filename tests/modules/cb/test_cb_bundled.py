"""Each bundled callback on a real model (TinyMLP on digits): the figures it writes are sane."""

from __future__ import annotations

import math
import os
import threading
from typing import Any

import pytest

from hotcb import HotClient
from hotcb.testing import read_ledger, wait_for

torch = pytest.importorskip("torch")

PKG = "hotcb.modules.cb.callbacks"


def _load(kernel: Any, ident: str, symbol: str, **init: Any) -> None:
    client = HotClient(kernel.run_dir)
    cid = client.cb_load(ident, path=PKG, symbol=symbol, init=init)
    kernel.apply({"step": -1})  # a safe point before training: the load lands here
    entry = client.wait(cid, timeout=5)
    assert entry["decision"] == "applied", entry


def _metrics(kernel: Any) -> list[dict[str, Any]]:
    from hotcb import jsonl

    kernel.metrics.close()  # flushes nothing (each record is one write) but frees the fd
    return list(jsonl.iter_records(kernel.paths.metrics))


def _series(kernel: Any, name: str) -> dict[int, float]:
    return {r["step"]: r["metrics"][name] for r in _metrics(kernel) if name in r["metrics"]}


def test_heartbeat(kernel_factory, driver_for):
    kernel = kernel_factory()
    loop = driver_for(kernel)
    _load(kernel, "hb", "HeartbeatCallback", every_steps=5)
    lines: list[str] = []
    loop.steps(12, log=lines.append)
    assert len(lines) == 3  # steps 0, 5, 10
    assert lines[0].startswith("hotcb heartbeat: step 0")
    assert "step 10" in lines[2]
    rate = float(lines[2].split(", ")[-1].split()[0])
    assert rate > 0


def test_timing(kernel_factory, driver_for):
    kernel = kernel_factory()
    loop = driver_for(kernel)
    _load(kernel, "timing", "TimingCallback", every_steps=3)
    loop.steps(10)
    step_sec = _series(kernel, "time/step_sec")
    sps = _series(kernel, "time/samples_per_sec")
    assert sorted(step_sec) == [0, 3, 6, 9]
    for s, dt in step_sec.items():
        assert 0 < dt < 5
        assert sps[s] == pytest.approx(32 / dt)


def test_system_stats(kernel_factory, driver_for):
    kernel = kernel_factory()
    loop = driver_for(kernel)
    _load(kernel, "sys", "SystemStatsCallback", every_steps=2)
    loop.steps(5)
    rss = _series(kernel, "sys/rss_mb")
    assert sorted(rss) == [0, 2, 4]
    assert all(10 < v < 1e6 for v in rss.values())  # torch alone takes more than 10 MB
    cpu = _series(kernel, "sys/cpu_percent")
    assert cpu and all(v >= 0 and math.isfinite(v) for v in cpu.values())
    ram = _series(kernel, "sys/ram_percent")
    assert all(0 < v <= 100 for v in ram.values())


def test_system_stats_without_psutil(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_psutil(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "psutil":
            raise ImportError("no psutil here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_psutil)
    from hotcb.modules.cb.callbacks import SystemStatsCallback

    figures = SystemStatsCallback().sample()
    assert figures["sys/rss_mb"] > 10
    assert "sys/cpu_percent" not in figures


def test_tensor_stats(kernel_factory, driver_for):
    kernel = kernel_factory()
    loop = driver_for(kernel)
    _load(kernel, "ts", "TensorStatsCallback", keys=["loss", "w", "missing"])
    w = loop.model[0].weight
    loop.steps(4, w=w)
    recs = [r for r in _metrics(kernel) if "loss/mean" in r["metrics"]]
    losses = {r["step"]: r["metrics"]["loss"] for r in _metrics(kernel) if "loss" in r["metrics"]}
    assert [r["step"] for r in recs] == [0, 1, 2, 3]
    for r in recs:
        m = r["metrics"]
        assert m["loss/mean"] == pytest.approx(losses[r["step"]], rel=1e-6)
        assert m["loss/std"] == 0.0 and m["loss/min"] == m["loss/max"] == m["loss/mean"]
        assert "missing/mean" not in m
    last = recs[-1]["metrics"]
    wd = w.detach()
    assert last["w/mean"] == pytest.approx(wd.mean().item(), rel=1e-5)
    assert last["w/std"] == pytest.approx(wd.std(unbiased=False).item(), rel=1e-5)
    assert last["w/min"] < last["w/mean"] < last["w/max"]


def test_grad_stats(kernel_factory, driver_for):
    kernel = kernel_factory()
    loop = driver_for(kernel)
    _load(kernel, "grads", "GradStatsCallback")
    loop.steps(3)
    recs = [r["metrics"] for r in _metrics(kernel) if "grad/global_norm" in r["metrics"]]
    assert len(recs) == 3
    for m in recs:
        g = m["grad/global_norm"]
        assert g > 0 and math.isfinite(g)
        assert set(m) == {"grad/global_norm", "grad/norm/0", "grad/norm/2"}
        assert g == pytest.approx(math.hypot(m["grad/norm/0"], m["grad/norm/2"]), rel=1e-5)
    expected = torch.nn.utils.get_total_norm([p.grad for p in loop.model.parameters()])
    assert recs[-1]["grad/global_norm"] == pytest.approx(expected.item(), rel=1e-5)


def test_anomaly_guard_cuts_lr(kernel_factory, driver_for):
    kernel = kernel_factory()
    loop = driver_for(kernel)
    _load(kernel, "guard", "AnomalyGuardCallback", action="lr_cut", lr_factor=0.1)
    loop.poison_at = 5
    loop.steps(10)
    kernel.flush()
    ledger = read_ledger(kernel.run_dir)
    anomalies = [e for e in ledger if e.get("op") == "anomaly"]
    assert len(anomalies) == 1  # then quiet for cooldown_steps
    a = anomalies[0]
    assert a["step"] == 5 and "loss" in a["error"] and "grad." in a["error"]
    cuts = [e for e in ledger if e.get("module") == "opt"]
    assert len(cuts) == 1 and cuts[0]["source"] == "anomaly_guard"
    assert cuts[0]["decision"] == "applied" and cuts[0]["step"] == 6  # next poll
    assert cuts[0]["changes"]["lr"]["new"] == pytest.approx(1e-3)
    assert loop.opt.param_groups[0]["lr"] == pytest.approx(1e-3)
    counts = _series(kernel, "anomaly/count")
    assert counts[5] == 1 and counts[9] == 5


def test_anomaly_guard_pauses(kernel_factory, driver_for):
    kernel = kernel_factory(pause_poll_sec=0.01)
    loop = driver_for(kernel)
    _load(kernel, "guard", "AnomalyGuardCallback", action="pause")
    loop.poison_at = 2
    client = HotClient(kernel.run_dir)

    def resume_when_paused() -> None:
        # the person (or autopilot) who looks at the paused run and resumes it
        wait_for(
            lambda: any(
                e.get("op") == "pause" and e["decision"] == "applied"
                for e in read_ledger(kernel.run_dir)
            ),
            10,
        )
        client.resume()

    t = threading.Thread(target=resume_when_paused)
    t.start()
    loop.steps(5)
    t.join(10)
    kernel.flush()
    ops = [(e["op"], e["step"], e["source"]) for e in read_ledger(kernel.run_dir)]
    assert ("pause", 3, "anomaly_guard") in ops
    assert ("resume", 3, "python") in ops


def test_jsonl_logger(kernel_factory, driver_for):
    kernel = kernel_factory()
    loop = driver_for(kernel)
    _load(kernel, "jl", "JSONLLoggerCallback", every_steps=2, events=["train_step_end"])
    loop.steps(5)
    kernel.apply({"step": 5}, events=("val_epoch_end",))  # filtered out
    from hotcb import jsonl

    rows = list(jsonl.iter_records(os.path.join(kernel.run_dir, "hotcb.cb_log.jsonl")))
    assert [r["step"] for r in rows] == [0, 2, 4]
    for r in rows:
        assert r["event"] == "train_step_end"
        assert r["loss"] == pytest.approx(r["metrics"]["loss"])
        assert r["batch_size"] == 32 and r["framework"] == "torch"
        assert "model" not in r and "optimizer" not in r


def test_jsonl_logger_writes_only_inside_the_run(kernel_factory, driver_for, tmp_path):
    """A command named where the logger writes: `cb load … --init path=/anywhere` or `cb
    set_params jl path=/anywhere` (from the CLI, a recipe, or a dashboard token holder with code
    loading off) created and filled files anywhere on the machine."""
    kernel = kernel_factory()
    loop = driver_for(kernel)
    client = HotClient(kernel.run_dir)
    outside = tmp_path / "outside"
    outside.mkdir()
    for path in (str(outside / "a.jsonl"), "../../outside-b.jsonl"):
        cid = client.cb_load("far", path=PKG, symbol="JSONLLoggerCallback", init={"path": path})
        kernel.apply({"step": -1})
        entry = client.wait(cid, timeout=5)
        assert entry["decision"] == "rejected", entry  # a refused path, as docs/security.md says
        assert "outside the run directory" in entry["error"]
    _load(kernel, "jl", "JSONLLoggerCallback")
    cid = client.cb("set_params", "jl", path=str(outside / "c.jsonl"))
    loop.steps(3)
    entry = client.wait(cid, timeout=5)  # refused when sent (it was "applied", then failed
    assert entry["decision"] == "rejected", entry  # at the next write and switched jl off)
    assert "outside the run directory" in entry["error"]
    assert list(outside.iterdir()) == []
    assert not (tmp_path.parent / "outside-b.jsonl").exists()
    client.cb("set_params", "jl", path="logs/jl.jsonl")  # inside: fine
    loop.steps(2)
    assert os.path.exists(os.path.join(kernel.run_dir, "logs", "jl.jsonl"))
    assert not [e for e in read_ledger(kernel.run_dir) if e.get("op") == "callback_error"]


BAD_PARAMS = [
    ("JSONLLoggerCallback", "every_steps", "abc", "every_steps must be an integer >= 1"),
    ("JSONLLoggerCallback", "keys", 5, "keys must be a list of names"),
    ("JSONLLoggerCallback", "events", ["train_step_end", 3], "events must be a list of names"),
    ("JSONLLoggerCallback", "rank_zero_only", "false", "rank_zero_only must be true or false"),
    ("JSONLLoggerCallback", "ctx", None, "has no parameter 'ctx'"),
    ("HeartbeatCallback", "every_steps", -1, "every_steps must be an integer >= 0, got -1"),
    ("HeartbeatCallback", "every_sec", "5", "every_sec must be a number >= 0"),
    ("HeartbeatCallback", "event", "", "event must be a non-empty string"),
    ("TimingCallback", "batch_size", -3, "batch_size must be an integer >= 0"),
    ("SystemStatsCallback", "gpu", "no", "gpu must be true or false"),
    ("TensorStatsCallback", "keys", {"loss": 1}, "keys must be a list of names"),
    ("TensorStatsCallback", "every_steps", 0, "every_steps must be an integer >= 1"),
    ("GradStatsCallback", "norm_type", 0, "norm_type must be a number > 0"),
    ("GradStatsCallback", "per_layer", "yes", "per_layer must be true or false"),
    ("AnomalyGuardCallback", "action", "explode", "action must be one of record, pause"),
    ("AnomalyGuardCallback", "lr_factor", 2, "lr_factor must be a number > 0 and <= 1"),
    ("AnomalyGuardCallback", "cooldown_steps", 1.5, "cooldown_steps must be an integer >= 0"),
    ("AnomalyGuardCallback", "check_grads", "false", "check_grads must be true or false"),
]


@pytest.mark.parametrize(("symbol", "param", "bad", "says"), BAD_PARAMS)
def test_bundled_callbacks_refuse_bad_values(kernel_factory, symbol, param, bad, says):
    """A bad value is refused where it is given (set_params, or the load's init), the entry
    saying which parameter and why; the callback keeps its value and keeps running."""
    kernel = kernel_factory()
    client = HotClient(kernel.run_dir)
    _load(kernel, "cb", symbol)
    cb = kernel.module("cb").get("cb")
    before = getattr(cb, param)
    cid = client.cb("set_params", "cb", **{param: bad})
    kernel.apply({"step": 0})
    entry = client.wait(cid, timeout=5)
    assert entry["decision"] == "rejected" and says in entry["error"], entry
    assert getattr(cb, param) == before
    kernel.apply({"step": 1, "loss": 1.0})
    assert kernel.module("cb").describe()[0]["enabled"] is True  # nothing broke
    if param in ("ctx", "rank_zero_only"):
        return  # not constructor arguments
    cid = client.cb_load("again", path=PKG, symbol=symbol, init={param: bad})
    kernel.apply({"step": 2})
    entry = client.wait(cid, timeout=5)
    assert entry["decision"] == "rejected" and says in entry["error"], entry
    assert kernel.module("cb").get("again") is None


def test_jsonl_logger_events_as_one_string_is_one_event(kernel_factory):
    """``events="train_step_end"`` was a substring test ("step_end" passed it)."""
    kernel = kernel_factory()
    _load(kernel, "jl", "JSONLLoggerCallback")
    client = HotClient(kernel.run_dir)
    cid = client.cb("set_params", "jl", events="train_step_end", keys="loss")
    kernel.apply({"step": 0, "loss": 1.0, "lr": 0.1})
    assert client.wait(cid, timeout=5)["decision"] == "applied"
    kernel.apply({"step": 1, "loss": 2.0}, events=("step_end", "train_step_end"))
    from hotcb import jsonl

    rows = list(jsonl.iter_records(os.path.join(kernel.run_dir, "hotcb.cb_log.jsonl")))
    rows = [r for r in rows if r["step"] >= 0]  # the line of the load's safe point
    assert [(r["step"], r["event"]) for r in rows] == [(0, "train_step_end"), (1, "train_step_end")]
    assert "lr" not in rows[0] and rows[0]["loss"] == 1.0

"""The bundled callbacks are seen doing their job, or say why they cannot.

A user probe found three that did nothing and said nothing: ``GradStatsCallback`` (and
``AnomalyGuardCallback``'s gradient check) under the HF Trainer, whose ``zero_grad`` comes before
hotcb's safe point; ``TensorStatsCallback``, which read ``env["loss"]`` only while the adapters
and the documented bare loop put the loss in ``env["metrics"]``; and ``HeartbeatCallback``,
whose line went to an INFO logger nobody had configured.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from test_cb_bundled import PKG, _load, _metrics, _series

from hotcb import HotClient
from hotcb.testing import TorchStepDriver, read_ledger

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[3]


class ZeroGradLast(TorchStepDriver):
    """The HF Trainer's order: backward, optimizer step, ``zero_grad``, then hotcb's safe
    point, where no parameter has a gradient any more."""

    def train_step(self, step: int) -> Mapping[str, Any]:
        env = super().train_step(step)
        self.opt.zero_grad()
        return env


class LossInMetrics(TorchStepDriver):
    """The bare loop of the docs (examples/bare_loop.py): the loss in ``env["metrics"]`` only."""

    def train_step(self, step: int) -> Mapping[str, Any]:
        env = dict(super().train_step(step))
        del env["loss"]
        return env


def _warnings(run_dir: str, ident: str) -> list[dict[str, Any]]:
    return [
        e
        for e in read_ledger(run_dir)
        if e.get("module") == "cb" and e.get("op") == "warning" and e.get("id") == ident
    ]


def _said(caplog: pytest.LogCaptureFixture, ident: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == f"hotcb.cb.{ident}" and r.levelno == logging.WARNING
    ]


def test_grad_stats_says_once_that_the_gradients_are_gone(kernel_factory, caplog):
    kernel = kernel_factory()
    loop = ZeroGradLast(kernel.run_dir, kernel=kernel)
    _load(kernel, "grads", "GradStatsCallback")
    loop.steps(5)
    kernel.flush()
    assert not [r for r in _metrics(kernel) if "grad/global_norm" in r["metrics"]]
    (entry,) = _warnings(kernel.run_dir, "grads")  # once, not at every step
    assert entry["decision"] == "noop" and entry["step"] == 0
    error = entry["error"]
    assert "GradStatsCallback 'grads': no parameter of env['model'] has a gradient" in error
    assert "after loss.backward() and before optimizer.zero_grad()" in error
    assert "HF Trainer" in error and "grad_norm" in error
    (line,) = _said(caplog, "grads")
    assert line == f"hotcb: {error}"
    # `cb list`, where a user looks first at a callback that shows nothing, says it too

    def cb_list(*flags: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "hotcb", "--dir", kernel.run_dir, "cb", "list", *flags],
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout  # fmt: skip

    assert f"  warning: {error}" in cb_list()
    (row,) = json.loads(cb_list("--json"))
    assert row["warning"] == error and row["state"] == "enabled"


def test_anomaly_guard_says_once_that_it_checks_no_gradient(kernel_factory, caplog):
    kernel = kernel_factory()
    loop = ZeroGradLast(kernel.run_dir, kernel=kernel)
    _load(kernel, "guard", "AnomalyGuardCallback")
    loop.poison_at = 3
    loop.steps(5)
    kernel.flush()
    (entry,) = _warnings(kernel.run_dir, "guard")
    assert "check_grads is on but no parameter of env['model'] has a gradient" in entry["error"]
    assert "check_grads=false" in entry["error"]
    assert len(_said(caplog, "guard")) == 1
    (anomaly,) = [e for e in read_ledger(kernel.run_dir) if e.get("op") == "anomaly"]
    assert anomaly["step"] == 3 and "grad." not in anomaly["error"]


def test_no_warning_where_the_gradients_are(kernel_factory, driver_for, caplog):
    kernel = kernel_factory()
    loop = driver_for(kernel)
    _load(kernel, "grads", "GradStatsCallback")
    _load(kernel, "guard", "AnomalyGuardCallback")
    _load(kernel, "ts", "TensorStatsCallback")
    loop.steps(12)
    kernel.flush()
    assert [e for e in read_ledger(kernel.run_dir) if e.get("op") == "warning"] == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(_series(kernel, "grad/global_norm")) == 12


def test_tensor_stats_reads_the_loss_from_metrics(kernel_factory):
    """The default ``keys=["loss"]`` in a loop that logs the loss the documented way."""
    kernel = kernel_factory()
    loop = LossInMetrics(kernel.run_dir, kernel=kernel)
    _load(kernel, "ts", "TensorStatsCallback")
    loop.steps(4)
    means = _series(kernel, "loss/mean")
    losses = _series(kernel, "loss")
    assert sorted(means) == [0, 1, 2, 3]
    for step, mean in means.items():
        assert mean == pytest.approx(losses[step], rel=1e-6)


def test_tensor_stats_says_once_a_key_is_nowhere(kernel_factory, caplog):
    kernel = kernel_factory()
    loop = LossInMetrics(kernel.run_dir, kernel=kernel)
    _load(kernel, "ts", "TensorStatsCallback", keys=["loss", "acc"])
    loop.steps(9)
    kernel.flush()
    assert _warnings(kernel.run_dir, "ts") == []  # 9 steps with metrics: not yet
    loop.steps(6)
    kernel.flush()
    (entry,) = _warnings(kernel.run_dir, "ts")
    assert entry["step"] == 9
    error = entry["error"]
    assert "TensorStatsCallback 'ts': no tensor or number named 'acc'" in error
    assert "env['metrics']: loss)" in error and "keys=" in error
    assert len(_said(caplog, "ts")) == 1
    assert len(_series(kernel, "loss/mean")) == 15  # the keys it finds go on


def test_tensor_stats_waits_for_a_loop_that_logs_rarely(kernel_factory):
    """A loop that logs every few hundred steps (the HF Trainer's ``logging_steps=500``) has no
    ``metrics`` in between: the key is said missing only after ``MISSES`` steps without it."""
    from hotcb.modules.cb.callbacks._stats import MISSES

    kernel = kernel_factory()
    _load(kernel, "ts", "TensorStatsCallback")
    _load(kernel, "rare", "TensorStatsCallback", keys="acc")
    for step in range(MISSES - 2):  # "rare" also measured the load's safe point (step -1)
        env: dict[str, Any] = {"step": step}
        if step % 500 == 499:
            env["metrics"] = {"loss": 0.5}
        kernel.apply(env)
    kernel.flush()
    assert [e for e in read_ledger(kernel.run_dir) if e.get("op") == "warning"] == []
    assert sorted(_series(kernel, "loss/mean")) == [499]
    kernel.apply({"step": MISSES - 2})
    kernel.flush()
    assert _warnings(kernel.run_dir, "ts") == []  # found once: never said missing
    (entry,) = _warnings(kernel.run_dir, "rare")
    assert f"at the {MISSES} steps it measured" in entry["error"]


def test_heartbeat_is_on_stderr_by_default(kernel_factory, driver_for, capsys):
    kernel = kernel_factory()
    loop = driver_for(kernel)
    _load(kernel, "hb", "HeartbeatCallback", every_steps=5)
    capsys.readouterr()
    loop.steps(6)
    lines = [s for s in capsys.readouterr().err.splitlines() if "heartbeat" in s]
    assert [s.split(",")[0] for s in lines] == [
        "hotcb heartbeat: step 0",
        "hotcb heartbeat: step 5",
    ]


def test_heartbeat_goes_to_logging_where_it_is_configured(kernel_factory, driver_for, caplog):
    kernel = kernel_factory()
    loop = driver_for(kernel)
    _load(kernel, "hb", "HeartbeatCallback", every_steps=5)
    caplog.set_level(logging.INFO, logger="hotcb.cb.hb")
    loop.steps(6)
    beats = [r.getMessage() for r in caplog.records if r.name == "hotcb.cb.hb"]
    assert len(beats) == 2 and beats[1].startswith("hotcb heartbeat: step 5")


HEARTBEAT_SCRIPT = """
from hotcb import HotClient, HotKernel
kernel = HotKernel({run!r}, poll_interval_sec=0.0)
HotClient({run!r}).cb_load(
    "hb", path="hotcb.modules.cb.callbacks", symbol="HeartbeatCallback", init={{"every_steps": 5}}
)
for step in range(12):
    kernel.apply({{"step": step, "metrics": {{"loss": 1.0 / (step + 1)}}}})
kernel.close()
"""


def test_heartbeat_is_seen_in_a_plain_script(tmp_path):
    """The user's case: a script with no logging set-up (no pytest handlers either)."""
    run = os.fspath(tmp_path / "run")
    env = {k: v for k, v in os.environ.items() if k != "HOTCB_DIR"}
    env["PYTHONPATH"] = os.pathsep.join([os.fspath(ROOT / "src"), env.get("PYTHONPATH", "")])
    script = textwrap.dedent(HEARTBEAT_SCRIPT.format(run=run))
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    beats = [s.split(",")[0] for s in proc.stderr.splitlines() if "heartbeat" in s]
    assert beats == [f"hotcb heartbeat: step {s}" for s in (0, 5, 10)], proc.stderr


@pytest.mark.slow
def test_under_the_hf_trainer(tmp_path, caplog):
    """A real Trainer (examples/hf_tiny.py, logging every step): GradStats and the guard's
    gradient check say once why they see no gradient, pointing at the Trainer's grad_norm;
    TensorStats finds the loss the adapter hands over in ``env["metrics"]``."""
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    spec = importlib.util.spec_from_file_location("hf_tiny_visible", ROOT / "examples/hf_tiny.py")
    assert spec is not None and spec.loader is not None
    hf_tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hf_tiny)

    run_dir = os.fspath(tmp_path / "run")
    client = HotClient(run_dir)
    for ident, symbol in (
        ("grads", "GradStatsCallback"),
        ("guard", "AnomalyGuardCallback"),
        ("ts", "TensorStatsCallback"),
    ):
        client.cb_load(ident, path=PKG, symbol=symbol)
    trainer, kernel = hf_tiny.build(run_dir, 4)
    trainer.train()
    kernel.close()

    for ident in ("grads", "guard"):
        (entry,) = _warnings(run_dir, ident)
        assert "Under the HF Trainer" in entry["error"], entry
        assert "env['metrics']['grad_norm']" in entry["error"]
        assert "bare" not in entry["error"] and "before optimizer.zero_grad()" not in entry["error"]
    assert _warnings(run_dir, "ts") == []
    from hotcb import jsonl

    rows = list(jsonl.iter_records(os.path.join(run_dir, "hotcb.metrics.jsonl")))
    means = {r["step"]: r["metrics"]["loss/mean"] for r in rows if "loss/mean" in r["metrics"]}
    assert sorted(means) == [1, 2, 3, 4]
    assert not [r for r in rows if "grad/global_norm" in r["metrics"]]

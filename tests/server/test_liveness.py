"""Liveness of a run that records no metrics: the kernel's heartbeat (``hotcb.heartbeat.json``)
and the server's run state built on it.

A real trainer process (the README's minimal loop: model and optimizer, no metrics) and a real
uvicorn server: the run shows as running with a rising step; killed, it goes stale."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hotcb import HotKernel
from hotcb.runfiles import HEARTBEAT, METRICS
from hotcb.server.tailer import HeartbeatWatch
from hotcb.testing import wait_for

#: The README's quickstart loop without metrics: a model, an optimizer, kernel.apply per step.
TRAINER = """
import sys, time
import torch
from hotcb import HotKernel

torch.set_num_threads(1)
model = torch.nn.Linear(4, 2)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-4)
kernel = HotKernel(sys.argv[1])
step = 0
while True:
    loss = model(torch.randn(8, 4)).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    kernel.apply({"step": step, "model": model, "optimizer": optimizer})
    step += 1
    time.sleep(0.01)
"""


@pytest.fixture
def trainer(tmp_path: Any) -> Iterator[Callable[[str], subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOTCB_")}

    def start(run_dir: str) -> subprocess.Popen[bytes]:
        log = open(run_dir + ".log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, str(script), run_dir], stdout=log, stderr=subprocess.STDOUT, env=env
        )
        log.close()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def _beat(run_dir: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(run_dir, HEARTBEAT)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def test_kernel_heartbeat_at_most_once_a_second(tmp_path: Any) -> None:
    run = str(tmp_path / "run")
    opt = types.SimpleNamespace(param_groups=[{"lr": 0.1}])
    kernel = HotKernel(run, poll_interval_sec=0.0)  # a poll at every step
    kernel.apply({"step": 0, "optimizer": opt})
    first = _beat(run)
    assert first is not None and first["step"] == 0 and first["pid"] == os.getpid()
    st = os.stat(os.path.join(run, HEARTBEAT))
    for step in range(1, 50):  # far less than a second: the heartbeat is not written again
        kernel.apply({"step": step, "optimizer": opt})
    assert os.stat(os.path.join(run, HEARTBEAT)).st_ino == st.st_ino
    # a second later the next poll writes it again, with the step it was at
    kernel._next_beat = 0.0  # the clock moved on (no sleeping in tests)
    kernel.apply({"step": 50, "optimizer": opt})
    again = _beat(run)
    assert again is not None and again["step"] == 50 and again["wall_time"] >= first["wall_time"]
    assert not [n for n in os.listdir(run) if ".tmp" in n]  # replaced atomically
    kernel.close()


def test_only_rank0_writes_the_heartbeat(tmp_path: Any) -> None:
    run = str(tmp_path / "run")
    kernel = HotKernel(run, poll_interval_sec=0.0)
    kernel.is_leader = False  # what a rank other than 0 is (distributed.detect())
    kernel.apply({"step": 0})
    assert not os.path.exists(os.path.join(run, HEARTBEAT))
    kernel.close()


def test_heartbeat_watch_reads_a_replaced_file(tmp_path: Any) -> None:
    path = str(tmp_path / HEARTBEAT)
    watch = HeartbeatWatch(path)
    assert not watch.update() and watch.step is None  # no heartbeat yet
    (tmp_path / HEARTBEAT).write_text('{"step": 7, "wall_time": 1.5, "pid": 1}')
    assert watch.update() and (watch.step, watch.wall_time) == (7, 1.5)
    assert not watch.update()  # unchanged: not read again
    (tmp_path / HEARTBEAT).write_text('{"step": 9, "wall')  # half written: keep the last one
    assert not watch.update() and watch.step == 7


@pytest.mark.slow
def test_run_without_metrics_is_running_then_stale(
    tmp_path: Any, live_server: Any, trainer: Any
) -> None:
    root = tmp_path / "root"
    run = str(root / "quiet")
    os.makedirs(run)
    srv = live_server(str(root), ui={"stale_after_sec": 3})
    proc = trainer(run)
    with srv.client() as c:

        def status() -> dict[str, Any]:
            r = c.get("/api/runs/quiet/status")
            return r.json() if r.status_code == 200 else {}

        st = wait_for(
            lambda: (
                (s := status()).get("state") == "running" and (s.get("last_step") or 0) > 5 and s
            ),
            timeout=120,
            what="the quiet run to show as running",
        )
        assert st["stale"] is False and st["last_metrics"] is None
        assert not os.path.exists(os.path.join(run, METRICS)) or not os.path.getsize(
            os.path.join(run, METRICS)
        )
        step = st["last_step"]
        wait_for(
            lambda: (status().get("last_step") or 0) > step + 20, timeout=60, what="a rising step"
        )
        (row,) = [r for r in c.get("/api/runs").json()["runs"] if r["run_id"] == "quiet"]
        assert row["stale"] is False and row["last_step"] > step

        with srv.ws() as ws:  # the pushed status says the same
            json.loads(ws.recv(timeout=10))  # hello
            ws.send(json.dumps({"subscribe": ["quiet"]}))

            def pushed_status() -> dict[str, Any] | None:
                msg = json.loads(ws.recv(timeout=10))
                return msg if msg.get("type") == "status" else None

            msg = wait_for(pushed_status, timeout=30, what="a status message")
            assert msg["state"] == "running" and msg["stale"] is False and msg["last_step"] > step

        proc.send_signal(signal.SIGKILL)  # gone without closing the run
        proc.wait(10)
        st = wait_for(
            lambda: (s := status()).get("stale") and s, timeout=30, what="the run to go stale"
        )
        assert st["state"].startswith("crashed")

        def listed_stale() -> bool:
            rows = c.get("/api/runs").json()["runs"]
            return next(r for r in rows if r["run_id"] == "quiet")["stale"]

        wait_for(listed_stale, timeout=30, what="the runs list to show it stale")

"""What a page watching many idle runs costs ``hotcb serve``, and how soon a quiet run's news
reaches the page.

    python benchmarks/dashboard_idle.py [--runs 60] [--seconds 20] [--baseline SRC]

N finished runs (50 steps each) under one folder, all subscribed over one WebSocket (a page
comparing them, or one tab each). After the runs have been quiet for a while, the server's CPU
over ``--seconds`` (psutil), then the delay from appending a metric line to a quiet run until
the WebSocket brings it (5 samples). ``--baseline SRC``: the ``src`` folder of another hotcb
(``git worktree add /tmp/old REV``), measured first on the same machine for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import statistics
import tempfile
import time
from typing import Any

import psutil
import websockets

from hotcb import HotKernel
from hotcb.metrics import MetricsCollector
from hotcb.server.testing import ServeProcess

#: How long the runs stay quiet before the CPU is measured (the server's quiet threshold is
#: 10 s: hotcb.server.tailer.QUIET_AFTER_SEC).
SETTLE_SEC = 12.0


def make_runs(root: str, n: int) -> list[str]:
    ids = [f"r{i:02d}" for i in range(n)]
    for rid in ids:
        kernel = HotKernel(f"{root}/{rid}")
        for step in range(50):
            kernel.apply({"step": step, "metrics": {"loss": 1.0 / (step + 1)}})
        kernel.close()
    return ids


async def _drain(ws: Any, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.2)


async def _measure(
    srv: ServeProcess, token: str, root: str, ids: list[str], seconds: float
) -> dict[str, float]:
    url = srv.url.replace("http://", "ws://") + "/ws"
    async with websockets.connect(
        url, additional_headers={"Authorization": f"Bearer {token}"}
    ) as ws:
        await ws.send(json.dumps({"subscribe": ids}))
        await _drain(ws, SETTLE_SEC)
        proc = psutil.Process(srv.proc.pid if srv.proc else 0)
        proc.cpu_percent(None)
        await _drain(ws, seconds)
        cpu = proc.cpu_percent(None)
        delays = []
        for i in range(5):
            await _drain(ws, SETTLE_SEC if i else 0.0)  # quiet again
            with MetricsCollector(f"{root}/{ids[i]}") as m:
                sent = time.monotonic()
                m.log(50, {"loss": 0.01})
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if msg.get("type") == "metrics" and msg.get("run") == ids[i]:
                    delays.append((time.monotonic() - sent) * 1000)
                    break
    return {
        "cpu_percent": cpu,
        "news_ms_median": statistics.median(delays),
        "news_ms_max": max(delays),
    }


def run(n: int, seconds: float, pythonpath: str | None = None) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="hotcb-idle-") as root:
        ids = make_runs(root, n)
        token = secrets.token_urlsafe(16)
        env = {"HOTCB_TOKEN": token, **({"PYTHONPATH": pythonpath} if pythonpath else {})}
        srv = ServeProcess(root, env=env, log_dir=tempfile.gettempdir())
        srv.start()
        try:
            return asyncio.run(_measure(srv, token, root, ids, seconds))
        finally:
            srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--baseline", metavar="SRC", help="another hotcb's src folder, measured first")
    args = ap.parse_args()
    rows = []
    if args.baseline:
        rows.append(("baseline", run(args.runs, args.seconds, args.baseline)))
    rows.append(("this hotcb", run(args.runs, args.seconds)))
    print(f"{args.runs} idle runs subscribed, CPU over {args.seconds:g} s")
    print(f"{'server':<12} {'CPU % of a core':>16} {'news ms (median)':>17} {'news ms (max)':>14}")
    for name, f in rows:
        print(
            f"{name:<12} {f['cpu_percent']:>16.1f} {f['news_ms_median']:>17.0f} {f['news_ms_max']:>14.0f}"
        )


if __name__ == "__main__":
    main()

"""What a long run's ledger costs: ``--wait``, the first ``undo`` after a restart, an ``undo``
of an old command, ``recipe export``, and the dashboard's knob chart (``GET …/knobs``, fetched
again after each applied change), on a ledger of N applied changes (default 100k: a run
steered every 50 steps for five million steps, or an autopilot's long week).

    python benchmarks/long_ledger.py [--entries 100000]

The run is made here (a loss weight changed N times, as a kernel ledgers it); each figure is
one measurement on a fresh copy, so read them as orders of magnitude on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from hotcb import HotClient, HotKernel, loss_actuators, mutable_state
from hotcb.recipe import export_recipe


def make_run(run: str, n: int) -> None:
    """A run whose ledger holds ``n`` applied changes of ``aux`` (and its commands file)."""
    os.makedirs(run)
    with open(os.path.join(run, "hotcb.applied.jsonl"), "w") as led, \
            open(os.path.join(run, "hotcb.commands.jsonl"), "w") as cmds:  # fmt: skip
        cursor = 0
        for i in range(1, n + 1):
            cid = f"01BENCH{i:019d}"
            old, new = round(0.1 + (i - 1) % 9 * 0.1, 1), round(0.1 + i % 9 * 0.1, 1)
            line = json.dumps({"v": 1, "cmd_id": cid, "source": "cli", "module": "loss",
                               "op": "set_params", "params": {"aux": new}},
                              separators=(",", ":")) + "\n"  # fmt: skip
            cmds.write(line)
            cursor += len(line)
            led.write(json.dumps({"v": 1, "seq": i, "step": 10 * i, "event": "train_step_end",
                                  "wall_time": 1.0e9 + i, "rank": 0, "cmd_id": cid,
                                  "source": "cli", "module": "loss", "op": "set_params",
                                  "params": {"aux": new}, "id": None, "decision": "applied",
                                  "changes": {"aux": {"old": old, "new": new}}, "error": None,
                                  "cursor": cursor}, separators=(",", ":")) + "\n")  # fmt: skip


def measured(fn: Callable[[], Any]) -> tuple[float, float]:
    """Seconds of one call, and the peak MB of Python allocations of another (tracemalloc
    slows what it traces several times over: not timed)."""
    start = time.perf_counter()
    fn()
    took = time.perf_counter() - start
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return took, peak


def undo_step(run: str, cmd_id: str | None) -> float:
    """A trainer restarted in ``run``: the seconds of the step that applies an ``undo``."""
    weights = {"ce": 1.0, "aux": 0.5}
    kernel = HotKernel(run, mutable_state=mutable_state(loss_actuators(weights)),
                       poll_interval_sec=0)  # fmt: skip
    step = 10_000_000
    kernel.apply({"step": step})
    client = HotClient(run)
    sent = client.undo(cmd_id) if cmd_id else client.undo()
    start = time.perf_counter()
    kernel.apply({"step": step + 1})
    took = time.perf_counter() - start
    assert client.wait(sent, 30)["decision"] == "applied"
    kernel.close()
    return took


def knobs_answer(root: str) -> str:
    """The dashboard (``hotcb[dashboard]``) over ``root``: seconds and size of the knobs
    answer of its one run, after a first request that loads the run."""
    from hotcb.server.config import DashboardConfig
    from hotcb.server.testing import serve_in_thread

    srv = serve_in_thread(DashboardConfig.load(None, dir=root))
    try:
        with srv.client() as c:
            c.get("/api/runs/run/status")
            start = time.perf_counter()
            body = c.get("/api/runs/run/knobs").content
            took = time.perf_counter() - start
    finally:
        srv.stop()
    return f"{took:.3f} s, {len(body) / 2**20:.2f} MB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=100_000)
    n = ap.parse_args().entries
    work = tempfile.mkdtemp(prefix="hotcb-long-ledger-")
    try:
        base = os.path.join(work, "base")
        make_run(base, n)

        def fresh(name: str) -> str:
            path = os.path.join(work, name)
            shutil.copytree(base, path)
            return path

        rows = []
        newest = f"01BENCH{n:019d}"
        waited = fresh("wait")
        rows.append(("--wait (the newest entry)",
                     *measured(lambda: HotClient(waited).wait(newest, 30))))  # fmt: skip
        rows.append(("first undo after a restart (one step)",
                     undo_step(fresh("undo"), None), float("nan")))  # fmt: skip
        rows.append(("undo --cmd-id of the 5th command (one step)",
                     undo_step(fresh("undo_old"), "01BENCH" + f"{5:019d}"), float("nan")))  # fmt: skip
        exported = fresh("export")
        rows.append(("recipe export", *measured(lambda: export_recipe(exported))))
        served = os.path.join(work, "served")
        os.makedirs(served)
        shutil.copytree(base, os.path.join(served, "run"))
        try:
            knobs = knobs_answer(served)
        except ImportError as exc:
            knobs = f"not measured ({exc.name} missing: pip install 'hotcb[dashboard]')"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"ledger of {n} entries")
    print(f"{'what':<46} {'seconds':>9} {'peak MB':>9}")
    for what, secs, mb in rows:
        print(f"{what:<46} {secs:>9.3f} {'' if mb != mb else f'{mb:.0f}':>9}")
    print(f"dashboard GET …/knobs (one answer): {knobs}")


if __name__ == "__main__":
    main()

"""Callback dispatch overhead: 5 enabled no-op callbacks, µs per event per callback above the
bare calls (target ≤ 2 µs).

    python benchmarks/cb_dispatch.py

``run()`` returns the figures (the overhead suite imports it).
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

from hotcb.modules.cb._protocol import CallbackBase as _Noop  # handle() is a no-op

N_CALLBACKS = 5
#: The no-op callbacks are loaded by import path, like callbacks from an installed package.
_TARGET = "hotcb.modules.cb._protocol"


def _best(fn: Any, n: int, repeat: int = 5) -> float:
    """Best of ``repeat`` timings of ``fn(n)``, in seconds per iteration."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(n)
        best = min(best, time.perf_counter() - t0)
    return best / n


def run(n: int = 200_000) -> dict[str, float]:
    from hotcb import HotClient, HotKernel

    with tempfile.TemporaryDirectory() as d:
        kernel = HotKernel(d, metrics_collector=False, fsync_ledger=False)
        client = HotClient(d)
        ids = [
            client.cb_load(f"noop{i}", path=_TARGET, symbol="CallbackBase")
            for i in range(N_CALLBACKS)
        ]
        kernel.apply({"step": 0})
        for cid in ids:
            entry = client.wait(cid, timeout=5)
            assert entry["decision"] == "applied", entry
        mod = kernel.module("cb")
        env = {"step": 1}
        events = ("train_step_end",)
        handles = [_Noop().handle for _ in range(N_CALLBACKS)]

        def bare(k: int) -> None:
            for _ in range(k):
                for event in events:
                    for h in handles:
                        h(event, env)

        def dispatch(k: int) -> None:
            on_events = mod.on_events
            for _ in range(k):
                on_events(events, env)

        def through_kernel(k: int) -> None:
            apply = kernel.apply
            for _ in range(k):
                apply(env, events)

        t_bare = _best(bare, n)
        t_disp = _best(dispatch, n)
        t_kernel = _best(through_kernel, n)
        kernel.close()
    per_cb = (t_disp - t_bare) / N_CALLBACKS * 1e6
    return {
        "callbacks": N_CALLBACKS,
        "bare_us_per_event": t_bare * 1e6,
        "dispatch_us_per_event": t_disp * 1e6,
        "kernel_apply_us_per_event": t_kernel * 1e6,
        "overhead_us_per_event_per_callback": per_cb,
        "kernel_overhead_us_per_event_per_callback": (t_kernel - t_bare) / N_CALLBACKS * 1e6,
        "target_us": 2.0,
    }


if __name__ == "__main__":
    figures = run()
    for key, value in figures.items():
        print(f"{key:<38} {value:.3f}" if isinstance(value, float) else f"{key:<38} {value}")

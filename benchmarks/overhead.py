"""What hotcb costs a training loop: prints figures and their ratio to the budget.

    python benchmarks/overhead.py            # figures (well under a minute)
    python benchmarks/overhead.py --check    # exit 1 when a budget is missed

Figures (budgets from shared/DESIGN.md §10, for a 2-core machine):
- idle ``apply()`` (poll not due): a counter and a clock compare     budget <= 1 us
- due poll with nothing new (``poll_interval_sec=0``): one ``stat``    budget <= 5 us
- the heartbeat: one atomic replace of ``hotcb.heartbeat.json``, at most once a second
- steps from append to applied (poll every step, and the 50 ms default on a 2 ms step)
- burst: 10,000 commands appended, one ``apply()`` handles them all  budget >= 20,000 cmd/s
- ``import hotcb`` in a fresh interpreter (best of several)          budget <= 50 ms

Other benchmarks plug in through :func:`extra_sections` (see there).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from hotcb import HotcbActuator, HotKernel, jsonl
from hotcb.actuators import ActuatorType
from hotcb.ops import make_command

HERE = os.path.dirname(os.path.abspath(__file__))
_missed: list[str] = []


def report(
    name: str,
    value: float,
    unit: str,
    budget: float | None = None,
    *,
    higher_is_better: bool = False,
) -> None:
    """Print one figure; with a budget also the ratio to it and OK/MISS."""
    line = f"{name:<48} {value:>12,.3f} {unit:<8}"
    if budget is not None:
        ok = value >= budget if higher_is_better else value <= budget
        ratio = value / budget
        sign = ">=" if higher_is_better else "<="
        line += f"  budget {sign} {budget:g} {unit}  ratio {ratio:6.2f}  {'OK' if ok else 'MISS'}"
        if not ok:
            _missed.append(name)
    print(line, flush=True)


def _box_actuator() -> tuple[HotcbActuator, dict[str, float]]:
    box = {"x": 0.0}
    act = HotcbActuator(
        "x",
        ActuatorType.FLOAT,
        lambda v, env: box.__setitem__("x", v),
        lambda env: box["x"],
    )
    return act, box


def _per_call_us(kernel: HotKernel, n: int, repeats: int = 5) -> float:
    """Best-of-``repeats`` microseconds per ``apply()``, the loop's own cost included."""
    env: dict[str, Any] = {"step": 0}
    apply = kernel.apply
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(n):
            env["step"] = i
            apply(env)
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e6


def bench_idle(root: str) -> None:
    kernel = HotKernel(os.path.join(root, "idle"), poll_interval_sec=3600)
    kernel.apply({"step": 0})
    report("idle apply() (poll not due)", _per_call_us(kernel, 200_000), "us", 1.0)
    kernel.close()


def bench_due_poll(root: str) -> None:
    kernel = HotKernel(os.path.join(root, "due"), poll_interval_sec=0)
    kernel.apply({"step": 0})
    report("due poll, nothing new (poll_interval_sec=0)", _per_call_us(kernel, 50_000), "us", 5.0)
    kernel.close()


def bench_heartbeat(root: str, n: int = 500) -> None:
    """The heartbeat (``hotcb.heartbeat.json``, replaced at most once a second from the poll):
    one write, and what it adds per second of training."""
    kernel = HotKernel(os.path.join(root, "beat"), poll_interval_sec=3600)
    kernel.apply({"step": 0})
    t0 = time.perf_counter()
    for step in range(n):
        kernel._heartbeat(step, 0.0)
    us = (time.perf_counter() - t0) / n * 1e6
    report("heartbeat: one write (at most once a second)", us, "us")
    report("heartbeat: share of a second of training", us / 1e6 * 100, "%")
    kernel.close()


def _steps_to_apply(root: str, poll_interval: float, step_sec: float, trials: int) -> list[int]:
    act, _ = _box_actuator()
    kernel = HotKernel(root, poll_interval_sec=poll_interval, mutable_state=[act])
    step = 0
    kernel.apply({"step": step})
    counts = []
    for trial in range(trials):
        record = make_command("custom", "set_params", params={"x": float(trial)})
        jsonl.append(kernel.paths.commands, record)
        n = 0
        while True:
            step += 1
            n += 1
            if step_sec:
                end = time.perf_counter() + step_sec
                while time.perf_counter() < end:  # a busy "training step"
                    pass
            kernel.apply({"step": step})
            last = jsonl.read_last(kernel.paths.ledger, 1)
            if last and last[0]["cmd_id"] == record["cmd_id"]:
                break
        counts.append(n)
        # land the next append at a random-ish point of the poll interval
        for _ in range(trial % 7):
            step += 1
            kernel.apply({"step": step})
    kernel.close()
    return counts


def bench_latency(root: str) -> None:
    every = _steps_to_apply(os.path.join(root, "lat0"), 0.0, 0.0, 50)
    report("steps append -> applied (poll every step), max", max(every), "steps")
    dflt = _steps_to_apply(os.path.join(root, "lat50"), 0.05, 0.002, 12)
    report(
        "steps append -> applied (50 ms poll, 2 ms step), median", statistics.median(dflt), "steps"
    )
    report("steps append -> applied (50 ms poll, 2 ms step), max", max(dflt), "steps")


def bench_burst(root: str, n: int = 10_000) -> None:
    for fsync in (True, False):
        act, box = _box_actuator()
        kernel = HotKernel(
            os.path.join(root, f"burst{int(fsync)}"),
            poll_interval_sec=0,
            mutable_state=[act],
            fsync_ledger=fsync,
        )
        kernel.apply({"step": 0})
        records = [make_command("custom", "set_params", params={"x": i * 1e-3}) for i in range(n)]
        t0 = time.perf_counter()
        jsonl.append_many(kernel.paths.commands, records)
        t_append = time.perf_counter() - t0
        t0 = time.perf_counter()
        kernel.apply({"step": 1})
        t_apply = time.perf_counter() - t0
        entries = list(jsonl.iter_records(kernel.paths.ledger))
        assert len(entries) == n and box["x"] == (n - 1) * 1e-3, "burst not fully applied"
        label = "fsync" if fsync else "no fsync"
        report(
            f"burst of {n:,}: one apply() ({label})",
            n / t_apply,
            "cmd/s",
            20_000 if fsync else None,
            higher_is_better=True,
        )
        if fsync:
            report(f"burst of {n:,}: append_many (one write)", n / t_append, "cmd/s")
        kernel.close()
    client_dir = os.path.join(root, "client")
    from hotcb import HotClient

    client = HotClient(client_dir)
    t0 = time.perf_counter()
    for i in range(2000):
        client.custom(x=i)
    report("HotClient.send, one locked append each", 2000 / (time.perf_counter() - t0), "cmd/s")


def bench_import(repeats: int = 7) -> None:
    """``import hotcb`` as an installed package imports it: from bytecode. A shell that sets
    PYTHONDONTWRITEBYTECODE would measure compiling the sources instead, so the measured
    interpreters may write and read ``__pycache__`` (one warm-up import writes it)."""
    code = "import time; t = time.perf_counter(); import hotcb; print(time.perf_counter() - t)"
    skip = ("PYTHONPROFILEIMPORTTIME", "PYTHONDONTWRITEBYTECODE")
    env = {k: v for k, v in os.environ.items() if k not in skip}
    subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, env=env)
    times = []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
        )
        times.append(float(out.stdout) * 1e3)
    report("import hotcb (fresh interpreter), best", min(times), "ms", 50.0)
    report("import hotcb (fresh interpreter), median", statistics.median(times), "ms")


# ---------------------------------------------------------------------------- plug-in point
#: Optional benchmark modules next to this file. Each one that exists is imported and its
#: ``run()`` called. ``run()`` returns a dict of figures ``{name: number}``; a ``target_us`` key
#: is the budget of every figure whose name starts with ``overhead_`` (names ending in ``_us`` are
#: microseconds). A module may instead define ``run(report)`` and call
#: ``report(name, value, unit, budget=None, *, higher_is_better=False)`` itself. Missed budgets
#: count for ``--check`` like the core figures.
EXTRA_MODULES = ("cb_dispatch",)


def _report_figures(name: str, figures: dict[str, Any], report: Callable[..., None]) -> None:
    target = figures.get("target_us")
    for key, value in figures.items():
        if key == "target_us" or not isinstance(value, (int, float)):
            continue
        unit = "us" if key.endswith("_us") or "_us_" in key else ""
        budget = target if key.startswith("overhead_") else None
        report(f"{name}: {key}", float(value), unit, budget)


def extra_sections(report: Callable[..., None] = report) -> None:
    """Run the optional benchmark modules named in :data:`EXTRA_MODULES` that are present."""
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    for name in EXTRA_MODULES:
        if not os.path.exists(os.path.join(HERE, f"{name}.py")):
            continue
        print(f"\n-- {name}", flush=True)
        try:
            module = importlib.import_module(name)
            run = getattr(module, "run", None)
            if not callable(run):
                print(f"   ({name}.py has no run(); skipped)")
                continue
            if "report" in inspect.signature(run).parameters:
                run(report=report)
            else:
                _report_figures(name, run(), report)
        except Exception as exc:  # one broken plug-in must not hide the other figures
            print(f"   {name} failed: {exc!r}")
            _missed.append(name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when a budget is missed")
    args = ap.parse_args(argv)
    print(f"hotcb overhead  (python {sys.version.split()[0]}, {os.cpu_count()} cpus)\n")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hotcb-bench-") as root:
        bench_idle(root)
        bench_due_poll(root)
        bench_heartbeat(root)
        bench_latency(root)
        bench_burst(root)
        bench_import()
        extra_sections()
    print(f"\n({time.perf_counter() - t0:.1f} s)")
    if _missed:
        print("missed: " + ", ".join(_missed))
    return 1 if (args.check and _missed) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Dashboard server figures, against a real ``hotcb serve`` subprocess.

The run: 1,000,000 metric lines (3 metrics a line) logged by hotcb's own ``MetricsCollector``,
which also writes the column sidecar ``hotcb.metrics.cols`` beside the metrics file.

1. History request over it (targets: first ≤ 1 s, later ≤ 50 ms):
   - ``history_first_parsed_ms``: the first request of a server when the sidecar is not there
     (a file another tool wrote): the server parses the whole file;
   - ``restart_first_ms``: that server stopped and started again: it starts from its own
     columnar cache, ``hotcb.metrics.idx``, written after the first answer;
   - ``history_first_ms``: a fresh server (no cache of its own) over the run as the
     collector left it: it reads the trainer's columns and checks them against the file.
   Every first answer is checked equal to the parsed one.
2. WebSocket delivery latency from append to client at 1,000 metric lines/s, on that same
   1M-line run (target p99 ≤ 150 ms).
3. Server RSS (psutil) with the 1M lines indexed and while tailing (target ≤ 300 MB).
4. What the sidecar costs the trainer: ``MetricsCollector.log`` per call with and without it.

Each figure is printed with the one measured before the fast load (:data:`BEFORE`) and their
ratio (before / now: above 1 is faster or smaller now). docs/benchmarks/dashboard.md has the
table and how the figures were taken.

The server gets a fresh token in ``HOTCB_TOKEN`` (it wants one on every address); the HTTP
client and the WebSocket send it as ``Authorization: Bearer``.

    python benchmarks/dashboard.py [--lines 1000000] [--rate 1000] [--seconds 5]

``run()`` returns the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import statistics
import tempfile
import threading
import time
from typing import Any

import httpx
import psutil
from websockets.sync.client import connect

from hotcb.metrics import MetricsCollector
from hotcb.metrics._columns import sidecar_path
from hotcb.runfiles import METRICS_INDEX
from hotcb.server.tailer import CACHE_MIN_BYTES
from hotcb.server.testing import ServeProcess
from hotcb.testing import wait_for

#: The figures of ``python benchmarks/dashboard.py`` before the fast load (commit d0a1270:
#: ``json.loads`` per line, no cache), on the 2-core development machine, 2026-12-02.
BEFORE: dict[str, float] = {
    "history_first_ms": 6321.8,
    "history_first_parsed_ms": 6321.8,
    "history_later_ms_median": 9.2,
    "history_later_ms_max": 19.4,
    "history_3_series_ms_median": 20.9,
    "history_window_ms": 4.7,
    "rss_indexed_mb": 179.4,
    "ws_latency_p50_ms": 27.4,
    "ws_latency_p99_ms": 52.2,
    "ws_latency_max_ms": 61.6,
    "rss_tailing_peak_mb": 179.4,
}

#: Targets (issue #16 for the history requests, shared/DESIGN.md §10 for the others).
TARGETS: dict[str, float] = {
    "history_first_ms": 1000,
    "history_first_parsed_ms": 1000,
    "history_later_ms_median": 50,
    "restart_first_ms": 1000,
    "ws_latency_p99_ms": 150,
    "rss_tailing_peak_mb": 300,
}


def write_metrics(path: str, lines: int, spike_at: int) -> None:
    """The metrics file of a run, written by hotcb's own MetricsCollector (so with the column
    sidecar beside it, ``hotcb.metrics.cols``), one ``log`` a step as the kernel does."""
    with MetricsCollector(os.path.dirname(path)) as collector:
        for s in range(lines):
            loss = 2.0 / (1 + s * 1e-4) + 0.01 * ((s * 7919) % 13)
            if s == spike_at:
                loss = 1e3
            collector.log(s, {"loss": loss, "acc": s / lines, "lr": 0.001})


def collector_cost(n: int = 200_000) -> dict[str, float]:
    """Microseconds per ``MetricsCollector.log`` call (3 metrics), with and without columns,
    interleaved in rounds so that the machine's load hits both alike."""
    out: dict[str, list[float]] = {"collector_log_us": [], "collector_log_us_no_columns": []}
    with tempfile.TemporaryDirectory() as root:
        for r in range(4):
            for key, columns in (
                ("collector_log_us", True),
                ("collector_log_us_no_columns", False),
            ):
                with MetricsCollector(os.path.join(root, f"{key}{r}"), columns=columns) as c:
                    t0 = time.perf_counter()
                    for s in range(n // 4):
                        c.log(s, {"loss": 1.0 / (s + 1), "acc": s / n, "lr": 0.001})
                    out[key].append((time.perf_counter() - t0) / (n // 4) * 1e6)
    return {k: statistics.median(v) for k, v in out.items()}


def start_server(root: str, token: str, pythonpath: str | None = None) -> ServeProcess:
    """``hotcb serve`` over ``root`` as a real process, with ``token`` in ``HOTCB_TOKEN`` (the
    server wants a token on every address); every request below sends it as a Bearer header.
    ``pythonpath``: the ``src`` folder of another hotcb to serve with (``--baseline``)."""
    env = {"HOTCB_TOKEN": token}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    srv = ServeProcess(root, env=env)
    srv.start()
    return srv


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def cpu_s(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def first_request(
    url: str, token: str, lines: int, spike_at: int, pid: int
) -> tuple[float, float, Any]:
    """The first history request of a server: wall time (ms), the server's CPU time (s; what
    other processes on a busy machine do not inflate much) and the answer."""
    with httpx.Client(base_url=url, headers=bearer(token), timeout=300) as c:
        q = {"names": "loss", "max_points": 2000}
        cpu0 = cpu_s(pid)
        t0 = time.perf_counter()
        r = c.get("/api/runs/big/metrics", params=q).json()
        ms = (time.perf_counter() - t0) * 1e3
        cpu = cpu_s(pid) - cpu0
    series = r["series"]["loss"]
    assert r["total_points"] == lines and len(series["step"]) <= 2000
    assert series["step"][series["value"].index(max(series["value"]))] == spike_at
    return ms, cpu, r


def history_figures(
    url: str, token: str, lines: int, spike_at: int, pid: int
) -> tuple[dict[str, Any], Any]:
    """The history figures, and the first answer."""
    out: dict[str, Any] = {}
    out["history_first_ms"], out["history_first_cpu_s"], r = first_request(
        url, token, lines, spike_at, pid
    )
    out["points_returned"] = len(r["series"]["loss"]["step"])
    with httpx.Client(base_url=url, headers=bearer(token), timeout=300) as c:
        q = {"names": "loss", "max_points": 2000}
        later = []
        for _ in range(10):
            t0 = time.perf_counter()
            c.get("/api/runs/big/metrics", params=q).raise_for_status()
            later.append((time.perf_counter() - t0) * 1e3)
        out["history_later_ms_median"] = statistics.median(later)
        out["history_later_ms_max"] = max(later)
        all3 = []
        for _ in range(5):
            t0 = time.perf_counter()
            c.get("/api/runs/big/metrics", params={"max_points": 2000}).raise_for_status()
            all3.append((time.perf_counter() - t0) * 1e3)
        out["history_3_series_ms_median"] = statistics.median(all3)
        t0 = time.perf_counter()
        c.get("/api/runs/big/metrics", params={**q, "step_min": 400000, "step_max": 600000})
        out["history_window_ms"] = (time.perf_counter() - t0) * 1e3
    return out, r


def latency_figures(
    url: str, token: str, path: str, start_step: int, rate: int, seconds: float
) -> dict[str, Any]:
    """Append ``rate`` lines/s to the 1M-line run; measure append → client delivery."""
    ws_url = url.replace("http://", "ws://") + "/ws"
    latencies: list[float] = []
    received = threading.Event()
    n = int(rate * seconds)

    def client(ws: Any) -> None:
        while len(latencies) < n:
            try:
                msg = json.loads(ws.recv(timeout=10))
            except TimeoutError:
                break
            if msg.get("type") != "metrics":
                continue
            now = time.time()
            latencies.extend(now - rec["sent"] for rec in msg["records"] if "sent" in rec)
        received.set()

    with connect(ws_url, max_size=None, additional_headers=bearer(token)) as ws:
        ws.recv(timeout=10)  # hello
        ws.send(json.dumps({"subscribe": ["big"]}))
        reader = threading.Thread(target=client, args=(ws,), daemon=True)
        reader.start()
        time.sleep(0.5)  # let the subscription snapshot go out before timing starts
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        t_start = time.perf_counter()
        try:
            for i in range(n):
                target = t_start + i / rate
                delay = target - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                rec = {"step": start_step + i, "wall_time": time.time(), "sent": time.time()}
                rec["metrics"] = {"loss": 0.5, "acc": 0.9, "lr": 0.001}
                os.write(fd, (json.dumps(rec) + "\n").encode())
        finally:
            os.close(fd)
        received.wait(timeout=15)
    latencies.sort()
    return {
        "ws_lines_sent": n,
        "ws_lines_received": len(latencies),
        "ws_latency_p50_ms": latencies[len(latencies) // 2] * 1e3 if latencies else None,
        "ws_latency_p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3 if latencies else None,
        "ws_latency_max_ms": latencies[-1] * 1e3 if latencies else None,
    }


def run(
    lines: int = 1_000_000,
    rate: int = 1000,
    seconds: float = 5.0,
    pythonpath: str | None = None,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as root:
        run_dir = os.path.join(root, "big")
        os.makedirs(run_dir)
        path = os.path.join(run_dir, "hotcb.metrics.jsonl")
        spike_at = lines * 2 // 3
        t0 = time.perf_counter()
        write_metrics(path, lines, spike_at)
        figures: dict[str, Any] = {
            "lines": lines,
            "file_mb": os.path.getsize(path) / 2**20,
            "write_file_s": time.perf_counter() - t0,
        }
        cols = sidecar_path(path)
        figures["columns_mb"] = os.path.getsize(cols) / 2**20
        token = secrets.token_urlsafe(24)
        # 1. the file without the trainer's columns (written by another tool, or by hotcb
        # before it wrote them): the server parses it, then keeps its own cache of it
        os.rename(cols, cols + ".aside")
        srv = start_server(root, token, pythonpath)
        assert srv.proc is not None
        proc, url = srv.proc, srv.url
        try:
            figures["rss_idle_mb"] = rss_mb(proc.pid)
            history, answer = history_figures(url, token, lines, spike_at, proc.pid)
            figures["history_first_parsed_ms"] = history.pop("history_first_ms")
            figures["history_first_parsed_cpu_s"] = history.pop("history_first_cpu_s")
            figures.update(history)
            figures["rss_indexed_mb"] = rss_mb(proc.pid)
            cache = os.path.join(run_dir, METRICS_INDEX)
            if os.path.getsize(path) >= CACHE_MIN_BYTES and not pythonpath:
                # a server started again reads the cache the first one wrote (after answering)
                wait_for(lambda: os.path.exists(cache), timeout=120, what="the metrics cache")
                figures["cache_mb"] = os.path.getsize(cache) / 2**20
                srv.stop()
                srv.start()
                assert srv.proc is not None
                proc, url = srv.proc, srv.url
                first_ms, first_cpu, again = first_request(url, token, lines, spike_at, proc.pid)
                assert again == answer  # the cache gives the same history
                figures["restart_first_ms"] = first_ms
                figures["restart_first_cpu_s"] = first_cpu
            # 2. the run as hotcb's MetricsCollector leaves it: a fresh server, no cache of
            # its own, reads the trainer's columns
            srv.stop()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(cache)
            os.rename(cols + ".aside", cols)
            srv.start()
            assert srv.proc is not None
            proc, url = srv.proc, srv.url
            first_ms, first_cpu, again = first_request(url, token, lines, spike_at, proc.pid)
            assert again == answer  # the columns give the same history as parsing
            figures["history_first_ms"] = first_ms
            figures["history_first_cpu_s"] = first_cpu
            peak = [0.0]
            stop = threading.Event()

            def sample() -> None:
                while not stop.wait(0.1):
                    peak[0] = max(peak[0], rss_mb(proc.pid))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            figures.update(latency_figures(url, token, path, lines, rate, seconds))
            stop.set()
            sampler.join()
            figures["rss_tailing_peak_mb"] = peak[0]
        finally:
            srv.stop()
    if not pythonpath:
        figures.update(collector_cost())
    return figures


def table(figures: dict[str, Any], before_figures: dict[str, Any] | None = None) -> str:
    """The figures as a Markdown table: now, before (``before_figures``, else :data:`BEFORE`
    for 1M lines), the ratio before / now, and the target."""
    if before_figures is None:
        before_figures = BEFORE if figures.get("lines") == 1_000_000 else {}
    rows = ["| figure | now | before | before / now | target |", "|---|---:|---:|---:|---|"]
    for key, value in figures.items():
        shown = f"{value:.1f}" if isinstance(value, float) else str(value)
        before = before_figures.get(key)
        if key in (
            "lines",
            "points_returned",
            "file_mb",
            "columns_mb",
            "write_file_s",
            "ws_lines_sent",
        ):
            before = None
        ratio = f"{before / value:.1f}×" if before and isinstance(value, float) and value else ""
        if isinstance(before, float):
            before = round(before, 1)
        target = ""
        if key in TARGETS and value is not None:
            ok = "ok" if value <= TARGETS[key] else "MISSED"
            target = f"≤ {TARGETS[key]:g} ({ok})"
        rows.append(
            f"| {key} | {shown} | {'' if before is None else before} | {ratio} | {target} |"
        )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--rate", type=int, default=1000, help="metric lines per second")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument(
        "--baseline",
        metavar="SRC",
        help="the src folder of another hotcb (git worktree add /tmp/old REV): measure its "
        "server first, on the same machine and load, for the 'before' column",
    )
    args = ap.parse_args()
    before = None
    if args.baseline:
        before = run(args.lines, args.rate, args.seconds, pythonpath=args.baseline)
    figures = run(args.lines, args.rate, args.seconds)
    print(table(figures, before))


if __name__ == "__main__":
    main()

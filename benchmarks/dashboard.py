"""Dashboard server figures, against a real ``hotcb serve`` subprocess.

1. History request over a 1,000,000-line metrics file (3 metrics a line): time of the first
   request (which builds the in-memory index) and of later ones (target ≤ 300 ms).
2. WebSocket delivery latency from append to client at 1,000 metric lines/s, on that same
   1M-line run (target p99 ≤ 150 ms).
3. Server RSS (psutil) with the 1M lines indexed and while tailing (target ≤ 300 MB).

The server gets a fresh token in ``HOTCB_TOKEN`` (it wants one on every address); the HTTP
client and the WebSocket send it as ``Authorization: Bearer``.

    python benchmarks/dashboard.py [--lines 1000000] [--rate 1000] [--seconds 5]

``run()`` returns the figures.
"""

from __future__ import annotations

import argparse
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

from hotcb.server.testing import ServeProcess


def write_metrics(path: str, lines: int, spike_at: int) -> None:
    """A metrics file like MetricsCollector's, written fast (formatted, not json.dumps)."""
    t0 = 1.7e9
    with open(path, "w") as f:
        chunk = []
        for s in range(lines):
            loss = 2.0 / (1 + s * 1e-4) + 0.01 * ((s * 7919) % 13)
            if s == spike_at:
                loss = 1e3
            chunk.append(
                f'{{"step":{s},"wall_time":{t0 + s * 0.01:.3f},'
                f'"metrics":{{"loss":{loss:.6g},"acc":{s / lines:.6g},"lr":0.001}}}}\n'
            )
            if len(chunk) == 10000:
                f.write("".join(chunk))
                chunk.clear()
        f.write("".join(chunk))


def start_server(root: str, token: str) -> ServeProcess:
    """``hotcb serve`` over ``root`` as a real process, with ``token`` in ``HOTCB_TOKEN`` (the
    server wants a token on every address); every request below sends it as a Bearer header."""
    srv = ServeProcess(root, env={"HOTCB_TOKEN": token})
    srv.start()
    return srv


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def history_figures(url: str, token: str, lines: int, spike_at: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with httpx.Client(base_url=url, headers=bearer(token), timeout=300) as c:
        q = {"names": "loss", "max_points": 2000}
        t0 = time.perf_counter()
        r = c.get("/api/runs/big/metrics", params=q).json()
        out["history_first_ms"] = (time.perf_counter() - t0) * 1e3
        series = r["series"]["loss"]
        assert r["total_points"] == lines and len(series["step"]) <= 2000
        assert series["step"][series["value"].index(max(series["value"]))] == spike_at
        out["points_returned"] = len(series["step"])
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
    return out


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


def run(lines: int = 1_000_000, rate: int = 1000, seconds: float = 5.0) -> dict[str, Any]:
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
        token = secrets.token_urlsafe(24)
        srv = start_server(root, token)
        assert srv.proc is not None
        proc, url = srv.proc, srv.url
        try:
            figures["rss_idle_mb"] = rss_mb(proc.pid)
            figures.update(history_figures(url, token, lines, spike_at))
            figures["rss_indexed_mb"] = rss_mb(proc.pid)
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
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--rate", type=int, default=1000, help="metric lines per second")
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    figures = run(args.lines, args.rate, args.seconds)
    targets = {
        "history_later_ms_median": 300,
        "ws_latency_p99_ms": 150,
        "rss_tailing_peak_mb": 300,
    }
    for key, value in figures.items():
        mark = ""
        if key in targets and value is not None:
            mark = f"  (target <= {targets[key]}: {'ok' if value <= targets[key] else 'MISSED'})"
        shown = f"{value:.1f}" if isinstance(value, float) else value
        print(f"{key:28s} {shown}{mark}")


if __name__ == "__main__":
    main()

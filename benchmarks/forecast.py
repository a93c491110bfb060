"""The dashboard's forecast (``hotcb.analytics.forecast``) against two baselines, on recorded runs.

    python benchmarks/forecast.py                       # train the runs (~1-2 min on 2 cores), report
    python benchmarks/forecast.py --runs DIR            # score run directories already recorded
    python benchmarks/forecast.py --keep-runs /tmp/fr   # keep the recorded runs for a re-score

Recorded runs: real training on scikit-learn's bundled 8×8 digits (the split of
``benchmarks/_tasks.py``), each a run directory written by :class:`hotcb.metrics.MetricsCollector`
exactly as a user's loop writes it: ``loss`` (the minibatch loss) every step and ``val_loss``
every 10 steps. The runs: the MLP of ``_tasks.Digits`` with AdamW at lr 1e-3, 1e-2 (its good lr)
and 1e-1 (10× too high), a small CNN at lr 3e-3, each with seeds 0 and 1, and the MLP on 30 %
noisy labels at lr 1e-2 (its validation loss falls, then climbs): 9 runs of 1500 steps.

Scoring (``hotcb.analytics.forecast.backtest``): from 40 origins spread over each run's history
(the first origin has 16 points of history), forecast the metric ``h`` = 50 and 200 steps ahead
and compare with the value logged there. Baselines: the *last value* at the origin, and a
*linear trend* (least squares in ``step``, on the same window as the model). MAE pools every
origin of every run; "rel." is the model's MAE over the baseline's, per run, then the median over
runs; "wins" counts the runs where the model beats both baselines. The verdict per metric and
horizon is what the dashboard's rule follows: a forecast is shown only where it beats both
baselines; the page decides it per run and request with the same backtest on that run's own
history (``/api/runs/{run}/forecast`` returns it).

Coverage of the 10–90 % band (nominal 80 %), three ways: the fit's band (the residuals' quantiles
and the line's standard error; what the page drew before the calibration), the band calibrated on
the earlier origins' errors (``Backtest.coverage``), and the band exactly as the page draws it at
each origin (``/forecast``'s 12-origin backtest on the history up to there, then the forecast
calibrated on it: :func:`shown_coverage`).

Writes ``docs/benchmarks/forecast.md`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _tasks import DigitsRun

from hotcb import jsonl
from hotcb.analytics.forecast import backtest, forecast, origin_indices, sklearn_available
from hotcb.metrics import MetricsCollector

STEPS = 1500
EVAL_EVERY = 10
HORIZONS = (50, 200)
METRICS = ("loss", "val_loss")
ORIGINS = 40


class CNNRun(DigitsRun):
    """conv 3×3 1→16, ReLU, conv 3×3 16→32, ReLU, 2×2 max-pool, linear 512→10."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        torch.manual_seed(seed)
        self.model = nn.Sequential(
            nn.Unflatten(1, (1, 8, 8)),
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 4 * 4, 10),
        )  # fmt: skip


class NoisyRun(DigitsRun):
    """The MLP trained with 30 % of its training labels redrawn uniformly (validated clean)."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        g = torch.Generator().manual_seed(12345)
        flip = torch.rand(len(self.y_tr), generator=g) < 0.3
        y = self.y_tr.clone()
        y[flip] = torch.randint(0, 10, (int(flip.sum()),), generator=g)
        self.y_tr = y


@dataclass(frozen=True)
class Spec:
    name: str
    make: type[DigitsRun]
    lr: float
    seed: int


SPECS = [
    *(Spec(f"mlp_lr{lr:g}_s{s}", DigitsRun, lr, s) for lr in (1e-3, 1e-2, 1e-1) for s in (0, 1)),
    *(Spec(f"cnn_lr3e-3_s{s}", CNNRun, 3e-3, s) for s in (0, 1)),
    Spec("mlp_noisy_lr0.01_s0", NoisyRun, 1e-2, 0),
]


def record(spec: Spec, run_dir: str) -> None:
    """Train ``spec`` for :data:`STEPS` steps, logging as a user's loop does."""
    torch.manual_seed(spec.seed)
    run = spec.make(spec.seed)
    opt = torch.optim.AdamW(run.model.parameters(), lr=spec.lr)
    with MetricsCollector(run_dir) as m:
        for step in range(STEPS):
            metrics = {"loss": run.train_step(opt)}
            if step % EVAL_EVERY == EVAL_EVERY - 1:
                metrics["val_loss"] = run.evaluate()[0]
            m.log(step, metrics)


def read(run_dir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    cols: dict[str, tuple[list[float], list[float]]] = {}
    for rec in jsonl.iter_records(os.path.join(run_dir, "hotcb.metrics.jsonl")):
        for k, v in (rec.get("metrics") or {}).items():
            if isinstance(v, (int, float)):
                xs, ys = cols.setdefault(k, ([], []))
                xs.append(rec["step"])
                ys.append(float(v))
    return {k: (np.array(xs, float), np.array(ys, float)) for k, (xs, ys) in cols.items()}


def shown_coverage(x: np.ndarray, y: np.ndarray, h: int) -> float:
    """The share of the logged values inside the band the dashboard would have drawn at each of
    the :data:`ORIGINS` origins: ``/forecast``'s own procedure on the history up to there (its
    12-origin backtest, then the forecast calibrated on that backtest's errors)."""
    inside = []
    for i in origin_indices(x, h, ORIGINS):
        hx, hy = x[: i + 1], y[: i + 1]
        fc = forecast(hx, hy, h, backend="numpy", out_points=2, calibration=backtest(hx, hy, h))
        target = float(np.interp(hx[-1] + h, x, y))  # logged there, or interpolated
        if fc is not None:
            inside.append(fc.lo[-1] <= target <= fc.hi[-1])
    return float(np.mean(inside))


def score(runs: dict[str, str], per_run: dict[str, dict[str, str]]) -> list[dict[str, object]]:
    """The pooled rows of the table; ``per_run[run][metric@h]`` gets each run's verdict."""
    rows = []
    for metric in METRICS:
        for h in HORIZONS:
            errs: dict[str, list[float]] = {"model": [], "last_value": [], "linear": []}
            rel_last, rel_lin, cover, cover_fit, cover_shown = [], [], [], [], []
            wins = n_runs = 0
            for name, run_dir in runs.items():
                series = read(run_dir).get(metric)
                if series is None:
                    continue
                bt = backtest(*series, h, origins=ORIGINS)
                if not bt.origins:
                    continue
                n_runs += 1
                for k in errs:
                    errs[k] += bt.errors[k]
                assert bt.mae_model is not None and bt.mae_last_value and bt.mae_linear
                rel_last.append(bt.mae_model / bt.mae_last_value)
                rel_lin.append(bt.mae_model / bt.mae_linear)
                cover.append(bt.coverage or 0.0)
                cover_fit.append(bt.coverage_fit or 0.0)
                cover_shown.append(shown_coverage(*series, h))
                wins += int(bt.better)
                mark = "yes" if bt.better else "no"
                per_run.setdefault(name, {})[f"{metric}@{h}"] = (
                    f"{mark} ({bt.mae_model / min(bt.mae_last_value, bt.mae_linear):.2f})"
                )
            mae = {k: float(np.mean(v)) for k, v in errs.items()}
            rows.append(
                {
                    "metric": metric,
                    "h": h,
                    "n": len(errs["model"]),
                    "runs": n_runs,
                    **{f"mae_{k}": v for k, v in mae.items()},
                    "rel_last": float(np.median(rel_last)),
                    "rel_linear": float(np.median(rel_lin)),
                    "wins": wins,
                    "coverage": float(np.mean(cover)),
                    "coverage_fit": float(np.mean(cover_fit)),
                    "coverage_shown": float(np.mean(cover_shown)),
                    "better": mae["model"] < min(mae["last_value"], mae["linear"]),
                }
            )
    return rows


def table(rows: list[dict[str, object]]) -> str:
    head = (
        "| metric | horizon | forecasts (runs) | MAE model | MAE last value | MAE linear trend "
        "| rel. to last value | rel. to linear | runs won | coverage: fit's band (before) "
        "| calibrated band | calibrated, as the page draws it | verdict |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n"
    )
    lines = []
    for r in rows:
        verdict = "**forecast shown** (beats both)" if r["better"] else "not better: note shown"
        lines.append(
            f"| `{r['metric']}` | {r['h']} | {r['n']} ({r['runs']}) | {r['mae_model']:.4f} "
            f"| {r['mae_last_value']:.4f} | {r['mae_linear']:.4f} | {r['rel_last']:.2f} "
            f"| {r['rel_linear']:.2f} | {r['wins']}/{r['runs']} | {r['coverage_fit']:.0%} "
            f"| {r['coverage']:.0%} | {r['coverage_shown']:.0%} | {verdict} |"
        )
    return head + "\n".join(lines) + "\n"


def run_table(per_run: dict[str, dict[str, str]]) -> str:
    cols = [f"{m}@{h}" for m in METRICS for h in HORIZONS]
    head = "| run | " + " | ".join(f"`{c.split('@')[0]}` h={c.split('@')[1]}" for c in cols)
    lines = [head + " |", "|---|" + "---:|" * len(cols)]
    for name, v in per_run.items():
        lines.append(f"| {name} | " + " | ".join(v.get(c, "–") for c in cols) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", help="score these recorded run directories (a folder of runs)")
    ap.add_argument("--keep-runs", help="record the runs here (default: a temporary folder)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "docs",
                                                  "benchmarks"))  # fmt: skip
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if args.runs:
            root = args.runs
            names = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        else:
            root = args.keep_runs or tmp
            names = []
            for spec in SPECS:
                path = os.path.join(root, spec.name)
                if not os.path.exists(os.path.join(path, "hotcb.metrics.jsonl")):
                    record(spec, path)
                names.append(spec.name)
                print(f"recorded {spec.name}", flush=True)
        t_rec = time.perf_counter() - t0
        per_run: dict[str, dict[str, str]] = {}
        rows = score({n: os.path.join(root, n) for n in names}, per_run)
    t_all = time.perf_counter() - t0
    md = table(rows)
    md_runs = run_table(per_run)
    print(md)
    print(md_runs)
    timing = (
        f"{len(names)} recorded runs scored in {t_all:.0f} s"
        if args.runs
        else f"{len(names)} runs recorded and scored in {t_all:.0f} s, {t_rec:.0f} s of it training,"
    )
    backend = (
        "scikit-learn's HuberRegressor once it is imported (numpy's until then)"
        if sklearn_available()
        else "the numpy fallback (scikit-learn is not installed)"
    )
    intro = f"""`python benchmarks/forecast.py`: {timing} on {platform.machine()} with
{os.cpu_count()} cores, shared with other work, so the timings are rough (torch
{torch.__version__}, numpy {np.__version__}).

The forecast the dashboard draws over the key metric's chart (`hotcb.analytics.forecast`,
[docs/analytics.md](../analytics.md)) against a last-value baseline and a linear-trend baseline,
from {ORIGINS} origins per run, {" and ".join(map(str, HORIZONS))} steps ahead. The runs: real
training on scikit-learn's digits ({STEPS} steps; an MLP at lr 1e-3, 1e-2 and 1e-1, a small CNN
at lr 3e-3, each with seeds 0 and 1, and the MLP on 30 % noisy labels), `loss` logged every step
and `val_loss` every {EVAL_EVERY}. The backtests fit with the numpy Huber fit; the server fits
the forecast it shows with {backend}: the same estimator."""
    intro = "\n\n".join(textwrap.fill(" ".join(p.split()), 100) for p in intro.split("\n\n"))
    text = f"""# Forecast error on recorded runs

{intro}

{md}
- *MAE* pools every forecast of every run; *rel.* is the model's MAE over the baseline's per
  run, median over runs (below 1: the model is better); *runs won*: runs where the model beats
  both baselines on that run.
- *Coverage*: the share of the logged values inside the 10–90 % band (nominal 80 %), mean over
  runs. *Fit's band (before)*: the band from the fit's residuals and the line's standard error,
  which the dashboard drew until the calibration; too narrow at 200 steps (a trend that bends
  is outside the residuals it was fitted on). *Calibrated band*: at each origin, the band
  calibrated on the signed errors of the earlier origins' forecasts whose targets were logged by
  then (split conformal; the fit's band while there are fewer than 6): no origin sees its own
  future. *As the page draws it*: at each origin, `/forecast`'s own procedure on the history up
  to there (its 12-origin backtest, then the band calibrated on those 12 errors). The median,
  hence every MAE, is the same for all three.
- The verdict is the pooled comparison. The dashboard applies the same rule per run, at request
  time, with the same backtest on the run's own history: it draws the band only where the model
  wins there, and otherwise says "forecast not better than the last value or a linear trend
  here".

Per run: does the model beat both baselines (its MAE over the better baseline's)?

{md_runs}"""
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "forecast.md")
    with open(path, "w") as f:
        f.write(text)
    print(f"wrote {os.path.normpath(path)}")


if __name__ == "__main__":
    main()

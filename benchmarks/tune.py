"""The online tuner against fixed lrs and its peers, at equal total training steps.

    python benchmarks/tune.py                       # 8 seeds, ~3 min on 2 cores
    python benchmarks/tune.py --quick               # 1 seed, short budgets: a smoke test (<1 min)
    python benchmarks/tune.py --only fixed,tune     # some conditions only
    python benchmarks/tune.py --keep-runs /tmp/r    # keep the tuner's run directories
    python benchmarks/tune.py --horizon             # one segment's view of an lr move (~1 min)

Writes ``<out>/tune.md`` (a table per task, verdicts, the tuner's ledger counts) and
``<out>/img/tune_<task>.png``; ``--out`` defaults to ``docs/benchmarks`` (``--quick``: a temporary
directory, so a smoke test never overwrites the report).

Tasks (``benchmarks/_tasks.py``): (a) an MLP on scikit-learn's digits with AdamW, 1200 steps,
from the good lr (1e-2), 10x too high and 30x too low; (b) a moving-optimum toy whose best lr
rises then falls as the run progresses, 2000 steps, from 1e-3.

Conditions, each with the task's total steps (``T``) in all (``fixed``, ``tune``, ``sf`` and
``prodigy`` are ``hotcb bench``'s, run by :meth:`hotcb.bench.runner.Runner.train_run`; Optuna's
trials, PBT's members and the oracle train with its loop, :func:`hotcb.bench.runner.train`):

- ``fixed``: the start lr throughout (on the toy also a sweep of 21 fixed lrs; the best is
  reported);
- ``tune``: hotcb's online tuner in one run. A real :class:`~hotcb.HotKernel` in a bare loop,
  ``kernel.apply({"step", "optimizer", "model", "metrics"})`` after every optimizer step, the
  training loss every step and ``val_loss`` every 10 steps; enabled before the loop with
  ``HotClient(run).tune_enable(mode="active", objective="val_loss", segment_steps=50,
  seed=seed, total_steps=T, sync=True)``, everything else at the tuner's defaults (``sync``: the
  tuner waits for Optuna at each boundary, so a trial starts on the boundary whatever the
  machine's speed). The kernel polls every step
  (``poll_interval_sec=0``) so that a run does not depend on the machine's speed;
- ``optuna``: classic HPO, 8 separate runs of ``T/8`` steps, lr log-uniform over the task's
  range, TPE (4 random startup trials, seeded); the best run's final val loss;
- ``pbt``: a population of 4 (plain torch here), each member ``T/4`` steps, all starting at the
  start lr; every 50 member steps the worst member (by its last val loss) copies the best one's
  weights, optimizer state and lr, then explores: lr × 0.8 or × 1.2, or (probability 0.25) a
  fresh log-uniform draw from the range. Ray Tune's defaults; the best member's final val loss;
- ``sf``: ``schedulefree.AdamWScheduleFree`` at its published defaults (lr 0.0025, no warm-up),
  ``train()``/``eval()`` around every evaluation; ``prodigy``: ``prodigyopt.Prodigy``, lr 1.0,
  its defaults, constant lr. Neither applies to the toy (it has no gradients).

Each condition runs with seeds 0 … 7 (model init and batch order, or the toy's noise; a seed is
the same for every condition); the tables show mean ± std over seeds of the final validation
loss, measured after the last step, and the verdicts count the seeds each side won.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import inspect
import math
import os
import random
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from _tasks import Digits, Run, Task, Toy, toy_target  # benchmarks/ is sys.path[0]

from hotcb import HotClient
from hotcb.bench.runner import Runner, Settings, current_lr, evaluate, train

SEGMENT_STEPS = 50  # the tuner's segment: 5 validation events
PBT_INTERVAL = 50  # member steps between PBT's exploit/explore rounds
ORACLE_EARLY = 3  # the early oracle's steps at the start lr: about the fewest that show a start
OPTUNA_TRIALS = 8
CONDITIONS = ("fixed", "tune", "optuna", "pbt", "sf", "prodigy", "oracle")
LABELS = {
    "fixed": "fixed lr",
    "best fixed": "best fixed lr",
    "tune": "hotcb tune (1 run)",
    "optuna": f"Optuna HPO ({OPTUNA_TRIALS} runs)",
    "pbt": "PBT (4 members)",
    "sf": "Schedule-Free AdamW",
    "prodigy": "Prodigy",
    "oracle": "hindsight oracle",
    "oracle_early": f"hindsight oracle, step {ORACLE_EARLY + 1}",
}
OnStep = Callable[[int, dict[str, float]], None]


# ------------------------------------------------------------------------------ one training run
class Trainer:
    """A run trained in chunks (PBT, Optuna's trials, the oracle) by :func:`hotcb.bench.runner.train`,
    an evaluation every ``eval_every`` steps, with the val-loss and lr curves: ``lrs`` holds the
    lr each evaluated step used. ``schedule_free``: ``eval()`` around every evaluation."""

    def __init__(
        self, run: Run, opt: torch.optim.Optimizer, eval_every: int, *, schedule_free: bool = False
    ) -> None:
        self.run, self.opt, self.eval_every = run, opt, eval_every
        self.schedule_free = schedule_free
        self.step = 0
        self.curve: list[tuple[int, float]] = []  # (step, val loss)
        self.lrs: list[tuple[int, float]] = [(0, current_lr(opt))]
        self.last_val = math.inf

    def advance(self, steps: int, on_step: OnStep | None = None) -> None:
        curve = train(self.run, self.opt, steps, self.eval_every, on_step, self.schedule_free,
                      start=self.step, eval_last=False)  # fmt: skip
        self.step += steps
        self.curve += [(s, v) for s, v, _ in curve.evals()]
        self.lrs += curve.eval_lrs(current_lr(self.opt))[1:]
        if self.curve:
            self.last_val = self.curve[-1][1]

    def evaluate(self) -> tuple[float, float | None]:
        return evaluate(self.run, self.opt, self.schedule_free)


@dataclass
class Result:
    """One condition, one seed."""

    condition: str
    start: str  # the start lr's name, or "" for a condition without one
    seed: int
    val_loss: float
    val_acc: float | None
    final_lr: float
    seconds: float
    curve: list[tuple[int, float]]  # (total steps spent, val loss)
    lrs: list[tuple[int, float]]  # (step, lr) of the run (PBT: the best member's slot)
    extra: dict[str, Any] = field(default_factory=dict)


def finish(condition: str, start: str, seed: int, tr: Trainer, t0: float, **extra: Any) -> Result:
    loss, acc = tr.evaluate()
    return Result(
        condition, start, seed, loss, acc, current_lr(tr.opt), time.perf_counter() - t0,
        tr.curve, tr.lrs, dict(extra),
    )  # fmt: skip


def adamw_or_sgd(task: Task, run: Run, lr: float) -> torch.optim.Optimizer:
    """The task's optimizer whose lr the tuner, Optuna and PBT set: AdamW on digits; on the toy
    plain SGD on a dummy parameter (the toy reads only its lr)."""
    return task.bench_task(lr).base_optimizer(run.model.parameters())


# ------------------------------------------------------------------------------ the conditions
#: What the tuner's roll-back restores (``--tune-restore``).
TUNE_RESTORE = "values"
#: How the tuner begins (``--tune-start``): two baseline segments, or a bracket of the lr.
TUNE_START = "baseline"


def bench_condition(
    task: Task, condition: str, start: str, lr: float, seed: int, run_dir: str | None = None
) -> Result:
    """One condition of ``hotcb bench`` (fixed, tune, schedulefree, prodigy) from ``lr``, then
    one more evaluation after the last step, as every condition here ends."""
    t0 = time.perf_counter()
    settings = Settings([], [], segment_steps=SEGMENT_STEPS, tune_restore=TUNE_RESTORE,
                        tune_start=TUNE_START, tune_sync=True)  # fmt: skip
    done = Runner(settings).train_run(task.bench_task(lr), condition, seed, "", run_dir=run_dir)
    extra: dict[str, Any] = {}
    if run_dir is not None:
        extra = {"status": HotClient(run_dir).tune_status(), "run_dir": run_dir}
    loss, acc = done.evaluate()
    name = {"schedulefree": "sf"}.get(condition, condition)
    curve = done.result.curve
    # the lr each evaluated step used; Prodigy's d changes in the step: the lr after it
    lrs = curve.eval_lrs(done.final_lr, after=condition == "prodigy")
    return Result(name, start, seed, loss, acc, done.final_lr, time.perf_counter() - t0,
                  [(s, v) for s, v, _ in curve.evals()], lrs, extra)  # fmt: skip


def run_fixed(task: Task, start: str, lr: float, seed: int) -> Result:
    return bench_condition(task, "fixed", start, lr, seed)


def run_tuned(task: Task, start: str, lr: float, seed: int, runs_dir: str) -> Result:
    """hotcb's tuner (``hotcb bench``'s ``tune`` with ``sync=True``: trials start on the
    boundaries, so the figures do not depend on the machine)."""
    run_dir = os.path.join(runs_dir, f"{task.key}-{start.replace(' ', '')}-s{seed}")
    return bench_condition(task, "tune", start, lr, seed, run_dir)


def run_oracle(task: Task, start: str, lr: float, seed: int, switch: int = SEGMENT_STEPS) -> Result:
    """Not a controller: the start lr for one segment (or ``switch`` steps), then the good lr,
    known in hindsight. The best any controller that needs one segment (``switch`` steps) to
    see the start can do by lr alone."""
    t0 = time.perf_counter()
    run = task.make(seed)
    opt = adamw_or_sgd(task, run, lr)
    tr = Trainer(run, opt, task.eval_every)
    tr.advance(switch)
    for group in opt.param_groups:
        group["lr"] = task.starts()["good"]
    tr.advance(task.total_steps - switch)
    return finish("oracle" if switch == SEGMENT_STEPS else "oracle_early", start, seed, tr, t0)


def run_optimizer(task: Task, name: str, seed: int) -> Result:
    """Schedule-Free AdamW or Prodigy at their published defaults (``hotcb bench``'s)."""
    condition = "schedulefree" if name == "sf" else name
    return bench_condition(task, condition, "", 1.0, seed)  # both ignore the task's lr


def run_optuna(task: Task, seed: int) -> Result:
    """Classic HPO: ``OPTUNA_TRIALS`` separate runs of ``T / OPTUNA_TRIALS`` steps each."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t0 = time.perf_counter()
    steps = task.total_steps // OPTUNA_TRIALS
    done: list[tuple[float, Trainer]] = []
    best_so_far: list[tuple[int, float]] = []

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", *task.lr_range, log=True)
        run = task.make(seed + 1000 * trial.number)
        tr = Trainer(run, adamw_or_sgd(task, run, lr), task.eval_every)
        tr.advance(steps)
        loss = tr.evaluate()[0]
        done.append((loss, tr))
        best_so_far.append((steps * len(done), min(v for v, _ in done)))
        return loss

    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=4)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    study.optimize(objective, n_trials=OPTUNA_TRIALS)
    best = min(done, key=lambda d: d[0])[1]
    res = finish("optuna", "", seed, best, t0, best_lr=study.best_params["lr"])
    res.curve = best_so_far
    return res


def run_pbt(task: Task, start: str, lr: float, seed: int) -> Result:
    """Four members of ``T/4`` steps in lockstep; exploit/explore every ``PBT_INTERVAL``."""
    t0 = time.perf_counter()
    rnd = random.Random(seed)
    members = []
    for i in range(4):
        run = task.make(seed + 1000 * i)
        members.append(Trainer(run, adamw_or_sgd(task, run, lr), task.eval_every))
    steps = task.total_steps // 4
    lo, hi = (math.log(v) for v in task.lr_range)
    while members[0].step < steps:
        chunk = min(PBT_INTERVAL, steps - members[0].step)
        for m in members:
            m.advance(chunk)
        if members[0].step < steps:
            ranked = sorted(members, key=lambda m: m.last_val)
            src, dst = ranked[0], ranked[-1]
            dst.run.model.load_state_dict(copy.deepcopy(src.run.model.state_dict()))
            dst.opt.load_state_dict(copy.deepcopy(src.opt.state_dict()))
            new_lr = (
                math.exp(rnd.uniform(lo, hi))
                if rnd.random() < 0.25
                else current_lr(src.opt) * rnd.choice((0.8, 1.2))
            )
            for group in dst.opt.param_groups:
                group["lr"] = new_lr
    finals = [(m.evaluate()[0], m) for m in members]
    best = min(finals, key=lambda f: f[0])[1]
    res = finish("pbt", start, seed, best, t0)
    # the population's best val loss at each evaluation, against the steps all members spent
    res.curve = [(4 * p[0], min(m.curve[i][1] for m in members)) for i, p in enumerate(best.curve)]
    return res


# ------------------------------------------------------------------------------ running it all
@dataclass
class Plan:
    tasks: list[Any]
    seeds: list[int]
    only: set[str]
    runs_dir: str
    revision: str  # read before the runs: the code they import is the code of that moment


def fixed_lrs(task: Any) -> dict[str, float]:
    """The fixed lrs to run, by name: the start lrs, and on the toy its sweep too."""
    lrs = dict(task.starts())
    if isinstance(task, Toy):
        on_start = [lr for lr in task.sweep if math.isclose(lr, task.start_lr)]
        lrs.update({f"{lr:.2g}": lr for lr in task.sweep if lr not in on_start})
    return lrs


def jobs(plan: Plan, task: Any) -> list[tuple[str, Callable[[], Result]]]:
    """(description, thunk) for every run of ``task``."""
    out: list[tuple[str, Callable[[], Result]]] = []
    want = plan.only
    for seed in plan.seeds:
        for start, lr in task.starts().items():
            if "tune" in want:
                thunk = _bind(run_tuned, task, start, lr, seed, plan.runs_dir)
                out.append((f"tune from {start}", thunk))
            if "pbt" in want:
                out.append((f"pbt from {start}", _bind(run_pbt, task, start, lr, seed)))
            if "oracle" in want and isinstance(task, Digits) and start != "good":
                out.append((f"oracle from {start}", _bind(run_oracle, task, start, lr, seed)))
                early = _bind(run_oracle, task, start, lr, seed, ORACLE_EARLY)
                out.append((f"early oracle from {start}", early))
        if "fixed" in want:
            for name, lr in fixed_lrs(task).items():
                out.append((f"fixed {name} ({lr:.2g})", _bind(run_fixed, task, name, lr, seed)))
        if "optuna" in want:
            out.append(("optuna", _bind(run_optuna, task, seed)))
        for name in ("sf", "prodigy"):
            if name in want and task.has_gradients:
                out.append((name, _bind(run_optimizer, task, name, seed)))
    return out


def _bind(fn: Callable[..., Result], *args: Any) -> Callable[[], Result]:
    return lambda: fn(*args)


def run_all(plan: Plan) -> dict[str, list[Result]]:
    results: dict[str, list[Result]] = {}
    for task in plan.tasks:
        todo = jobs(plan, task)
        results[task.key] = []
        for i, (what, thunk) in enumerate(todo, 1):
            res = thunk()
            results[task.key].append(res)
            acc = "" if res.val_acc is None else f"  acc {res.val_acc:.3f}"
            print(
                f"[{task.key} {i:>2}/{len(todo)}] seed {res.seed} {what:<24} val loss "
                f"{res.val_loss:.4f}{acc}  lr_end {res.final_lr:.2e}  ({res.seconds:.1f} s)",
                flush=True,
            )
    return results


# ------------------------------------------------------------------------------ the report
def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def fmt(xs: Sequence[float], digits: int = 3) -> str:
    m, s = mean_std(xs)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def geomean(xs: Sequence[float]) -> float:
    return math.exp(statistics.fmean(math.log(x) for x in xs))


def group(results: list[Result]) -> dict[tuple[str, str], list[Result]]:
    out: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        out.setdefault((r.condition, r.start), []).append(r)
    return out


@dataclass
class Row:
    label: str
    start: str
    results: list[Result]

    @property
    def mean(self) -> float:
        return statistics.fmean(r.val_loss for r in self.results)


def rows_for(task: Any, results: list[Result]) -> tuple[list[Row], Row | None]:
    """The table's rows and the reference row (digits: fixed at the good lr; toy: the best
    fixed lr of the sweep)."""
    g = group(results)
    starts = task.starts()
    rows: list[Row] = []
    ref: Row | None = None
    if isinstance(task, Toy):
        sweep = [Row("fixed lr", k[1], v) for k, v in g.items() if k[0] == "fixed"]
        rows += [r for r in sweep if r.start in starts]
        if sweep:
            ref = min(sweep, key=lambda r: r.mean)
            rows.append(Row(LABELS["best fixed"], f"{ref.results[0].final_lr:.2g}", ref.results))
    for cond in ("fixed", "tune", "pbt", "oracle", "oracle_early"):
        if cond == "fixed" and isinstance(task, Toy):
            continue
        rows += [Row(LABELS[cond], s, g[(cond, s)]) for s in starts if (cond, s) in g]
    rows += [Row(LABELS[c], "—", g[(c, "")]) for c in ("optuna", "sf", "prodigy") if (c, "") in g]
    if isinstance(task, Digits) and ("fixed", "good") in g:
        ref = Row(LABELS["fixed"], "good", g[("fixed", "good")])
    return rows, ref


def start_label(task: Any, start: str) -> str:
    lr = task.starts().get(start)
    return start if lr is None else f"{start} ({lr:.2g})"


def table(task: Any, rows: list[Row], ref: Row | None) -> list[str]:
    acc = task.has_gradients
    head = "| condition | start lr | final val loss | " + ("val accuracy | " if acc else "")
    head += f"vs {'good fixed' if isinstance(task, Digits) else 'best fixed'} | lr at end (geo. mean) | s / run |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        rs = row.results
        cells = [row.label, start_label(task, row.start), fmt([r.val_loss for r in rs])]
        if acc:
            cells.append(fmt([r.val_acc or 0.0 for r in rs]))
        cells.append(f"{row.mean / ref.mean:.2f}×" if ref else "—")
        cells.append(f"{geomean([r.final_lr for r in rs]):.2e}")
        cells.append(f"{statistics.fmean(r.seconds for r in rs):.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def oracle_note(rows: list[Row], ref: Row, start: str) -> list[str]:
    """What the hindsight oracle says about a start: can changing the lr alone still reach
    the target after one segment at the start lr?"""
    oracle = next((r for r in rows if r.label == LABELS["oracle"] and r.start == start), None)
    if oracle is None:
        return []
    ok = oracle.mean <= 1.10 * ref.mean
    out = [
        f"  The hindsight oracle (the good lr from step {SEGMENT_STEPS + 1}) ends at "
        f"{oracle.mean:.3f} ({oracle.mean / ref.mean:.2f}×): "
        + ("within 10%, so the target is reachable by changing the lr alone." if ok else
           "**not** within 10%, so the target is out of reach of any controller that changes "
           "only the lr after seeing the start: the first segment's damage stays.")
    ]  # fmt: skip
    early = next((r for r in rows if r.label == LABELS["oracle_early"] and r.start == start), None)
    if early is not None and not ok:
        near = early.mean <= 1.10 * ref.mean
        out.append(
            f"  Even the good lr from step {ORACLE_EARLY + 1} ends at {early.mean:.3f} "
            f"({early.mean / ref.mean:.2f}×): "
            + ("within 10%: only a controller that acts within a few steps could meet it."
               if near else f"**not** within 10%: {ORACLE_EARLY} steps at this lr already do "
               "damage that no later lr repairs.")
        )  # fmt: skip
    return out


def verdicts(task: Any, rows: list[Row], ref: Row | None) -> list[str]:
    """The targets, answered from the numbers; then the tuner against its start lr left alone
    and against each peer."""
    tuned = {r.start: r for r in rows if r.label == LABELS["tune"]}
    if ref is None or not tuned:
        return ["(not all conditions ran: no verdicts)"]
    return [*target_verdicts(task, rows, ref, tuned), *fixed_verdicts(task, rows, tuned),
            *peer_verdicts(rows, tuned)]  # fmt: skip


def target_verdicts(task: Any, rows: list[Row], ref: Row, tuned: dict[str, Row]) -> list[str]:
    """Digits: from each bad start, within 10 % of the good fixed lr; the toy: below every
    fixed lr."""
    out = []
    if isinstance(task, Digits):
        for start in ("10x high", "30x low"):
            if start in tuned:
                ratio = tuned[start].mean / ref.mean
                ok = "**met**" if ratio <= 1.10 else "**missed**"
                out.append(
                    f"- Target: from {start_label(task, start)}, end within 10% of the good fixed "
                    f"lr's val loss ({ref.mean:.3f}): {ok}; tuned {tuned[start].mean:.3f} "
                    f"({ratio:.2f}×)."
                )
                out += oracle_note(rows, ref, start)
    elif "start" in tuned:
        t = tuned["start"]
        ok = "**met**" if t.mean < ref.mean else "**missed**"
        out.append(
            f"- Target: beat every fixed lr: {ok}; tuned {t.mean:.3f} vs the best fixed lr "
            f"({ref.start}) {ref.mean:.3f} ({t.mean / ref.mean:.2f}×)."
        )
    return out


def fixed_verdicts(task: Any, rows: list[Row], tuned: dict[str, Row]) -> list[str]:
    """Digits: the tuner against leaving the lr it started from alone."""
    if not isinstance(task, Digits):
        return []
    out = []
    for start, t in tuned.items():
        fixed = next((r for r in rows if r.label == "fixed lr" and r.start == start), None)
        if fixed is None:
            continue
        pair = f"{fixed.mean:.3f} vs tuned {t.mean:.3f}{seed_wins(t, fixed)}"
        if fixed.mean < t.mean:
            out.append(f"- From {start}, the fixed lr (left alone) **beats the tuner**: {pair}.")
        else:
            out.append(f"- From {start}, the tuner beats the fixed lr it started from: {pair}.")
    return out


def peer_verdicts(rows: list[Row], tuned: dict[str, Row]) -> list[str]:
    """Each peer (PBT, Optuna HPO, Schedule-Free, Prodigy) against the tuner, start by start."""
    out = []
    for row in rows:
        if row.label in (LABELS["tune"], "fixed lr", LABELS["best fixed"], LABELS["oracle"],
                         LABELS["oracle_early"]):  # fmt: skip
            continue
        won, lost = [], []
        for start, t in tuned.items():
            if row.start in (start, "—"):
                pair = f"from {start}: {row.mean:.3f} vs tuned {t.mean:.3f}{seed_wins(t, row)}"
                (won if row.mean < t.mean else lost).append(pair)
        if won:
            out.append(f"- {row.label} **beats the tuner** {'; '.join(won)}.")
        if lost:
            out.append(f"- The tuner beats {row.label} {'; '.join(lost)}.")
    return out


def seed_wins(tuned: Row, other: Row) -> str:
    """How many seeds the tuner won, compared seed by seed (each seed is one model init and
    batch order for every condition): a mean can hide that the lead changes hands."""
    theirs = {r.seed: r.val_loss for r in other.results}
    paired = [(r.val_loss, theirs[r.seed]) for r in tuned.results if r.seed in theirs]
    if len(paired) < 2:
        return ""
    wins = sum(a < b for a, b in paired)
    return f" (the tuner lower in {wins} of {len(paired)} seeds)"


def tuner_facts(results: list[Result]) -> list[str]:
    """What the tuner's state files say across runs, in numbers."""
    runs = [r for r in results if r.condition == "tune"]
    states = [r.extra["status"] for r in runs]
    counts = {
        k: sum(st.get("counts", {}).get(k, 0) for st in states) for k in ("kept", "rolled_back")
    }
    judged = counts["kept"] + counts["rolled_back"]
    fallback = sum(st.get("objective_used") != st.get("objective") for st in states)
    still_open = sum(st.get("trial") is not None for st in states)
    out = [
        f"- Trials judged: {judged}, kept {counts['kept']} "
        f"({counts['kept'] / judged if judged else 0:.0%}), rolled back {counts['rolled_back']}.",
        f"- A trial still open when the run ended (its change in force for up to "
        f"{SEGMENT_STEPS} final steps, never judged): {still_open} of {len(runs)} runs.",
    ]
    if fallback:
        out.append(
            f"- The tuner scored `{states[0].get('objective_used')}`, not `val_loss`, in "
            f"{fallback} of {len(runs)} runs (see its warning below)."
        )
    return out


_SHORT = {"opt.lr": "lr", "opt.weight_decay": "wd"}


def ledger_table(results: list[Result]) -> list[str]:
    """What the tuner did in each run, from its state file (``RUN/hotcb.tune.json``)."""
    lines = [
        "| start | seed | objective used | segments | kept | rolled back | failed | "
        "lr start → end | lr changes kept |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in (r for r in results if r.condition == "tune"):
        st = r.extra["status"]
        c = st.get("counts", {})
        kept = [
            " ".join(
                f"{_SHORT.get(k, k)}×{v[1] / v[0]:.2g}" for k, v in t["changes"].items() if v[0]
            )
            for t in st.get("trials", [])
            if t.get("decision") == "kept"
        ]
        lines.append(
            f"| {r.start} | {r.seed} | {st.get('objective_used', st.get('mode'))} | "
            f"{c.get('segments', 0)} | {c.get('kept', 0)} | {c.get('rolled_back', 0)} | "
            f"{c.get('failed', 0)} | {r.lrs[0][1]:.2e} → {r.final_lr:.2e} | "
            f"{', '.join(kept) or '—'} |"
        )
    warnings = sorted(
        {w for r in results if r.condition == "tune" for w in r.extra["status"].get("warnings", [])}
    )
    lines += [f"\nTuner warnings: {'; '.join(warnings)}"] if warnings else []
    return lines


SETUP = f"""\
Every condition gets the task's total training steps (T) in all, and validation every 10 steps.

| condition | what it is |
|---|---|
| fixed lr | the start lr throughout; on the toy also a sweep of 21 fixed lrs, 1e-4 … 10^-1.5 (8 per decade), and the best of them |
| hotcb tune | one run; a real `HotKernel` in a bare loop, `kernel.apply({{step, optimizer, model, metrics}})` after each step with `loss` every step and `val_loss` on the steps that evaluate; `HotClient(run).tune_enable(mode="active", objective="val_loss", segment_steps={SEGMENT_STEPS}, seed=seed, total_steps=T, sync=True)` before the loop (`sync`: trials start on the boundaries whatever the machine's speed), every other setting at its default (here: lr × [0.25, 4] and weight decay × [0.5, 2] per trial, risk medium); the kernel polls every step (`poll_interval_sec=0`) so a run does not depend on the machine's speed |
| Optuna HPO | classic HPO: {OPTUNA_TRIALS} separate runs of T/{OPTUNA_TRIALS} steps, lr log-uniform over the task's range, TPE (4 random startup trials); the best run's final val loss (picked on that same val loss, so optimistic) |
| PBT | 4 members of T/4 steps, all from the start lr; every {PBT_INTERVAL} member steps the worst copies the best's weights, optimizer state and lr, then lr × 0.8 or × 1.2, or (p = 0.25) a fresh log-uniform draw (Ray Tune's defaults); the best member's final val loss |
| Schedule-Free AdamW | `schedulefree.AdamWScheduleFree` at its defaults (lr 0.0025, no warm-up), `eval()` around each evaluation |
| Prodigy | `prodigyopt.Prodigy`, lr 1.0, its defaults, no schedule; "lr at end" is its d · lr |
| hindsight oracle | not a controller, a yardstick (digits, bad starts only): the start lr for the first {SEGMENT_STEPS} steps (one tuner segment: the least any controller needs to see the start), then the good lr, known in hindsight. It shows what changing the lr alone can still reach after the start's damage |
| hindsight oracle, step {ORACLE_EARLY + 1} | the same, with the good lr from step {ORACLE_EARLY + 1}: what acting within a few steps could still reach |

On the toy a run's progress is capped by its steps (at most 1/2500 a step), so an Optuna run of
T/8 steps or a PBT member of T/4 cannot get far whatever lr it finds: there those rows show what
splitting the budget costs as much as how well the search went.
"""


def revision() -> str:
    """The commit the benchmark ran on (the tuner changes; numbers belong to one version)."""
    here = os.path.dirname(os.path.abspath(__file__))
    git = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=here, capture_output=True, text=True
    )
    return f"at commit {git.stdout.strip()}" if git.returncode == 0 else "(commit unknown)"


def write_report(
    out: str, tasks: list[Any], results: dict[str, list[Result]], plan: Plan, wall: float
) -> str:
    lines = [
        "# Online tuner benchmark",
        "",
        "Generated by `python benchmarks/tune.py"
        + ("" if TUNE_RESTORE == "values" else f" --tune-restore {TUNE_RESTORE}")
        + ("" if TUNE_START == "baseline" else f" --tune-start {TUNE_START}")
        + "` (`--quick` for a smoke test); do not edit by hand. hotcb's online tuner against a "
        "fixed lr, classic HPO with Optuna, a PBT population, Schedule-Free AdamW and Prodigy, "
        "at equal total training steps."
        + (
            ""
            if TUNE_RESTORE == "values"
            else f" The tuner runs with `restore={TUNE_RESTORE!r}`: a roll-back also puts back "
            "the model's weights and the optimizer's state."
        )
        + (
            ""
            if TUNE_START == "baseline"
            else f" The tuner runs with `start={TUNE_START!r}`: it begins with a bracket of the "
            "lr, arms trained from the same weights (docs/tune.md)."
        ),
        "",
        f"Seeds {', '.join(map(str, plan.seeds))}; the tables show mean ± std over seeds of the "
        "validation loss after the last step. "
        f"Machine: {os.cpu_count()} CPU cores, torch {torch.__version__} on 1 thread; "
        f"hotcb {plan.revision}; the whole benchmark took {wall / 60:.1f} min.",
        "",
        SETUP,
    ]
    for task in tasks:
        rows, ref = rows_for(task, results[task.key])
        lines += ["", f"## {task.title}", "", inspect.cleandoc(task.__doc__ or ""), ""]
        lines += table(task, rows, ref)
        lines += ["", *verdicts(task, rows, ref), ""]
        if any(r.condition == "tune" for r in results[task.key]):
            lines += [
                "What the tuner did, from its state file (`hotcb --dir RUN tune status`):",
                "",
            ]
            lines += [*tuner_facts(results[task.key]), "", *ledger_table(results[task.key]), ""]
        lines += [f"![{task.title}](img/tune_{task.key}.png)"]
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "tune.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------------------ plots
COLORS = {
    "fixed": "0.45", "tune": "C3", "pbt": "C0", "optuna": "C2", "sf": "C4", "prodigy": "C1",
    "oracle": "C7", "oracle_early": "C8",
}  # fmt: skip


def mean_curve(rs: list[Result]) -> tuple[list[int], list[float]]:
    n = min(len(r.curve) for r in rs)
    xs = [p[0] for p in rs[0].curve[:n]]
    return xs, [statistics.fmean(r.curve[i][1] for r in rs) for i in range(n)]


def plot_digits(
    ax_loss: Any, ax_lr: Any, task: Digits, start: str, g: dict[Any, list[Result]]
) -> None:
    for cond in ("fixed", "tune", "pbt"):
        if (cond, start) in g:
            ax_loss.plot(*mean_curve(g[(cond, start)]), color=COLORS[cond], label=LABELS[cond])
    if start != "good" and ("fixed", "good") in g:
        ax_loss.plot(*mean_curve(g[("fixed", "good")]), ":", color="k", lw=1, label="fixed good lr")
    if ("oracle", start) in g:
        ax_loss.plot(*mean_curve(g[("oracle", start)]), "-.", color=COLORS["oracle"], lw=1,
                     label=LABELS["oracle"])  # fmt: skip
    for cond in ("optuna", "sf", "prodigy"):
        if (cond, "") in g:
            ax_loss.plot(
                *mean_curve(g[(cond, "")]), "--", color=COLORS[cond], lw=1, label=LABELS[cond]
            )
    ax_loss.set(title=f"from {start_label(task, start)}", yscale="log", xlabel="total steps")
    for r in g.get(("tune", start), []):
        ax_lr.plot(*zip(*r.lrs, strict=True), color=COLORS["tune"], lw=1)
    for r in g.get(("pbt", start), []):
        xs, ys = zip(*r.lrs, strict=True)
        ax_lr.plot([4 * x for x in xs], ys, color=COLORS["pbt"], lw=0.8, alpha=0.7)
    ax_lr.axhline(task.good_lr, color="k", ls=":", lw=1)
    ax_lr.set(yscale="log", xlabel="total steps (PBT: 4 × member step)", ylabel="lr")


def plot_toy(axes: Any, task: Toy, results: list[Result]) -> None:
    g = group(results)
    ax_loss, ax_lr, ax_sweep = axes
    sweep = sorted((rs[0].lrs[0][1], rs) for (c, _), rs in g.items() if c == "fixed")
    if sweep:
        best = min(sweep, key=lambda s: statistics.fmean(r.val_loss for r in s[1]))
        ax_loss.plot(*mean_curve(best[1]), color="k", label=f"best fixed lr ({best[0]:.2g})")
        ax_lr.axhline(best[0], color="k", lw=1)
        means = [mean_std([r.val_loss for r in rs]) for _, rs in sweep]
        ax_sweep.errorbar([s[0] for s in sweep], [m for m, _ in means], [s for _, s in means],
                          color="k", marker="o", ms=3, label="fixed lr")  # fmt: skip
    for cond, start in (("fixed", "start"), ("tune", "start"), ("pbt", "start"), ("optuna", "")):
        if (cond, start) in g:
            ax_loss.plot(*mean_curve(g[(cond, start)]), color=COLORS[cond], label=LABELS[cond])
            m = statistics.fmean(r.val_loss for r in g[(cond, start)])
            if cond != "fixed":
                ax_sweep.axhline(m, color=COLORS[cond], ls="--", label=LABELS[cond])
    for i, r in enumerate(g.get(("tune", "start"), [])):
        ax_lr.plot(*zip(*r.lrs, strict=True), color=COLORS["tune"], lw=1,
                   label="tuner's lr" if i == 0 else None)  # fmt: skip
        xs = [s for s, _ in r.curve]
        ax_lr.plot(xs, [10 ** toy_target(1 - v) for _, v in r.curve], ":", color=COLORS["tune"],
                   lw=1, label="best lr along that run" if i == 0 else None)  # fmt: skip
    ax_loss.set(title="val loss (mean over seeds)", xlabel="total steps", ylabel="1 − progress")
    ax_lr.set(title="lr", yscale="log", xlabel="step")
    ax_sweep.set(title="final val loss", xscale="log", xlabel="lr")
    for ax in axes:
        ax.legend(fontsize=7)


def plot(out: str, tasks: list[Any], results: dict[str, list[Result]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(os.path.join(out, "img"), exist_ok=True)
    for task in tasks:
        if isinstance(task, Digits):
            starts = list(task.starts())
            fig, axes = plt.subplots(
                2, len(starts), figsize=(5 * len(starts), 7), sharex=True, squeeze=False
            )
            g = group(results[task.key])
            for j, start in enumerate(starts):
                plot_digits(axes[0][j], axes[1][j], task, start, g)
            axes[0][0].set_ylabel("val loss (mean over seeds)")
            axes[0][-1].legend(fontsize=7)
        else:
            fig, axes = plt.subplots(1, 3, figsize=(15, 4))
            plot_toy(axes, task, results[task.key])
        fig.suptitle(task.title)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "img", f"tune_{task.key}.png"), dpi=90)
        plt.close(fig)


# ------------------------------------------------------------------------------ main
def print_tables(tasks: list[Any], results: dict[str, list[Result]]) -> None:
    for task in tasks:
        rows, ref = rows_for(task, results[task.key])
        print(f"\n## {task.title}\n")
        print("\n".join(table(task, rows, ref)))
        print("\n".join(["", *verdicts(task, rows, ref)]))
        if any(r.condition == "tune" for r in results[task.key]):
            print(
                "\n"
                + "\n".join([*tuner_facts(results[task.key]), "", *ledger_table(results[task.key])])
            )


# ------------------------------------------------------------------------------ --horizon
HORIZON_AT = (100, 400, 800)  # the steps a move is tried at
HORIZON_MULTS = (4.0, 30.0)  # x4: the range's end; x30: the good lr
HORIZON_REPEATS = 5  # batch orders per segment, for its noise


def _segment_level(task: Any, run: Any, opt: torch.optim.Optimizer, lr: float) -> float:
    """One segment at ``lr``; its level as the tuner takes it (the median of the last half of
    its evaluations)."""
    for group in opt.param_groups:
        group["lr"] = lr
    vals = []
    for k in range(1, SEGMENT_STEPS + 1):
        run.train_step(opt)
        if k % task.eval_every == 0:
            vals.append(run.evaluate()[0])
    return statistics.median(vals[len(vals) // 2 :])


def horizon(seeds: Sequence[int]) -> list[str]:
    """What one tuner segment shows of an lr move, against what the move is worth at the end.

    Digits from 30x too low: at each step of ``HORIZON_AT`` the run (trained at the start lr so
    far) is copied, and each copy runs one segment (50 steps) at the start lr times 1, 4 or 30,
    ``HORIZON_REPEATS`` times with fresh batch orders; its level is the tuner's (the median of the
    last 3 of its 5 evaluations). The first repeat then trains on at that lr to the end. Returns
    a Markdown table: the move's gain in the segment's level and in the final val loss, relative
    to staying (positive: better), and the spread of the level over batch orders."""
    task = Digits()
    lr0 = task.starts()["30x low"]
    rows: dict[tuple[int, float], list[tuple[float, float, float]]] = {}
    for seed in seeds:
        run = task.make(seed)
        gen = getattr(run, "_batches", None)
        if not isinstance(gen, torch.Generator):
            raise SystemExit("--horizon: the digits run's batch generator is not where expected")
        opt = adamw_or_sgd(task, run, lr0)
        step = 0
        for at in HORIZON_AT:
            for _ in range(at - step):
                run.train_step(opt)
            step = at
            snap = (copy.deepcopy(run.model.state_dict()), copy.deepcopy(opt.state_dict()),
                    gen.get_state())  # fmt: skip
            got: dict[float, tuple[float, float, float]] = {}
            for mult in (1.0, *HORIZON_MULTS):
                levels, final = [], math.nan
                for r in range(HORIZON_REPEATS):
                    run.model.load_state_dict(snap[0])
                    opt.load_state_dict(snap[1])
                    gen.manual_seed(1000 * seed + 10 * at + r)
                    levels.append(_segment_level(task, run, opt, lr0 * mult))
                    if r == 0:
                        for _ in range(at + SEGMENT_STEPS, task.total_steps):
                            run.train_step(opt)
                        final = run.evaluate()[0]
                got[mult] = (statistics.mean(levels), statistics.stdev(levels), final)
            stay = got[1.0]
            for mult in HORIZON_MULTS:
                level, _, final = got[mult]
                rows.setdefault((at, mult), []).append(
                    ((stay[0] - level) / stay[0], stay[1] / stay[0], (stay[2] - final) / stay[2])
                )
            run.model.load_state_dict(snap[0])
            opt.load_state_dict(snap[1])
            gen.set_state(snap[2])
            for group in opt.param_groups:
                group["lr"] = lr0
    lines = [
        f"Digits from 30x too low (lr {lr0:.2g}), seeds {', '.join(map(str, seeds))}: an lr move "
        f"at a step, judged on one {SEGMENT_STEPS}-step segment and at the end "
        f"(step {task.total_steps}); gains relative to staying, positive: better.",
        "",
        "| at step | move | gain in the segment's level | level's spread over batch orders "
        "| gain in the final val loss |",
        "|---|---|---|---|---|",
    ]
    for (at, mult), xs in rows.items():
        gain, spread, final = (statistics.mean(x[i] for x in xs) for i in range(3))
        lines.append(f"| {at} | lr ×{mult:g} | {gain:+.1%} | {spread:.1%} | {final:+.1%} |")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, short budgets (smoke test)")
    ap.add_argument("--out", help="report folder (default docs/benchmarks; --quick: a temp dir)")
    ap.add_argument("--only", default=",".join(CONDITIONS), help="conditions, comma-separated")
    ap.add_argument(
        "--seeds",
        type=int,
        help="how many seeds: 0, 1, ... N-1 (default 8; --horizon: 3)",
    )
    ap.add_argument("--keep-runs", help="keep the tuner's run directories here")
    ap.add_argument(
        "--tune-restore",
        choices=("values", "state"),
        default="values",
        help="the tuner's roll-back: knob values (its default) or also the model's state",
    )
    ap.add_argument(
        "--tune-start",
        choices=("baseline", "bracket"),
        default="baseline",
        help="how the tuner begins: baseline segments (its default) or a bracket of the lr",
    )
    ap.add_argument(
        "--horizon",
        action="store_true",
        help="only measure what one segment shows of an lr move from 30x too low (digits), "
        "against its worth at the end; prints a table",
    )
    args = ap.parse_args(argv)
    if args.seeds is None:
        args.seeds = 3 if args.horizon else 8
    if args.seeds < 1:
        ap.error(f"--seeds: the number of seeds to run (1 or more), got {args.seeds}")
    if args.horizon:
        torch.set_num_threads(1)
        print("\n".join(horizon(list(range(args.seeds)))))
        return 0
    global TUNE_RESTORE, TUNE_START
    TUNE_RESTORE, TUNE_START = args.tune_restore, args.tune_start
    only = set(args.only.split(","))
    if only - set(CONDITIONS):
        ap.error(f"--only: expected some of {','.join(CONDITIONS)}, got {args.only}")
    torch.set_num_threads(1)  # small models: threads cost more than they give on 2 cores
    tasks: list[Any] = [Digits(), Toy()]
    seeds = list(range(args.seeds))
    if args.quick:
        tasks = [
            dataclasses.replace(tasks[0], total_steps=400),
            dataclasses.replace(tasks[1], total_steps=600, sweep=(10**-3.5, 10**-2.5, 10**-2)),
        ]
        seeds = [0]
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = args.out or (tempfile.mkdtemp(prefix="hotcb-tune-bench-") if args.quick
                       else os.path.join(here, "docs", "benchmarks"))  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="hotcb-tune-runs-") as tmp:
        plan = Plan(tasks, seeds, only, args.keep_runs or tmp, revision())
        t0 = time.perf_counter()
        results = run_all(plan)
        wall = time.perf_counter() - t0
        print_tables(tasks, results)
        plot(out, tasks, results)
        path = write_report(out, tasks, results, plan, wall)
    print(f"\nwall time {wall:.0f} s; report: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

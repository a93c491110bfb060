"""``hotcb bench run``: every task × seed × condition, one real training run each, with every
run's curves saved as it finishes.

The loop of every condition is the same bare loop: ``run.train_step(opt)``, an evaluation every
``eval_every`` steps and at the last step, then the condition's hook (a scheduler step, or
``kernel.apply`` and the autopilot). The hotcb conditions use a real :class:`~hotcb.HotKernel`
with ``poll_interval_sec=0`` and drive the autopilot synchronously right after each
evaluation, so a run does not depend on the machine's speed.

Folder layout (``OUT``)::

    bench.json                    the plan, the machine, skips, the wall time
    summary.csv, summary.json     one row per run
    runs/<task>/<condition>/s<seed>/curve.json, curve.csv, run/ (the hotcb run directory)
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import re
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import HotClient, HotKernel, jsonl
from .. import __version__ as hotcb_version
from ..runfiles import RunPaths, redact_url
from . import CONDITIONS, HOTCB_CONDITIONS, LABELS
from .tasks import Task, TaskError, TaskUnavailable, load_task, task_call

Hook = Callable[[int, dict[str, float]], None]
COLUMNS = ("step", "train_loss", "val_loss", "val_acc", "lr")
REPLAYABLE = ("autopilot", "tune", "ai")


class BenchError(ValueError):
    """A bench that cannot start (a bad plan, nothing left to run); the CLI prints it and
    exits with code 2."""


class _TaskRun:
    """A task's run as the loop calls it: an exception from its ``model``, ``train_step()``
    or ``evaluate()`` becomes a :class:`TaskError` saying where (``where``)."""

    def __init__(self, run: Any, where: str) -> None:
        self.inner, self.where = run, where
        self.model = task_call(where, "run.model", getattr, run, "model")

    def train_step(self, opt: torch.optim.Optimizer) -> Any:
        try:
            return self.inner.train_step(opt)
        except Exception as exc:
            raise TaskError(self.where, "run.train_step()", exc) from exc

    def evaluate(self) -> tuple[float, float | None]:
        try:
            out: tuple[float, float | None] = self.inner.evaluate()
        except Exception as exc:
            raise TaskError(self.where, "run.evaluate()", exc) from exc
        return out


class BenchInterrupted(KeyboardInterrupt):
    """Ctrl-C during the runs: ``meta`` is the ``bench.json`` written with what finished
    (``interrupted_after_runs``); the run that was going on is discarded. A
    :class:`KeyboardInterrupt`, so code that catches that still does."""

    def __init__(self, meta: dict[str, Any]) -> None:
        super().__init__()
        self.meta = meta


@dataclass
class Settings:
    tasks: list[str]
    conditions: list[str]
    seeds: int = 1
    steps: int | None = None  # None: each task's default
    out: str = "bench-out"
    data: str | None = None  # CIFAR-10
    replay_of: str = "autopilot"
    rules: str | None = None  # autopilot rules file (None: the shipped defaults)
    segment_steps: int | None = None  # the tuner's segment (None: 5 evaluations)
    tune_restore: str | None = None  # the tuner's roll-back: values or state (None: its default)
    tune_start: str | None = None  # how the tuner begins: baseline or bracket (None: its default)
    # the tuner waits for Optuna at each boundary: a run's figures do not depend on the
    # machine's speed, as the other conditions' do not (without it a short run could end
    # before the study opened, with no trial, and be reported as the tuner's)
    tune_sync: bool = True
    ai_base_url: str | None = None
    ai_model: str | None = None
    threads: int = 1
    progress: bool = True
    force: bool = False
    resume: bool = False  # go on with the bench in `out`: its finished runs are kept
    command: str | None = None  # as typed, for the report


#: The settings a resumed bench must share with the bench it goes on with (its figures
#: depend on them; ``progress``, ``force``, ``command`` do not).
RESUME_SETTINGS = ("tasks", "conditions", "seeds", "steps", "data", "replay_of", "rules",
                   "segment_steps", "tune_restore", "tune_start", "tune_sync", "ai_base_url",
                   "ai_model", "threads")  # fmt: skip


def slug(task: str) -> str:
    """A task's name as a file name (``mymodule:make_task`` → ``mymodule_make_task``)."""
    return re.sub(r"[^A-Za-z0-9_]+", "_", task)


def current_lr(opt: torch.optim.Optimizer) -> float:
    """The step size in force (Prodigy's: its estimate ``d`` times lr)."""
    group = opt.param_groups[0]
    return float(group["lr"]) * float(group.get("d", 1.0))


def _num(x: float | None) -> float | None:
    return x if x is None or math.isfinite(x) else None


@dataclass
class Curve:
    step: list[int] = field(default_factory=list)
    train_loss: list[float | None] = field(default_factory=list)
    val_loss: list[float | None] = field(default_factory=list)
    val_acc: list[float | None] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)

    def add(self, step: int, loss: float, vl: float | None, va: float | None, lr: float) -> None:
        self.step.append(step)
        self.train_loss.append(_num(loss))
        self.val_loss.append(_num(vl))
        self.val_acc.append(va)
        self.lr.append(lr)

    def columns(self) -> dict[str, list[Any]]:
        return {c: getattr(self, c) for c in COLUMNS}

    def evals(self) -> list[tuple[int, float, float | None]]:
        """(step, val loss, val acc) at each evaluation with a finite val loss."""
        return [(s, v, a) for s, v, a in zip(self.step, self.val_loss, self.val_acc, strict=True)
                if v is not None]  # fmt: skip

    def eval_lrs(self, final_lr: float, *, after: bool = False) -> list[tuple[int, float]]:
        """``(0, start lr)``, then ``(step, lr)`` at each evaluation: the lr that step used,
        or with ``after`` the lr in force after its hook (what the next step uses;
        ``final_lr`` after the last step)."""
        out = [(0, self.lr[0])] if self.lr else []
        for i, (s, v) in enumerate(zip(self.step, self.val_loss, strict=True)):
            if v is not None:
                lr = self.lr[i] if not after else (
                    self.lr[i + 1] if i + 1 < len(self.lr) else final_lr)  # fmt: skip
                out.append((s, lr))
        return out

    def first_difference(self, other: Curve) -> int | None:
        """The first step where the two curves differ in any column (bit for bit), or None."""
        for i, row in enumerate(zip(*self.columns().values(), strict=True)):
            theirs = tuple(
                col[i] if i < len(col) else "missing" for col in other.columns().values()
            )
            if row != theirs:
                return int(row[0])
        if len(other.step) != len(self.step):
            return len(self.step) + 1
        return None


def train(run: Any, opt: torch.optim.Optimizer, steps: int, eval_every: int,
          hook: Hook | None = None, schedule_free: bool = False,
          on_eval: Callable[[int, int, float], None] | None = None, *,
          start: int = 0, eval_last: bool = True) -> Curve:  # fmt: skip
    """The one training loop of every condition. ``lr`` is the step size the step used.

    Steps ``start + 1`` … ``start + steps`` (``start``: to go on with a run trained in chunks,
    as PBT does); an evaluation every ``eval_every`` steps and, with ``eval_last``, at the
    last step of the call."""
    curve = Curve()
    if schedule_free:
        opt.train()  # type: ignore[attr-defined]
    last = start + steps
    for step in range(start + 1, last + 1):
        lr = current_lr(opt)
        loss = run.train_step(opt)
        metrics = {"loss": loss}
        vl = va = None
        if step % eval_every == 0 or (eval_last and step == last):
            vl, va = evaluate(run, opt, schedule_free)
            metrics["val_loss"] = vl
            if va is not None:
                metrics["val_acc"] = va
            if on_eval is not None:
                on_eval(step, last, vl)
        if hook is not None:
            hook(step, metrics)
        curve.add(step, loss, vl, va, lr)
    return curve


def evaluate(
    run: Any, opt: torch.optim.Optimizer, schedule_free: bool = False
) -> tuple[float, float | None]:
    """``run.evaluate()``; Schedule-Free's optimizer in ``eval()`` mode meanwhile."""
    if not schedule_free:
        out: tuple[float, float | None] = run.evaluate()
        return out
    opt.eval()  # type: ignore[attr-defined]
    try:
        out = run.evaluate()
    finally:
        opt.train()  # type: ignore[attr-defined]
    return out


# ------------------------------------------------------------------------------ conditions
@dataclass
class RunResult:
    task: str
    condition: str
    seed: int
    steps: int
    curve: Curve
    seconds: float
    run_dir: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)  # actions, replay match, tuner …

    def final(self) -> dict[str, Any]:
        vals = [(s, v) for s, v in zip(self.curve.step, self.curve.val_loss, strict=True)
                if v is not None]  # fmt: skip
        accs = [a for a in self.curve.val_acc if a is not None]
        tail = [
            x for x in self.curve.train_loss[-max(1, len(self.curve.step) // 20) :] if x is not None
        ]
        return {
            "final_val_loss": self.curve.val_loss[-1],
            "final_val_acc": accs[-1] if accs else None,
            "best_val_loss": min((v for _, v in vals), default=None),
            "final_train_loss": statistics.fmean(tail) if tail else None,
            "final_lr": self.curve.lr[-1],
        }

    def row(self) -> dict[str, Any]:
        return {
            "task": self.task, "condition": self.condition, "seed": self.seed,
            "steps": self.steps, **self.final(), "seconds": round(self.seconds, 3),
            "actions": self.notes.get("actions"),
            "replay_of": self.notes.get("replay_of"),
            "replay_matched": self.notes.get("matched"),
            "run_dir": self.run_dir,
        }  # fmt: skip


@dataclass
class Trained:
    """A finished run: its result, and the run and optimizer as the last step left them."""

    result: RunResult
    run: Any
    opt: torch.optim.Optimizer
    schedule_free: bool = False

    def evaluate(self) -> tuple[float, float | None]:
        """One more evaluation (Schedule-Free: in ``eval()`` mode, as in the loop)."""
        return evaluate(self.run, self.opt, self.schedule_free)

    @property
    def final_lr(self) -> float:
        """The lr in force after the last step (and its hook)."""
        return current_lr(self.opt)


class Runner:
    """Runs one condition of one task for one seed (see the module's docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.done: dict[tuple[str, str, int], RunResult] = {}
        #: called at each evaluation with (step, steps, val loss): the progress bar's postfix
        self.on_eval: Callable[[int, int, float], None] | None = None
        self._warm: set[str] = set()

    def warm(self, task: Task) -> None:
        """Pay a task's one-off costs (its data's first load, torch's first kernels) once,
        untimed, so that the first run's seconds compare with the others' (they were ~10×)."""
        if task.name in self._warm:
            return
        self._warm.add(task.name)
        where = f"task {task.name} (its untimed warm-up, seed 0)"
        # every run seeds itself in make(): this changes no run's numbers
        run = _TaskRun(task_call(where, "make(0)", task.make, 0), where)
        opt = task_call(where, "optimizer()", task.base_optimizer, run.model.parameters())
        train(run, opt, 2, task.eval_every)

    def run(self, task: Task, condition: str, seed: int, folder: str) -> RunResult:
        return self.train_run(task, condition, seed, folder).result

    def train_run(self, task: Task, condition: str, seed: int, folder: str,
                  run_dir: str | None = None) -> Trained:  # fmt: skip
        """:meth:`run`, with the run and its optimizer as they are after the last step (for
        scripts that measure more than the curve: ``benchmarks/autopilot.py``, ``tune.py``).
        ``run_dir``: the hotcb run directory of a steered condition (default ``folder/run``)."""
        steps = self.s.steps or task.total_steps
        t0 = time.perf_counter()
        where = f"task {task.name}, condition {condition}, seed {seed}"
        run = _TaskRun(task_call(where, f"make({seed})", task.make, seed), where)
        notes: dict[str, Any] = {}
        schedule_free = condition == "schedulefree"

        def base_optimizer() -> torch.optim.Optimizer:
            opt: torch.optim.Optimizer = task_call(
                where, "optimizer()", task.base_optimizer, run.model.parameters()
            )
            return opt

        if condition in ("autopilot", "tune", "ai", "replay"):
            run_dir = run_dir or os.path.join(folder, "run")
            opt = base_optimizer()
            curve = self._steered(task, condition, seed, run, opt, steps, run_dir, notes)
        elif schedule_free:
            run_dir = None
            import schedulefree  # type: ignore[import-untyped,unused-ignore]

            opt = schedulefree.AdamWScheduleFree(run.model.parameters())  # published defaults
            curve = train(
                run, opt, steps, task.eval_every, schedule_free=True, on_eval=self.on_eval
            )
        elif condition == "prodigy":
            run_dir = None
            import prodigyopt  # type: ignore[import-untyped,unused-ignore]

            opt = prodigyopt.Prodigy(run.model.parameters())  # published defaults (lr 1.0)
            curve = train(run, opt, steps, task.eval_every, on_eval=self.on_eval)
        else:
            run_dir = None
            opt = base_optimizer()
            curve = train(
                run,
                opt,
                steps,
                task.eval_every,
                _schedule(condition, opt, steps),
                on_eval=self.on_eval,
            )
        res = RunResult(task.name, condition, seed, steps, curve, time.perf_counter() - t0,
                        run_dir, notes)  # fmt: skip
        self.done[(task.name, condition, seed)] = res
        return Trained(res, run.inner, opt, schedule_free)

    def _steered(self, task: Task, condition: str, seed: int, run: Any,
                 opt: torch.optim.Optimizer, steps: int, run_dir: str,
                 notes: dict[str, Any]) -> Curve:  # fmt: skip
        self._prepare(task, condition, seed, steps, run_dir, notes)
        kernel = HotKernel(run_dir, poll_interval_sec=0.0)
        pilot = self._pilot(condition, steps, run_dir)
        model = run.model

        def on_step(step: int, metrics: dict[str, float]) -> None:
            kernel.apply({"step": step, "optimizer": opt, "model": model, "metrics": metrics})
            if pilot is not None and "val_loss" in metrics:
                pilot.step()

        try:
            curve = train(run, opt, steps, task.eval_every, on_step, on_eval=self.on_eval)
        finally:
            kernel.close()
            if pilot is not None:
                pilot.close()
        if pilot is not None:
            notes.update(_pilot_summary(run_dir))
        if condition == "ai":
            notes["ai_calls"] = _ai_calls(run_dir)
        if condition == "tune":
            notes["tune"] = _tune_summary(run_dir)
            counts = notes["tune"].get("counts") or {}
            notes["undone"] = int(counts.get("rolled_back", 0))
            notes["actions"] = int(counts.get("kept", 0)) + notes["undone"]  # trials
        if condition == "replay":
            source = self.done[(task.name, self.s.replay_of, seed)]
            diff = source.curve.first_difference(curve)
            notes["matched"] = diff is None
            notes["first_difference_step"] = diff
            notes["replayed_entries"] = _count_recipe(notes.get("recipe"))
        return curve

    def _prepare(self, task: Task, condition: str, seed: int, steps: int, run_dir: str,
                 notes: dict[str, Any]) -> None:  # fmt: skip
        """Commands queued before the run starts: the tuner on, or the freeze into replay."""
        if condition == "tune":
            HotClient(run_dir).tune_enable(
                mode="active", objective="val_loss",
                segment_steps=tune_segment(self.s, task),
                seed=seed, total_steps=steps, restore=self.s.tune_restore,
                start=self.s.tune_start, sync=self.s.tune_sync or None,
            )  # fmt: skip
        elif condition == "replay":
            source = self.done.get((task.name, self.s.replay_of, seed))
            if source is None or source.run_dir is None:
                raise BenchError(f"replay: no {self.s.replay_of} run of {task.name} seed {seed}")
            recipe = export_for_replay(source.run_dir, os.path.dirname(run_dir))
            notes.update(replay_of=self.s.replay_of, recipe=recipe)
            if recipe is not None:
                HotClient(run_dir).freeze("replay", recipe_path=recipe)

    def _pilot(self, condition: str, steps: int, run_dir: str) -> Any:
        from ..autopilot.engine import Autopilot

        if condition == "autopilot":
            return Autopilot(run_dir, mode="auto", rules=self.s.rules, key_metric="val_loss")
        if condition == "ai":
            from ..autopilot.ai import AIConfig

            cfg = AIConfig(base_url=self.s.ai_base_url or "", model=self.s.ai_model or "",
                           total_steps=steps)  # fmt: skip
            return Autopilot(run_dir, mode="ai_auto", rules=self.s.rules, key_metric="val_loss",
                             ai=cfg)  # fmt: skip
        return None


def _pilot_summary(run_dir: str) -> dict[str, int]:
    """Actions of the autopilot that the run applied, and how many of them its guard undid
    (hotcb.autopilot.jsonl, checked against the ledger: an action sent at the last step is
    never applied)."""
    from ..autopilot.engine import RECORDS
    from ..ledger import iter_entries

    applied = {
        e.get("cmd_id")
        for e in iter_entries(RunPaths(run_dir).ledger)
        if e.get("decision") == "applied"
    }
    records = list(jsonl.iter_records(os.path.join(run_dir, RECORDS)))
    return {
        "actions": sum(
            1
            for r in records
            if r.get("kind") == "action" and any(c in applied for c in r.get("cmd_ids") or ())
        ),
        "undone": sum(
            1 for r in records if r.get("kind") == "guard" and r.get("undo_cmd_id") in applied
        ),
    }


def _ai_calls(run_dir: str) -> int:
    """How many times the LLM autopilot asked the model in the run (its state file)."""
    from ..autopilot.ai import AI_STATE

    st = jsonl.read_json(os.path.join(run_dir, AI_STATE), {}) or {}
    return int(st.get("calls", 0)) if isinstance(st, dict) else 0


def _schedule(condition: str, opt: torch.optim.Optimizer, steps: int) -> Hook | None:
    if condition == "cosine":
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        return lambda step, metrics: cosine.step()
    if condition == "plateau":
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)  # torch's defaults

        def on_eval(step: int, metrics: dict[str, float]) -> None:
            if "val_loss" in metrics:
                plateau.step(metrics["val_loss"])

        return on_eval
    return None  # fixed


def export_for_replay(source_run: str, dest: str) -> str | None:
    """The source run's recipe (``hotcb recipe export``) written to ``dest/recipe.jsonl``;
    None when the source applied nothing (nothing to replay: the replay runs unsteered)."""
    from ..errors import RecipeError
    from ..recipe import export_recipe

    try:
        path, _ = export_recipe(source_run, os.path.join(dest, "recipe.jsonl"))
    except RecipeError:
        return None
    return path


def _count_recipe(path: str | None) -> int:
    if path is None:
        return 0
    with open(path) as f:
        return max(0, sum(1 for line in f if line.strip()) - 1)  # minus the header


def _tune_summary(run_dir: str) -> dict[str, Any]:
    try:
        status = HotClient(run_dir, create=False).tune_status()
    except Exception as exc:  # the summary is a note; the curve is what counts
        return {"error": repr(exc)}
    keep = ("mode", "phase", "counts", "best", "warnings")
    return {k: status[k] for k in keep if k in status}


def tune_segment(s: Settings, task: Task) -> int:
    """The tuner's segment on ``task``, in steps: ``Settings.segment_steps``, or 5 evaluations,
    fewer (down to 1) when the run is too short to hold 8 segments of 5: two baselines, two at
    the end where no trial starts, and room for trials between (CIFAR's 2000 steps at an
    evaluation every 100 held none at 5: segments of 200, not 500)."""
    if s.segment_steps:
        return s.segment_steps
    steps = s.steps or task.total_steps
    return task.eval_every * min(5, max(1, steps // (8 * task.eval_every)))


def tune_min_steps(segment: int) -> int:
    """The fewest steps in which the tuner (``tune`` condition) can run one trial.

    Its ``enable`` command, queued before the first step, is applied at step 1; it watches
    two baseline segments (steps 2 … 2·segment + 1), and starts a trial at a boundary only when
    the trial and one segment after it fit in the run (``_next`` in hotcb.modules.tune): the
    first trial needs 2·segment + 1 + 2·segment steps."""
    return 4 * segment + 1


def tune_room(s: Settings, tasks: Sequence[Task]) -> list[dict[str, Any]]:
    """A warning per task on which the ``tune`` condition has no room for a single trial."""
    if "tune" not in s.conditions:
        return []
    out = []
    for t in tasks:
        steps, segment = s.steps or t.total_steps, tune_segment(s, t)
        need = tune_min_steps(segment)
        if steps < need:
            out.append({
                "what": "tune", "task": t.name, "steps": steps, "segment_steps": segment,
                "min_steps": need,
                "why": f"no room for a trial on {t.name} at {steps} steps: the tuner watches "
                       f"two baseline segments of {segment} steps, then a trial and the "
                       f"segment after it must fit, so it needs at least {need} steps "
                       f"(--steps {need}); it will keep the task's lr throughout, as "
                       f"{LABELS['fixed']} does",
            })  # fmt: skip
    return out


# ------------------------------------------------------------------------------ the plan
def check_plan(s: Settings) -> list[tuple[str, str]]:
    """Problems that stop the bench (raised) and skips (returned: (what, why))."""
    skips: list[tuple[str, str]] = []
    if s.seeds < 1:
        raise BenchError("--seeds must be at least 1")
    if s.steps is not None and s.steps < 1:
        raise BenchError("--steps must be at least 1")
    if s.threads < 1:
        raise BenchError(f"--threads must be at least 1, got {s.threads}")
    if "replay" in s.conditions and s.replay_of not in s.conditions:
        raise BenchError(
            f"replay replays the runs of {s.replay_of}: add it to --conditions "
            f"(or --replay-of one of {', '.join(REPLAYABLE)} that is there)"
        )
    if s.rules is not None:  # read now, not when the first autopilot run starts (the runs
        if not {"autopilot", "ai"} & set(s.conditions):  # before it would have trained)
            raise BenchError("--rules is for the autopilot: add autopilot (or ai) to "
                             "--conditions, or leave --rules out")  # fmt: skip
        from ..autopilot.rules import RulesError, load_rules

        try:
            load_rules(s.rules)
        except RulesError as exc:
            raise BenchError(f"--rules: {exc}") from None
        except OSError as exc:
            raise BenchError(f"--rules: cannot read {s.rules}: {exc.strerror or exc}") from None
    if "ai" in s.conditions:
        from ..autopilot.ai._config import KEY_ENV

        # a server on this machine needs no key, as for `hotcb autopilot` (docs/autopilot.md)
        key = os.environ.get(KEY_ENV) or _on_this_machine(s.ai_base_url)
        missing = [name for name, v in ((KEY_ENV, key), ("--ai-base-url", s.ai_base_url),
                                        ("--ai-model", s.ai_model)) if not v]  # fmt: skip
        if missing:
            skips.append(("ai", f"not configured (missing {', '.join(missing)})"))
            if "replay" in s.conditions and s.replay_of == "ai":
                skips.append(("replay", "its source, ai, is skipped"))
    return skips


def _on_this_machine(url: str | None) -> bool:
    """Whether ``url`` names a server on this machine (localhost, a loopback address)."""
    from urllib.parse import urlsplit

    try:
        host = urlsplit(url or "").hostname or ""
    except ValueError:
        return False
    return host == "localhost" or host == "::1" or host.startswith("127.")


def _load_tasks(s: Settings, conditions: list[str], skipped: list[tuple[str, str]]) -> list[Task]:
    """The tasks that can run (the others added to ``skipped``); :class:`BenchError` when no
    task or no condition is left, saying why each was skipped."""
    tasks: list[Task] = []
    for name in s.tasks:
        try:
            tasks.append(load_task(name, s.data))
        except TaskUnavailable as exc:
            why = str(exc).removeprefix(f"{name}: ")  # the task's messages start with its name
            skipped.append((name, why))
    if not tasks or not conditions:  # before --out is made: a bench of nothing leaves nothing
        gone = " and ".join(
            w for w, empty in (("task", not tasks), ("condition", not conditions)) if empty
        ).replace("and ", "and every ")
        raise BenchError(
            f"nothing could run: every {gone} was skipped"
            + "".join(f"\n  skipped {what}: {why}" for what, why in skipped)
        )
    return tasks


def run_bench(s: Settings, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the bench of ``s`` into ``s.out``; returns the contents of ``bench.json``."""
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    skipped = check_plan(s)
    out = os.path.abspath(s.out)
    meta_path = os.path.join(out, "bench.json")
    before = _earlier_bench(s, out)
    torch.set_num_threads(s.threads)
    conditions = [c for c in CONDITIONS if c in s.conditions and c not in dict(skipped)]
    tasks = _load_tasks(s, conditions, skipped)
    if before is not None and before["conditions"] != conditions:  # the skips differ
        raise BenchError(f"--resume: the bench in {out} runs {', '.join(before['conditions'])}"
                         f"; here it would run {', '.join(conditions)} (an ai condition needs "
                         "HOTCB_AI_KEY as before); --force replaces it")  # fmt: skip
    if os.path.exists(meta_path) and s.force:  # and there is something to run
        shutil.rmtree(os.path.join(out, "runs"), ignore_errors=True)
    warnings = tune_room(s, tasks)
    _make_out(out)  # after the tasks load: a task that cannot leaves nothing
    for what, why in skipped:
        say(f"hotcb bench: {what}: {why}; skipped")
    for w in warnings:
        say(f"hotcb bench: warning: {w['what']}: {w['why']}")
    meta: dict[str, Any] = {
        "kind": "hotcb.bench", "v": 1, "started_at": time.time(),
        "command": s.command and redact_url(s.command),  # a base URL's password or key: out
        "settings": {**vars(s), "out": out, "command": s.command and redact_url(s.command),
                     "ai_base_url": s.ai_base_url and redact_url(s.ai_base_url)},
        "tasks": {t.name: {"title": t.title, "about": t.about, "steps": s.steps or t.total_steps,
                           "eval_every": t.eval_every, "lr": t.lr, **t.info} for t in tasks},
        "conditions": conditions, "seeds": list(range(s.seeds)),
        "skipped": [{"what": w, "why": y} for w, y in skipped],
        "warnings": warnings,
        "machine": {"cpus": os.cpu_count(), "threads": s.threads, "python": sys.version.split()[0],
                    "torch": torch.__version__, "hotcb": hotcb_version,
                    "platform": platform.platform()},
    }  # fmt: skip
    jobs = [(t, seed, c) for t in tasks for seed in range(s.seeds) for c in conditions]
    kept: dict[tuple[str, str, int], RunResult] = {}
    earlier_wall = 0.0  # the seconds of the bench it goes on with
    if before is not None:
        kept = _finished_runs(out, jobs)
        earlier_wall = _resumed(meta, before, len(kept))
        say(f"hotcb bench: resuming {out}: {len(kept)} finished run(s) kept, "
            f"{len(jobs) - len(kept)} to run")  # fmt: skip
    jsonl.write_json_atomic(meta_path, meta)
    runner = Runner(s)
    results: list[RunResult] = []
    t0 = time.perf_counter()
    bar = _progress(len(jobs) - len(kept), s.progress)
    runner.on_eval = lambda step, steps, vl: bar.set_postfix_str(
        f"step {step}/{steps}, val loss {vl:.4g}", refresh=False
    )  # drawn at tqdm's own pace (mininterval), not at every evaluation
    going: tuple[str, Task, int, str] | None = None  # the run under way: folder, what
    try:
        for task, seed, cond in jobs:
            if (task.name, cond, seed) in kept:  # --resume: a run that finished before
                res = runner.done[(task.name, cond, seed)] = kept[(task.name, cond, seed)]
                results.append(res)
                continue
            # the last run's "step 200/200, val loss …" is not this one's: cleared before the
            # description (which redraws the bar) names the new run
            bar.set_postfix_str("", refresh=False)
            bar.set_description(f"{task.name} · {cond} · seed {seed}")
            folder = os.path.join(out, "runs", slug(task.name), cond, f"s{seed}")
            going = (folder, task, seed, cond)
            shutil.rmtree(folder, ignore_errors=True)  # what a failed run left: not this one's
            os.makedirs(folder, exist_ok=True)
            runner.warm(task)
            res = runner.run(task, cond, seed, folder)
            save_run(folder, res)
            results.append(res)
            going = None
            bar.update(1)
            bar.write(_line(res), file=sys.stderr)
    except BaseException as exc:  # Ctrl-C or a failing run: keep what finished, say it is partial
        meta["interrupted_after_runs"] = len(results)
        if going is not None:
            folder, task, seed, cond = going
            meta["interrupted_run"] = {"task": task.name, "condition": cond, "seed": seed}
            if not isinstance(exc, KeyboardInterrupt):  # the run's own error: said as such
                meta["interrupted_run"]["error"] = f"{type(exc).__name__}: {exc}"
            _discard(folder, os.path.join(out, "runs"))  # half a run: not mistaken for one
            meta["interrupted_run"]["discarded"] = True
        if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, BenchInterrupted):
            raise BenchInterrupted(meta) from None
        raise
    finally:
        bar.close()
        meta["wall_seconds"] = round(earlier_wall + time.perf_counter() - t0, 2)
        meta["finished_at"] = time.time()
        jsonl.write_json_atomic(meta_path, meta)
        save_summary(out, results)
    return meta


def _earlier_bench(s: Settings, out: str) -> dict[str, Any] | None:
    """``bench.json`` of the bench in ``out`` that ``--resume`` goes on with (None without
    ``--resume``). :class:`BenchError` when a bench is there and neither ``--resume`` nor
    ``--force`` is given, or both are; with ``--resume``, when there is none, or one made with
    other settings (its runs would not compare)."""
    if not s.resume:
        if os.path.exists(os.path.join(out, "bench.json")) and not s.force:
            raise BenchError(f"{out} already holds a bench (bench.json): --resume goes on "
                             "with it (its finished runs are kept), --force replaces it (its "
                             "runs are deleted)")  # fmt: skip
        return None
    if s.force:
        raise BenchError("--force replaces the bench in --out, --resume goes on with it: "
                         "give one")  # fmt: skip
    meta, _ = load_bench(out)
    then = meta.get("settings") or {}
    now = {**vars(s), "ai_base_url": s.ai_base_url and redact_url(s.ai_base_url)}
    differ = [k for k in RESUME_SETTINGS if then.get(k) != now.get(k)]
    if differ:
        shown = "; ".join(f"{k} {_setting(then.get(k))} there, {_setting(now.get(k))} here"
                          for k in differ)  # fmt: skip
        raise BenchError(f"--resume: the bench in {out} was made with other settings ({shown})"
                         f": give the same ones (it was made by: {meta.get('command')}), or "
                         "--force to replace it")  # fmt: skip
    return meta


def _setting(value: Any) -> str:
    """A setting as ``--resume``'s refusal shows it: ``None`` is the task's default."""
    return "the task's default" if value is None else repr(value)


def _make_out(out: str) -> None:
    """``--out``, made if missing; a path that cannot be a folder is refused in words."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise BenchError(f"--out {out} is a file, not a folder: name a folder for the bench")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise BenchError(f"--out: cannot make the folder {out}: {exc.strerror or exc}") from exc


def _resumed(meta: dict[str, Any], before: dict[str, Any], kept: int) -> float:
    """``meta`` of a bench that goes on with ``before``: its start, and when it was resumed
    with how many runs kept; the seconds ``before`` took."""
    meta["started_at"] = before.get("started_at", meta["started_at"])
    meta["resumed"] = [*(before.get("resumed") or []), {"at": time.time(), "kept_runs": kept}]
    return float(before.get("wall_seconds") or 0.0)


def _finished_runs(out: str, jobs: Sequence[tuple[Task, int, str]]) -> dict[
        tuple[str, str, int], RunResult]:  # fmt: skip
    """The runs of ``jobs`` that a bench in ``out`` finished (their ``curve.json``)."""
    done = {}
    for task, seed, cond in jobs:
        path = os.path.join(out, "runs", slug(task.name), cond, f"s{seed}", "curve.json")
        doc = jsonl.read_json(path, None)
        if isinstance(doc, dict):
            curve = Curve(**{c: list(doc["curve"][c]) for c in COLUMNS})
            done[(task.name, cond, seed)] = RunResult(
                task.name, cond, seed, doc["steps"], curve, doc["seconds"], doc["run_dir"],
                doc["notes"])  # fmt: skip
    return done


def _discard(folder: str, runs: str) -> None:
    """Remove an unfinished run's folder, and its condition's and task's folders if that
    leaves them empty (never ``runs`` itself or above)."""
    shutil.rmtree(folder, ignore_errors=True)
    parent = os.path.dirname(folder)
    while os.path.normpath(parent) != os.path.normpath(runs) and parent.startswith(runs):
        try:
            os.rmdir(parent)
        except OSError:  # not empty
            return
        parent = os.path.dirname(parent)


def _line(r: RunResult) -> str:
    f = r.final()
    acc = f"  acc {f['final_val_acc']:.3f}" if f["final_val_acc"] is not None else ""
    vl = f["final_val_loss"]
    extra = ""
    if r.notes.get("actions") is not None:
        extra += f"  actions {r.notes['actions']}"
    if "matched" in r.notes:
        extra += "  replay " + ("matched bit for bit" if r.notes["matched"] else
                                f"DIFFERS from step {r.notes['first_difference_step']}")  # fmt: skip
    vls = "nan" if vl is None else f"{vl:.4f}"
    return (f"{r.task:<14} {LABELS[r.condition]:<24} seed {r.seed}  val loss {vls}{acc}"
            f"{extra}  ({r.seconds:.1f} s)")  # fmt: skip


class _NoBar:
    def set_description(self, _: str) -> None: ...
    def set_postfix_str(self, _: str, refresh: bool = True) -> None: ...
    def update(self, _: int) -> None: ...
    def close(self) -> None: ...
    def write(self, msg: str, file: Any = None) -> None:
        print(msg, file=file or sys.stderr, flush=True)


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]

    return tqdm(total=total, unit="run", dynamic_ncols=True, file=sys.stderr)


# ------------------------------------------------------------------------------ files
def save_run(folder: str, r: RunResult) -> None:
    doc = {"task": r.task, "condition": r.condition, "seed": r.seed, "steps": r.steps,
           "seconds": r.seconds, "run_dir": r.run_dir, "final": r.final(), "notes": r.notes,
           "curve": r.curve.columns()}  # fmt: skip
    jsonl.write_json_atomic(os.path.join(folder, "curve.json"), doc)
    with open(os.path.join(folder, "curve.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for row in zip(*r.curve.columns().values(), strict=True):
            w.writerow(["" if v is None else repr(v) for v in row])


def save_summary(out: str, results: Sequence[RunResult]) -> None:
    rows = [r.row() for r in results]
    jsonl.write_json_atomic(os.path.join(out, "summary.json"), rows)
    with open(os.path.join(out, "summary.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["task"])
        w.writeheader()
        for row in rows:
            w.writerow({k: "" if v is None else v for k, v in row.items()})


def load_bench(out: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``bench.json`` and every run's ``curve.json`` (in the plan's order) of a bench folder."""
    meta_path = os.path.join(out, "bench.json")
    if not os.path.exists(meta_path):
        raise BenchError(f"no bench at {os.path.abspath(out)} (bench.json is missing): "
                         "'hotcb bench run --out DIR' makes one")  # fmt: skip
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except ValueError as exc:
        raise BenchError(f"{meta_path} is not valid JSON ({exc}): not a bench this version "
                         "wrote; 'hotcb bench run --out DIR --force' makes a new one") from None  # fmt: skip
    missing = [k for k in ("tasks", "seeds", "conditions")
               if not isinstance(meta, dict) or not isinstance(meta.get(k), (list, dict))]  # fmt: skip
    if missing:
        raise BenchError(f"{meta_path} has no {', '.join(missing)}: not a bench this version "
                         "wrote; 'hotcb bench run --out DIR --force' makes a new one")  # fmt: skip
    runs = []
    for task in meta["tasks"]:
        for seed in meta["seeds"]:
            for cond in meta["conditions"]:
                path = os.path.join(out, "runs", slug(task), cond, f"s{seed}", "curve.json")
                if os.path.exists(path):
                    with open(path) as f:
                        runs.append(json.load(f))
    return meta, runs


__all__ = [
    "HOTCB_CONDITIONS", "BenchError", "BenchInterrupted", "Runner", "Settings", "TaskError",
    "Trained",
    "current_lr", "evaluate", "load_bench", "run_bench", "train", "tune_min_steps",
]  # fmt: skip

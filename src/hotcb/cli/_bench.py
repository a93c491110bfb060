"""``hotcb bench run|report``: does steering beat a schedule, on this machine? (docs/bench.md)

Only the standard library is imported here: the bench itself (torch, scikit-learn, matplotlib,
tqdm) loads when a command runs.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from typing import Any

from .. import jsonl
from ..bench import CONDITIONS, LABELS, TASKS, parse_names
from ._common import UsageError

RUN_HELP = """\
Train every task × condition × seed (seeds 0..N-1), save each run's curves (step, train loss,
val loss, val acc, lr) under OUT/runs/, one row per run in OUT/summary.csv and summary.json,
then write the report (see 'hotcb bench report'). Ctrl-C keeps the runs that finished and
writes their report (exit code 130; Ctrl-C again while it is written is ignored, a third skips
it); the same command with --resume then runs the rest.

tasks: digits_mlp, digits_cnn, digits_badlr (lr 10x too high) on scikit-learn's bundled digits;
  charlm (a character-level transformer on the Python standard library's own source files);
  cifar10_resnet20 (needs --data DIR holding CIFAR-10's python version; skipped otherwise);
  module:function for your own task (the contract: docs/bench.md).
conditions: fixed, cosine, plateau (ReduceLROnPlateau), schedulefree (Schedule-Free AdamW),
  prodigy, autopilot (hotcb's rule autopilot, auto mode), tune (hotcb tune, active), ai (the
  LLM autopilot: needs HOTCB_AI_KEY, --ai-base-url and --ai-model; skipped otherwise), replay
  (replays the recipe of --replay-of's run and checks the curve is the same bit for bit).

example: hotcb bench run --task digits_mlp,digits_badlr --conditions fixed,plateau,autopilot \\
           --seeds 2 --out bench-out && open bench-out/report.html
"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    bp = sub.add_parser(
        "bench",
        help="benchmark steering against schedules on real tasks: run, then report",
        description="Measure whether steering (rules, the tuner, an LLM) beats fixed schedules, "
        "on your machine, with real training runs (docs/bench.md).",
    )
    bsub = bp.add_subparsers(dest="bench_command", metavar="OP")
    bsub.required = True
    p = bsub.add_parser(
        "run",
        help="train tasks × conditions × seeds and save every run's curves",
        description=RUN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", "--tasks", dest="tasks", required=True, metavar="T[,T…]",
                   help=f"tasks, comma-separated: {', '.join(TASKS)} or module:function")  # fmt: skip
    p.add_argument("--conditions", required=True, metavar="C[,C…]",
                   help=f"conditions, comma-separated: {', '.join(CONDITIONS)}")  # fmt: skip
    p.add_argument("--seeds", type=int, default=1, help="seeds per condition (default 1)")
    p.add_argument("--steps", type=int, help="optimizer steps per run (default: the task's own)")
    p.add_argument("--out", default="bench-out", help="output folder (default ./bench-out)")
    p.add_argument("--force", action="store_true",
                   help="replace a bench already in --out (its runs are deleted)")  # fmt: skip
    p.add_argument("--resume", action="store_true",
                   help="go on with the bench in --out (interrupted): its finished runs are "
                   "kept, the others run; the same settings as it was made with")  # fmt: skip
    p.add_argument("--data", help="folder holding CIFAR-10 (for cifar10_resnet20)")
    p.add_argument("--replay-of", default="autopilot", choices=("autopilot", "tune", "ai"),
                   help="the condition whose runs 'replay' replays (default autopilot)")  # fmt: skip
    p.add_argument("--rules", help="autopilot rules file (default: the shipped rules)")
    p.add_argument("--tune-start", choices=("baseline", "bracket"),
                   help="how the tune condition's tuner begins: baseline segments (its default) "
                        "or a bracket of the lr (docs/tune.md)")  # fmt: skip
    p.add_argument("--ai-base-url", help="OpenAI-compatible endpoint for the ai condition")
    p.add_argument("--ai-model", help="model name for the ai condition")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: small models, comparable timings)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.set_defaults(func=cmd_run)

    p = bsub.add_parser(
        "report",
        help="write DIR/report.html, DIR/report.md and DIR/img/bench_<task>.png",
        description="From a folder of 'hotcb bench run': one self-contained HTML page, a "
        "markdown summary and a PNG per task (mean ± std over seeds), with mean ± std of the "
        "final val loss and accuracy per condition, and plain statements where a baseline beats "
        "a hotcb condition and whether each replay matched bit for bit.",
    )
    p.add_argument("folder", metavar="DIR", nargs="?",
                   help="the --out folder of 'hotcb bench run' (or --dir DIR)")  # fmt: skip
    p.add_argument("--dir", "-d", dest="bench_dir", metavar="DIR", help="the same as DIR")
    p.set_defaults(func=cmd_report)


def cmd_run(args: argparse.Namespace) -> int:
    if args.dir != os.environ.get("HOTCB_DIR", "."):
        raise UsageError(f"bench run writes its runs under --out (now {args.out}), not into a "
                         f"run directory: give --out {args.dir} instead of --dir")  # fmt: skip
    said: list[str] = []  # a bad task and a bad condition: both, in one go
    tasks = conditions = []
    try:
        tasks = parse_names(args.tasks, TASKS, "task", user_ok=True)
    except ValueError as exc:
        said.append(str(exc))
    try:
        conditions = parse_names(args.conditions, CONDITIONS, "condition")
    except ValueError as exc:
        said.append(str(exc))
    if said:
        raise UsageError("; also ".join(said))
    _require_extra(conditions)
    from ..bench.runner import BenchError, BenchInterrupted, Settings, TaskError, run_bench

    settings = Settings(
        tasks=tasks, conditions=conditions, seeds=args.seeds, steps=args.steps, out=args.out,
        data=args.data, replay_of=args.replay_of, rules=args.rules, tune_start=args.tune_start,
        ai_base_url=args.ai_base_url, ai_model=args.ai_model, threads=args.threads,
        progress=not args.no_progress, force=args.force, resume=args.resume,
        command=shlex.join(["hotcb", *sys.argv[1:]]),
    )  # fmt: skip
    with _CtrlC() as ctrl_c:
        try:
            meta = run_bench(settings)
        except BenchError as exc:
            raise UsageError(str(exc)) from None
        except TaskError as exc:  # a bug in the task: where it is, then the one line
            if not args.debug:
                print(exc.traceback, end="", file=sys.stderr, flush=True)
            _stopped(settings.out, report=not args.no_report)
            raise
        except BenchInterrupted as exc:  # Ctrl-C: what finished is kept, and reported
            return _interrupted(exc.meta, ctrl_c, report=not args.no_report)
        except KeyboardInterrupt:  # before the first run started (a task's data loading)
            print("hotcb bench: interrupted before the first run started", file=sys.stderr)
            return 130
    out = meta["settings"]["out"]
    print(f"bench: {len(meta['tasks'])} task(s) × {len(meta['conditions'])} condition(s) × "
          f"{len(meta['seeds'])} seed(s) in {meta['wall_seconds']:.1f} s → {out}")  # fmt: skip
    for s in meta["skipped"]:
        print(f"skipped {s['what']}: {s['why']}")
    if not args.no_report:
        _report(out)
    else:
        print(f"report: hotcb bench report {shlex.quote(out)}")
    return 0


class _CtrlC:
    """SIGINT during ``hotcb bench run``. The first stops the runs (``KeyboardInterrupt``, as
    Python's own handler); while what finished is then saved and the partial report written,
    the next is ignored, with a line saying so (a second Ctrl-C a moment after the first
    ended the bench with neither), and one more during the report skips it. Left alone where
    SIGINT is ignored (a background job) or handled by someone else."""

    def __init__(self) -> None:
        self.count = 0
        self.reporting = False  # the partial report is being written: a third Ctrl-C skips it
        self._previous: Any = None

    def __enter__(self) -> _CtrlC:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.count == 1 or (self.reporting and self.count > 2):
            raise KeyboardInterrupt
        if self.count == 2:
            print("hotcb bench: saving the finished runs and their partial report first "
                  "(Ctrl-C once more skips the report)", file=sys.stderr, flush=True)  # fmt: skip


def _stopped(out: str, *, report: bool) -> None:
    """A run's error stopped the bench: the partial report of the runs that finished before
    it (it says ``STOPPED by an error …``; none was written, only Ctrl-C wrote one), and how
    to go on."""
    from ..bench.report import write_report

    meta = jsonl.read_json(os.path.join(out, "bench.json"), None)
    n = meta.get("interrupted_after_runs", 0) if isinstance(meta, dict) else 0
    if not n:
        return  # nothing finished (or the error came before the first run): nothing to report
    later = f"'hotcb bench report {shlex.quote(out)}' writes it"
    if not report:
        where = f"report: hotcb bench report {shlex.quote(out)}"
    else:
        try:
            where = f"partial report: {write_report(out)['md']}"
        except Exception as exc:  # the runs are saved; the report can be made later
            where = f"the report failed: {exc}; {later}"
    print(f"hotcb bench: stopped by an error after {n} run{'' if n == 1 else 's'} ({where}); "
          "once it is fixed, the same command with --resume runs the rest", file=sys.stderr,
          flush=True)  # fmt: skip


def _interrupted(meta: dict[str, Any], ctrl_c: _CtrlC, *, report: bool) -> int:
    """Ctrl-C during the runs: the partial report (as 'hotcb bench report' writes it), one line
    saying how far the bench got and how to go on, and exit code 130 (interrupted by SIGINT)."""
    from ..bench.report import write_report

    out = meta["settings"]["out"]
    n = meta.get("interrupted_after_runs", 0)
    done = f"interrupted after {n} run{'' if n == 1 else 's'}; partial results in {out}"
    later = f"'hotcb bench report {shlex.quote(out)}' writes it"
    if not report:
        where = f"report: hotcb bench report {shlex.quote(out)}"
    elif n == 0:
        where = "no run finished: nothing to report"
    else:
        ctrl_c.reporting = True
        try:
            paths = write_report(out)
            where = f"report: {paths['md']}, {os.path.basename(paths['html'])}"
        except KeyboardInterrupt:  # the third Ctrl-C
            where = f"the report was skipped; {later}"
        except Exception as exc:  # the runs are saved; the report can be made later
            where = f"the report failed: {exc}; {later}"
        finally:
            ctrl_c.reporting = False
    print(f"hotcb bench: {done} ({where}); the same command with --resume (not --force) "
          "runs the rest", file=sys.stderr, flush=True)  # fmt: skip
    return 130


#: What every bench needs (its tasks, report and progress), then what a condition adds.
_NEEDS = {"": ("torch", "numpy", "sklearn", "matplotlib", "tqdm"),
          "schedulefree": ("schedulefree",), "prodigy": ("prodigyopt",), "tune": ("optuna",),
          "autopilot": ("yaml",), "ai": ("yaml", "openai")}  # fmt: skip


def _require_extra(conditions: list[str]) -> None:
    """Before anything trains: the modules the bench and ``conditions`` import, with the
    extra that brings them (a missing one failed a bundled task as "in the task's own code",
    the report after the training, or the condition when its turn came)."""
    import importlib.util

    wanted = [m for key in ("", *conditions) for m in _NEEDS.get(key, ())]
    missing = [m for m in dict.fromkeys(wanted) if importlib.util.find_spec(m) is None]
    if not missing:
        return
    extra = "hotcb[bench,ai]" if "openai" in missing else "hotcb[bench]"
    raise UsageError(f"hotcb bench needs {', '.join(missing)}, not installed here: pip install "
                     f'"{extra}" (and torch first: see the README)')  # fmt: skip


def cmd_report(args: argparse.Namespace) -> int:
    given = [f for f in (args.folder, args.bench_dir) if f is not None]
    if not given and args.dir != os.environ.get("HOTCB_DIR", "."):
        given = [args.dir]  # hotcb --dir DIR bench report
    if not given:
        raise UsageError("which bench? give its folder: hotcb bench report DIR (the --out of "
                         "'hotcb bench run')")  # fmt: skip
    if len(given) == 2 and os.path.abspath(given[0]) != os.path.abspath(given[1]):
        raise UsageError(f"two folders: DIR {given[0]} and --dir {given[1]}; give one")
    _report(given[0])
    return 0


def _report(folder: str) -> None:
    from ..bench.report import write_report
    from ..bench.runner import BenchError

    try:
        paths = write_report(folder)
    except BenchError as exc:
        raise UsageError(str(exc)) from None
    print(f"report: {os.path.abspath(paths['html'])}")
    print(f"summary: {os.path.abspath(paths['md'])}")


__all__ = ["LABELS", "register"]

"""``hotcb launch -- COMMAND``: run a training command with the dashboard and the autopilot."""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import os
import shlex
import shutil
import signal
import sys
from typing import TYPE_CHECKING, Any

from ..runfiles import redact_argv, shell_path
from ._common import DIRECTION_DEFAULT, UsageError

if TYPE_CHECKING:
    from .._launch import Launch


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "launch",
        help="run a training command (python train.py, torchrun …) with hotcb around it: "
        "the dashboard, the autopilot, signals forwarded, its exit code",
        description="Run COMMAND (everything after --) as the training, with HOTCB_RUN_DIR set "
        "to the run directory (HotKernel() with no argument reads it): --dir, else $HOTCB_DIR, "
        "else a new ./runs/<time>. --serve starts the dashboard and prints its URL; "
        "--autopilot MODE starts the autopilot on the run, --tune MODE the online tuner. Ctrl-C and SIGTERM go to the "
        "training's process group (a third Ctrl-C kills it). When the training ends, what it "
        "left running (torchrun's workers too), the dashboard and the autopilot are stopped "
        "and hotcb launch exits with the training's exit code (128+N when signal N ended it, "
        "or when it exited with 1 after a forwarded signal N). See docs/launch.md.",
        usage="hotcb launch [--dir RUN] [--serve] [--port P] [--host H] [--autopilot MODE] "
        "[--tune MODE] [--tune-...] -- COMMAND [ARGS ...]",
    )
    p.add_argument("--serve", action="store_true", help="start the dashboard (hotcb serve)")
    p.add_argument(
        "--port",
        type=int,
        default=None,
        help="dashboard port (default 8421 when free, else any free port; 0: any free port)",
    )
    p.add_argument("--host", default=None, help="dashboard bind address (default 127.0.0.1)")
    p.add_argument(
        "--autopilot",
        choices=("off", "suggest", "auto", "ai_suggest", "ai_auto"),
        default="off",
        metavar="MODE",
        help="run hotcb autopilot on the run: off (default), suggest, auto, ai_suggest, ai_auto",
    )
    p.add_argument("--key-metric", default=None, help="the autopilot's metric (default val_loss)")
    p.add_argument(
        "--direction",
        choices=("minimize", "maximize"),
        default=None,
        help=f"of the key metric ({DIRECTION_DEFAULT})",
    )
    p.add_argument("--rules", default=None, metavar="FILE", help="the autopilot's rules file")
    from ._autopilot import add_ai_flags

    add_ai_flags(p)
    from ._notify import add_notify_flags

    add_notify_flags(p)  # hotcb notify runs beside the training
    t = p.add_argument_group("online tuner (docs/tune.md; optuna in the training's environment)")
    t.add_argument("--tune", choices=("off", "observe", "suggest", "active"), default="off",
                   metavar="MODE", help="turn the tuner on from the first step: observe, "
                   "suggest, active (as 'hotcb tune enable --mode MODE'); default off")  # fmt: skip
    t.add_argument("--tune-objective", metavar="METRIC",
                   help="the metric it scores (default val_loss, else loss)")  # fmt: skip
    t.add_argument(
        "--tune-direction",
        choices=("minimize", "maximize"),
        help=f"of the objective ({DIRECTION_DEFAULT})",
    )
    seg = t.add_mutually_exclusive_group()
    seg.add_argument("--tune-segment-steps", type=int, metavar="N",
                     help="steps per segment (default 200)")  # fmt: skip
    seg.add_argument(
        "--tune-segment-evals",
        type=int,
        metavar="K",
        help="values of the objective per segment (one logged at validation)",
    )
    t.add_argument("--tune-recipe", metavar="FILE", help="search space and settings")
    t.add_argument("--tune-storage", metavar="URL", help="an Optuna storage to share (a file: "
                   "in the run directory or the trainer's allowed_roots; a password in it goes "
                   "in plain text to the commands file: use PGPASSWORD or ~/.pgpass)")  # fmt: skip
    t.add_argument("--tune-study", metavar="NAME", help="the study's name (runs share it)")
    t.add_argument("--tune-restore", choices=("values", "state"),
                   help="what a roll-back puts back: the knobs (default), or also the model's "
                   "weights and the optimizer's state from the trial's start")  # fmt: skip
    t.add_argument("--tune-start", choices=("baseline", "bracket"),
                   help="how the tuner begins: baseline segments (default), or a bracket of "
                   "the lr trained from the same weights (docs/tune.md)")  # fmt: skip
    t.add_argument("--tune-sync", action="store_true", default=None,
                   help="Optuna on the training thread: the study opens before the first "
                   "step and trials start on the boundaries (short runs; docs/tune.md)")  # fmt: skip
    p.add_argument(
        "--resume-from",
        default=None,
        metavar="CKPT",
        help="a checkpoint for the training to resume from, passed as $HOTCB_RESUME_FROM",
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_launch)


def _command(args: argparse.Namespace) -> list[str]:
    argv = list(args.command)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise UsageError("give the training command after --, e.g. hotcb launch -- python train.py")
    return argv


#: The autopilot's flags (``--autopilot MODE``), and those only its LLM modes read.
_PILOT_FLAGS = (("--key-metric", "key_metric"), ("--direction", "direction"),
                ("--rules", "rules"))  # fmt: skip
_AI_FLAGS = (("--ai-config", "ai_config"), ("--ai-base-url", "ai_base_url"),
             ("--ai-model", "ai_model"), ("--ai-budget", "ai_budget"))  # fmt: skip


def _autopilot_args(args: argparse.Namespace) -> list[str]:
    """``hotcb autopilot``'s flags, checked as ``hotcb autopilot`` checks them, before anything
    is created: a bad --rules file or AI setting stops the launch, as a bad --notify does (the
    autopilot would fail beside a training already running), and so do its flags without
    ``--autopilot MODE``, which nothing would read."""
    given_ai = [flag for flag, key in _AI_FLAGS if getattr(args, key) is not None]
    if args.autopilot == "off":
        given = [flag for flag, key in _PILOT_FLAGS if getattr(args, key) is not None]
        if given or given_ai:
            raise UsageError(f"{', '.join(given + given_ai)} without --autopilot MODE: the "
                             "autopilot stays off (add --autopilot suggest, auto, ai_suggest "
                             "or ai_auto)")  # fmt: skip
        return []
    if given_ai and not args.autopilot.startswith("ai_"):
        them = "it" if len(given_ai) == 1 else "them"
        raise UsageError(f"{', '.join(given_ai)} with --autopilot {args.autopilot}: only the "
                         f"LLM autopilot reads {them} (--autopilot ai_suggest or ai_auto)")  # fmt: skip
    if args.rules is not None:
        from ..autopilot.rules import load_rules
        from ._autopilot import require_rules_file

        require_rules_file(args.rules, "--rules")
        load_rules(args.rules)  # every problem, with its line
    if args.autopilot.startswith("ai_"):
        from ._autopilot import ai_config

        ai_config(args.ai_config, args.ai_base_url, args.ai_model, args.ai_budget)
    out: list[str] = []
    for flag, value in (("--key-metric", args.key_metric), ("--direction", args.direction),
                        ("--rules", args.rules and os.path.abspath(args.rules)),
                        ("--ai-config", args.ai_config and os.path.abspath(args.ai_config)),
                        ("--ai-base-url", args.ai_base_url), ("--ai-model", args.ai_model),
                        ("--ai-budget", args.ai_budget)):  # fmt: skip
        if value is not None:
            out += [flag, str(value)]
    return out


def _notify_args(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """``hotcb notify``'s flags, checked here first: a bad --notify file stops the launch;
    and the environment variables its e-mails read a password from (the notifier's secret,
    kept out of the training's environment)."""
    from ._notify import notify_argv, notify_config

    config = notify_config(args)
    secrets = [env for d in (config.deliveries if config is not None else ())
               if (env := getattr(d, "password_env", None))]  # fmt: skip
    return notify_argv(args), secrets


def _check_tuner(args: argparse.Namespace) -> None:
    """``--tune-*`` flags, checked before anything is created: none without ``--tune MODE``,
    counts of at least 1, a ``--tune-recipe`` file that loads (every problem listed)."""
    given = [f"--tune-{k[5:].replace('_', '-')}" for k, v in sorted(vars(args).items())
             if k.startswith("tune_") and v is not None]  # fmt: skip
    if args.tune == "off":
        if given:
            raise UsageError(f"{', '.join(given)} without --tune MODE: the tuner stays off "
                             "(add --tune active, suggest or observe)")  # fmt: skip
        return
    for flag, n in (("--tune-segment-steps", args.tune_segment_steps),
                    ("--tune-segment-evals", args.tune_segment_evals)):  # fmt: skip
        if n is not None and n < 1:
            raise UsageError(f"{flag} must be at least 1, got {n}")
    if args.tune_recipe is not None:
        from ..modules.tune import load_recipe

        src = os.path.abspath(os.path.expanduser(args.tune_recipe))
        if not os.path.isfile(src):
            raise UsageError(f"--tune-recipe: no file at {src}")
        load_recipe(src)  # RecipeError: every problem with its line


def _enable_tuner(args: argparse.Namespace, run_dir: str) -> str | None:
    """``--tune MODE``: the ``tune enable`` command (flags checked by :func:`_check_tuner`),
    written once the dashboard is up, before the training starts, so the kernel applies it at
    its first step."""
    if args.tune == "off":
        return None
    from ..client import HotClient

    settings = {"objective": args.tune_objective, "direction": args.tune_direction,
                "segment_steps": args.tune_segment_steps,
                "segment_evals": args.tune_segment_evals,
                "recipe": _tune_recipe(args.tune_recipe, run_dir),
                "storage": args.tune_storage, "study": args.tune_study,
                "restore": args.tune_restore, "start": args.tune_start,
                "sync": args.tune_sync}  # fmt: skip
    # (to the run it starts: an earlier one in the directory being over is no news)
    return HotClient(run_dir, source="launch", warn_over=False).tune_enable(args.tune, **settings)


def _tune_recipe(path: str | None, run_dir: str) -> str | None:
    """``--tune-recipe FILE`` (relative to where hotcb launch runs; checked by
    :func:`_check_tuner`) copied into the run directory, where the run reads recipes from
    (and keeps what it was tuned with); its name there."""
    if path is None:
        return None
    src = os.path.abspath(os.path.expanduser(path))
    dest = os.path.join(run_dir, os.path.basename(src))
    if os.path.exists(dest):
        if not filecmp.cmp(src, dest, shallow=False):
            raise UsageError(f"--tune-recipe: {dest} exists and differs from {src}")
    else:
        os.makedirs(run_dir, exist_ok=True)
        shutil.copyfile(src, dest)
    return os.path.basename(src)


def _run_dirs(args: argparse.Namespace) -> tuple[str, str, str, str | None]:
    """``(run_dir, serve_dir, run_id, made)``. ``--dir`` (or ``$HOTCB_DIR``) is served alone;
    without either (the CLI's default ``.`` is not taken as a run directory) a new
    ``./runs/<time>`` is served from ``./runs``, beside the earlier runs. ``made``: the
    topmost folder of the run directory's path that did not exist before (None: none)."""
    from .._launch import new_run_dir

    if args.dir == "." and not os.environ.get("HOTCB_DIR"):
        made = _first_missing(os.path.abspath("runs"))
        path = new_run_dir("runs")
        return path, os.path.dirname(path), os.path.basename(path), made or path
    path = os.path.abspath(args.dir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{path} is a file, not a run directory: give --dir a folder (a new "
                         "one is made)")  # fmt: skip
    return path, path, ".", _first_missing(path)


def _refuse_a_live_run(run_dir: str) -> None:
    """A run directory whose trainer, or whose launch, still runs: refused (exit 2), before
    anything is created (:func:`hotcb._launch.busy`)."""
    from .._launch import busy

    why = busy(run_dir)
    if why is not None:
        raise UsageError(why)


def _first_missing(path: str) -> str | None:
    """The topmost folder of absolute ``path`` that does not exist (None: it exists)."""
    missing = None
    while not os.path.exists(path):
        missing, path = path, os.path.dirname(path)
    return missing


def _unmake(run_dir: str, made: str | None) -> None:
    """A launch that did not start its training leaves nothing: the run directory it made
    goes, with what the launch wrote in it, and so do the folders above it that it made,
    when nothing else has come into them (a run of another launch in a new ``./runs``)."""
    if made is None:
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    path = run_dir
    while path != made and path != os.path.dirname(path):
        path = os.path.dirname(path)
        try:
            os.rmdir(path)
        except OSError:  # not empty
            return


def _say(line: str) -> None:
    with contextlib.suppress(RuntimeError):  # a signal handler printing while the main thread does
        print(f"hotcb launch: {line}", file=sys.stderr, flush=True)


def _checked(
    args: argparse.Namespace,
) -> tuple[list[str], list[str], tuple[list[str], list[str]]]:
    """The training command, the autopilot's flags and the notifier's (with the names of its
    secrets), every flag checked before anything is created: a refused launch leaves nothing
    behind."""
    from .._launch import check_program, missing_extra

    argv = _command(args)
    check_program(argv)
    missing = missing_extra(argv, autopilot=args.autopilot, rules=args.rules, tune=args.tune)
    if missing is not None:
        raise UsageError(missing)
    if args.serve and args.port is not None and not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be 0..65535, got {args.port}")
    if args.resume_from is not None and not os.path.exists(args.resume_from):
        raise UsageError(f"--resume-from: no checkpoint at {os.path.abspath(args.resume_from)}")
    _check_tuner(args)
    return argv, _autopilot_args(args), _notify_args(args)


def cmd_launch(args: argparse.Namespace) -> int:
    from .._launch import Launch, LaunchOptions, free_port

    argv, autopilot_args, (notify_args, notify_secrets) = _checked(args)
    port = free_port(args.port) if args.serve else 0
    run_dir, serve_dir, run_id, made = _run_dirs(args)
    _refuse_a_live_run(run_dir)
    tune_ids: list[str | None] = []
    opts = LaunchOptions(
        serve=args.serve,
        serve_dir=serve_dir,
        run_id=run_id,
        port=port,
        host=args.host,
        autopilot=args.autopilot,
        autopilot_args=autopilot_args,
        notify_args=notify_args,
        secret_env=notify_secrets,
        resume_from=args.resume_from,
        out=_say,
        prepare=lambda path: tune_ids.append(_enable_tuner(args, path)),
    )
    run = Launch(argv, run_dir, opts)
    got: dict[str, int] = {}

    def on_signal(signum: int, frame: Any) -> None:
        got["sig"] = signum
        if run.pid is None:  # still starting: stop the start (it cleans up after itself)
            raise KeyboardInterrupt
        sent = run.forward(signum)
        got_name = signal.Signals(signum).name
        if sent is None:  # the training has ended: nothing was sent
            return
        if sent == signum:
            _say(f"{got_name} forwarded to the training (pid {run.pid})")
        else:  # the third in a row
            _say(f"{got_name} forwarded as {sent.name} to the training (pid {run.pid}): the "
                 f"third in a row")  # fmt: skip

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            run.start()
        except BaseException as exc:  # refused or interrupted before the training started
            if run.pid is None:
                _unmake(run_dir, made)
            if isinstance(exc, KeyboardInterrupt):
                return 128 + got.get("sig", signal.SIGINT)
            raise
        _say_started(args, run, tuned=any(tune_ids))
        code = run.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    helpers = [(said, name) for said, name, on in (
        ("dashboard", "dashboard", args.serve),
        ("autopilot", "autopilot", args.autopilot != "off"),
        ("notifications", "notifier", bool(opts.notify_args))) if on]  # fmt: skip
    failed = run.helpers_failed
    stopped = _listed([said for said, name in helpers if name not in failed])
    broke = _listed([said for said, name in helpers if name in failed])
    return _ended(code, run.signal_sent, (f"; {stopped} stopped" if stopped else "")
                  + (f"; {broke} had failed (said above)" if broke else ""))  # fmt: skip


def _listed(names: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def _say_started(args: argparse.Namespace, run: Launch, *, tuned: bool) -> None:
    """What the launch started, and where."""
    _say(f"run directory {run.run_dir}")
    if run.url:
        _say(f"dashboard: {run.url}")
    if args.autopilot != "off":
        _say(f"autopilot ({args.autopilot}) on the run")
    if tuned:
        _say(
            f"tuner ({args.tune}) from the first step: 'hotcb --dir {shell_path(run.run_dir)} tune status'"
        )
    _say(f"training (pid {run.pid}): {shlex.join(redact_argv(run.argv))}")  # (CI logs keep it)


def _ended(code: int, sent: signal.Signals | None, stopped: str) -> int:
    """Say how the training ended; hotcb launch's exit code: the training's, ``128 + N`` for
    signal ``N``, and for exit code 1 after a forwarded SIGINT or SIGTERM (torchrun's answer)."""
    from .._launch import exit_status

    status = exit_status(code, sent)
    if status != exit_status(code) and sent is not None:
        _say(f"training exited with {code} after {sent.name}: interrupted, exit code {status}"
             f"{stopped}")  # fmt: skip
    else:
        _say(f"training exited with {status}{stopped}")
    return status

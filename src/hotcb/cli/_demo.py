"""``hotcb demo``: a real training run and the dashboard, started together."""

from __future__ import annotations

import argparse
import os

from ._common import UsageError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from ..demo import add_arguments

    p = sub.add_parser(
        "demo",
        help="start a demo training run and the dashboard (Ctrl-C stops both)",
        description="Train a small model on scikit-learn's digits with torch (without torch: a "
        "pure-Python loop on a noisy quadratic) and serve the dashboard for it. Prints the URL; "
        "Ctrl-C stops the trainer and the server. Default run directory: a fresh "
        "./runs/demo-<time> (./runs is served, so earlier demo runs can be compared); "
        "--run-dir D or hotcb --dir D demo: D, served alone.",
    )
    add_arguments(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    # `hotcb --dir D demo` (or $HOTCB_DIR) names the run directory as --run-dir D does; the
    # default --dir, the current directory, leaves the demo its fresh ./runs/demo-<time>
    given = getattr(args, "dir", ".")
    if args.run_dir is None and os.path.abspath(given) != os.getcwd():
        args.run_dir = given
    if args.run_dir is not None and os.path.isfile(args.run_dir):
        raise UsageError(f"{os.path.abspath(args.run_dir)} is a file, not a run directory: give "
                         "--run-dir a folder (a new one is made)")  # fmt: skip
    return run_demo(args)

"""``hotcb branch``: a new run that continues one of this run's checkpoints, with changes."""

from __future__ import annotations

import argparse

from ..branch import UNKNOWN_COMMAND, branch
from ..runfiles import REDACTED
from ._common import parse_kv, say


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "branch",
        help="start a new run from one of this run's checkpoints, with changed parameters",
        description="Create CHILD from the checkpoint of --dir RUN at --from (a step or the "
        "checkpoint's path): it inherits RUN's ledger up to there, and --set changes land at "
        "its first step. Prints the 'hotcb launch --resume-from' command that starts it.",
    )
    p.add_argument(
        "--from", dest="source", required=True, help="checkpoint step number or checkpoint file"
    )
    p.add_argument("--to", dest="child", required=True, help="the new run directory")
    p.add_argument(
        "--set", dest="params", nargs="+", default=[], metavar="K=V", help="changes (lr=1e-4)"
    )
    p.set_defaults(func=cmd_branch)


def cmd_branch(args: argparse.Namespace) -> int:
    source: int | str = int(args.source) if args.source.isdigit() else args.source
    made = branch(args.dir, args.child, source=source, set_params=parse_kv(args.params))
    # the checkpoint's path and the parent's launch command come from the parent's files
    say(f"branched {made['child']} from {made['parent']} at step {made['step']}")
    say(f"  checkpoint: {made['checkpoint']}")
    print(f"  inherited ledger entries: {made['inherited']}; commands: {len(made['commands'])}")
    if made["frozen"]:
        say(f"  the parent was frozen ({made['frozen']}) at that step, which would ignore the "
            "changes: the branch turns the freeze off first")  # fmt: skip
    print("start it with:")
    say(f"  {made['resume']}")
    if made["resume"].endswith(UNKNOWN_COMMAND):
        print(f"  (the parent was not started with 'hotcb launch', so its command is not known: "
              f"put the one that trains it in place of {UNKNOWN_COMMAND})")  # fmt: skip
    elif REDACTED in made["resume"]:
        print("  (the parent's command is kept without its secrets: put each back where it "
              f"says {REDACTED})")  # fmt: skip
    return 0

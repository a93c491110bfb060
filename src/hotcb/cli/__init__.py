"""The ``hotcb`` command: steer and inspect a run directory from a terminal.

Each command group lives in its own file with a ``register(subparsers)`` function; this file
only assembles them. Errors print one line on stderr and exit with code 2 (``--debug`` shows
the traceback).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from ..errors import HotcbError

_GROUPS = (
    "_core",
    "_cb",
    "_recipe",
    "_tune",
    "_autopilot",
    "_serve",
    "_demo",
    "_launch",
    "_notify",
    "_branch",
    "_bench",
)


class CliError(HotcbError):
    """A user error on the command line: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the message and where to look, no usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {_did_you_mean(message)} (see '{self.prog} --help')\n")


def _did_you_mean(message: str) -> str:
    """argparse's "invalid choice: 'sett' (choose from 'init', …)" with the close one named
    first (``did you mean 'set'?``), as an unknown actuator's name is."""
    found = re.match(r"(.*invalid choice: '([^']*)') \(choose from (.*)\)$", message)
    if found is None:
        return message
    head, given, listed = found.groups()
    choices = [c.strip().strip("'") for c in listed.split(",")]  # quoted or not: Python's
    close = difflib.get_close_matches(given, choices, n=1, cutoff=0.6)
    return f"{head}: did you mean {close[0]!r}?" if close else message


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _Parser(
        prog="hotcb",
        description="Steer a running PyTorch training run: change optimizer params, loss weights, "
        "callbacks and knobs live; pause, checkpoint, stop; read the ledger of what happened.",
    )
    parser.add_argument(
        "--dir",
        "-d",
        default=os.environ.get("HOTCB_DIR", "."),
        help="run directory (default: $HOTCB_DIR or the current directory)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"hotcb {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _GROUPS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    _finish_commands(parser)
    return parser


def _finish_commands(parser: argparse.ArgumentParser) -> None:
    """For every (sub-)command: ``hotcb serve --dir D`` works as well as ``hotcb --dir D
    serve``, and ``hotcb freeze --help`` opens with the line ``hotcb --help`` lists for it,
    where the command has no longer description of its own."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        summaries = {a.dest: a.help for a in action._choices_actions}
        for name, child in action.choices.items():
            if not any("--dir" in a.option_strings for a in child._actions):
                child.add_argument(
                    "--dir",
                    "-d",
                    default=argparse.SUPPRESS,
                    help="run directory (same as hotcb --dir)",
                )
            if child.description is None and summaries.get(name):
                child.description = summaries[name]
            child.set_defaults(_prog=child.prog)  # the deepest command given names itself
            _finish_commands(child)


#: Options that name a file or folder: a ``~`` in them is the home directory, as in ``--dir``
#: (a shell leaves ``--recipe=~/r.jsonl`` and ``HOTCB_DIR=~/runs/a`` as they are).
_PATH_OPTIONS = ("dir", "recipe", "file", "out", "rules", "ai_config", "config", "notify",
                 "token_file", "allowed_root", "tune_recipe", "data")  # fmt: skip


def _expand_home(args: argparse.Namespace) -> None:
    for name in _PATH_OPTIONS:
        value = getattr(args, name, None)
        if isinstance(value, str):
            setattr(args, name, os.path.expanduser(value))
        elif isinstance(value, list):
            setattr(args, name, [os.path.expanduser(v) if isinstance(v, str) else v
                                 for v in value])  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
    except KeyboardInterrupt:  # Ctrl-C while the commands are set up: as in a command
        return 130
    if extra:  # said by the command they were given to, not by `hotcb` (see its --help)
        prog = getattr(args, "_prog", parser.prog)
        parser.exit(2, f"{prog}: error: unrecognized arguments: {' '.join(extra)} "
                       f"(see '{prog} --help')\n")  # fmt: skip
    _expand_home(args)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except (HotcbError, OSError, ValueError, TimeoutError, ImportError) as exc:
        if args.debug:
            raise
        from ._common import term_safe  # an error may quote a run's file (a recipe's line)

        said = "\n".join(term_safe(line) for line in str(exc).split("\n"))
        # one write, newline included (print makes two): under `hotcb launch` the helpers run
        # unbuffered, and another process's line landed between this text and its newline
        sys.stderr.write(f"hotcb: error: {said}\n")
        sys.stderr.flush()
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

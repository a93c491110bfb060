"""Callback commands: ``cb load|unload|enable|disable|set_params|list`` and the sugar
``hotcb enable ID`` / ``hotcb disable ID``.

``cb list`` runs in another process than the training, so it rebuilds the callbacks' state from
the ledger (the authoritative record of what the run did), not from the run's memory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .. import jsonl
from ..ledger import LedgerView
from ..runfiles import RunPaths
from ._common import UsageError, add_wait, client, finish, parse_kv, require_run_dir, say


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cb = sub.add_parser("cb", help="callbacks: load, unload, enable, disable, set_params, list")
    csub = cb.add_subparsers(dest="op", metavar="OP")
    csub.required = True

    p = csub.add_parser(
        "load",
        help="load (or reload) a callback from a file or a module",
        usage="%(prog)s [-h] (--file FILE | --path PATH) --symbol SYMBOL "
        "[--enabled | --disabled] [--init KEY=VALUE ...] [--wait ...] id",
    )
    # an init value always has '=': an id after --init's values is still the id
    p.add_argument("id", nargs="?", help="the callback's name in this run (required)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", help="a .py file (its source is captured in hotcb.sources/)")
    src.add_argument("--path", help="an importable module, e.g. hotcb.modules.cb.callbacks")
    p.add_argument("--symbol", required=True, help="the class or factory in it")
    onoff = p.add_mutually_exclusive_group()
    onoff.add_argument(
        "--enabled",
        dest="enabled",
        action="store_true",
        default=True,
        help="load it switched on (the default)",
    )
    onoff.add_argument(
        "--disabled", dest="enabled", action="store_false", help="load it switched off"
    )
    p.add_argument(
        "--init",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="constructor arguments, values parsed as JSON; one or more per --init, and "
        "--init may be repeated",
    )
    add_wait(p)
    p.set_defaults(func=cmd_load)

    for name, text in (
        ("unload", "remove a callback (its on_unload runs)"),
        ("enable", "switch a loaded callback on"),
        ("disable", "switch a loaded callback off (it stays loaded)"),
    ):
        p = csub.add_parser(name, help=text)
        p.add_argument("id")
        add_wait(p)
        p.set_defaults(func=cmd_op, cb_op=name)

    p = csub.add_parser("set_params", help="change a callback's parameters: ID k=v ...")
    p.add_argument("id")
    p.add_argument("params", nargs="+", metavar="KEY=VALUE", help="values parse as JSON")
    add_wait(p)
    p.set_defaults(func=cmd_set_params)

    p = csub.add_parser("list", help="loaded callbacks: state, source sha256, last error")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)

    for name in ("enable", "disable"):
        p = sub.add_parser(name, help=f"{name} a loaded callback (same as 'cb {name} ID')")
        p.add_argument("id")
        add_wait(p)
        p.set_defaults(func=cmd_op, cb_op=name)


def _load_id(args: argparse.Namespace) -> tuple[str, list[str]]:
    """The callback id and the init items: ``--init k=v ID`` gives argparse ``ID`` among the
    init values (an init value always has ``=``), so a last value without ``=`` is the id."""
    items = list(args.init)
    if args.id is None and items and "=" not in items[-1]:
        return items[-1], items[:-1]
    if args.id is None:
        raise UsageError("cb load needs the callback's id, e.g. cb load my_cb --file f.py ...")
    return args.id, items


def cmd_load(args: argparse.Namespace) -> int:
    ident, init = _load_id(args)
    if args.file is not None and not os.path.isfile(args.file):
        raise UsageError(f"no such file: {args.file}")
    cid = client(args).cb_load(
        ident,
        symbol=args.symbol,
        file=args.file,
        path=args.path,
        init=parse_kv(init),
        enabled=args.enabled,
    )
    return finish(args, [cid])


def cmd_op(args: argparse.Namespace) -> int:
    return finish(args, [client(args).send("cb", args.cb_op, id=args.id)])


def cmd_set_params(args: argparse.Namespace) -> int:
    return finish(args, [client(args).cb("set_params", args.id, **parse_kv(args.params))])


def cmd_list(args: argparse.Namespace) -> int:
    paths = RunPaths(args.dir)
    require_run_dir(args.dir)
    meta = jsonl.read_json(paths.run_meta, {}) or {}  # when this life of the trainer began
    cbs = LedgerView.read(paths.ledger).callback_list(meta)
    if args.json:
        print(json.dumps(cbs, indent=2))
        return 0
    if not cbs:
        print("no callbacks loaded")
        return 0
    for c in cbs:
        target = c.get("target") or {}
        parts = [str(target[k]) for k in ("path", "symbol") if target.get(k)]
        where = ":".join(parts) or "(no target)"  # a load refused before it named one
        sha = (c.get("sha256") or "")[:12] or "-"
        say(f"{c['id']:<16} {c['state']:<11} {sha:<12} {where}")
        if c.get("params"):
            say(f"  params: {json.dumps(c['params'])}")
        # last_error: its last exception, or the last command about it that was refused
        raised = f"raised {c['errors']} time(s); " if c.get("errors") else ""
        if c.get("last_error"):
            say(f"  {raised}last problem: {c['last_error']}")
        if c.get("warning"):
            say(f"  warning: {c['warning']}")
    sys.stdout.flush()
    return 0

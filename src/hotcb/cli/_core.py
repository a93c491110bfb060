"""Core commands: init, status, log, set, opt/loss/custom set_params, control (pause, resume,
stop, checkpoint, evaluate, extend, undo, cancel)."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from typing import Any

from .. import jsonl
from ..freeze import freeze_doc
from ..ledger import STALE_AFTER_SEC, LedgerView, iter_entries, replaced_by_resume, tail_state
from ..runfiles import (
    AUTOPILOT_STATE,
    RunPaths,
    folder_of_runs,
    is_network_fs,
    other_live_trainer,
    process_alive,
    redact_secrets,
)
from ._common import (
    UsageError,
    add_wait,
    client,
    count,
    ended,
    finish,
    fmt_entry,
    fmt_value,
    parse_kv,
    require_run_dir,
    say,
    unread_freeze,
)
from ._recipe import status_extra


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("init", help="create a run directory (with its empty commands file)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("status", help="freeze mode, actuators and their values, recent ledger")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("-n", type=count, default=8, help="ledger entries to show (default 8)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("log", help="print the ledger (what happened to each command)")
    p.add_argument("-n", type=count, default=20, help="last N entries (0: all; default 20)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new entries")
    p.add_argument("--json", action="store_true", help="raw JSON lines")
    p.set_defaults(func=cmd_log)

    p = sub.add_parser(
        "set",
        help="set parameters, routed to opt/loss/custom by the run's actuators (lr=1e-4 aux=0.5)",
    )
    _actuator_args(p)
    p.set_defaults(func=cmd_set)

    for module in ("opt", "loss", "custom"):
        mp = sub.add_parser(module, help=f"{module} commands (set_params k=v ...)")
        msub = mp.add_subparsers(dest="op", metavar="OP")
        msub.required = True
        sp = msub.add_parser("set_params", help=f"set {module} parameters: k=v ...")
        _actuator_args(sp)
        sp.set_defaults(func=cmd_set_params, module=module)

    for name, text in (
        ("pause", "pause training at the next safe point (it keeps reading commands)"),
        ("resume", "resume a paused run"),
        ("stop", "ask the run to stop at the next safe point"),
    ):
        p = sub.add_parser(name, help=text)
        if name != "resume":  # a paused run takes no step: a scheduled resume would never come
            p.add_argument("--at-step", type=int, help="at the first safe point with step >= N")
        add_wait(p)
        p.set_defaults(func=cmd_control, op=name)

    p = sub.add_parser("checkpoint", help="ask the run to save a checkpoint")
    p.add_argument(
        "--path",
        help="where to save (to the run's save_checkpoint, or kernel.checkpoint_path_requested "
        "for a loop that saves on the flag); must lie inside the run directory or a root the "
        "trainer allows",
    )
    p.add_argument("--at-step", type=int, help="save at the first safe point with step >= N")
    add_wait(p)
    p.set_defaults(func=cmd_checkpoint)

    p = sub.add_parser(
        "evaluate",
        help="ask the run to evaluate now (HF Trainer: right after the next step; Lightning: "
        "after that batch, or at the epoch's end where validation is epoch-based; a bare "
        "loop: kernel.evaluate_requested; the ledger says when it ran or why it cannot)",
    )
    p.add_argument("--at-step", type=int, help="at the first safe point with step >= N")
    add_wait(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "extend",
        help="train longer or shorter: --steps N (add N, negative: fewer), --epochs N, or "
        "--to-step S (max_steps=S); a horizon at or below the current step stops the run there",
    )
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--steps", type=int, metavar="N", help="add N optimizer steps")
    how.add_argument("--epochs", type=int, metavar="N", help="add N epochs (Lightning, bare loops)")
    how.add_argument("--to-step", type=int, metavar="S", help="set the horizon: max_steps = S")
    p.add_argument("--at-step", type=int, help="apply at the first safe point with step >= N")
    add_wait(p)
    p.set_defaults(func=cmd_extend)

    p = sub.add_parser("undo", help="revert the last applied change (or --cmd-id ID)")
    p.add_argument("--cmd-id", help="the command to revert: its id, or '#N' for the ledger "
                   "entry 'hotcb log' shows as #N")  # fmt: skip
    add_wait(p)
    p.set_defaults(func=cmd_undo)

    p = sub.add_parser("cancel", help="cancel a scheduled command (sent with --at-step)")
    p.add_argument("cmd_id", help="its id (printed when it was sent), or '#N' for the ledger "
                   "entry 'hotcb log' shows as #N")  # fmt: skip
    add_wait(p)
    p.set_defaults(func=cmd_cancel)


def _actuator_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("params", nargs="+", metavar="KEY=VALUE", help="values parse as JSON")
    p.add_argument("--at-step", type=int, help="apply at the first safe point with step >= N")
    p.add_argument("--ramp", type=int, metavar="STEPS", help="ramp to the value over STEPS steps")
    p.add_argument("--shape", choices=("linear", "cosine"),
                   help="ramp shape (with --ramp; default linear)")  # fmt: skip
    add_wait(p)


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if args.at_step is not None:
        fields["at_step"] = args.at_step
    if args.shape is not None and args.ramp is None:
        raise UsageError("--shape shapes a ramp: give --ramp STEPS with it")
    if args.ramp is not None:  # --ramp 0 too: the run refuses it (steps >= 1), not a plain set
        fields["transition"] = {"steps": args.ramp, "shape": args.shape or "linear"}
    return fields


def cmd_init(args: argparse.Namespace) -> int:
    paths = RunPaths(args.dir)
    if os.path.exists(paths.root) and not os.path.isdir(paths.root):
        raise UsageError(f"{paths.root} exists and is not a directory")
    folder = folder_of_runs(paths.root) if os.path.isdir(paths.root) else None
    if folder is not None:  # init would make it a run: commands queued there wait for good
        raise UsageError(f"{folder}; 'init' would make the folder a run of its own")
    # (through a symlink to a run not made yet, runs/latest: its target, as the kernel does)
    try:
        os.makedirs(os.path.realpath(paths.root), exist_ok=True)
    except OSError as exc:  # a loop of links, a file in the way, no permission
        why = exc.strerror or str(exc)
        if os.path.islink(paths.root):
            why += (f" ({paths.root} is a symbolic link to {os.readlink(paths.root)!r}, which "
                    "leads to no folder that can be made: a loop of links?)")  # fmt: skip
        raise UsageError(f"cannot make the run directory {paths.root}: {why}") from exc
    os.close(jsonl.open_own(paths.commands, os.O_WRONLY | os.O_CREAT | os.O_APPEND)[0])
    print(paths.root)
    return 0


def cmd_set(args: argparse.Namespace) -> int:
    ids = client(args).set(parse_kv(args.params), **_fields(args))
    return finish(args, ids, sent=("opt", "set_params"))


def cmd_set_params(args: argparse.Namespace) -> int:
    cid = client(args).set_params(args.module, parse_kv(args.params), **_fields(args))
    return finish(args, [cid], sent=(args.module, "set_params"))


def cmd_control(args: argparse.Namespace) -> int:
    over = ended(args.dir) if args.op == "stop" else None
    if over is not None:  # a queued stop would stop the next run at its first step
        print(f"the run {over}: nothing to stop")
        return 0
    c = client(args)
    cid = c.resume() if args.op == "resume" else getattr(c, args.op)(at_step=args.at_step)
    return finish(args, [cid])


def cmd_checkpoint(args: argparse.Namespace) -> int:
    return finish(args, [client(args).checkpoint(args.path, at_step=args.at_step)])


def cmd_evaluate(args: argparse.Namespace) -> int:
    return finish(args, [client(args).evaluate(at_step=args.at_step)])


def cmd_extend(args: argparse.Namespace) -> int:
    cid = client(args).extend(
        args.steps, epochs=args.epochs, to_step=args.to_step, at_step=args.at_step
    )
    return finish(args, [cid], sent=("control", "extend"))


def cmd_undo(args: argparse.Namespace) -> int:
    cmd_id = _by_seq(args.dir, args.cmd_id) if args.cmd_id else None
    return finish(args, [client(args).undo(cmd_id)], sent=("control", "undo"))


def cmd_cancel(args: argparse.Namespace) -> int:
    require_run_dir(args.dir)
    return finish(args, [client(args).cancel(_by_seq(args.dir, args.cmd_id))],
                  sent=("control", "cancel"))  # fmt: skip


def _by_seq(run_dir: str, ident: str) -> str:
    """``#N``: the cmd_id of the ledger entry ``hotcb log`` shows as #N; anything else as
    given."""
    if not re.fullmatch(r"#\d+", ident.strip()):
        return ident
    seq = int(ident.strip()[1:])
    found = next((e for e in iter_entries(RunPaths(run_dir).ledger) if e.get("seq") == seq), None)
    if found is None:
        raise UsageError(f"no ledger entry {ident} in {os.path.abspath(run_dir)} ('hotcb log' "
                         "lists them)")  # fmt: skip
    if not found.get("cmd_id"):
        raise UsageError(f"ledger entry {ident} has no command id: it was not a command")
    return str(found["cmd_id"])


def _last_step_metrics(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest step's metrics, its records merged in order: the loop's ``loss`` and a
    callback's ``grad/…`` logged at one step are two records (the status showed only the
    callback's, and the loss was gone from it)."""
    if not records:
        return None
    last = records[-1]
    merged: dict[str, Any] = {}
    same = [r for r in records if r.get("step") == last.get("step")]
    for rec in same:
        merged.update(rec.get("metrics") or {})
    return {**last, "metrics": merged}


def _status(paths: RunPaths, n: int) -> dict[str, Any]:
    meta = jsonl.read_json(paths.run_meta, {}) or {}
    acts = jsonl.read_json(paths.actuators, {}) or {}
    last_metrics = _last_step_metrics(jsonl.read_last(paths.metrics, 16))
    try:
        pending_cmds = os.path.getsize(paths.commands)
    except OSError:
        pending_cmds = 0
    view = LedgerView.read(paths.ledger, max_entries=n)
    ledger_tail = list(view.entries)
    cursor = tail_state(paths.ledger)[1]  # the newest entry's, however few are shown (-n 0)
    metrics_time = last_metrics.get("wall_time") if last_metrics else None
    beat = jsonl.read_json(paths.heartbeat, None)  # the kernel's, once a second
    beat = beat if isinstance(beat, dict) else None
    beat_time = beat.get("wall_time") if beat else None
    times = [t for t in (metrics_time, view.last_wall_time, beat_time)
             if isinstance(t, (int, float))]  # fmt: skip
    status: dict[str, Any] = {
        "run_dir": paths.root,
        "exists": os.path.isdir(paths.root),
        "run": redact_secrets(meta),  # (a status --json is pasted into issues and CI logs)
        "freeze": freeze_doc(paths.freeze, paths.ledger),
        "actuators": acts.get("actuators") or [],
        "actuators_from_parent": bool(acts.get("from_parent")),
        "actuators_step": acts.get("step"),
        "last_metrics": last_metrics,
        "heartbeat": beat,
        "unread_command_bytes": max(0, pending_cmds - int(cursor or 0)),
        # a freeze set among them: the mode the run is about to take
        "freeze_sent": unread_freeze(paths, cursor),
        "pending": list(view.pending.values()),
        "ledger": ledger_tail,
        # entries of a life that a resume from a checkpoint replaced (their steps ran again)
        "replaced": sorted(_replaced(ledger_tail)),
        "state": view.run_state(
            max(times) if times else None,
            time.time(),
            _stale_after(),
            meta=meta,
            root=paths.root,
        ),
    }
    status.update(status_extra(paths))
    status["controllers"] = _controllers(paths)
    return status


def _replaced(entries: list[dict[str, Any]]) -> dict[int, Any]:
    """:func:`replaced_by_resume`, less the ``scheduled`` entries of commands still waiting
    when that life ended: the resume put them back on the schedule (``status`` lists them
    under ``scheduled``), so their entry holds in this life too."""
    gone = replaced_by_resume(entries)
    seqs: dict[Any, list[int]] = {}
    for e in entries:
        seqs.setdefault(e.get("cmd_id"), []).append(e.get("seq") or 0)
    for e in entries:
        seq = e.get("seq") or 0
        by = gone.get(seq)
        if by is None or e.get("decision") != "scheduled" or not e.get("cmd_id"):
            continue
        end = by.get("seq") or 0
        if not any(seq < s < end for s in seqs[e["cmd_id"]]):  # nothing more in that life
            del gone[seq]
    return gone


def _controllers(paths: RunPaths) -> list[str]:
    """One line each for the online tuner and the rule autopilot, when they were ever on:
    what drives the run besides the person looking at it."""
    lines = []
    tune = jsonl.read_json(paths.tune, None)
    if isinstance(tune, dict) and (tune.get("mode", "off") != "off" or tune.get("counts")):
        c = tune.get("counts") or {}
        mode = tune.get("mode") or "off"
        open_ = f" (trial {tune['trial']} open)" if tune.get("trial") is not None else ""
        lines.append(f"tuner    {mode}{open_}: {c.get('kept', 0)} kept, {c.get('rolled_back', 0)} "
                     f"rolled back, {c.get('failed', 0)} failed ('hotcb tune status')")  # fmt: skip
    pilot = jsonl.read_json(os.path.join(paths.root, AUTOPILOT_STATE), None)
    if isinstance(pilot, dict) and pilot.get("mode", "off") != "off":
        lines.append(f"autopilot {pilot['mode']} on {pilot.get('key_metric')} "
                     f"({pilot.get('direction')}), last round at step {pilot.get('step')} "
                     "('hotcb autopilot status')")  # fmt: skip
    return lines


def _stale_after() -> float:
    """The dashboard's ``ui.stale_after_sec`` setting, when its env variable is set."""
    try:
        return float(os.environ.get("HOTCB_UI__STALE_AFTER_SEC") or STALE_AFTER_SEC)
    except ValueError:
        return STALE_AFTER_SEC


def _print_run(st: dict[str, Any]) -> None:
    """The run, its freeze mode, its last metrics (the top of ``hotcb status``)."""
    run = st["run"]
    say(f"run      {st['run_dir']}  [{st['state']}]")
    if run.get("pid") is not None:  # a kernel opened the run (a launch alone records none)
        say(f"         hotcb {run.get('hotcb_version')} pid {run.get('pid')} on {run.get('host')}")
        other = run.get("other_trainer")
        if isinstance(other, dict) and other_live_trainer(other, st["run_dir"]) is not None:
            say(
                f"         and pid {other['pid']}, started before it, still runs here: each "
                "applies every command (twice in all); stop one of them"
            )
        if is_network_fs(run.get("filesystem")):
            say(
                f"         on {run['filesystem']}: send commands from {run.get('host')} "
                "or through 'hotcb serve' there"
            )
    fr = st["freeze"]
    extra = f" recipe={fr['recipe_path']}" if fr.get("recipe_path") else ""
    sent = st.get("freeze_sent")
    if sent:  # the file says the mode in force; the run has not read the change yet
        when = f" at step {sent['at_step']}" if sent.get("at_step") is not None else ""
        extra += f" ({sent.get('mode')}{when} sent, not yet read by the run)"
    say(f"freeze   {fr['mode']}{extra}")
    if fr.get("warning"):
        say(f"         {fr['warning']}")
    for line in st.get("replay_next", []):
        say(f"         next: {line}")
    lm = st["last_metrics"]
    if lm:
        items = list(lm["metrics"].items())
        shown = ", ".join(f"{k}={fmt_value(v)}" for k, v in items[:6])
        if len(items) > 6:  # (all of them in --json)
            shown += f", … ({len(items) - 6} more)"
        age = time.time() - float(lm.get("wall_time") or 0)
        say(f"metrics  step {lm['step']} ({age:.0f}s ago): {shown}")
    beat = st.get("heartbeat")
    # a run that closed its kernel says where it ended in its state line; its last beat (at
    # most one a second) is older than that. One whose process is gone: its last sign of life
    if beat and isinstance(beat.get("wall_time"), (int, float)) and "ended" not in run:
        age = time.time() - float(beat["wall_time"])
        copy = str(st["state"]).startswith("copied or moved")
        said = "alive   " if process_alive(run) is not False and not copy else "last beat"
        say(f"{said} step {beat.get('step')} ({age:.0f}s ago, pid {beat.get('pid')})")
    if st["unread_command_bytes"]:
        say(f"         {st['unread_command_bytes']} bytes of commands not yet read by the run")
    for line in st.get("controllers") or ():
        say(line)


def _shown_value(v: Any) -> str:
    return "–" if v is None else fmt_value(v)


def _print_actuators(actuators: list[dict[str, Any]], from_parent: bool = False) -> None:
    if from_parent:  # a branch not started yet: the parent's names and bounds, no values
        say("actuators (the parent's; their values come when the branch starts)")
    else:
        say("actuators" if actuators else "actuators (none yet: the run has not started)")
    for a in actuators:
        bounds = ""
        if a.get("min") is not None or a.get("max") is not None:
            bounds = f" [{fmt_value(a.get('min'))}, {fmt_value(a.get('max'))}]"
        if isinstance(a.get("choices"), list) and a["choices"]:  # what a choice knob takes
            bounds += " one of " + " | ".join(fmt_value(c) for c in a["choices"])
        say(
            f"  {a['param_key']:<22} {_shown_value(a.get('current')):<14} "
            f"{a.get('group', ''):<7} {a.get('state', '')}{bounds}"
        )


def cmd_status(args: argparse.Namespace) -> int:
    require_run_dir(args.dir)
    paths = RunPaths(args.dir)
    st = _status(paths, args.n)
    if args.json:
        print(json.dumps(st, indent=2, default=str))
        return 0
    _print_run(st)
    _print_actuators(st["actuators"], st.get("actuators_from_parent", False))
    if st["pending"]:
        say("scheduled")
        for e in st["pending"]:
            say(
                f"  at step {e.get('at_step')}: {e.get('module')} {e.get('op')} "
                f"{json.dumps(e.get('params'))} ({e.get('cmd_id')})"
            )
    if args.n:  # -n 0: no ledger lines (not "empty")
        say("ledger" if st["ledger"] else "ledger   (empty)")
    gone = _replaced(st["ledger"])
    for e in st["ledger"]:
        line = fmt_entry(e, args.dir)
        by = gone.get(e.get("seq"))
        if by is not None:
            line += f"   (replaced: the run resumed at #{by.get('seq')})"
        say("  " + line)
    return 0


def _seq(entry: dict[str, Any]) -> int:
    """An entry's seq, 0 where a hand-edited line holds something else (``"abc"``, ``1e400``)."""
    seq = entry.get("seq")
    return seq if type(seq) is int else 0


def cmd_log(args: argparse.Namespace) -> int:
    require_run_dir(args.dir)
    paths = RunPaths(args.dir)
    try:  # the size first: an entry written while the last N are read is then not missed
        size = os.path.getsize(paths.ledger)
    except OSError:
        size = 0
    entries = (
        list(iter_entries(paths.ledger)) if args.n == 0 else jsonl.read_last(paths.ledger, args.n)
    )
    shown = 0  # the highest seq printed, so nothing is printed twice either

    def show(e: dict[str, Any]) -> None:
        nonlocal shown
        print(json.dumps(e) if args.json else fmt_entry(e, args.dir), flush=True)
        shown = max(shown, _seq(e))

    try:  # Ctrl-C is how --follow ends, whenever it comes
        for e in entries:
            show(e)
        if not entries and not args.json:  # (it printed nothing at all)
            say(
                "ledger (empty): nothing applied yet" + ("; following" if args.follow else ""),
                file=sys.stderr,
            )
        if not args.follow:
            return 0
        tail = jsonl.JsonlTail(paths.ledger, offset=size)
        while True:
            for e in tail.read_records():
                if tail.reset:
                    tail.reset, shown = False, 0
                if _seq(e) > shown or not e.get("seq"):
                    show(e)
            time.sleep(0.2)
    except KeyboardInterrupt:
        return 0 if args.follow else 130

"""Helpers shared by the command groups: ``k=v`` parsing, output formatting, waiting."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .. import jsonl
from .._checks import number_arg
from ..client import HotClient
from ..errors import HotcbError
from ..freeze import passes_freeze, saved_freeze
from ..ledger import STALE_AFTER_SEC, checkpoint_path, run_over, tail_state
from ..runfiles import RunPaths, folder_of_runs, process_alive, shell_path


class UsageError(HotcbError):
    pass


#: What ``--direction`` defaults to (``hotcb.metrics.guess_direction``), for its help.
DIRECTION_DEFAULT = "default: from its name: maximize for accuracy, F1, AUC, BLEU…, else minimize"


#: What a terminal takes as a command rather than text: C0 (ESC, CR, LF, BEL, …), DEL and C1;
#: and the bidirectional controls (U+061C, U+200E/F, U+202A-E, U+2066-9): a right-to-left
#: override in a metric name reorders the rest of the line that shows it.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def term_safe(text: object) -> str:
    """``text`` safe to print to a terminal: each control character (C0 including ESC, CR,
    LF and tab, DEL, C1, the bidirectional overrides and isolates) written out as ``repr``
    writes it (``\\x1b``, ``\\n``); the rest, ordinary Unicode included, as it is. What a
    run's files hold (a command's source and reason, metric names, errors) reaches ``hotcb
    log`` and ``hotcb status`` through this: a line written into them cannot clear the screen,
    fake a line, set the window title or fill the clipboard (OSC 52) of whoever reads it.
    Idempotent (its output holds no control character)."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], str(text))


def say(text: object, **kwargs: Any) -> None:
    """``print`` of one line that holds text from a run's files, made :func:`term_safe`."""
    print(term_safe(text), **kwargs)


def parse_value(text: str) -> Any:
    """JSON where it parses (``1e-4``, ``false``, ``[0.9,0.99]``, ``"x"``); numbers with commas,
    bare or in parentheses (``0.9,0.99``, ``(0.9, 0.99)``: how betas are written in Python), as
    a list; else the string."""
    try:
        return json.loads(text)
    except RecursionError:
        raise UsageError(f"{text[:40]}…: nested too deep to be a value") from None
    except ValueError:
        lowered = text.strip().lower()
        if lowered in ("true", "false"):
            return lowered == "true"
        if lowered.lstrip("+-") in ("nan", "inf", "infinity"):  # as JSON's NaN, Infinity: the
            return float(lowered)  # run refuses it as not finite, whatever its case
        inner = text.strip()
        if inner[:1] + inner[-1:] in ("()", "[]"):
            inner = inner[1:-1]
        if "," in inner:
            try:
                return [float(part) for part in inner.split(",")]
            except ValueError:
                pass
        return text


def parse_kv(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"expected key=value, got {item!r} (e.g. lr=1e-4)")
        if key.strip() in out:
            raise UsageError(f"{key.strip()} is given twice; give each key once")
        out[key.strip()] = parse_value(value)
    return out


def client(args: argparse.Namespace) -> HotClient:
    """The writer for ``--dir`` (one per invocation). It refuses a directory that does not
    exist: a typo, until ``hotcb init`` or a starting run creates it."""
    c: HotClient | None = getattr(args, "_client", None)
    if c is None:
        # (a command to a run that is over: finish() says so its own way)
        c = args._client = HotClient(args.dir, source="cli", create=False, warn_over=False)
        # a forgotten --dir: a command sent here would wait for a run that may never start
        # (said by finish(), once it is sent: the send creates the commands file)
        # in the current directory by default (a forgotten --dir) on every command; in a
        # folder given on purpose (hotcb init, a run not started yet) on the first only
        never_ran = not any(os.path.exists(p) for p in (c.paths.run_meta, c.paths.ledger))
        default = args.dir == "." and not os.environ.get("HOTCB_DIR")
        args._no_run = never_ran and (default or not os.path.exists(c.paths.commands))
    return c


def ended(path: str) -> str | None:
    """How the run's training ended (``finished at step N``, ``stopped at …``, ``crashed
    (…)``, ``ended before it started (…)``) when its process is gone and no run started there
    since (``hotcb.run.json``); else None."""
    meta = jsonl.read_json(RunPaths(path).run_meta, {}) or {}
    over = run_over(meta, time.time(), root=path) if isinstance(meta, dict) else None
    return None if over is None else term_safe(over)  # a crash's text comes from the file


def unread_freeze(paths: RunPaths, cursor: int | None = None) -> dict[str, Any] | None:
    """The last ``freeze set`` command past the ledger's cursor (``cursor``: the ledger's,
    read when not given): sent, not read by the run yet; None when there is none, or when
    the commands file does not hold the cursor (replaced since: nothing to tell)."""
    if cursor is None:
        cursor = tail_state(paths.ledger)[1]
    try:
        if os.path.getsize(paths.commands) <= int(cursor or 0):
            return None
        tail = jsonl.JsonlTail(paths.commands, offset=int(cursor or 0))
        records = tail.read_records()
    except OSError:
        return None
    sent = [r for r in records if r.get("module") == "freeze" and r.get("op") == "set"]
    return sent[-1] if sent and not tail.reset else None


def frozen(paths: RunPaths) -> str | None:
    """The freeze mode a command sent now meets when the run reads it (``prod``, ``replay``,
    ``replay_adjusted``: a freeze set sent and not yet read counts), None when off."""
    sent = unread_freeze(paths)
    if sent is not None and sent.get("at_step") is None:
        mode = str(sent.get("mode") or "off")
    else:
        mode = saved_freeze(paths.freeze, paths.ledger)[0].mode.value
    return None if mode == "off" else mode


def require_run_dir(path: str, *, folder_ok: bool = False) -> None:
    """Refuse a run directory that does not exist (for the commands that only read), or a
    folder of runs where one run is meant (``folder_ok``: either will do)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{os.path.abspath(path)} is a file, not a run directory: give --dir "
                         "the run's folder")  # fmt: skip
    if not os.path.isdir(path):
        raise UsageError(
            f"no run directory at {os.path.abspath(path)}; 'hotcb --dir {shell_path(path)} init' creates "
            "one (a run started with HotKernel(run_dir=...) creates its own)"
        )
    folder = None if folder_ok else folder_of_runs(path)
    if folder is not None:
        raise UsageError(folder)


def require_out_folder(out: str | None) -> None:
    """``--out`` names a file in a folder that exists (not an OSError about a temporary file)."""
    folder = os.path.dirname(os.path.abspath(out)) if out else None
    if folder is not None and not os.path.isdir(folder):
        raise UsageError(f"--out: no folder {folder} to write {os.path.basename(out or '')} in")


def stop_on_sigterm() -> None:
    """SIGTERM ends a long-running command the way Ctrl-C does (its ``KeyboardInterrupt``
    path: a clean exit). ``hotcb launch`` stops its autopilot and notifier with SIGTERM: one
    that arrives while the interpreter still starts ends it quietly (SIGINT there printed a
    crash dump)."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


#: argparse types: an integer >= 0 (``-n``); a finite number of seconds > 0 (``--timeout``)
count = number_arg(int, lambda v: v >= 0, "a whole number", "must be 0 or more")
seconds = number_arg(float, lambda v: math.isfinite(v) and v > 0, "seconds",
                     "must be a number of seconds > 0")  # fmt: skip


def add_wait(p: argparse.ArgumentParser, *, also: str = "") -> None:
    p.add_argument(
        "--wait",
        action="store_true",
        help="wait until the run has handled the command and print the ledger entry" + also,
    )
    p.add_argument("--timeout", type=seconds, default=30.0,
                   help="seconds to wait (with --wait; default 30)")  # fmt: skip


def fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):  # its strings quoted: ["0", "2"] is not [0, 2]
        return "[" + ", ".join(term_safe(json.dumps(x)) if isinstance(x, str) else fmt_value(x)
                               for x in v) + "]"  # fmt: skip
    return json.dumps(v) if not isinstance(v, str) else term_safe(v)


def fmt_noise(level: Any, noise: Any) -> str:
    """`` ±spread`` for a level and its relative noise (a bracket arm's), in two figures; ""
    without noise."""
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (level, noise))
    spread = abs(noise * level) if ok else 0.0
    return f" ±{spread:.2g}" if spread > 0 else ""


def fmt_changes(changes: Mapping[str, Any] | None) -> str:
    if not changes:
        return ""
    parts = []
    for k, ch in changes.items():
        if isinstance(ch, Mapping) and "new" in ch:
            parts.append(f"{k}: {fmt_value(ch.get('old'))} -> {fmt_value(ch.get('new'))}")
        else:
            parts.append(f"{k}: {fmt_value(ch)}")
    return "; ".join(parts)


def _fmt_ramp(e: Mapping[str, Any]) -> str:
    """What a ramp entry means: started (the value has not moved yet), complete, superseded."""
    steps = int((e.get("transition") or {}).get("steps") or 0)
    start = int(e.get("step") or 0)
    parts = []
    for k, ch in (e.get("changes") or {}).items():
        old, new = fmt_value(ch.get("old")), fmt_value(ch.get("new"))
        if e.get("ramp") == "complete":
            parts.append(f"{k}: ramped {old} → {new}")
        elif e.get("ramp") == "superseded" and ch.get("new") is None:
            parts.append(f"{k}: ramp from {old} ended, where it got to unknown")
        elif e.get("ramp") == "superseded":
            parts.append(f"{k}: ramp from {old} stopped at {new}")
        else:
            parts.append(f"{k}: ramping {old} → {new} over steps {start}..{start + steps}")
    return "; ".join(parts)


def is_ramp_start(e: Mapping[str, Any]) -> bool:
    """An applied command that started a ramp (its target is reached ``steps`` later)."""
    return bool(e.get("transition")) and e.get("decision") == "applied" and not e.get("ramp")


def fmt_entry(e: Mapping[str, Any], run_dir: str) -> str:
    """One ledger entry as a line; a checkpoint's file as a path usable from here (``run_dir``
    as given to ``--dir``)."""
    what = " ".join(str(x) for x in (e.get("module"), e.get("op")) if x)
    if e.get("id"):
        what += f" {e['id']}"
    line = f"#{e.get('seq')} step {e.get('step')} [{e.get('source') or '?'}] {what or '?'}"
    line += f" -> {e.get('decision')}"
    changes = fmt_changes(e.get("changes"))
    if e.get("decision") == "applied" and (e.get("ramp") or e.get("transition")):
        changes = _fmt_ramp(e)
    if changes:
        line += f" ({changes})"
    elif e.get("params") and e.get("decision") != "applied":
        line += f" params={json.dumps(e.get('params'))}"
    if e.get("at_step") is not None and e.get("decision") == "scheduled":
        line += f" at step {e['at_step']}"
    if e.get("op") == "checkpoint" and e.get("decision") == "applied":
        where = checkpoint_path(e, run_dir)
        if where is not None:
            line += f": {where}"
        else:  # a run resumed from the save wrote the entry: the save happened, its path unknown
            line += f" ({e.get('checkpoint_note') or 'the loop was asked to save one'})"
    line += _module_facts(e)
    if e.get("error"):
        line += f": {e['error']}"
    reason = e.get("reason")
    if isinstance(reason, str) and reason and e.get("module") != "tune":
        line += f" (why: {_short(reason)})"  # a controller's rule and evidence, a person's note
    return term_safe(line)  # source, reason, ids, errors: what the commands file and ledger say


def _short(text: str, limit: int = 200) -> str:
    """``text`` on one line, cut at ``limit`` characters."""
    one = " ".join(text.split())
    return one if len(one) <= limit else one[: limit - 1] + "…"


def _module_facts(e: Mapping[str, Any]) -> str:
    """A tuner entry's proposal, trial and score; where a resume came from."""
    tune = e.get("tune")
    if e.get("module") == "tune" and isinstance(tune, dict):
        facts = [str(tune["proposal"])] if tune.get("proposal") else []
        facts += _bracket_facts(tune.get("bracket"))
        if tune.get("trial") is not None:
            facts.append(f"trial {tune['trial']}")
        if isinstance(tune.get("score"), (int, float)):
            needed = tune.get("needed")  # a judged trial: the bar a keep had to clear
            bar = f", needed > {needed:+.3g}" if isinstance(needed, (int, float)) else ""
            facts.append(f"score {tune['score']:+.3g}{bar}")
        if tune.get("restored"):  # restore: state put the trial's start back, not only knobs
            facts.append(f"{' and '.join(map(str, tune['restored']))} state restored")
        if e.get("op") in ("void", "rollback", "expire", "unmoved") and tune.get("reason"):
            facts.append(str(tune["reason"]))
        return (f" [{', '.join(facts)}]" if facts else "") + _on_schedule(e)
    if e.get("module") == "control" and e.get("decision") == "applied":
        said = _control_facts(e)
        if said:
            return ": " + "; ".join(said)
    if e.get("on_schedule") or e.get("at_zero") or e.get("without_trial"):
        return _on_schedule(e) + _without_trial(e)
    if isinstance(e.get("rebased"), dict) and e["rebased"]:
        return _rebased(e["rebased"])
    restored = e.get("restored")
    if e.get("module") == "cb" and e.get("op") == "restore" and isinstance(restored, list):
        return f": {', '.join(map(str, restored)) or 'no callback'} back from the checkpoint"
    came = e.get("resumed_from")
    if e.get("module") == "kernel" and e.get("op") == "resume" and isinstance(came, dict):
        # the dead life's last entry (before this field: the one before this entry, which
        # counted the new life's own first entries, a `cb restore`, as the old one's)
        at, last = came.get("seq"), came.get("last", (e.get("seq") or 0) - 1)
        replaced = f"; #{at + 1}..#{last} ran in the life it replaced" if (
            isinstance(last, int) and isinstance(at, int) and last > at) else ""  # fmt: skip
        return f": from the checkpoint at step {came.get('step')}{replaced}"
    return ""


def _bracket_won(w: Mapping[str, Any]) -> str:
    """The settle's winner: the lr from where the bracket began to where it settled, and the
    move that won the last round (``x1`` alone read as "the starting lr won")."""
    began, value = w.get("began"), w.get("value")
    if isinstance(began, (int, float)) and isinstance(value, (int, float)) and began > 0:
        if math.isclose(began, value, rel_tol=1e-9):
            return "bracket over: lr x1 won (the lr it began at)"
        return (f"bracket over: lr {fmt_value(began)} -> {fmt_value(value)} (x{value / began:.3g}; "
                f"x{w['factor']:.3g} won the last round)")  # fmt: skip
    return f"bracket over: lr x{w['factor']:.3g} won"


def _bracket_facts(b: Any) -> list[str]:
    """A start bracket's entry (docs/tune.md): an arm begun or ended, its end, why it ended."""
    if not isinstance(b, Mapping):
        return []
    facts = []
    if b.get("settle"):
        w = b.get("winner")
        facts.append(_bracket_won(w) if isinstance(w, Mapping) else "bracket over")
        if b.get("back_to_start"):
            facts.append("on from the weights it began with")
    elif isinstance(b.get("level"), (int, float)):  # an arm's end
        best = ", best so far" if b.get("best") else ""
        shown = f"{b['level']:.4g}{fmt_noise(b['level'], b.get('noise'))}"
        facts.append(f"bracket round {b.get('round')}: lr {fmt_value(b.get('value'))} "
                     f"(x{b.get('factor', 1):.3g}) ended at {shown}{best}")  # fmt: skip
    elif b.get("round") is not None:
        facts.append(f"bracket round {b['round']}, arm x{b.get('factor', 1):.3g}")
    for key in ("reason", "trouble"):
        if b.get(key):
            facts.append(str(b[key]))
    return facts


def _rebased(rebased: Mapping[str, Any]) -> str:
    """A multiplier sent relative to a value that moved before it landed."""
    said = []
    for key, r in rebased.items():
        if isinstance(r, Mapping) and all(isinstance(r.get(k), (int, float)) for k in (
                "sent", "basis", "in_force")):  # fmt: skip
            said.append(f"{key} x{r['sent'] / r['basis']:.4g} of {fmt_value(r['in_force'])} "
                        f"in force (sent for {fmt_value(r['basis'])})")  # fmt: skip
    return f" [{'; '.join(said)}]" if said else ""


def _on_schedule(e: Mapping[str, Any]) -> str:
    """An undo or a tuner's roll-back under an LR scheduler: the ratio it took back."""
    scaled, zero = e.get("on_schedule"), e.get("at_zero")
    out = ""
    if isinstance(zero, list) and zero:  # a schedule had it at zero: no ratio to take back
        out = f" [{', '.join(map(str, zero))} left at zero on the schedule]"
    if not isinstance(scaled, dict) or not scaled:
        return out
    said = ", ".join(f"{k} x{v:.4g}" for k, v in scaled.items() if isinstance(v, (int, float)))
    return f" [back on the schedule: {said}]" + out


#: How a trial whose move an undo took back ended (``without_trial``), said plainly.
_TRIAL_ENDED = {
    "rolled_back": "the tuner rolled that trial back",
    "voided": "the tuner voided that trial",
    "open": "a command overlapped that open trial: it is voided",
}


def _without_trial(e: Mapping[str, Any]) -> str:
    """An undo whose old value was an unkept tuner trial's: the trial's move went too."""
    took = e.get("without_trial")
    if not isinstance(took, dict):
        return ""
    said = []
    for key, t in took.items():
        if isinstance(t, Mapping) and isinstance(t.get("factor"), (int, float)) and t["factor"]:
            ended = _TRIAL_ENDED.get(str(t.get("ended")), str(t.get("ended")))
            said.append(f"{key}: trial {t.get('trial')}'s x{1 / t['factor']:.4g} taken back "
                        f"too ({ended})")  # fmt: skip
    return f" [{'; '.join(said)}]" if said else ""


#: What the adapters' ``evaluate`` answers mean, said plainly.
_EVALUATE = {
    "requested": "the loop was asked to evaluate",
    "at_step_end": "evaluates at the end of this step",
    "at_next_step_end": "evaluates at the end of the next step (this step's evaluation ran)",
}


def _control_facts(e: Mapping[str, Any]) -> list[str]:
    """What the framework did with an ``evaluate`` or ``extend`` (where it did not do exactly
    what was asked, above all)."""
    said: list[str] = []
    how = e.get("evaluate")
    if isinstance(how, str):
        said.append(_EVALUATE.get(how, how))
    if e.get("requested") is not None:
        said.append(f"asked for {e['requested']}")
    if isinstance(e.get("limit"), str):
        said.append(e["limit"])
    other = e.get("other_limit")
    if isinstance(other, dict):
        said += [f"{k} {v} may end the run first" for k, v in other.items()]
    if isinstance(e.get("lr_schedule"), str):
        said.append(f"lr schedule {e['lr_schedule']}")
    return said


def _over(args: argparse.Namespace, over: str) -> int:
    """Say that the run is over and its command waits for the next run; the exit code (1
    with ``--wait``, which promises the change is in force)."""
    waited = getattr(args, "wait", False)
    print(
        f"hotcb: the run {over}; the command waits in the commands file for the next run "
        "started in this directory (or the next loop of the same process, a second fit)"
        + (" (not applied: exit code 1)" if waited else ""),
        file=sys.stderr,
    )
    return 1 if waited else 0


def _say_queued(c: HotClient | None) -> None:
    """On stderr: the command went unchecked (nothing published yet), or routed by name."""
    if c is not None and c.last_unchecked:
        print(
            "hotcb: queued; the run has not published its actuators yet "
            "(hotcb.actuators.json), so it checks names and bounds when it applies the command",
            file=sys.stderr,
        )
    if c is not None and c.last_routed:
        where = ", ".join(f"{k} to {m}" for k, m in c.last_routed.items())
        print(
            f"hotcb: routed by name: {where}; if one belongs elsewhere, send it with "
            "'hotcb opt|loss|custom set_params KEY=VALUE'",
            file=sys.stderr,
        )


def _say_frozen(run_dir: str, sent: tuple[str, str] | None) -> None:
    """On stderr: a frozen run will ignore the command ``sent`` (module, op)."""
    if sent is None or passes_freeze(*sent):
        return
    mode = frozen(RunPaths(run_dir))
    if mode is not None:
        say(f"hotcb: the run is frozen (freeze {mode}): it will ignore this command "
            f"(ignored_freeze); 'hotcb --dir {shell_path(run_dir)} freeze --mode off' unfreezes it",
            file=sys.stderr)  # fmt: skip


def _say_idle(run_dir: str) -> None:
    """On stderr: the run's trainer is alive but its loop has not reached a safe point for a
    while (an interrupted notebook cell, a debugger, a long evaluation): the command waits for
    its next one. A stop sent to a notebook's interrupted loop stops the cell run next, at its
    first step."""
    paths = RunPaths(run_dir)
    beat = jsonl.read_json(paths.heartbeat, None)
    meta = jsonl.read_json(paths.run_meta, None)
    if not isinstance(beat, dict) or not isinstance(meta, dict) or beat.get("pid") != meta.get(
            "pid") or process_alive(meta) is not True:  # fmt: skip
        return
    wall = beat.get("wall_time")
    quiet = time.time() - wall if isinstance(wall, (int, float)) else 0.0
    if quiet > STALE_AFTER_SEC:
        print(f"hotcb: the run's loop has reached no safe point for {quiet:.0f}s (its process "
              f"{meta['pid']} still runs: a long step or evaluation, a debugger, or a notebook "
              "cell interrupted): the command applies at its next safe point, whenever that "
              "comes", file=sys.stderr)  # fmt: skip


def finish(
    args: argparse.Namespace, cmd_ids: Sequence[str], *, sent: tuple[str, str] | None = None
) -> int:
    """Print the command ids, or with ``--wait`` the ledger entries; exit 1 if any failed,
    or when the run is over (before or while waiting: the ids are printed first). ``sent``:
    the commands' module and op, for the hint that a frozen run will ignore them."""
    _say_queued(getattr(args, "_client", None))
    if getattr(args, "_no_run", False) and cmd_ids:
        where = "the current directory" if args.dir == "." else os.path.abspath(args.dir)
        print(f"hotcb: {where} holds no run yet (no hotcb.* files): the command waits in its "
              "hotcb.commands.jsonl for a run started there; for another run give --dir RUN "
              "(or $HOTCB_DIR)", file=sys.stderr)  # fmt: skip
    over = ended(args.dir)
    if over is None and cmd_ids:
        _say_idle(args.dir)
    if over is not None or not getattr(args, "wait", False):
        for cid in cmd_ids:  # (an autopilot proposal's, from its file)
            say(cid)
        if over is not None:  # nothing will answer: say so (with --wait, instead of timing out)
            return _over(args, over)
        _say_frozen(args.dir, sent)
        return 0
    c = client(args)
    if not os.path.exists(c.paths.run_meta):  # waiting for a trainer not started yet: say so
        print(f"hotcb: the run has not started; waiting up to {args.timeout:g}s for it to start "
              "and apply the command", file=sys.stderr)  # fmt: skip
    code = 0
    deadline = time.monotonic() + args.timeout
    for i, cid in enumerate(cmd_ids):
        try:
            entry = c.wait(cid, timeout=max(0.1, deadline - time.monotonic()), until_over=True)
        except TimeoutError as exc:  # the ids first: the commands are in the file, to wait on
            print("\n".join(map(term_safe, cmd_ids[i:])), flush=True)  # later
            over = ended(args.dir)
            if over is None:
                return _not_yet(exc)
            return _over(args, over)  # the run crashed (or stopped) while we waited
        code = max(code, _print_waited(c, args.dir, entry, deadline))
    sys.stdout.flush()
    return code


#: ``--wait``'s exit code when the run has not handled the command within ``--timeout``: it
#: stays queued (2 is a usage error, 1 a command the run refused)
NOT_YET = 3


def _not_yet(exc: TimeoutError, *, applied: bool = False) -> int:
    """``applied``: the command was applied and what it started (a ramp) goes on."""
    why = ("not ended yet" if applied else
           "not handled yet; it stays queued, and the run applies it when it reads it")  # fmt: skip
    print(f"hotcb: error: {term_safe(str(exc))} (exit code {NOT_YET}: {why})", file=sys.stderr,
          flush=True)  # fmt: skip
    return NOT_YET


def _print_waited(c: HotClient, run_dir: str, entry: dict[str, Any], deadline: float) -> int:
    """Print a command's ledger entry (a ramp's end too, and a load undone on every rank);
    1 when it did not take."""
    print(fmt_entry(entry, run_dir))
    if is_ramp_start(entry):  # --wait on a ramp waits for its end
        try:
            entry = c.wait_ramp(entry["cmd_id"], timeout=max(0.1, deadline - time.monotonic()),
                                until_over=True)  # fmt: skip
        except TimeoutError as exc:
            if ended(run_dir) is None:
                return _not_yet(exc, applied=True)
            print(f"hotcb: {exc} (exit code 1)", file=sys.stderr)  # killed mid-ramp
            return 1
        print(fmt_entry(entry, run_dir))
    code = 1 if entry.get("decision") in ("rejected", "failed", "ignored_freeze") else 0
    for undone in _load_undone(c, entry):
        print(fmt_entry(undone, run_dir))
        code = 1
    return code


def _load_undone(c: HotClient, entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Under torch.distributed, a ``cb load`` applied on rank 0 whose load failed on another
    rank is unloaded on every rank at the same poll: that entry (``load_cmd_id``), which
    rank 0's ``applied`` alone hides."""
    if (entry.get("module"), entry.get("op"), entry.get("decision")) != ("cb", "load", "applied"):
        return []
    from ..ledger import iter_entries

    cmd_id = entry.get("cmd_id")
    return [e for e in iter_entries(c.paths.ledger) if e.get("load_cmd_id") == cmd_id]

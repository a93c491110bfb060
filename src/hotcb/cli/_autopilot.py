"""The rule autopilot: ``hotcb autopilot`` (run it) and ``autopilot status|proposals|accept|
reject|rules``. It runs outside the training process, as a client of the run directory
(docs/autopilot.md)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from .. import jsonl
from ..runfiles import (
    RUN_META,
    SCAN_DEPTH,
    discover_runs,
    process_alive,
    redact_url,
    shell_path,
)
from ._common import (
    DIRECTION_DEFAULT,
    UsageError,
    add_wait,
    client,
    ended,
    finish,
    require_run_dir,
    say,
    seconds,
    stop_on_sigterm,
    term_safe,
)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    ap = sub.add_parser(
        "autopilot",
        help="the rule autopilot: watch a run (or a folder of runs) and act on plateaus, "
        "divergence, spikes, NaN, overfitting",
        description="Without a sub-command: run the autopilot until the run ends (Ctrl-C "
        "stops it). On a folder of runs: one autopilot per live run in it (up to 2 levels "
        "down), runs started later too, until Ctrl-C. In suggest mode its proposals wait for "
        "'hotcb autopilot accept ID'.",
    )
    ap.add_argument("--mode", choices=("suggest", "auto", "ai_suggest", "ai_auto", "off"),
                    default="suggest",
                    help="suggest (default): propose; auto: apply high- and medium-confidence "
                    "actions, propose the rest; ai_suggest / ai_auto: an LLM decides (proposes "
                    "/ applies), the rules are its sensors and its fallback")  # fmt: skip
    ap.add_argument("--rules", help="a rules file (default: the rules hotcb ships)")
    ap.add_argument("--key-metric", default="val_loss", help="the metric to improve")
    ap.add_argument(
        "--direction",
        choices=("minimize", "maximize"),
        default=None,
        help=f"of the key metric ({DIRECTION_DEFAULT})",
    )
    ap.add_argument("--interval", type=seconds, default=1.0,
                    help="seconds between rounds (default 1)")  # fmt: skip
    ap.add_argument("--once", action="store_true",
                    help="one round, then exit (a folder: over the runs there now)")  # fmt: skip
    add_ai_flags(ap)
    from ._notify import add_notify_flags

    add_notify_flags(ap)
    ap.set_defaults(func=cmd_run)
    asub = ap.add_subparsers(dest="ap_op", metavar="OP")
    p = asub.add_parser("status", help="mode, rules, recent detections, pending proposals")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = asub.add_parser("proposals", help="proposals waiting for a decision")
    p.add_argument("--json", action="store_true")
    p.add_argument("--all", action="store_true", help="also the decided ones")
    p.set_defaults(func=cmd_proposals)
    for name in ("accept", "reject"):
        p = asub.add_parser(name, help=f"{name} a proposal")
        p.add_argument("id", help="the proposal's id, e.g. A3")
        if name == "accept":
            add_wait(p)
        p.set_defaults(func=cmd_decide, accept=name == "accept")
    p = asub.add_parser(
        "rules",
        help="the rules the run's autopilot uses (the shipped defaults "
        "before one has run), or check a rules file",
    )
    p.add_argument("--check", metavar="FILE", help="check FILE: every problem with its line")
    p.set_defaults(func=cmd_rules)


def add_ai_flags(p: argparse.ArgumentParser) -> None:
    """The LLM autopilot's flags (``hotcb autopilot`` and ``hotcb serve``). The key is read
    from the environment only (HOTCB_AI_KEY), never from a flag: a flag shows in ps."""
    flag = "--mode" if p.prog.endswith(" autopilot") else "--autopilot"  # serve, launch
    g = p.add_argument_group(f"LLM autopilot ({flag} ai_suggest|ai_auto; key: HOTCB_AI_KEY)")
    g.add_argument("--ai-config", metavar="FILE", help="AI settings file (YAML or JSON)")
    g.add_argument("--ai-base-url", metavar="URL",
                   help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:11434/v1 (Ollama); "
                   "default https://api.openai.com/v1")  # fmt: skip
    g.add_argument("--ai-model", metavar="NAME", help="the model (default gpt-4.1-mini)")
    g.add_argument("--ai-budget", type=float, metavar="USD",
                   help="spend per run before the rules take over (default 1.0)")  # fmt: skip


def ai_config(path: str | None, base_url: str | None, model: str | None,
              budget: float | None) -> Any:  # fmt: skip
    """The AIConfig for these flags; a bad config file is a usage error listing its problems."""
    from ..autopilot.ai import AIConfigError, load_ai_config

    try:
        return load_ai_config(path, base_url=base_url, model=model, budget_usd=budget)
    except AIConfigError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot read --ai-config {path}: {exc.strerror}") from None


#: How deep a folder of runs is searched: ``hotcb serve``'s default ``scan_depth``, so that
#: ``runs/a`` and ``runs/sweep/a`` both get an autopilot. The server's scan
#: (``hotcb.server.runs.discover``) lives with the dashboard, which needs pydantic; the core
#: CLI does not, hence this walk of the same depth over the same folders.
def _is_run(path: str) -> bool:
    """A trainer's kernel opened a run here (``hotcb.run.json``)."""
    return os.path.exists(os.path.join(path, RUN_META))


def _runs(root: str, depth: int = SCAN_DEPTH) -> list[str]:
    """``root`` itself when it is a run, else the runs under it, up to ``depth`` levels down,
    sorted, as ``hotcb serve`` finds them (:func:`hotcb.runfiles.discover_runs`)."""
    if _is_run(root):
        return [root]
    return [os.path.join(root, rel) for rel in discover_runs(root, depth, _is_run)]


def _live(run: str) -> bool:
    """The run's training goes on: its kernel has not closed it and its process is not known
    to be gone (what :attr:`Autopilot.ended <hotcb.autopilot.engine.Autopilot.ended>` reads,
    without claiming the run: a run that is over gets no autopilot file)."""
    meta = jsonl.read_json(os.path.join(run, RUN_META), None)
    return (
        isinstance(meta, dict)
        and not isinstance(meta.get("ended"), dict)
        and process_alive(meta) is not False
    )


@dataclass
class _Fleet:
    """The runs one ``hotcb autopilot`` drives: the run given, or the live runs of a folder."""

    pilots: dict[str, Any] = field(default_factory=dict)  # run -> its Autopilot
    notifiers: dict[str, Any] = field(default_factory=dict)  # run -> its Notifier (--notify)
    retired: list[Any] = field(default_factory=list)  # notifiers of ended runs, closed on exit
    busy: set[str] = field(default_factory=set)  # runs another live autopilot drives
    #: in a folder: runs that are over, left alone (no autopilot, no file written), by how
    left: dict[str, str] = field(default_factory=dict)
    announced: bool = False  # the folder's watch was said
    #: runs watched while their training ran: alive when attached, or at a later round (a
    #: first round may end after the training did: it waited on a file the training held)
    seen_alive: set[str] = field(default_factory=set)

    def add(self, run: str, pilot: Any) -> None:
        self.pilots[run] = pilot
        if not pilot.ended:
            self.seen_alive.add(run)

    def close(self) -> None:
        for pilot in self.pilots.values():
            pilot.close()
        for notifier in [*self.notifiers.values(), *self.retired]:
            notifier.close()


def require_rules_file(path: str | None, flag: str) -> None:
    """A rules file named on the command line exists (one line, not an OSError's)."""
    if path is not None and not os.path.isfile(path):
        raise UsageError(f"{flag}: no rules file at {os.path.abspath(path)}")


def cmd_run(args: argparse.Namespace) -> int:
    stop_on_sigterm()
    from ..autopilot.engine import Autopilot, AutopilotBusy
    from ..notify import Notifier
    from ._notify import notify_config

    if args.once:
        require_run_dir(args.dir, folder_ok=True)  # a folder: one autopilot per run
    require_rules_file(args.rules, "--rules")
    notify = notify_config(args)
    ai = None
    if args.mode.startswith("ai_"):
        ai = ai_config(args.ai_config, args.ai_base_url, args.ai_model, args.ai_budget)
        _check_ai_importable()
        url = redact_url(ai.base_url)  # a login or key in it stays off the terminal's log
        print(f"hotcb autopilot: asking {ai.model} at {url} (budget ${ai.budget_usd:g} per run)",
              flush=True)  # fmt: skip
        _say_no_key(ai.base_url)

    fleet = _Fleet()

    def attach(run: str) -> None:
        try:
            fleet.add(run, Autopilot(run, mode=args.mode, rules=args.rules,
                                     key_metric=args.key_metric, direction=args.direction,
                                     ai=ai))  # fmt: skip
        except AutopilotBusy as exc:
            if os.path.samefile(run, args.dir):  # the one run asked for
                raise UsageError(str(exc)) from None
            fleet.busy.add(run)  # in a folder of runs: leave it to the other one
            say(f"hotcb autopilot: {exc}; leaving it", flush=True)  # (the other one's pid, host)
            return
        said = "" if args.direction else " (direction from its name; --direction sets it)"
        print(f"hotcb autopilot ({args.mode}) on {run}; key metric {args.key_metric}, "
              f"{fleet.pilots[run].direction}{said}", flush=True)  # fmt: skip
        if notify is not None:
            fleet.notifiers[run] = Notifier(run, notify)

    def refresh() -> None:
        runs = _runs(args.dir)
        folder = bool(runs) and not _is_run(args.dir)
        if folder and not args.once and not fleet.announced:
            fleet.announced = True
            print(f"hotcb autopilot: watching the runs in {args.dir} (up to {SCAN_DEPTH} "
                  "levels down), those started later too, until Ctrl-C; a run that is over "
                  "is left alone", flush=True)  # fmt: skip
        for run in runs:
            if run in fleet.pilots or run in fleet.busy:
                continue
            if folder and not _live(run):  # looked at again each round: it may start again
                fleet.left[run] = ended(run) or "ended"
                continue
            fleet.left.pop(run, None)
            attach(run)

    try:
        return _loop(args, fleet, refresh)
    finally:
        fleet.close()


def _loop(args: argparse.Namespace, fleet: _Fleet, refresh: Any) -> int:
    """Rounds until the run given ends (a folder of runs: until Ctrl-C or SIGTERM), or one
    round with ``--once``."""
    refresh()
    pilots = fleet.pilots
    if not (pilots or fleet.left or fleet.busy):
        where = args.dir if os.path.isdir(args.dir) else os.path.abspath(args.dir)
        if args.once:  # one round: nothing to look at
            print(f"hotcb autopilot: no run under {where} yet: nothing to look at", flush=True)
            return 1
        print(f"hotcb autopilot: no run under {where} yet; waiting for one (Ctrl-C stops)",
              flush=True)  # fmt: skip
    seen_alive = fleet.seen_alive
    told: set[str] = set()
    said: dict[str, int] = {}  # run -> records printed (--once sums its round up)
    try:
        while True:
            for run, pilot in list(pilots.items()):
                said[run] = said.get(run, 0) + _step(pilot)
            if args.once:
                for run, n in _finish_calls(pilots).items():
                    said[run] = said.get(run, 0) + n
                _say_round(pilots, said)
                _say_left(fleet.left)
            for notifier in fleet.notifiers.values():
                notifier.step()
            seen_alive.update(run for run, p in pilots.items() if not p.ended)
            if args.once or (_is_run(args.dir) and pilots and all(
                    _over(run, p, seen_alive, told) for run, p in pilots.items())):  # fmt: skip
                _say_ended(pilots, args.once)
                return 0
            if not _is_run(args.dir):  # a folder of runs: watched until Ctrl-C
                _retire(fleet, args.dir)
            time.sleep(args.interval)
            refresh()
    except KeyboardInterrupt:
        return 0


def _step(pilot: Any) -> int:
    """One round of ``pilot``; the records it printed."""
    records = pilot.step()
    for rec in records:
        print(_line(rec), flush=True)
    missing = pilot.missing_key()
    if missing is not None:
        say(f"hotcb autopilot: {pilot.run_dir}: {missing}", flush=True)
    return len(records)


def _retire(fleet: _Fleet, folder: str) -> None:
    """In a folder of runs: a run whose training ended leaves the watch after a last round
    (what came with its end), and its autopilot frees it. Started again in its directory (a
    resume, a restart after a crash), it is picked up again."""
    for run, pilot in list(fleet.pilots.items()):
        if not pilot.ended:
            continue
        _step(pilot)
        if pilot.crashed:
            print(f"hotcb autopilot: the training process of {run} is gone without closing "
                  f"the run (crashed or killed); still watching {folder}", flush=True)  # fmt: skip
        else:
            print(f"hotcb autopilot: the run {run} {ended(run) or 'ended'}; still watching "
                  f"{folder}", flush=True)  # fmt: skip
        pilot.close()
        del fleet.pilots[run]
        notifier = fleet.notifiers.pop(run, None)
        if notifier is not None:
            notifier.step()  # what came with the end (a crash)
            notifier.end()  # its workers deliver what is queued, then end
            fleet.retired.append(notifier)


def _over(run: str, pilot: Any, seen_alive: set[str], told: set[str]) -> bool:
    """Whether the autopilot is done with ``run``: it ended. A run that had crashed before
    the autopilot first saw it alive is waited for instead: a restart in the same directory is
    likely on its way (its new trainer may still be importing torch, with the dead one's pid
    still in hotcb.run.json), and leaving at once would watch nothing."""
    if not pilot.ended:
        return False
    if run in seen_alive or not pilot.crashed:
        return True
    if run not in told:
        told.add(run)
        print(f"hotcb autopilot: the training process of {run} is gone without closing the "
              "run (crashed or killed); waiting for it to start again (Ctrl-C stops)",
              flush=True)  # fmt: skip
    return False


def _finish_calls(pilots: dict[str, Any]) -> dict[str, int]:
    """``--once`` in an AI mode: wait for the model's answer and act on it before exiting; the
    records printed, by run."""
    said: dict[str, int] = {}
    for run, pilot in pilots.items():
        if pilot.ai is not None and pilot.ai.busy:
            pilot.ai.wait()
            for rec in pilot.step():
                print(_line(rec), flush=True)
                said[run] = said.get(run, 0) + 1
    return said


def _say_round(pilots: dict[str, Any], said: dict[str, int]) -> None:
    """``--once``: what its round found, by run, so that a quiet round is not mistaken for one
    that did not look (a finished run's metrics are read and checked too)."""
    for run, pilot in pilots.items():
        upto = f"up to step {pilot.step_now}" if pilot.step_now >= 0 else "before any metric"
        found = "nothing to report" if not said.get(run) else f"{said[run]} record(s) above"
        over = ended(run) if pilot.ended and not pilot.crashed else None
        tail = f" (the run {over})" if over else ""
        print(f"hotcb autopilot: one round on {run} {upto}: {found}{tail}", flush=True)


def _say_left(left: dict[str, str]) -> None:
    """``--once`` on a folder: each run that is over, left alone (nothing would apply an
    action there, and no autopilot file is written into it)."""
    for run, over in left.items():
        print(f"hotcb autopilot: {run}: the run {over}; left alone ('hotcb --dir {shell_path(run)} "
              "autopilot --once' checks it all the same)", flush=True)  # fmt: skip


def _say_ended(pilots: dict[str, Any], once: bool) -> None:
    """Why the autopilot leaves: each run that ended, and how."""
    for run, pilot in pilots.items():
        if pilot.crashed:
            print(f"hotcb autopilot: the training process of {run} is gone without closing "
                  "the run (crashed or killed)", flush=True)  # fmt: skip
        elif not once and pilot.ended:
            print(f"hotcb autopilot: the run {run} {ended(run) or 'ended'}; done", flush=True)


def _say_no_key(base_url: str) -> None:
    """On stderr, at start: no key for an endpoint that is not on this machine (a hosted API
    refuses every call; found only at the first one, after the rules had waited for it)."""
    from urllib.parse import urlsplit

    from ..autopilot.ai._config import KEY_ENV

    host = (urlsplit(base_url).hostname or "").lower()
    if os.environ.get(KEY_ENV) or host in ("localhost", "127.0.0.1", "::1"):
        return
    print(f"hotcb autopilot: warning: {KEY_ENV} is not set, and {host or base_url} is not on this "
          f"machine: it will likely refuse every call (the autopilot then goes on with the rules "
          f"alone after 3 failures). Set {KEY_ENV}, or give --ai-base-url a local server that "
          "needs no key", file=sys.stderr, flush=True)  # fmt: skip


def _check_ai_importable() -> None:
    try:
        import openai  # noqa: F401
    except ImportError:
        raise UsageError(
            'the LLM autopilot needs the openai SDK: pip install "hotcb[ai]"'
        ) from None


def _line(rec: dict[str, Any]) -> str:
    """An autopilot record as a line, safe for a terminal (a rule's id, a metric's name, a
    model's reasoning: what the run's files say)."""
    return term_safe(_record_text(rec))


def _record_text(rec: dict[str, Any]) -> str:
    kind = rec.get("kind")
    head = f"[step {rec.get('step')}] {kind}"
    if kind == "detection":
        return f"{head} {rec['rule']}: {rec.get('describe')}"
    if kind == "proposal":
        again = f", renewed (first at step {rec['first_step']})" if "first_step" in rec else ""
        return f"{head} {rec['id']} ({rec['rule']}{again}): {rec.get('describe')}"
    if kind == "action":
        from ..autopilot.rules import action_text

        what = action_text(rec.get("action") or rec.get("asked"))
        why = f" ({rec['reason']})" if rec.get("state") == "rejected" else ""
        return f"{head} {rec['rule']} {rec.get('state')}: {what or rec.get('reason')}{why}"
    if kind == "decision":  # a person's accept or reject, or superseded by an automatic change
        why = f": {rec['reason']}" if rec.get("reason") else f" by {rec.get('by')}"
        return f"{head} {rec.get('id')} {rec.get('state')}{why}"
    if kind == "ai_reply":  # one not acted on (late, stale, failed) says so, and why
        if rec.get("state") not in (None, "replied"):
            return f"{head} call {rec.get('call')} {rec.get('state')}: {rec.get('reason')}"
        return f"{head} call {rec.get('call')}: {rec.get('reasoning') or rec.get('reason')}"
    if kind == "guard" and not rec.get("reason"):  # kept: the reason is only for an undo
        after, worse = rec.get("after"), rec.get("worse_by")
        moved = (f"{rec.get('before'):.4g} -> {after:.4g} ({worse:+.0%})" if isinstance(
            after, (int, float)) and isinstance(worse, (int, float)) and isinstance(
            rec.get("before"), (int, float)) else "")  # fmt: skip
        return f"{head} {rec.get('rule')}: kept {moved}".rstrip()
    return f"{head} {rec.get('reason') or ''}".rstrip()


def _state(args: argparse.Namespace) -> dict[str, Any]:
    from .. import jsonl
    from ..autopilot.engine import STATE

    require_run_dir(args.dir)
    st = jsonl.read_json(os.path.join(args.dir, STATE), {}) or {}
    return st if isinstance(st, dict) else {}


def cmd_status(args: argparse.Namespace) -> int:
    from .. import jsonl
    from ..autopilot.engine import RECORDS, gone_life, proposals

    st = _state(args)
    pending = [p for p in proposals(args.dir) if p["state"] == "pending"]
    from ..autopilot.ai._policy import AI_STATE

    recent = [r for r in jsonl.read_last(os.path.join(args.dir, RECORDS), 200)
              if r.get("kind") in ("detection", "action", "guard", "skipped", "ai_reply",
                                   "fallback")][-10:]  # fmt: skip
    ai = jsonl.read_json(os.path.join(args.dir, AI_STATE), None)
    ai = {k: v for k, v in ai.items() if k != "settings"} if isinstance(ai, dict) else None
    if args.json:
        print(json.dumps({"state": st, "pending": pending, "recent": recent, "ai": ai}, indent=2))
        return 0
    if not st:
        say(
            f"autopilot: never ran here   (hotcb --dir {shell_path(args.dir)} autopilot --mode suggest)"
        )
        return 0
    say(f"autopilot: {st.get('mode')}   key metric: {st.get('key_metric')} "
          f"({st.get('direction')})   at step {st.get('step')} (its last round)")  # fmt: skip
    key, used, logged = st.get("key_metric"), st.get("key_logged_as"), st.get("logged")
    if used and used != key:
        say(f"  the run logs {key} as {used}: the rules and the guard read {used}")
    elif not used and logged:
        say(f"  {key} is not among what the run has logged ({', '.join(logged[:12])}): the "
              f"rules on the key metric wait for it; --key-metric NAME picks another")  # fmt: skip
    if ai and str(st.get("mode", "")).startswith("ai_"):
        price = "" if ai.get("price_known", True) else " (price unknown: counted as $0)"
        say(f"LLM: {ai.get('model')} at {ai.get('base_url')}   calls: {ai.get('calls')}   "
              f"spent: ${ai.get('spent_usd', 0):.4f} of ${ai.get('budget_usd', 0):g}{price}")  # fmt: skip
        if ai.get("fallback"):
            say(f"fallen back to the rules: {ai['fallback']}")
    off = set(st.get("disabled") or ())
    for r in st.get("rules") or ():
        mark = "off" if r["id"] in off or not r.get("enabled", True) else "on "
        say(f"  [{mark}] {r['id']}: {r['when']['detector']} on {r['when']['metric']} -> "
              f"{r['then']['action']} {r['then']['params'] or ''} ({r['confidence']})")  # fmt: skip
    for rec in recent:
        say(_line(rec))
    over = client(args).run_over() if pending else None
    for p in pending:  # as `autopilot proposals` says it: accept refuses these
        gone = " (of a life the run left)" if gone_life(args.dir, p) else ""
        say(f"pending {p['id']}{' (the run is over)' if over else gone}: {p.get('describe')}")
    return 0


def cmd_proposals(args: argparse.Namespace) -> int:
    from ..autopilot.engine import gone_life, proposals

    require_run_dir(args.dir)
    rows = [p for p in proposals(args.dir) if args.all or p["state"] == "pending"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        say("no pending proposals")
    over = client(args).run_over()
    if over and any(p["state"] == "pending" for p in rows):  # nothing will apply them
        say(f"the run {over}: its pending proposals ended with it (accept is refused; "
              "'hotcb autopilot reject ID' clears one)")  # fmt: skip
    for p in rows:
        state = p["state"]
        if state == "pending" and over:
            state = "pending (the run is over)"
        elif state == "pending" and gone_life(args.dir, p):  # accept refuses it: say so here
            state = "pending (of a life the run left)"
        say(f"{p['id']}  step {p['step']}  {state}  {p.get('describe')}")
    return 0


def cmd_decide(args: argparse.Namespace) -> int:
    from ..autopilot.engine import decide

    require_run_dir(args.dir)
    try:
        rec = decide(args.dir, args.id, args.accept, by="cli")
    except (KeyError, ValueError) as exc:
        raise UsageError(str(exc).strip("'\"")) from None
    say(
        f"{rec['id']} {rec['state']}"
        + (f": {' '.join(rec['cmd_ids'])}" if rec.get("cmd_ids") else "")
        + (_age(args.dir, rec["id"]) if rec.get("cmd_ids") else "")
    )
    if getattr(args, "wait", False) and rec.get("cmd_ids"):
        return finish(args, rec["cmd_ids"])  # the ledger entries, once the run applied them
    return 0


def _age(run_dir: str, proposal_id: str) -> str:
    """How old the evidence of an accepted proposal is: its step, and the run's now."""
    from ..autopilot.engine import proposals
    from ..runfiles import RunPaths

    step = next((p.get("step") for p in proposals(run_dir) if p.get("id") == proposal_id), None)
    if not isinstance(step, int):
        return ""
    paths = RunPaths(run_dir)
    seen = [(jsonl.read_json(paths.heartbeat, {}) or {}).get("step")]  # at most once a second
    seen += [r.get("step") for r in jsonl.read_last(paths.metrics, 1)]
    now = max((v for v in seen if isinstance(v, int)), default=None)
    ago = f", {now - step} steps ago" if isinstance(now, int) and now > step else ""
    return f" (proposed at step {step}{ago})"


def cmd_rules(args: argparse.Namespace) -> int:
    """``--check FILE``: the file's rules, or every problem. Else the rules in force in the
    run: those its autopilot last ran with (``--rules FILE``), or the shipped defaults when
    none has run there (it printed the defaults whatever the run's autopilot used)."""
    from ..autopilot.rules import load_rules

    require_rules_file(args.check, "--check")
    st = {} if args.check or not os.path.isdir(args.dir) else _state(args)
    if st.get("rules"):
        off = set(st.get("disabled") or ())
        src = st.get("rules_path") or "the shipped defaults"
        say(
            f"the rules of the run's autopilot ({st.get('mode')}, at step {st.get('step')}), "
            f"from {src}:"
        )
        for r in st["rules"]:
            when, then = r.get("when") or {}, r.get("then") or {}
            mark = " (off)" if r.get("id") in off or not r.get("enabled", True) else ""
            say(f"{r.get('id')}{mark}: when {when.get('detector')} on {when.get('metric')} "
                f"{when.get('params') or ''} -> {then.get('action')} {then.get('params') or ''}, "
                f"cooldown {r.get('cooldown_steps')} steps, {r.get('confidence')}")  # fmt: skip
        return 0
    rules = load_rules(args.check)
    if not args.check:
        say("no autopilot has run here yet: the shipped defaults ('autopilot --rules FILE' "
            "picks others):", file=sys.stderr)  # fmt: skip
    for r in rules.rules:
        say(f"{r.id}: when {r.detector} on {r.metric} {r.params or ''} -> "
              f"{r.action.describe()}, cooldown {r.cooldown_steps} steps, {r.confidence}")  # fmt: skip
    if args.check:
        say(f"{args.check}: {len(rules.rules)} rules, no problems", file=sys.stderr)
    return 0

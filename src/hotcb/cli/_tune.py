"""The online tuner: ``tune enable|disable|status|proposals|accept|reject|export``.

The tuner runs inside the training process (docs/tune.md); these commands send it commands and
read the state it publishes in ``hotcb.tune.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any

from .. import jsonl
from ..metrics import guess_direction
from ..runfiles import shell_path
from ._common import (
    DIRECTION_DEFAULT,
    add_wait,
    client,
    ended,
    finish,
    fmt_entry,
    fmt_noise,
    fmt_value,
    require_out_folder,
    require_run_dir,
    say,
)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    tune = sub.add_parser(
        "tune",
        help="the online tuner (Optuna): enable, disable, status, proposals, accept, reject, "
        "export",
        description="Let the run tune its own lr, weight decay or loss weights while it trains: "
        "segment by segment, a mutation is kept when the objective beats its trend and rolled "
        "back otherwise. Needs optuna in the training environment (pip install 'hotcb[tune]').",
    )
    tsub = tune.add_subparsers(dest="op", metavar="OP")
    tsub.required = True

    p = tsub.add_parser(
        "enable", help="turn the tuner on (or change its settings)",
        description="Turn the tuner on, or change the settings of one that is on: a setting "
        "not given stays as it is (its mode, objective, segment, recipe, storage and study), "
        "so 'tune enable --mode suggest' changes the mode only. A new --recipe brings its own "
        "space and settings.",
    )  # fmt: skip
    p.add_argument("--mode", choices=("active", "suggest", "observe"),
                   help="active: apply mutations; suggest: propose, a person accepts; "
                   "observe: score segments only (default: active, or the mode in force)")  # fmt: skip
    p.add_argument("--objective", help="the metric to score (default val_loss, else loss)")
    p.add_argument(
        "--direction",
        choices=("minimize", "maximize"),
        help=f"of the objective ({DIRECTION_DEFAULT})",
    )
    seg = p.add_mutually_exclusive_group()
    seg.add_argument("--segment-steps", type=int, help="steps per segment (default 200)")
    seg.add_argument("--segment-evals", type=int,
                     help="values of the objective per segment (an objective logged only at "
                     "validation)")  # fmt: skip
    p.add_argument("--recipe", help="search space and settings (default RUN/hotcb.tune.yaml)")
    p.add_argument("--storage", help="an Optuna storage URL (sqlite:///…, postgresql://…, "
                   "journal:PATH; default sqlite in the run directory). A file must lie in the "
                   "run directory or the trainer's allowed_roots; a password in the URL goes in "
                   "plain text to the commands file and ledger (use PGPASSWORD or ~/.pgpass)")  # fmt: skip
    p.add_argument("--study", help="the study's name: runs that name the same study share it")
    p.add_argument(
        "--seed",
        type=int,
        help="the sampler's seed (in a study with trials already: the seed plus their number, "
        "so a resumed or second run does not draw the same points again)",
    )
    p.add_argument("--risk", choices=("low", "medium", "high"),
                   help="low halves each range; high drops cooldowns (default medium)")  # fmt: skip
    p.add_argument("--threshold", type=float, help="keep a mutation whose score beats this (0)")
    p.add_argument("--startup-trials", type=int, help="random trials before TPE (default 5)")
    p.add_argument("--total-steps", type=int,
                   help="the run's length: a trial starts only if it and one more segment fit "
                   "(the Lightning and HF adapters tell the tuner themselves)")  # fmt: skip
    p.add_argument("--restore", choices=("values", "state"),
                   help="what a roll-back puts back: the knobs' values (default), or also the "
                   "model's weights and the optimizer's state from the trial's start (one copy "
                   "in memory)")  # fmt: skip
    p.add_argument("--start", choices=("baseline", "bracket"),
                   help="how the tuner begins: two baseline segments (default), or a bracket: "
                   "a segment at the lr, at lr x low and at lr x high, each from the same "
                   "weights, up to three rounds; the run goes on at the lr that won, from the "
                   "weights the bracket began with when it moved (up to three copies of the "
                   "model and optimizer state in memory; needs the model in env)")  # fmt: skip
    p.add_argument("--abort", type=float,
                   help="end a trial early when the objective is this much worse than its "
                   "trend (relative; default 1.0, i.e. twice the expected loss)")  # fmt: skip
    p.add_argument("--sync", action="store_true", default=None,
                   help="wait for Optuna at each boundary, so trials start exactly on "
                   "boundaries (reproducible step numbers; costs the ask's time, 0.1-0.4 s on "
                   "SQLite). Default: Optuna runs on a thread of its own")  # fmt: skip
    add_wait(p, also=", then until the study is open (exit 1 if the run cannot open it)")
    p.set_defaults(func=cmd_enable)

    p = tsub.add_parser(
        "disable", help="turn the tuner off (kept changes stay; an open trial's is taken back)"
    )
    add_wait(p)
    p.set_defaults(func=cmd_disable)

    p = tsub.add_parser("status", help="mode, objective, phase, trials by decision, best so far")
    p.add_argument("--json", action="store_true", help="the whole state as JSON")
    p.set_defaults(func=cmd_status)

    p = tsub.add_parser("proposals", help="proposals of a tuner in suggest mode")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--all", action="store_true", help="also the accepted/rejected ones")
    p.set_defaults(func=cmd_proposals)

    for name, text in (("accept", "apply a proposal"), ("reject", "turn a proposal down")):
        p = tsub.add_parser(name, help=text)
        p.add_argument("id", help="the proposal's id, e.g. P3 ('hotcb tune proposals')")
        add_wait(p)
        p.set_defaults(func=cmd_decide, decision=name)

    p = tsub.add_parser("export", help="the kept changes as a recipe for 'freeze --mode replay'")
    p.add_argument(
        "--out", help="file, or folder to write it in (default RUN/hotcb.tune.recipe.jsonl)"
    )
    p.set_defaults(func=cmd_export)


def cmd_enable(args: argparse.Namespace) -> int:
    settings = {
        "objective": args.objective, "direction": args.direction,
        "segment_steps": args.segment_steps, "segment_evals": args.segment_evals,
        "recipe": args.recipe, "storage": args.storage, "study": args.study, "seed": args.seed,
        "risk": args.risk, "threshold": args.threshold, "startup_trials": args.startup_trials,
        "total_steps": args.total_steps, "abort": args.abort, "restore": args.restore,
        "start": args.start, "sync": args.sync,
    }  # fmt: skip
    if args.objective and not args.direction and guess_direction(args.objective) == "maximize":
        print(f"hotcb: {args.objective} is maximized (from its name; --direction minimize if "
              "lower is better)", file=sys.stderr)  # fmt: skip
    cid = client(args).tune_enable(args.mode, **settings)
    code = finish(args, [cid], sent=("tune", "enable"))
    if code or not args.wait or ended(args.dir) is not None:
        return code
    # applied: the run opens the study next, off its training thread; --wait waits for that
    got = client(args).wait_tune_open(cid, timeout=args.timeout)
    if got.get("decision") == "failed":
        print(fmt_entry(got, args.dir))
        return 1
    if not got.get("study_open"):
        print("hotcb: the run is paused; it opens the study when it trains again ('hotcb tune "
              "status' says when)", file=sys.stderr)  # fmt: skip
        return 0
    say(f"study {got.get('study')} open in {got.get('storage')}")
    return 0


def cmd_disable(args: argparse.Namespace) -> int:
    return finish(args, [client(args).tune_disable()])


def cmd_decide(args: argparse.Namespace) -> int:
    require_run_dir(args.dir)
    c = client(args)  # an unknown id, one not pending, a run that is over: a CommandError
    cid = c.tune_accept(args.id) if args.decision == "accept" else c.tune_reject(args.id)
    return finish(args, [cid], sent=("tune", args.decision))


def _state(args: argparse.Namespace) -> dict[str, Any]:
    """The tuner's state; for a run whose training process is gone, ``run_over``, no next
    boundary, and its pending proposals ``ended`` (nothing can apply them any more)."""
    require_run_dir(args.dir)
    c = client(args)
    st = c.tune_status()
    refused = _refused_enable(c.paths.ledger)
    if refused is not None:
        st = {**st, "enable_refused": refused}
    queued = _queued(c.paths)
    if queued is not None:
        st = {**st, "queued": queued}
    over = c.run_over()
    if over is None:
        from ..ledger import LedgerView

        view, meta = LedgerView.read(c.paths.ledger, 0), jsonl.read_json(c.paths.run_meta, {})
        if st.get("mode", "off") != "off" and view.control_now(meta) == "pause":
            # no step: no segment moves, no trial is judged (a pause of an earlier life aside)
            st = {**st, "run_paused": True}
        return st
    from ..modules.tune import over_view

    return over_view(st, over)


def _queued(paths: Any) -> dict[str, Any] | None:
    """The newest ``tune enable``/``disable`` that the run has not read yet (written before the
    trainer started, or since its last read): ``{cmd_id, op, mode}``."""
    from ..ledger import tail_state

    cursor = int(tail_state(paths.ledger)[1] or 0)
    try:
        with open(paths.commands, "rb") as f:
            f.seek(cursor)
            unread = f.read(1 << 20)
    except OSError:
        return None
    found = None
    for line in unread.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("module") == "tune" and rec.get("op") in (
            "enable", "disable"
        ):  # fmt: skip
            params = rec.get("params")
            mode = params.get("mode") if isinstance(params, dict) else None
            found = {"cmd_id": rec.get("cmd_id"), "op": rec["op"], "mode": mode}
    return found


def _refused_enable(ledger: str) -> dict[str, Any] | None:
    """The run's last ``tune enable`` when the run refused it (optuna missing there, a recipe
    it cannot read): status says so, not just ``tuner: off``."""
    enables = [e for e in jsonl.read_last(ledger, 2000)
               if (e.get("module"), e.get("op")) == ("tune", "enable")
               and e.get("decision") != "scheduled"]  # fmt: skip
    last = enables[-1] if enables else None
    if last is None or last.get("decision") not in ("rejected", "failed"):
        return None
    out = {"seq": last.get("seq"), "step": last.get("step"), "error": last.get("error")}
    # the enable as it was applied, when the failure came later (a study that could not be
    # opened, said by the tuner's thread in an entry of its own)
    sent = next((e for e in enables if e.get("cmd_id") == last.get("cmd_id")), last)
    if sent is not last:
        out["sent"] = {"seq": sent.get("seq"), "step": sent.get("step")}
    return out


def _changes(changes: dict[str, Any]) -> str:
    return ", ".join(f"{k} {fmt_value(a)} -> {fmt_value(b)}" for k, (a, b) in changes.items())


def _say_refused(st: dict[str, Any]) -> None:
    """The last ``tune enable`` the run refused or failed, and why (a recipe's problems, a
    line each)."""
    refused = st.get("enable_refused")
    if not refused:
        return
    kept = "the tuner is as it was" if st.get("mode", "off") != "off" else "the tuner is off"
    sent = refused.get("sent")
    said = (f"(#{sent['seq']}, step {sent['step']}) failed at #{refused['seq']}, step "
            f"{refused['step']}" if sent else
            f"(#{refused['seq']}, step {refused['step']}) was refused by the run")  # fmt: skip
    first, *more = str(refused["error"]).split("\n")
    say(f"the last tune enable {said}: {first}" + ("" if more else f"; {kept}"))
    for line in more:
        say(line)
    if more:
        say(kept)


def cmd_status(args: argparse.Namespace) -> int:
    st = _state(args)
    over = st.get("run_over")
    if args.json:
        print(json.dumps(st, indent=2, sort_keys=True))
        return 0
    _say_refused(st)
    if st.get("unreadable"):
        say(f"hotcb: warning: {st['unreadable']}", file=sys.stderr)
    queued = st.get("queued")
    if queued:  # sent, and not read by the run yet
        what = f"tune {queued['op']}" + (f" --mode {queued['mode']}" if queued.get("mode") else "")
        until = ("the run starts" if not os.path.exists(client(args).paths.run_meta) else
                 "the run reads it" if over is None else "the run is started again")  # fmt: skip
        say(f"queued: {what} ({queued['cmd_id']}) waits in the commands file until {until}")
    if st.get("mode", "off") == "off":
        hint = "" if queued else (f"   (hotcb --dir {shell_path(args.dir)} tune enable --mode "
                                  "active|suggest|observe)")  # fmt: skip
        print(f"tuner: off{hint}")
        if st.get("counts"):  # it was on: what it did
            _summary(st)
        return 0
    objective = st.get("objective")
    used = st.get("objective_used")
    asked, scored = st.get("direction"), st.get("direction_used") or st.get("direction")
    if used in (None, objective):
        shown = f"{objective} ({asked})"
    else:  # a training loss stands in: it is minimized whatever the objective asked
        shown = f"{used} ({scored}; asked: {objective}, {asked})"
    say(f"tuner: {st['mode']}   objective: {shown}")
    if over is not None:
        print(f"run: {over} (the tuner is idle until the run is started again)")
    elif st.get("run_paused"):
        print("run: paused (the tuner waits with it: 'hotcb resume' goes on)")
    segment = (f"{st['segment_evals']} evaluations" if st.get("segment_evals")
               else f"{st.get('segment_steps')} steps")  # fmt: skip
    trial = f"   trial {st['trial']}" if st.get("trial") is not None else ""
    for row in st.get("trials") or ():  # what the open trial changed
        if (st.get("trial") is not None and row.get("trial") == st["trial"]
                and row.get("changes") and "study" not in row):  # fmt: skip
            trial += f" ({_changes(row['changes'])})"
    if over is not None:  # no phase goes on: say what the run ended in
        phase = "none (the run is over" + (f"; it stopped in {trial.strip()})" if trial else ")")
        say(f"phase: {phase}   segment: {segment}")
    else:
        nxt = st.get("next_boundary")
        say(f"phase: {st.get('phase')}{trial}   segment: {segment}"
            + (f"   next boundary: step {nxt}" if nxt is not None else ""))  # fmt: skip
    _summary(st)
    return 0


def _arms(arms: Any) -> str:
    """A round's arms, each with its level and noise (a move wins only by more than the two
    arms' noise); ``…`` for one not judged."""

    def level(a: Any) -> str:
        got = a.get("level")
        return "…" if got is None else fmt_value(got) + fmt_noise(got, a.get("noise"))

    return ", ".join(f"x{a['factor']:.3g} {level(a)}" for a in arms or [])


def _began(r: dict[str, Any]) -> Any:
    """The lr a bracket round began at: in force when its first arm landed, else the plan's."""
    return r.get("from") if r.get("from") is not None else r.get("base")


def _bracket_line(b: dict[str, Any]) -> str:
    """The start bracket (docs/tune.md): each round's arms and their levels (± their noise), and
    how it ended."""
    rounds = list(b.get("rounds") or [])
    said = []
    for r in rounds:
        said.append(f"round {r['round']} from {fmt_value(_began(r))}: {_arms(r.get('arms'))}")
    if "ended_at" not in b:
        said.append(f"round {b.get('round')} under way (arm {b.get('arm')})")
    elif b.get("reason") and b.get("round") not in [r.get("round") for r in rounds]:
        said.append(f"round {b.get('round')} from {fmt_value(_began(b))}, cut short: "
                    f"{_arms(b.get('arms'))}")  # fmt: skip
    head = f"bracket of {b.get('knob')}"
    if "ended_at" in b:
        winner = rounds[-1]["winner"] if rounds else None
        head += f" (over at step {b['ended_at']}" + (
            f": {b['reason']})" if b.get("reason") else f", x{winner:.3g} won the last round)"
            if winner is not None else ")")  # fmt: skip
        if b.get("back_to_start"):
            head += ", on from the weights it began with"

    return f"{head}: " + "; ".join(said) if said else head


def _proposals(st: dict[str, Any]) -> str:
    """The proposals accepted beside those turned down (suggest mode), those still waiting,
    and those a re-enable, a disable or the run's end left unanswered: ``accepted: 2
    rejected: 1   pending: 1   ``."""
    counts = st.get("counts") or {}
    rows = [p for p in st.get("proposals") or () if isinstance(p, dict)]
    accepted = counts.get("accepted")
    if accepted is None:  # a state written before they were counted: its rows say
        accepted = sum(1 for p in rows if p.get("state") == "accepted")
    pending = sum(1 for p in rows if p.get("state") == "pending")  # (a run over: `ended`)
    said = (("rejected", counts.get("rejected")), ("pending", pending),
            ("expired", counts.get("expired")))  # fmt: skip
    head = f"accepted: {accepted}   " if counts.get("proposed") else ""
    return head + "".join(f"{k}: {n}   " for k, n in said if n)


def _summary(st: dict[str, Any]) -> None:
    """Trials by decision, the best, the study, the warnings, the state's age."""
    counts = st.get("counts") or {}
    # trials kept of those judged, whoever started them: not proposals accepted (suggest mode)
    rate = st.get("kept_rate", st.get("accept_rate"))
    judged = counts.get("kept", 0) + counts.get("rolled_back", 0)
    others = _proposals(st)
    # trials a life a resume replaced opened and finished: in the study, in no life of the run
    replaced = sum(1 for r in st.get("trials") or () if isinstance(r, dict)
                   and r.get("decision") == "replaced")  # fmt: skip
    if replaced:
        others += f"replaced: {replaced} (by a resume)   "
    if counts.get("unmoved"):  # every knob held at its bound: told 0, no segment spent
        others += f"unmoved: {counts['unmoved']} (at a bound, told 0)   "
    if counts.get("undone"):  # kept, then taken back by a control undo: no longer kept
        others += f"undone: {counts['undone']} of the kept   "
    print("segments: {segments}   kept: {kept}   rolled back: {rolled_back}   proposed: "
          "{proposed}   ".format(**{k: counts.get(k, 0) for k in (
              "segments", "kept", "rolled_back", "proposed")})
          + f"{others}failed: {counts.get('failed', 0)}"
          + (f"   kept rate: {rate:.0%} ({counts.get('kept', 0)} of {judged} judged)"
             if rate is not None else ""))  # fmt: skip
    levels = st.get("levels") or []
    if levels:  # the trend's points: each segment's level, at its middle step
        shown = ", ".join(f"{fmt_value(p['level'])} (step {p['step']})" for p in levels)
        say(f"levels: {shown}")
    bracket = st.get("bracket")
    if isinstance(bracket, dict):
        say(_bracket_line(bracket))
    best = st.get("best")
    if best:
        flat = {f"{m}.{k}": v for m, kv in best["values"].items() for k, v in kv.items()}
        values = ", ".join(f"{k}={fmt_value(v)}" for k, v in flat.items())
        say(f"best: trial {best['trial']} score {best['score']:+.3f}   {values}")
    joined = st.get("study_joined")
    shared = ""
    if isinstance(joined, dict):  # the best above is this run's; the study holds theirs too
        runs = joined.get("runs")
        best = joined.get("best")
        shared = (f"   (shared: {joined.get('trials')} trials of {runs} other "
                  f"run{'s' if runs != 1 else ''} when this run joined"
                  + (f", their best score {best:+.3f})" if best is not None else ")"))  # fmt: skip
    say(f"study: {st.get('study')}   storage: {st.get('storage')}{shared}")
    for w in st.get("warnings") or ():
        say(f"warning: {w}")
    age = time.time() - float(st.get("updated") or 0)
    if age > 120:
        print(f"(state written {age:.0f} s ago)")


def cmd_proposals(args: argparse.Namespace) -> int:
    st = _state(args)
    rows = [p for p in st.get("proposals") or () if args.all or p.get("state") == "pending"]
    if args.json:
        print(json.dumps(rows, indent=2, sort_keys=True))
        return 0
    if not rows:
        why = (f" (the run {st['run_over']})" if st.get("run_over") else "" if
               st.get("mode") == "suggest" else f" (the tuner is {st.get('mode', 'off')}, not "
               "suggest)")  # fmt: skip
        print("no pending proposals" + why)
        return 0
    for p in rows:
        say(f"{p['id']}  step {p['step']}  trial {p['trial']}  {p['state']}  {_proposed(p)}")
    return 0


def _proposed(p: dict[str, Any]) -> str:
    """A proposal's changes as an accept applies them: a relative move (× or +) applies to the
    value in force when it lands, so the values shown are those of the step it was made at."""
    moves, said = p.get("moves") or {}, []
    for key, (old, new) in (p.get("changes") or {}).items():
        move = moves.get(key)
        shown = f"{key} {fmt_value(old)} -> {fmt_value(new)}"
        if not isinstance(move, (int, float)) or not isinstance(old, (int, float)):
            said.append(shown)
        elif old and math.isclose(new / old, move, rel_tol=1e-6):
            said.append(f"{key} x{move:.3g} on accept ({fmt_value(old)} -> {fmt_value(new)} "
                        f"at step {p.get('step')})")  # fmt: skip
        else:
            said.append(f"{key} {move:+.3g} on accept ({fmt_value(old)} -> {fmt_value(new)} "
                        f"at step {p.get('step')})")  # fmt: skip
    return ", ".join(said)


def cmd_export(args: argparse.Namespace) -> int:
    from ..modules.tune._export import export_kept

    require_run_dir(args.dir)
    require_out_folder(args.out)
    path, kept = export_kept(args.dir, args.out)
    print(path)
    if not kept:  # a recipe that replays nothing: say so, and why
        paths = client(args).paths
        if not os.path.exists(paths.ledger) or os.path.getsize(paths.ledger) == 0:
            why = "the trainer has applied nothing in this run yet (its ledger is empty)"
        elif os.path.exists(paths.tune):
            why = "the tuner kept no change in this run"
        else:
            why = "the tuner was never on in this run ('hotcb recipe export' exports every change)"
        print(f"hotcb: {why}; the recipe is empty", file=sys.stderr)
    return 0

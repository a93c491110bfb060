"""Recipes: a run's applied changes as a portable plan that another run follows exactly.

``export_recipe(run_dir)`` turns the ledger's ``applied`` entries into ``hotcb.recipe.jsonl``
(shared/DESIGN.md §6): a header line with the run's metadata, then one entry a line::

    {"v": 1, "kind": "hotcb.recipe", "run": {...hotcb.run.json...}, "exported_at": 1764374400.0}
    {"v": 1, "at": {"step": 40, "event": "train_step_end"}, "module": "opt", "op": "set_params",
     "id": null, "params": {"lr": 0.005}, "target": null, "init": null, "enabled": null,
     "cmd_id": "01J..."}

A run started with ``freeze --mode replay --recipe R`` ignores external commands and applies
each entry at the first safe point whose step is the entry's step (plus ``step_offset``) and
whose event matches; if that event never comes at that step the entry fires at the next safe
point after it, never later than that. Replayed ops are ledgered with ``source: "recipe"``.

``replay_adjusted`` first applies an overlay (``hotcb.adjust.yaml``) that drops, changes,
shifts or inserts entries; ``patch_template(recipe)`` writes a commented starting point.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import jsonl
from .errors import ActuatorError, CommandError, PathNotAllowedError, RecipeError
from .freeze import FreezeState
from .ledger import applied_params, iter_entries, live_entries
from .ops import HotOp, command_to_hotop
from .runfiles import FORMAT_VERSION, RunPaths, confine_path, redact_secrets, shell_path

__all__ = [
    "RECIPE_KIND",
    "Recipe",
    "RecipeEntry",
    "RecipePlayer",
    "RecipeProblem",
    "RecipeProblems",
    "apply_overlay",
    "check_actuators",
    "check_recipe",
    "export_recipe",
    "fresh_restarts",
    "ledger_to_entries",
    "load_overlay",
    "out_file",
    "patch_template",
    "player_for",
    "read_recipe",
    "sets_actuators",
    "validate_recipe",
]

RECIPE_KIND = "hotcb.recipe"
DEFAULT_EVENT = "train_step_end"
#: The events hotcb's safe points pass to ``kernel.apply``: the kernel's default
#: (``train_step_end``), the Lightning and HF adapters' (``train_step_end``,
#: ``train_batch_end``, ``val_epoch_end``) and the test trainer's. An entry whose event is a
#: near miss of one of them is refused (a misspelt event never comes, and the entry would fire
#: silently at the next safe point); another name is a loop's own event and stays.
KNOWN_EVENTS = frozenset({"train_step_end", "train_batch_end", "val_epoch_end"})
#: The largest step an entry may name (an int64 step counter's).
MAX_STEP = 2**63 - 1

#: Control ops that steer the process rather than the training trajectory: not replayed.
#: (``extend`` is replayed: how long the run trains is part of its trajectory.)
_UNREPLAYABLE_CONTROL = frozenset({"pause", "resume", "stop", "checkpoint", "cancel", "evaluate"})
#: Modules never exported: a freeze change inside a replay would end it, and tune commands start
#: a tuner (its mutations and roll-backs are exported as the set_params they made).
_UNREPLAYABLE_MODULES = frozenset({"freeze", "kernel", "tune"})
#: The tuner's ops that changed values: exported as ``set_params`` per module.
TUNE_VALUE_OPS = frozenset({"mutate", "rollback", "bracket"})


def _replayable(module: Any, op: Any) -> str | None:
    """Why ``module op`` cannot be in a recipe, or None when it can."""
    if module in _UNREPLAYABLE_MODULES:
        return f"{module} {op} is not replayable (freeze, tune and kernel entries are not)"
    if module == "control" and op in _UNREPLAYABLE_CONTROL:
        return (
            f"control {op} is not replayable (pause/resume/stop/checkpoint/cancel/evaluate are not)"
        )
    return None


@dataclass
class RecipeEntry:
    """One change of the plan: apply ``module op`` at ``step`` (and ``event``)."""

    step: int
    module: str
    op: str
    event: str = DEFAULT_EVENT
    params: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    target: dict[str, Any] | None = None
    init: dict[str, Any] | None = None
    enabled: bool | None = None
    transition: dict[str, Any] | None = None
    source_capture: dict[str, Any] | None = None
    cmd_id: str | None = None
    #: Line of the recipe file it came from (None: inserted by an overlay).
    line: int | None = None
    #: True once an overlay patch changed it (or inserted it).
    adjusted: bool = False
    #: The overlay patch that last changed or inserted it (``overlay FILE:LINE patch N``).
    patch: str | None = None

    def to_record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "v": FORMAT_VERSION,
            "at": {"step": self.step, "event": self.event},
            "module": self.module,
            "op": self.op,
            "id": self.id,
            "params": self.params,
            "target": self.target,
            "init": self.init,
            "enabled": self.enabled,
        }
        if self.transition is not None:
            rec["transition"] = self.transition
        if self.source_capture is not None:
            rec["source_capture"] = self.source_capture
        rec["cmd_id"] = self.cmd_id
        return rec

    def command_record(self) -> dict[str, Any]:
        """The command this entry replays (validated with the same rules as a live one)."""
        return {
            "cmd_id": self.cmd_id or f"recipe@{self.line}",
            "source": "recipe",
            "module": self.module,
            "op": self.op,
            "params": self.params,
            "id": self.id,
            "target": self.target,
            "init": self.init,
            "enabled": self.enabled,
            "transition": self.transition,
        }

    def describe(self) -> str:
        what = f"{self.module} {self.op}" + (f" {self.id}" if self.id else "")
        params = f" {json.dumps(self.params, sort_keys=True)}" if self.params else ""
        return f"step {self.step} ({self.event}): {what}{params}"

    @classmethod
    def from_record(cls, rec: Any, line: int | None = None) -> RecipeEntry:
        """Parse one recipe line; raise :class:`RecipeError` saying what is wrong."""
        if not isinstance(rec, dict):
            raise RecipeError(f"an entry must be a JSON object, got {type(rec).__name__}")
        v = rec.get("v", FORMAT_VERSION)
        if v != FORMAT_VERSION:
            raise RecipeError(f"unsupported recipe format v={v!r}; this hotcb reads v=1")
        at = rec.get("at")
        if at is None and "at_step" in rec:
            at = {"step": rec["at_step"]}
        if not isinstance(at, dict):
            raise RecipeError(f"'at' must be an object {{step, event}}, got {at!r}")
        step, event = at.get("step"), at.get("event") or DEFAULT_EVENT
        if isinstance(step, bool) or not isinstance(step, int):
            raise RecipeError(f"at.step must be an integer, got {step!r}")
        if not 0 <= step <= MAX_STEP:
            raise RecipeError(f"at.step must be an integer from 0 to {MAX_STEP}, got {step}")
        if not isinstance(event, str):
            raise RecipeError(f"at.event must be a string, got {event!r}")
        if event not in KNOWN_EVENTS and (near := _near_event(event)):
            raise RecipeError(_unknown_event(event, near))
        module, op = rec.get("module"), rec.get("op")
        why = _replayable(module, op)
        if why:
            raise RecipeError(why)
        capture = rec.get("source_capture")
        if capture is not None and (
            not isinstance(capture, dict) or not isinstance(capture.get("path"), str)
        ):
            raise RecipeError(f"source_capture must be {{sha256, path}}, got {capture!r}")
        cmd_id = rec.get("cmd_id")
        entry = cls(
            step=step,
            module=module,  # type: ignore[arg-type]  # checked by command_to_hotop below
            op=op,  # type: ignore[arg-type]
            event=event,
            params=rec.get("params") or {},
            id=rec.get("id"),
            target=rec.get("target"),
            init=rec.get("init"),
            enabled=rec.get("enabled"),
            transition=rec.get("transition"),
            source_capture=capture,
            cmd_id=cmd_id if isinstance(cmd_id, str) and cmd_id else _line_id(line),
            line=line,
        )
        try:
            command_to_hotop(entry.command_record())
        except CommandError as exc:
            raise RecipeError(str(exc)) from None
        return entry


@dataclass(frozen=True)
class RecipeProblem:
    """Something wrong with a recipe, at a line of its file (0: the file as a whole)."""

    line: int
    message: str
    #: The problem is an overlay patch's (the entry it inserts or changes): it names it.
    overlay: bool = False

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


@dataclass
class Recipe:
    """A parsed recipe file: its header (run metadata) and its entries in file order."""

    path: str
    header: dict[str, Any]
    entries: list[RecipeEntry]

    @property
    def run_dir(self) -> str | None:
        run = self.header.get("run") or {}
        return run.get("run_dir") if isinstance(run, dict) else None


def _near_event(event: str) -> str | None:
    """The known event ``event`` misspells, if it is that close to one: any other name is a
    loop's own event (``kernel.apply(env, ("my_event",))``), which its recipes replay. Case
    does not count: events match exactly, so ``Train_Step_End`` would never fire."""
    near = difflib.get_close_matches(event.lower(), sorted(KNOWN_EVENTS), n=1, cutoff=0.85)
    return near[0] if near else None


def _unknown_event(event: str, near: str) -> str:
    return (
        f"unknown at.event {event!r}; did you mean {near!r}? (known: "
        f"{', '.join(sorted(KNOWN_EVENTS))}); an event that never comes would fire the entry at "
        "the next safe point instead"
    )


def _line_id(line: int | None) -> str | None:
    return f"recipe@{line}" if line is not None else None


# --------------------------------------------------------------------------------- export
def ledger_to_entries(
    ledger: Iterable[Mapping[str, Any]], run_dir: str | None = None
) -> list[RecipeEntry]:
    """The ledger's applied changes as recipe entries, in ledger order.

    Skipped: ramp completions (the op that started the ramp replays it), pause/resume/stop/
    checkpoint/cancel/evaluate, freeze/tune/kernel entries, and the second entry of a
    ``cmd_id``.
    Entries that were themselves replayed (``source: "recipe"`` or ``"resume"``) are kept as
    plain entries. Captured callback sources are referenced relative to ``run_dir``. The result
    is sorted by step.
    """
    out: list[RecipeEntry] = []
    seen: set[str] = set()
    split: dict[str, list[str]] = {}  # a tuner command's id -> the ids of its set_params
    for e in live_entries(ledger):
        if (
            e.get("decision") != "applied"
            or e.get("source") in ("ramp", "kernel")
            or e.get("not_reapplied") is not None
        ):  # (an undo of a change left out)
            continue  # fmt: skip
        module, op = e.get("module"), e.get("op")
        if module == "tune" and op == "bracket" and not (e.get("params") or {}).get("settle"):
            continue  # an arm: its weights were put back, which a replay cannot do
        if module == "tune" and op in TUNE_VALUE_OPS:
            made = tune_entries(e)
            if isinstance(e.get("cmd_id"), str):
                split[e["cmd_id"]] = [m.cmd_id for m in made if m.cmd_id]
            out.extend(made)
            continue
        if e.get("undo_of") in split:  # the undo of a tuner change
            out.extend(_split_undo(e, split[e["undo_of"]]))
            continue
        if not isinstance(module, str) or not isinstance(op, str) or _replayable(module, op):
            continue
        cid = e.get("cmd_id")
        if isinstance(cid, str):
            if cid in seen:
                continue
            seen.add(cid)
        params = applied_params(e)  # a rebased multiplier: the value it set
        if e.get("undo_of"):
            params = {"cmd_id": e["undo_of"]}  # "undo the last change" made explicit
        capture = _capture(e.get("source_capture"), run_dir)
        out.append(
            RecipeEntry(
                step=int(e.get("step") or 0),
                event=e.get("event") or DEFAULT_EVENT,
                module=module,
                op=op,
                params=params,
                id=e.get("id"),
                target=e.get("target"),
                init=e.get("init"),
                enabled=e.get("enabled"),
                transition=e.get("transition"),
                source_capture=capture,
                cmd_id=cid if isinstance(cid, str) else None,
            )
        )
        if e.get("without_trial"):
            out.extend(_trial_taken_back(e))
    # a resumed run appends its new changes after those of the life it replaced: sort by step
    # (stable, so changes of one step keep their order)
    out.sort(key=lambda entry: entry.step)
    return out


def tune_entries(e: Mapping[str, Any]) -> list[RecipeEntry]:
    """A tuner's ``mutate``/``rollback`` ledger entry as the ``set_params`` it made, one per
    module (``params.values`` is ``{module: {key: value}}``), with the values it really set
    (``changes``): a move (lr × m) lands on the lr of the step it is applied at, which a
    scheduler may have moved since the trial was drawn."""
    given = (e.get("params") or {}).get("values")
    raw_tune = e.get("tune")
    tune: Mapping[str, Any] = raw_tune if isinstance(raw_tune, Mapping) else {}
    values: dict[str, dict[str, Any]] = {
        str(m): dict(kv) for m, kv in (given or {}).items() if isinstance(kv, Mapping)
    } if isinstance(given, Mapping) else {}  # fmt: skip
    for name in tune.get("rescaled") or ():  # a roll-back's factor on a command's value
        module, _, key = str(name).partition(".")
        values.setdefault(module, {})[key] = None
    if not values:
        return []
    cid = e.get("cmd_id")
    made = e.get("changes")
    changes: Mapping[str, Any] = made if isinstance(made, Mapping) else {}
    # a roll-back leaves a knob a command set after its trial began (it set nothing there)
    left = set(tune.get("left") or ())

    def applied(key: str, value: Any) -> Any:
        change = changes.get(key)
        return change["new"] if isinstance(change, Mapping) and "new" in change else value

    out = []
    for module, kv in values.items():
        if module not in ("opt", "loss", "custom") or not isinstance(kv, Mapping):
            continue
        params = {k: applied(k, v) for k, v in kv.items()
                  if f"{module}.{k}" not in left and applied(k, v) is not None}  # fmt: skip
        if params:
            out.append(RecipeEntry(
                step=int(e.get("step") or 0), event=e.get("event") or DEFAULT_EVENT,
                module=module, op="set_params", params=params,
                cmd_id=f"{cid}.{module}" if isinstance(cid, str) else None,
            ))  # fmt: skip
    return out


def _capture(capture: Any, run_dir: str | None) -> dict[str, Any] | None:
    """A captured callback source, referenced relative to ``run_dir`` when it lies inside."""
    if not isinstance(capture, dict) or not isinstance(capture.get("path"), str):
        return None
    out: dict[str, Any] = dict(capture)
    path = out["path"]
    if run_dir and os.path.isabs(path):
        rel = os.path.relpath(path, run_dir)
        if not rel.startswith(os.pardir):
            out["path"] = rel
    return out


def _trial_taken_back(e: Mapping[str, Any]) -> list[RecipeEntry]:
    """The values an undo set where it took an unkept tuner trial's move back with its
    target's change (``without_trial``), as ``set_params`` right after the undo: a replay has
    no trial there (the trial's mutation replays as a plain ``set_params``), so its undo alone
    would put the trial's value back."""
    took, made = e.get("without_trial"), e.get("changes")
    if not isinstance(took, Mapping) or not isinstance(made, Mapping):
        return []
    by_module: dict[str, dict[str, Any]] = {}
    for key, t in took.items():
        change = made.get(key)
        if isinstance(t, Mapping) and isinstance(change, Mapping) and "new" in change:
            by_module.setdefault(str(t.get("module") or "opt"), {})[key] = change["new"]
    cid = e.get("cmd_id")
    return [
        RecipeEntry(step=int(e.get("step") or 0), event=e.get("event") or DEFAULT_EVENT,
                    module=module, op="set_params", params=params,
                    cmd_id=f"{cid}.{module}" if isinstance(cid, str) else None)
        for module, params in by_module.items()
    ]  # fmt: skip


def _split_undo(e: Mapping[str, Any], targets: list[str]) -> list[RecipeEntry]:
    """The undo of a tuner change, which became one ``set_params`` per module: one undo per
    ``set_params``."""
    cid = e.get("cmd_id")
    return [
        RecipeEntry(step=int(e.get("step") or 0), event=e.get("event") or DEFAULT_EVENT,
                    module=str(e.get("module")), op=str(e.get("op")), params={"cmd_id": target},
                    cmd_id=f"{cid}.{i}" if isinstance(cid, str) else None)
        for i, target in enumerate(targets)
    ]  # fmt: skip


def export_recipe(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    entries: list[RecipeEntry] | None = None,
) -> tuple[str, list[RecipeEntry]]:
    """Write the run's recipe (default ``RUN/hotcb.recipe.jsonl``); return its path and entries.

    ``entries``: write these instead of every change of the ledger (``hotcb tune export``; an
    empty ledger is then no error, the recipe is empty).
    The file is replaced atomically, so a replay that reads it never sees half of it.
    """
    paths = RunPaths(os.fspath(run_dir))
    if not os.path.isdir(paths.root):
        raise RecipeError(f"no run directory at {paths.root}")
    entries_from_ledger = entries is None
    ledger: list[dict[str, Any]] = []
    if entries is None:
        if not os.path.exists(paths.ledger) or os.path.getsize(paths.ledger) == 0:
            raise RecipeError(
                f"no ledger entries at {paths.ledger}: has this run applied anything?"
            )
        ledger = list(iter_entries(paths.ledger))  # read once: a long run's is large
        entries = ledger_to_entries(ledger, paths.root)
    header: dict[str, Any] = {
        "v": FORMAT_VERSION,
        "kind": RECIPE_KIND,
        # (a plan to share, and the dashboard's download: the run_meta's secrets stay home)
        "run": redact_secrets(jsonl.read_json(paths.run_meta, {}) or {}),
        "exported_at": time.time(),
    }
    warnings = fresh_restarts(run_dir, ledger) if entries_from_ledger else []
    if warnings:
        header["warnings"] = warnings
    target = out_file(out, paths.recipe)
    text = jsonl.dumps(header) + "\n" + "".join(jsonl.dumps(e.to_record()) + "\n" for e in entries)
    jsonl.write_atomic(target, text.encode())
    return target, entries


def fresh_restarts(
    run_dir: str | os.PathLike[str], ledger: list[dict[str, Any]] | None = None
) -> list[str]:
    """Where the run's trainer started again without restoring a checkpoint: its ledger's
    steps went back with no ``kernel resume`` entry before them. Such a restart continues the
    ledger of the life before it (docs/core.md), so a recipe of the run holds that life's
    changes too, which the restarted run never had: one warning each, for ``recipe export``.

    A restart that applied nothing yet (or nothing before the step the earlier life reached)
    leaves no trace in the ledger, and is not seen. ``ledger``: its entries, read already."""
    if ledger is None:
        ledger = list(iter_entries(RunPaths(os.fspath(run_dir)).ledger))
    out = []
    last: int | None = None
    for i, e in enumerate(ledger):
        if e.get("module") == "kernel" or e.get("late"):
            if (e.get("module"), e.get("op")) == ("kernel", "resume"):
                last = None  # a life from a checkpoint: its steps may go back
            continue
        step = e.get("step")
        if not isinstance(step, int):
            continue
        if last is not None and step < last and not _before_its_resume(ledger, i):
            # (a change the restarted run made again, a replay's, it had: not counted)
            again = {a.get("cmd_id") for a in ledger[i:] if a.get("decision") == "applied"}
            n = sum(1 for r in ledger_to_entries(ledger[:i]) if r.cmd_id not in again)
            if n:
                out.append(
                    f"the run restarted without a checkpoint at ledger seq {e.get('seq')} (its "
                    f"steps went back from {last} to {step}, with no 'kernel resume' entry): "
                    f"the recipe includes the {n} change(s) of the life before, which the "
                    "restarted run did not have"
                )
        last = step
    return out


def _before_its_resume(ledger: list[dict[str, Any]], i: int) -> bool:
    """Whether entry ``i`` is one a resume writes before its ``kernel resume`` entry, at the
    checkpoint's step: a callback restored (``cb restore``), a trial the killed life opened
    told FAIL (``tune void``). Part of the resume, not a restart."""
    step = ledger[i].get("step")
    for e in ledger[i + 1 :]:
        if (e.get("module"), e.get("op")) == ("kernel", "resume"):
            return True
        if e.get("step") != step and not e.get("late"):
            return False
    return False


def out_file(out: str | os.PathLike[str] | None, default: str) -> str:
    """The file ``--out`` names: ``default`` when none, ``out`` itself, or ``default``'s name
    inside ``out`` when that is a folder (as ``cp`` copies into a folder)."""
    if out is None:
        return default
    text = os.fspath(out)
    target = os.path.abspath(text)
    if os.path.isdir(target):
        return os.path.join(target, os.path.basename(default))
    if text.endswith(os.sep) or (os.altsep is not None and text.endswith(os.altsep)):
        raise RecipeError(f"--out {text}: no folder {target} to write into")
    return target


# --------------------------------------------------------------------------------- read/check
def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_capture(path: str, bases: Sequence[str | None]) -> str | None:
    """The existing file a captured-source path names: absolute as is, else relative to the
    first of ``bases`` (the recipe's folder, the recorded run directory) where it exists."""
    if os.path.isabs(path):
        return path if os.path.exists(path) else None
    for base in bases:
        if base:
            cand = os.path.join(base, path)
            if os.path.exists(cand):
                return os.path.abspath(cand)
    return None


def _raw_step(rec: Any) -> int | None:
    at = rec.get("at") if isinstance(rec, dict) else None
    step = at.get("step") if isinstance(at, dict) else None
    ok = isinstance(step, int) and not isinstance(step, bool) and 0 <= step <= MAX_STEP
    return step if ok else None  # one out of range is said once, by RecipeEntry.from_record


def _read_recipe(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise RecipeError(f"cannot read recipe {path}: {exc.strerror or exc}") from None


def check_recipe(
    path: str | os.PathLike[str], data: bytes | None = None
) -> tuple[Recipe, list[RecipeProblem]]:
    """Parse a recipe and collect every problem (with its line) instead of stopping at the first:
    unreadable lines, unknown modules/ops, invalid entries, steps going backwards, captured
    sources that are missing or changed.

    ``data``: the recipe's bytes, read by the caller, checked as the file at ``path`` (a caller
    that then hands them on checks exactly what it hands on, not what the file holds later)."""
    path = os.path.abspath(os.fspath(path))
    lines = (_read_recipe(path) if data is None else data).split(b"\n")
    header: dict[str, Any] = {}
    entries: list[RecipeEntry] = []
    problems: list[RecipeProblem] = []
    last_step: tuple[int, int] | None = None
    parsed: list[Any] = []  # every line that is JSON (but the header)
    for no, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except ValueError as exc:
            problems.append(RecipeProblem(no, f"not valid JSON ({exc})"))
            continue
        if isinstance(rec, dict) and rec.get("kind") == RECIPE_KIND:
            if entries or header:
                problems.append(RecipeProblem(no, "a recipe header may only be the first line"))
            header = rec
            continue
        parsed.append(rec)
        step = _raw_step(rec)
        if step is not None:
            if last_step is not None and step < last_step[0]:
                problems.append(
                    RecipeProblem(
                        no,
                        f"step {step} comes after step {last_step[0]} (line {last_step[1]}): "
                        "entries must be in step order",
                    )
                )
            last_step = (step, no)
        try:
            entries.append(RecipeEntry.from_record(rec, no))
        except RecipeError as exc:
            problems.append(RecipeProblem(no, str(exc)))
    recipe = Recipe(path, header, entries)
    other = None if header else _not_a_recipe(parsed)
    if other is not None:  # one line that says so, not "'at' must be an object" on every line
        return recipe, [RecipeProblem(0, other)]
    bases = [os.path.dirname(path), recipe.run_dir]
    for entry in entries:
        problems.extend(_check_sources(entry, bases))
    problems += _duplicate_ids(entries) + _undo_problems(entries)
    problems.sort(key=lambda p: p.line)
    return recipe, problems


def _duplicate_ids(entries: Sequence[RecipeEntry]) -> list[RecipeProblem]:
    """Entries that share a ``cmd_id``: an undo naming it could not say which it means, and an
    export of the replay keeps only the first."""
    first: dict[str, int] = {}
    out = []
    for e in entries:
        if not e.cmd_id or e.line is None:
            continue
        if e.cmd_id in first:
            out.append(RecipeProblem(e.line, f"cmd_id {e.cmd_id!r} is already the cmd_id of "
                                             f"line {first[e.cmd_id]}: each entry needs its "
                                             "own"))  # fmt: skip
        else:
            first[e.cmd_id] = e.line
    return out


def _undos(
    entries: Sequence[RecipeEntry],
) -> Iterator[tuple[int, RecipeEntry, str, dict[str, int]]]:
    """Each ``control undo`` entry that names a cmd_id: its index, the entry, the cmd_id, and
    where each cmd_id first stands in ``entries``."""
    first: dict[str, int] = {}
    for i, e in enumerate(entries):
        if e.cmd_id:
            first.setdefault(e.cmd_id, i)
    for i, e in enumerate(entries):
        target = e.params.get("cmd_id") if (e.module, e.op) == ("control", "undo") else None
        if isinstance(target, str):
            yield i, e, target, first


def _undo_problems(entries: Sequence[RecipeEntry]) -> list[RecipeProblem]:
    """``control undo`` entries the replay would reject ("no applied command ... to undo"):
    the change they name is not in the recipe, or comes after them."""
    out = []
    for i, e, target, at in _undos(entries):
        if target not in at:
            said = (f"control undo names cmd_id {target!r}, which no entry of this recipe has: "
                    "the replay would reject it (nothing to undo)")  # fmt: skip
        elif at[target] > i:
            change = entries[at[target]]
            said = (f"control undo comes before the change it undoes, {_at(change)} "
                    f"({change.describe()}): the replay would reject it")  # fmt: skip
        else:
            continue
        out.append(RecipeProblem(e.line or 0, said))
    return out


def _not_a_recipe(records: Sequence[Any]) -> str | None:
    """What a JSON-lines file with no recipe header and no line with ``at`` is (a run's ledger,
    metrics or commands file, most likely): a message for it; None when it may be a recipe.
    A run that had an ``--at-step`` command has a few lines with ``at_step`` (a recipe's
    shorthand for ``at``): a ledger is known by its entries' ``decision`` and ``seq``, another
    file by most of its lines having no step at all."""
    if not records or not all(isinstance(r, dict) and r.get("at") is None for r in records):
        return None
    ledger = any("decision" in r and "seq" in r for r in records)
    stepless = sum(1 for r in records if r.get("at_step") is None)
    if not ledger and stepless * 2 <= len(records):
        return None
    if any("decision" in r for r in records):
        looks = "a run's ledger (hotcb.applied.jsonl)"
    elif any("metrics" in r for r in records):
        looks = "a run's metrics file (hotcb.metrics.jsonl)"
    elif any("cmd_id" in r and "module" in r for r in records):
        looks = "a run's commands file (hotcb.commands.jsonl)"
    else:
        looks = "a JSON-lines file of something else"
    return (
        f"this is not a recipe: it looks like {looks}, and no line has 'at' {{step, event}}; "
        "'hotcb --dir RUN recipe export' makes a recipe of a run's applied changes"
    )


def _check_sources(entry: RecipeEntry, bases: Sequence[str | None]) -> list[RecipeProblem]:
    no = entry.line or 0
    cap = entry.source_capture
    if cap is not None:
        found = resolve_capture(cap["path"], bases)
        if found is None:
            return [RecipeProblem(no, f"captured callback source {cap['path']!r} not found")]
        want = cap.get("sha256")
        if want and _sha256(found) != want:
            return [
                RecipeProblem(
                    no, f"captured source {found} has changed (sha256 differs from the recipe)"
                )
            ]
        return []
    target = entry.target or {}
    if (
        entry.module == "cb"
        and entry.op == "load"
        and target.get("kind") == "python_file"
        and not os.path.exists(str(target.get("path")))
    ):
        return [
            RecipeProblem(
                no,
                f"callback file {target.get('path')!r} not found and no captured source",
            )
        ]
    return []


def validate_recipe(path: str | os.PathLike[str]) -> list[RecipeProblem]:
    """Every problem of the recipe at ``path`` (empty: the recipe can be replayed)."""
    try:
        return check_recipe(path)[1]
    except RecipeError as exc:
        return [RecipeProblem(0, str(exc))]


def read_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Parse a recipe; raise :class:`RecipeError` listing its problems if it has any."""
    recipe, problems = check_recipe(path)
    if problems:
        shown = "; ".join(str(p) for p in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise RecipeError(
            f"recipe {recipe.path} has {len(problems)} problem(s): {shown}{more}; "
            f"run 'hotcb recipe validate --recipe {shell_path(recipe.path)}' for the list"
        )
    return recipe


#: Modules whose ``set_params`` set the run's actuators (``hotcb.actuators.json``).
_ACTUATOR_MODULES = ("opt", "loss", "custom")


def _at(entry: RecipeEntry) -> str:
    """Where an entry comes from: its recipe line, or the overlay that inserts it."""
    return f"line {entry.line}" if entry.line is not None else "an entry the overlay inserts"


def check_actuators(
    entries: Sequence[RecipeEntry], run_dir: str | os.PathLike[str]
) -> list[RecipeProblem] | None:
    """Check each ``opt``/``loss``/``custom`` ``set_params`` entry against the actuators the
    run at ``run_dir`` published (``hotcb.actuators.json``), with the check a live ``hotcb set``
    gets (:func:`hotcb.client.check_actuator_params`): unknown names, wrong types, values out of
    bounds; one problem per param. None when the run has published no actuators: names and
    bounds cannot be checked (the kernel checks each entry when it replays it)."""
    from .client import HotClient, check_actuator_params

    published = HotClient(os.fspath(run_dir), create=False).actuators()
    if not published:
        return None
    problems: list[RecipeProblem] = []
    for entry in entries:
        if entry.module not in _ACTUATOR_MODULES or entry.op != "set_params":
            continue
        for key, value in entry.params.items():  # every wrong param, not the first of each entry
            try:
                check_actuator_params(entry.module, {key: value}, published)
            except ActuatorError as exc:
                said = str(exc)
                if entry.patch is not None:  # the overlay's doing: named by its patch
                    what = "the entry it inserts" if entry.line is None else (
                        f"recipe line {entry.line} as it changes it")  # fmt: skip
                    said = f"{entry.patch}: {what} ({entry.describe()}): {exc}"
                elif entry.line is None:
                    said = f"{_at(entry)} ({entry.describe()}): {exc}"
                elif entry.adjusted:
                    said = f"{exc} (as the overlay changes it)"
                problems.append(RecipeProblem(entry.line or 0, said, entry.patch is not None))
    return problems


def sets_actuators(entries: Sequence[RecipeEntry]) -> bool:
    """Whether any entry sets an actuator (what :func:`check_actuators` checks)."""
    return any(e.module in _ACTUATOR_MODULES and e.op == "set_params" for e in entries)


# --------------------------------------------------------------------------------- overlay
_MATCH_KEYS = frozenset(
    {"module", "op", "id", "at_step", "step_min", "step_max", "has_param", "nth"}
)
_ACTIONS = frozenset({"replace_params", "transform_params", "shift_step", "drop"})


def load_overlay(path: str | os.PathLike[str], data: bytes | None = None) -> dict[str, Any]:
    """Read an overlay (YAML, or JSON for a ``.json`` file) and check its shape. ``data``: its
    bytes, read by the caller, parsed as the file at ``path`` (as :func:`check_recipe`)."""
    return _load_overlay(path, data)[0]


def _load_overlay(
    path: str | os.PathLike[str], data: bytes | None = None
) -> tuple[dict[str, Any], list[int | None]]:
    """:func:`load_overlay`, and the line where each patch begins (YAML only; else empty)."""
    path = os.fspath(path)
    lines: list[int | None] = []
    if data is None:
        try:
            with open(path) as f:
                text = f.read()
        except OSError as exc:
            raise RecipeError(f"cannot read overlay {path}: {exc.strerror or exc}") from None
    else:
        try:
            text = data.decode()
        except UnicodeDecodeError as exc:
            raise RecipeError(f"overlay {path} is not UTF-8 text: {exc}") from None
    if path.endswith(".json"):
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise RecipeError(f"overlay {path} is not valid JSON: {exc}") from None
    else:
        try:
            import yaml
        except ImportError:
            raise ImportError(
                'replay_adjusted reads a YAML overlay: pip install "hotcb[yaml]"'
            ) from None
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RecipeError(f"overlay {path} is not valid YAML: {exc}") from None
        lines = _patch_lines(yaml.compose(text, Loader=yaml.SafeLoader))
    _check_overlay(doc, path, lines)
    return doc, lines


def _patch_lines(root: Any) -> list[int | None]:
    """The line (1-based) where each item of the YAML document's ``patches`` begins."""
    import yaml

    if not isinstance(root, yaml.MappingNode):
        return []
    for key, value in root.value:
        if getattr(key, "value", None) == "patches" and isinstance(value, yaml.SequenceNode):
            return [item.start_mark.line + 1 for item in value.value]
    return []


@dataclass(frozen=True)
class _Names:
    """How an overlay's messages name it and its patches: ``overlay FILE:LINE patch N``."""

    where: str | None = None
    lines: Sequence[int | None] = ()

    def patch(self, i: int) -> str:
        line = self.lines[i - 1] if 0 < i <= len(self.lines) else None
        if self.where is None:
            return f"overlay patch {i}"
        return f"overlay {self.where}{f':{line}' if line else ''} patch {i}"


def _check_overlay(doc: Any, where: str, lines: Sequence[int | None] = ()) -> None:
    if not isinstance(doc, dict):
        raise RecipeError(f"overlay {where} must be a mapping {{version: 1, patches: [...]}}")
    if doc.get("version", 1) != 1:
        raise RecipeError(f"overlay {where}: unsupported version {doc.get('version')!r}")
    unknown = sorted(str(k) for k in doc if k not in ("version", "patches"))
    if unknown:  # (`patch:` for `patches:` left an overlay that changed nothing, said "ok")
        near = difflib.get_close_matches(unknown[0], ["patches", "version"], n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise RecipeError(f"overlay {where}: unknown key(s) {unknown}: an overlay has "
                          f"'version' and 'patches'{hint}")  # fmt: skip
    patches = doc.get("patches")
    if patches is None:
        doc["patches"] = []
        return
    if not isinstance(patches, list):
        raise RecipeError(f"overlay {where}: 'patches' must be a list, got {patches!r}")
    problems: list[str] = []
    bad: list[int] = []
    for i, patch in enumerate(patches, start=1):
        try:
            _check_patch(patch, _Names(where, lines).patch(i))
        except RecipeError as exc:
            problems.append(str(exc))
            bad.append(i)
    if problems:  # with the document and the patches it names, for overlay_problems
        raise RecipeProblems(f"overlay {where}", problems, doc, bad, lines)


class RecipeProblems(RecipeError):
    """Several problems at once; ``problems`` lists them, one message each."""

    def __init__(
        self,
        what: str,
        problems: Sequence[str],
        doc: Any = None,
        patches: Sequence[int] = (),
        lines: Sequence[int | None] = (),
    ) -> None:
        head = f"{what}: {len(problems)} problems\n" if len(problems) > 1 else ""
        super().__init__(head + "\n".join(problems))
        self.problems = list(problems)
        self.doc = doc  # an overlay's: the document, and its malformed patches by number
        self.patches = list(patches)
        self.lines = list(lines)  # the line of each patch (YAML)


def _raise_all(problems: list[str], what: str) -> None:
    """One error that lists every problem (a person fixes them all in one go)."""
    if len(problems) == 1:
        raise RecipeError(problems[0])
    if problems:
        raise RecipeProblems(what, problems)


def _check_patch(patch: Any, where: str) -> None:
    if not isinstance(patch, dict):
        raise RecipeError(f"{where} must be a mapping, got {patch!r}")
    if "insert" in patch:
        _check_insert(patch, where)
        return
    match = patch.get("match")
    if not isinstance(match, dict):
        raise RecipeError(f"{where} needs 'match: {{module, op, ...}}' or 'insert: {{entry}}'")
    _check_match(match, where)
    _check_actions(patch, where)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_insert(patch: dict[str, Any], where: str) -> None:
    if set(patch) != {"insert"}:
        raise RecipeError(f"{where}: 'insert' stands alone, got keys {sorted(patch)}")
    try:
        RecipeEntry.from_record(patch["insert"])
    except RecipeError as exc:
        raise RecipeError(f"{where}: invalid insert: {exc}") from None


def _check_match(match: dict[str, Any], where: str) -> None:
    unknown = set(match) - _MATCH_KEYS
    if unknown:
        raise RecipeError(
            f"{where}: unknown match key(s) {sorted(unknown)}; expected {sorted(_MATCH_KEYS)}"
        )
    for key in ("at_step", "step_min", "step_max", "nth"):
        v = match.get(key)
        if v is not None and not _is_int(v):
            raise RecipeError(f"{where}: match.{key} must be an integer, got {v!r}")


def _check_actions(patch: dict[str, Any], where: str) -> None:
    actions = set(patch) - {"match"}
    unknown = actions - _ACTIONS
    if unknown or not actions:
        raise RecipeError(
            f"{where}: expected one or more of {sorted(_ACTIONS)}, got {sorted(actions)}"
        )
    if "replace_params" in patch and not isinstance(patch["replace_params"], dict):
        raise RecipeError(f"{where}: replace_params must be a mapping of param: value")
    if patch.get("replace_params") == {}:
        raise RecipeError(f"{where}: replace_params is empty: it changes nothing")
    tp = patch.get("transform_params")
    if tp is not None:
        _check_transform(tp, where)
    shift = patch.get("shift_step")
    if shift is not None and not _is_int(shift):
        raise RecipeError(f"{where}: shift_step must be an integer, got {shift!r}")
    if "drop" in patch and patch["drop"] is not True:
        raise RecipeError(f"{where}: drop must be true")


def _check_transform(tp: Any, where: str) -> None:
    if not isinstance(tp, dict) or not set(tp) <= {"scale", "add", "keys"}:
        raise RecipeError(f"{where}: transform_params must be {{scale, add, keys?}}, got {tp!r}")
    for k in ("scale", "add"):
        v = tp.get(k, 0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise RecipeError(f"{where}: transform_params.{k} must be a finite number, got {v!r}")
    if tp.get("scale", 1) == 1 and tp.get("add", 0) == 0:
        raise RecipeError(f"{where}: transform_params changes nothing: give scale (x scale) or "
                          "add (+ add)")  # fmt: skip
    keys = tp.get("keys")
    if (
        keys is not None
        and not isinstance(keys, str)
        and (not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys))
    ):
        raise RecipeError(f"{where}: transform_params.keys must be a param name or a list of "
                          f"them, got {keys!r}")  # fmt: skip


def _matches(entry: RecipeEntry, match: Mapping[str, Any]) -> bool:
    for key in ("module", "op", "id"):
        if key in match and getattr(entry, key) != match[key]:
            return False
    if "at_step" in match and entry.step != match["at_step"]:
        return False
    if "step_min" in match and entry.step < match["step_min"]:
        return False
    if "step_max" in match and entry.step > match["step_max"]:
        return False
    wanted = match.get("has_param")
    if wanted is not None:
        keys = [wanted] if isinstance(wanted, str) else list(wanted)
        if not all(k in entry.params for k in keys):
            return False
    return True


def _transform(value: Any, scale: float, add: float) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        out = value * scale + add
        return int(out) if isinstance(value, int) and float(out).is_integer() else out
    if isinstance(value, list):
        return [_transform(v, scale, add) for v in value]
    return value


def _patch_entry(entry: RecipeEntry, patch: Mapping[str, Any]) -> None:
    if "replace_params" in patch:
        entry.params = {**entry.params, **copy.deepcopy(patch["replace_params"])}
    tp = patch.get("transform_params")
    if tp is not None:
        scale, add = tp.get("scale", 1), tp.get("add", 0)
        keys = tp.get("keys") or patch["match"].get("has_param") or list(entry.params)
        keys = [keys] if isinstance(keys, str) else keys
        entry.params = {
            k: _transform(v, scale, add) if k in keys else v for k, v in entry.params.items()
        }
    if patch.get("shift_step"):
        entry.step += int(patch["shift_step"])
    entry.adjusted = True


def apply_overlay(entries: Sequence[RecipeEntry], overlay: Mapping[str, Any]) -> list[RecipeEntry]:
    """Apply the overlay's patches in order, then sort by step (stable: ties keep their order).

    ``match`` selects entries by module/op/id, exact step (``at_step``), a step range and the
    params they set; ``nth`` (0-based) keeps only that one of the matches. A patch that matches
    nothing is an error: a plan that silently differs from what was written is worse than none.
    """
    return _raise_overlay(entries, overlay, _Names())


def _raise_overlay(
    entries: Sequence[RecipeEntry], overlay: Mapping[str, Any], names: _Names
) -> list[RecipeEntry]:
    out, problems = _apply_overlay(entries, overlay, names)
    _raise_all(problems, "overlay" if names.where is None else f"overlay {names.where}")
    return out


def overlay_problems(
    entries: Sequence[RecipeEntry], path: str | os.PathLike[str]
) -> tuple[list[RecipeEntry] | None, list[str]]:
    """Every problem of the overlay at ``path`` against ``entries`` at once (``recipe validate
    --adjust``), and the entries its sound patches make (None when it cannot be read at all):
    a malformed patch is listed and left out, and the others are still applied and checked."""
    try:
        doc, lines = _load_overlay(path)
        bad: set[int] = set()
        problems: list[str] = []
    except RecipeProblems as exc:  # malformed patches: list them, apply the rest
        doc, lines = exc.doc, exc.lines
        bad, problems = set(exc.patches), list(exc.problems)
    except RecipeError as exc:
        return None, [str(exc)]
    patches = [None if i in bad else p for i, p in enumerate(doc.get("patches") or (), start=1)]
    names = _Names(os.fspath(path), lines)
    out, more = _apply_overlay(entries, {**doc, "patches": patches}, names)
    return out, _by_patch(problems + more, os.fspath(path))


def _by_patch(problems: list[str], where: str) -> list[str]:
    """``problems`` in the order of the patches they name, which is the file's (malformed
    patches are found before the others are applied: a person reads them top down); stable,
    and one that names no patch comes last."""
    named = re.compile(rf"overlay {re.escape(where)}(?::\d+)? patch (\d+)")

    def patch(message: str) -> float:
        found = named.search(message)
        return int(found.group(1)) if found else math.inf

    return sorted(problems, key=patch)


def _apply_overlay(
    entries: Sequence[RecipeEntry], overlay: Mapping[str, Any], names: _Names = _Names()
) -> tuple[list[RecipeEntry], list[str]]:
    out = [copy.deepcopy(e) for e in entries]
    problems: list[str] = []
    dropped: dict[str, tuple[int, RecipeEntry]] = {}  # cmd_id -> (patch, entry) it dropped
    by: dict[int, int] = {}  # id(entry) -> the last patch that changed (or inserted) it
    moved: dict[int, int] = {}  # id(entry) -> the last patch that shifted its step
    for i, patch in enumerate(overlay.get("patches") or (), start=1):
        if patch is None:  # malformed (listed by overlay_problems): left out
            continue
        if "insert" in patch:
            entry = RecipeEntry.from_record(copy.deepcopy(patch["insert"]))
            entry.cmd_id = entry.cmd_id or f"insert-{i}"
            entry.adjusted, entry.patch = True, names.patch(i)
            out.append(entry)
            by[id(entry)] = i
            continue
        match = patch["match"]
        hits = [e for e in out if _matches(e, match)]
        if "nth" in match:
            n = match["nth"]
            hits = hits[n : n + 1] if 0 <= n < len(hits) else []
        if not hits:
            problems.append(f"{names.patch(i)} matches no recipe entry: {dict(match)}"
                            + _gone_before(match, dropped))  # fmt: skip
            continue
        if patch.get("drop"):
            drop = {id(e) for e in hits}
            out = [e for e in out if id(e) not in drop]
            dropped.update((e.cmd_id, (i, e)) for e in hits if e.cmd_id)
            continue
        problems += _unused_keys(hits, patch, names.patch(i))
        for entry in hits:
            problems += _typos(entry, patch, names.patch(i))
            _patch_entry(entry, patch)
            entry.patch = names.patch(i)
            by[id(entry)] = i
            if patch.get("shift_step"):
                moved[id(entry)] = i
    out.sort(key=lambda e: e.step)
    problems += _below_zero(out, moved, names)
    problems += _orphan_undos(out, dropped, {k: names.patch(v) for k, v in by.items()}, names)
    for e in out:  # the patched plan must still be something a live command could do
        try:
            command_to_hotop(e.command_record())
        except CommandError as exc:
            who = names.patch(by[id(e)]) if id(e) in by else "overlay"
            problems.append(f"{who} made an invalid entry ({e.describe()}): {exc}")
    return out, problems


def _gone_before(match: Mapping[str, Any], dropped: Mapping[str, tuple[int, RecipeEntry]]) -> str:
    """Why a patch with ``nth`` found none, when an earlier patch dropped entries it counts:
    ``nth`` counts the entries the patches above leave (two drops at one step, each under its
    entry in ``recipe patch-template``, are ``nth: 0`` twice)."""
    if "nth" not in match:
        return ""
    unnumbered = {k: v for k, v in match.items() if k != "nth"}
    by = sorted({i for i, e in dropped.values() if _matches(e, unnumbered)})
    if not by:
        return ""
    which = ", ".join(map(str, by))
    return (
        f" (patch {which} dropped {'one' if len(by) == 1 else 'some'} of the entries it "
        "counts: nth counts the entries the patches above leave)"
    )


def _below_zero(
    entries: Sequence[RecipeEntry], moved: Mapping[int, int], names: _Names
) -> list[str]:
    """Entries at a step before the first, which the replay would never reach, each named with
    the last patch that shifted it (an insert at a negative step is refused as malformed).
    Before, the last patch that changed it in any way was blamed (a ``replace_params``)."""
    return [f"{names.patch(moved.get(id(e), 0))}: shift_step moves {_at(e)} below step 0 "
            f"({e.describe()})" for e in entries if e.step < 0]  # fmt: skip


def _orphan_undos(
    entries: Sequence[RecipeEntry],
    dropped: Mapping[str, tuple[int, RecipeEntry]],
    by: Mapping[int, str],
    names: _Names,
) -> list[str]:
    """Undos the overlay leaves with nothing to undo: their change was dropped, shifted past
    them, or (an inserted undo) is not in the recipe. The replay would reject each ("no
    applied command ... to undo"). ``by``: id(entry) -> the patch that changed it."""
    said = []
    for i, e, target, first in _undos(entries):
        undo = f"the undo at {_at(e)} (step {e.step})"
        if target in dropped and target not in first:
            n, gone = dropped[target]
            said.append(
                f"{names.patch(n)} drops {_at(gone)} ({gone.describe()}), which {undo} "
                "undoes: the replay would reject that undo; drop it too"
            )
        elif target in first and first[target] > i:
            later = entries[first[target]]
            who = by.get(id(later)) or by.get(id(e)) or "the overlay"
            said.append(
                f"after {who}, {undo} comes before the change it undoes, {_at(later)} "
                f"({later.describe()}): the replay would reject that undo; shift it too"
            )
        elif target not in first:  # an undo the overlay inserts, of a change not in the recipe
            who = by.get(id(e)) or "the overlay"
            said.append(f"{who}: {undo} names cmd_id {target!r}, which no entry has: the "
                        "replay would reject that undo")  # fmt: skip
    return said


def _typos(entry: RecipeEntry, patch: Mapping[str, Any], name: str) -> list[str]:
    """``replace_params`` keys that the entry does not set but nearly does (``lrr`` for
    ``lr``): a typo would add a knob that the replay then refuses, or set nothing."""
    said = []
    for key in patch.get("replace_params") or ():
        if key in entry.params:
            continue
        near = difflib.get_close_matches(str(key), [str(k) for k in entry.params], n=1)
        if near:
            said.append(f"{name}: replace_params {key!r} is not a param of "
                        f"{entry.describe()}; did you mean {near[0]!r}?")  # fmt: skip
    return said


def _unused_keys(hits: Sequence[RecipeEntry], patch: Mapping[str, Any], name: str) -> list[str]:
    """``transform_params.keys`` that none of the entries the patch matched sets: the patch
    changes nothing there (``keys: [lrr]`` for ``lr`` passed as a plan that scaled the lr)."""
    keys = (patch.get("transform_params") or {}).get("keys")
    keys = [keys] if isinstance(keys, str) else keys or ()
    added = patch.get("replace_params") or {}  # (applied before the transform)
    params = sorted({str(k) for e in hits for k in e.params} | {str(k) for k in added})
    said = []
    for key in keys:
        if key in params:
            continue
        near = difflib.get_close_matches(key, params, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else f" (they set {params})"
        said.append(f"{name}: transform_params key {key!r} is not a param of the entries it "
                    f"matches{hint}")  # fmt: skip
    return said


def patch_template(recipe: Recipe) -> str:
    """A commented ``hotcb.adjust.yaml`` for ``recipe``: every entry with example patches to
    uncomment. As written it changes nothing."""
    lines = [
        "# hotcb.adjust.yaml: changes to a recipe, for",
        f"#   hotcb --dir RUN freeze --mode replay_adjusted --recipe {recipe.path} \\",
        "#         --adjust hotcb.adjust.yaml",
        "# Patches apply in order; entries are then sorted by step. Steps are the recipe's",
        "# (before --step-offset). A patch that matches nothing is an error.",
        "#   match: {module, op, id, at_step, step_min, step_max, has_param, nth (0-based)}",
        "#   then one or more of: replace_params: {k: v} | transform_params: {scale, add, keys}",
        "#                        shift_step: N | drop: true",
        "#   or a new entry: insert: {at: {step, event}, module, op, params, ...}",
        "version: 1",
        "patches:",
    ]
    alike: dict[tuple[Any, ...], int] = {}  # entries a match of theirs cannot tell apart
    for e in recipe.entries:
        key = (e.module, e.op, e.step, e.id)
        alike[key] = alike.get(key, 0) + 1
    seen: dict[tuple[Any, ...], int] = {}
    for e in recipe.entries:
        lines.append(f"# line {e.line}: {e.describe()}")
        match = f"{{module: {e.module}, op: {e.op}, at_step: {e.step}"
        if e.id:
            match += f", id: {json.dumps(e.id)}"
        key = (e.module, e.op, e.step, e.id)
        if alike[key] > 1:  # another entry matches it too: `nth` picks this one
            nth = seen[key] = seen.get(key, -1) + 1
            match += f", nth: {nth}"
            lines.append("#   (nth counts the entries the patches above it leave: after a drop "
                         "of one of these, the next is nth one less)")  # fmt: skip
        match += "}"
        lines.append(f"# - match: {match}")
        if e.params and e.module in ("opt", "loss", "custom"):
            lines.append(f"#   replace_params: {json.dumps(e.params)}")
        lines.append("#   shift_step: 0")
        lines.append("# - match: " + match)
        lines.append("#   drop: true")
    lines.append("# - insert: {at: {step: 0, event: train_step_end}, module: opt,")
    lines.append("#            op: set_params, params: {lr: 0.001}}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------- player
class RecipePlayer:
    """A step source (``kernel.add_step_source``) that yields a recipe's ops when they fall due.

    An entry for step S and event E fires at the first safe point with step S whose events
    include E, or at the first safe point with a step after S if E never came at S.
    """

    def __init__(
        self,
        entries: Sequence[RecipeEntry],
        *,
        step_offset: int = 0,
        capture_bases: Sequence[str | None] = (),
    ) -> None:
        order = sorted(range(len(entries)), key=lambda i: entries[i].step)
        self.entries = [entries[i] for i in order]
        self.step_offset = int(step_offset)
        self._bases = list(capture_bases)
        # indices into self.entries not yet fired, in step order
        self._waiting: list[int] = list(range(len(self.entries)))

    @classmethod
    def from_freeze(cls, state: FreezeState, base_dir: str | None = None) -> RecipePlayer:
        """The player for a replay freeze state: its recipe, its overlay in ``replay_adjusted``,
        its step offset. Raises :class:`RecipeError` (or ImportError without PyYAML).

        A freeze command's paths are confined to the run directory by the kernel before they
        get here (``HotKernel._confine``)."""
        if not state.recipe_path:
            raise RecipeError(
                f"freeze mode {state.mode.value} needs a recipe: --recipe hotcb.recipe.jsonl"
            )
        recipe = read_recipe(_resolve(state.recipe_path, base_dir))
        entries: list[RecipeEntry] = recipe.entries
        if state.mode.value == "replay_adjusted":
            if not state.adjust_path:
                raise RecipeError("freeze mode replay_adjusted needs --adjust hotcb.adjust.yaml")
            adjust = _resolve(state.adjust_path, base_dir)
            doc, lines = _load_overlay(adjust)
            entries = _raise_overlay(entries, doc, _Names(state.adjust_path, lines))
        bases = [os.path.dirname(recipe.path), recipe.run_dir]
        return cls(entries, step_offset=state.step_offset, capture_bases=bases)

    def __len__(self) -> int:
        return len(self._waiting)

    def next_step(self) -> int:
        from ._schedule import NEVER

        if not self._waiting:
            return NEVER
        return self.entries[self._waiting[0]].step + self.step_offset

    def pop_due(self, step: int, events: Sequence[str]) -> list[HotOp]:
        out: list[HotOp] = []
        keep: list[int] = []
        waiting = self._waiting
        i = 0
        while i < len(waiting):
            entry = self.entries[waiting[i]]
            due = entry.step + self.step_offset
            if due > step:
                break
            if due < step or entry.event in events:
                out.append(self._to_op(entry, late=step - due))
            else:
                keep.append(waiting[i])  # its event may still come at this step
            i += 1
        if out:
            self._waiting = keep + waiting[i:]
        return out

    def upcoming(self, n: int = 5) -> list[RecipeEntry]:
        """The next ``n`` entries still to fire (steps as in the recipe, before the offset)."""
        return [self.entries[i] for i in self._waiting[:n]]

    def _to_op(self, entry: RecipeEntry, late: int = 0) -> HotOp:
        """The op of ``entry``, fired ``late`` steps after its step (a freeze sent to a run
        already training catches up): a ramp that would have ended by now lands at once, one
        under way ends at its planned step."""
        rec = entry.command_record()
        rec["params"] = copy.deepcopy(entry.params)
        ramp = rec.get("transition")
        if late > 0 and isinstance(ramp, Mapping) and isinstance(ramp.get("steps"), int):
            left = ramp["steps"] - late
            if left > 0:
                rec["transition"] = {**ramp, "steps": left}
            else:
                rec.pop("transition")
        if entry.line is not None:
            rec["recipe_line"] = entry.line
        if entry.adjusted:
            rec["adjusted"] = True
        if entry.source_capture is not None:
            cap = dict(entry.source_capture)
            cap["path"] = resolve_capture(cap["path"], self._bases) or cap["path"]
            rec["source_capture"] = cap
        return command_to_hotop(rec)

    def state_dict(self) -> dict[str, Any]:
        return {"count": len(self.entries), "waiting": list(self._waiting)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue where a checkpointed player was (same recipe and overlay)."""
        if int(state.get("count", -1)) != len(self.entries):
            raise RecipeError(
                f"the checkpoint's recipe had {state.get('count')} entries, this one "
                f"{len(self.entries)}: resume with the recipe the run was started with"
            )
        waiting = [int(i) for i in state.get("waiting") or () if 0 <= int(i) < len(self.entries)]
        self._waiting = sorted(waiting, key=lambda i: (self.entries[i].step, i))


def _resolve(path: str, base_dir: str | None) -> str:
    if os.path.isabs(path) or os.path.exists(path) or not base_dir:
        return os.path.abspath(path)
    return os.path.join(base_dir, path)


#: Folder of a run directory where recipes and overlays from elsewhere are copied for replay.
REPLAY_DIR = "hotcb.replay"


def import_for_replay(
    run_dir: str, recipe_path: str, adjust_path: str | None = None
) -> tuple[str, str | None]:
    """Copy a recipe (and its overlay, and the callback sources it captured) into ``run_dir``
    and return their paths relative to it, for a freeze command.

    The trainer reads recipe, overlay and captured sources only inside its run directory or its
    allowed roots (DESIGN.md §10), so the CLI and :class:`HotClient`, which act with the user's
    own rights, bring the files the user named into the run: ``hotcb.replay/<sha>.recipe.jsonl``,
    ``hotcb.replay/<sha>.adjust.yaml`` and ``hotcb.sources/<sha256>.py``. A file already inside
    the run directory is used where it is."""
    paths = RunPaths(run_dir)
    # the caller's relative paths are its working directory's (as check_recipe reads them),
    # not the run directory's, which confine_path would take them from
    recipe_path = os.path.abspath(recipe_path)
    adjust_path = os.path.abspath(adjust_path) if adjust_path else None
    recipe, problems = check_recipe(recipe_path)
    if problems:
        raise RecipeError(
            f"{recipe_path}: {len(problems)} problem(s):\n"
            + "\n".join(f"  line {p.line}: {p.message}" for p in problems)
        )
    bring_sources(paths.root, recipe)
    return bring_into_run(paths.root, recipe_path, "recipe.jsonl"), (
        bring_into_run(paths.root, adjust_path, "adjust.yaml") if adjust_path else None
    )


def bring_sources(
    run_dir: str, recipe: Recipe, *, readable: Callable[[str], bool] | None = None
) -> None:
    """Copy the callback sources ``recipe`` captured into ``run_dir`` (``hotcb.sources/
    <sha256>.py``), where the trainer looks for them: each from the recipe's folder or the run
    it was exported from, and only with the content it captured (a file edited since is left
    out: the trainer then says which source it misses). ``readable``: which files may be read
    (the dashboard's allowed places)."""
    sources = RunPaths(run_dir).sources
    bases = [os.path.dirname(recipe.path), recipe.run_dir]
    for entry in recipe.entries:
        cap = entry.source_capture
        sha = cap.get("sha256") if cap else None
        if not cap or not isinstance(sha, str):
            continue
        dest = os.path.join(sources, f"{sha}.py")
        found = resolve_capture(cap["path"], bases)
        if found is None or os.path.exists(dest) or (readable and not readable(found)):
            continue
        try:
            with open(found, "rb") as f:
                data = f.read()
        except OSError:
            continue
        if hashlib.sha256(data).hexdigest() == sha:
            os.makedirs(sources, exist_ok=True)
            jsonl.write_atomic(dest, data)


def bring_into_run(run_dir: str, path: str, suffix: str) -> str:
    """``path`` relative to ``run_dir`` when it lies inside; else a copy in it
    (``hotcb.replay/<sha>.<suffix>``), for a command that names a file the trainer reads."""
    try:
        return os.path.relpath(confine_path(path, run_dir), os.path.realpath(run_dir))
    except PathNotAllowedError:
        pass
    with open(path, "rb") as f:
        data = f.read()
    return store_in_run(run_dir, data, suffix)


def replay_copy(data: bytes, suffix: str) -> str:
    """The name of the run's own copy of ``data``, relative to the run directory
    (``hotcb.replay/<sha>.<suffix>``): what :func:`store_in_run` writes."""
    return os.path.join(REPLAY_DIR, f"{hashlib.sha256(data).hexdigest()[:16]}.{suffix}")


def store_in_run(run_dir: str, data: bytes, suffix: str) -> str:
    """Write ``data`` as the run's own copy (:func:`replay_copy`); its path relative to
    ``run_dir``. The bytes written are the bytes given: a caller that checked them sends the
    trainer what it checked, whatever happens to the file it read them from."""
    rel = replay_copy(data, suffix)
    dest = os.path.join(run_dir, rel)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    jsonl.write_atomic(dest, data)
    return rel


def player_for(state: FreezeState, base_dir: str | None = None) -> RecipePlayer | None:
    """The recipe player ``state`` calls for, or None outside the replay modes."""
    return RecipePlayer.from_freeze(state, base_dir) if state.replaying else None

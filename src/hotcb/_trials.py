"""The tuner's trials as ``undo`` sees them: which mutation a value came from, and whether the
tuner kept that trial.

A person's ``set`` during a trial voids it, and the trial's roll-back leaves that knob to the
person (docs/tune.md); so does a ``set`` read in the same poll as the roll-back. The value the
``set`` replaced is then the unkept trial's: an undo of the ``set`` takes the trial's move back
too, and a plain undo passes over the mutation of a trial the tuner rolled back or voided.

Under torch.distributed every rank applies the undo itself, so every rank must come to the same
answer from what it holds. A roll-back is a command, applied and recorded on every rank; the
tuner's ``keep`` and ``void`` are recorded on rank 0 alone (its tuner judges), so there a trial
counts as ended only once rolled back: an undo then takes back the moves of rolled-back trials,
not those of trials voided with nothing to roll back, nor of the open one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["TRIAL_ENDS", "TrialView", "UnkeptTrial"]

Entry = Mapping[str, Any]

#: The tuner's entries that end a trial, by op, and what they say of it.
TRIAL_ENDS = {"keep": "kept", "void": "voided", "rollback": "rolled_back"}


@dataclass(frozen=True, slots=True)
class UnkeptTrial:
    """The mutation of a trial the tuner did not keep, whose value a change found."""

    mutation: Entry
    #: ``"rolled_back"``, ``"voided"``, or ``"open"`` (the change overlaps it: it is voided)
    ended: str
    #: a roll-back of the trial took its factor back from the key after the change (from the
    #: value a command scaled: ``relative_to``)
    rescaled: bool


class TrialView:
    """Trials as one process knows them: ``history``, the applied changes it holds (oldest
    first), and ``ends``, trial -> ``(seq, what)`` of the entries that ended it (see
    :data:`TRIAL_ENDS`). ``alone``: this process is the whole run; False under
    torch.distributed, where only roll-backs count (every rank has those)."""

    def __init__(
        self,
        history: Sequence[Entry],
        ends: Mapping[Any, Sequence[tuple[int, str]]],
        *,
        alone: bool = True,
    ) -> None:
        self.history = history
        self.ends = ends
        self.alone = alone

    def end(self, mutation: Entry) -> str | None:
        """How the trial of a tuner ``mutate`` entry ended: ``"kept"``, ``"rolled_back"``,
        ``"voided"`` (the first after it), or ``"open"`` (not known to have ended); None for
        another entry."""
        tune = mutation.get("tune")
        if mutation.get("module") != "tune" or mutation.get("op") != "mutate":
            return None
        if not isinstance(tune, Mapping) or tune.get("trial") is None:
            return None
        seq = mutation.get("seq") or 0
        for at, what in self.ends.get(tune["trial"], ()):
            if at > seq and (self.alone or what == "rolled_back"):
                return what
        return "open"

    def unkept_under(self, entry: Entry, key: str) -> UnkeptTrial | None:
        """The mutation whose value of ``key`` ``entry`` (an applied change in the history)
        found in force, when the tuner did not keep its trial; else None. The value is traced
        through undos: an undo sets what its target found."""
        index = self._index(entry)
        if index is None:
            return None
        found = self._found_by(index, key)
        ended = self.end(found) if found is not None else None
        if found is None or ended is None or ended == "kept":
            return None
        if ended == "open" and not self.alone:  # rank 0 alone knows whether it was kept
            return None
        trial = found["tune"]["trial"]
        rescaled = any(
            e.get("module") == "tune"
            and e.get("op") == "rollback"
            and (e.get("tune") or {}).get("trial") == trial
            and key in (e.get("changes") or {})
            for e in list(self.history)[index + 1 :]
        )
        return UnkeptTrial(found, ended, rescaled)

    def set_since(self, entry: Entry, key: str) -> Entry | None:
        """The applied entry whose value of ``key`` is in force now instead of ``entry``'s (a
        later command set it again, and no undo or roll-back put ``entry``'s back); None when
        ``entry``'s is in force, or the history does not say."""
        owner = self._in_force(key)
        if owner is None or owner is entry:
            return None
        if entry.get("cmd_id") and owner.get("cmd_id") == entry.get("cmd_id"):
            return None  # (its ramp's end)
        index, at = self._index(entry), self._index(owner)
        if index is None or at is None or at < index:
            return None
        if _same(_new(owner, key), _new(entry, key)):
            return None  # it set the value back (a replay's roll-back: a plain set_params)
        return owner

    def _in_force(self, key: str) -> Entry | None:
        """The applied entry whose value of ``key`` is in force, traced through undos (an undo
        sets what its target found) and the tuner's roll-backs (one sets what its trial's
        mutation found)."""
        history = self.history
        at: int | None = len(history)
        while at is not None:
            source = next((i for i in range(at - 1, -1, -1)
                           if key in (history[i].get("changes") or {})), None)  # fmt: skip
            if source is None:
                return None
            e = history[source]
            if e.get("module") == "tune" and e.get("op") == "rollback":
                trial = (e.get("tune") or {}).get("trial")
                at = next((i for i in range(source - 1, -1, -1)
                           if history[i].get("op") == "mutate" and history[i].get("module") ==
                           "tune" and (history[i].get("tune") or {}).get("trial") == trial),
                          None)  # fmt: skip
                continue
            target = e.get("undo_of")
            if not target:
                return e
            at = next((i for i in range(source - 1, -1, -1)
                       if history[i].get("cmd_id") == target), None)  # fmt: skip
        return None

    def _index(self, entry: Entry) -> int | None:
        """Where ``entry`` is in the history (the same object, else the last applied entry of
        its command); None when the history no longer holds it."""
        last, cmd_id = None, entry.get("cmd_id")
        for i, e in enumerate(self.history):
            if e is entry:
                return i
            if cmd_id and e.get("cmd_id") == cmd_id:
                last = i
        return last

    def _found_by(self, index: int, key: str) -> Entry | None:
        """The applied entry whose value of ``key`` the entry at ``index`` found in force
        (through undos), or None where the history does not say."""
        history = self.history
        at: int | None = index
        while at is not None:
            source = next((i for i in range(at - 1, -1, -1)
                           if key in (history[i].get("changes") or {})), None)  # fmt: skip
            if source is None:
                return None
            target = history[source].get("undo_of")
            if not target:
                return history[source]
            at = next((i for i in range(source - 1, -1, -1)
                       if history[i].get("cmd_id") == target), None)  # fmt: skip
        return None


def set_since(
    view: TrialView, entry: Entry, keys: Iterable[str], coming: Iterable[tuple[int, Any]] = ()
) -> dict[str, dict[str, Any]]:
    """The keys of ``entry`` (an applied change an undo takes back) that a later command set
    again, so that ``entry``'s value is no longer in force there: key -> the ``cmd_id``,
    ``seq``, ``step`` and ``source`` of the entry whose value is. Taking ``entry`` back there
    would undo that later change instead (under an LR scheduler, scale it by ``entry``'s
    ratio: a 10x lr no one set). ``coming``: ``(step, op)`` of the changes a resume has yet to
    re-apply, which came after ``entry`` in the life it replaces (``"reapplied_at"``)."""
    later: dict[str, tuple[int, Any]] = {}
    for at, op in coming:
        if op.op == "set_params" and op.module in ("opt", "loss", "custom"):
            for key in op.params:
                later.setdefault(key, (at, op))
    found: dict[str, dict[str, Any]] = {}
    keys = list(keys)
    for key in keys:
        owner = view.set_since(entry, key)
        coming_on = later.get(key) or later.get(key.split("@")[0])  # an lr moves every group
        if owner is not None:
            found[key] = {k: owner.get(k) for k in ("cmd_id", "seq", "step", "source")}
        elif coming_on is not None:
            at, op = coming_on
            found[key] = {"cmd_id": op.cmd_id, "reapplied_at": at, "source": "resume"}
    for key in keys:  # an lr would move the groups set since too: the others go one by one
        if "@" not in key and key not in found:
            group = next((g for g in found if g.split("@")[0] == key), None)
            if group is not None:
                found[key] = {**found[group], "group": group}
    return found


def since_text(since: Mapping[str, Mapping[str, Any]]) -> str:
    """What an undo says of the keys :func:`set_since` found."""
    said = "; ".join(_since_line(key, s) for key, s in since.items() if "group" not in s)
    return (
        f"{said}: this change is no longer in force there, so the undo leaves it (undo that "
        "change, or set the value you want)"
    )


def _since_line(key: str, s: Mapping[str, Any]) -> str:
    if "reapplied_at" in s:
        return (f"{key} was set again after it (the resume re-applies that change at step "
                f"{s['reapplied_at']})")  # fmt: skip
    return f"{key} was set again since (#{s.get('seq')} at step {s.get('step')}, {s.get('source')})"


def _new(entry: Entry, key: str) -> Any:
    change = (entry.get("changes") or {}).get(key)
    return change.get("new") if isinstance(change, Mapping) else None


def _same(a: Any, b: Any) -> bool:
    """The same value, as a ledger holds numbers (float noise aside)."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return (
            not isinstance(a, bool) and not isinstance(b, bool) and math.isclose(a, b, rel_tol=1e-9)
        )
    return a is not None and a == b

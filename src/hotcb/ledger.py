"""The ledger: what really happened to each command, one JSON line per entry, step-indexed.

``hotcb.applied.jsonl`` is authoritative. Each entry carries ``cursor``, the byte offset in the
commands file just after the command it records, so a kernel started on an existing run
directory resumes from the last entry (read from the file's tail) and applies nothing twice.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import jsonl
from .errors import CommandError, JournalWriteError
from .ops import HotOp, command_to_hotop
from .runfiles import FORMAT_VERSION, process_alive, run_relative

__all__ = [
    "STALE_AFTER_SEC",
    "Decision",
    "LedgerEntry",
    "LedgerView",
    "LedgerWriter",
    "applied_params",
    "checkpoint_path",
    "current_step",
    "find_entry",
    "holds_command",
    "iter_entries",
    "last_entry",
    "life_started",
    "live_entries",
    "pending_scheduled",
    "replaced_by_resume",
    "tail_state",
]

log = logging.getLogger("hotcb")


class Decision(str, enum.Enum):
    APPLIED = "applied"
    REJECTED = "rejected"  # invalid command: the reason in ``error``
    FAILED = "failed"  # raised while applying: state rolled back
    IGNORED_FREEZE = "ignored_freeze"
    SCHEDULED = "scheduled"  # accepted, due at ``at_step``
    NOOP = "noop"  # nothing to do (duplicate, cancelled, already in that state)


#: Keys every ledger entry has, in this order.
ENTRY_KEYS = (
    "v",
    "seq",
    "step",
    "event",
    "wall_time",
    "rank",
    "cmd_id",
    "source",
    "module",
    "op",
    "params",
    "id",
    "decision",
    "changes",
    "error",
    "cursor",
)


class LedgerWriter:
    """Appends batches of entries (one write, one fsync per batch).

    :meth:`write` keeps a batch whole or not at all, so a caller that retries a failed batch
    never writes an entry twice:

    - the write fails (disk full, file size limit): the partial batch is cut off again and
      :class:`~hotcb.errors.JournalWriteError` (an ``OSError``) is raised: nothing was kept,
      write the whole batch again later;
    - every byte was written and only ``fsync`` failed: the batch is in the file (readers see
      it), so it counts as written: a warning is logged, nothing is raised, and it must not be
      written again (it may not survive a power loss; a retry could not make it more durable).
    """

    def __init__(self, path: str, *, fsync: bool = True) -> None:
        self.path = path
        self.fsync = fsync

    def write(self, entries: list[dict[str, Any]]) -> None:
        if not entries:
            return
        try:
            jsonl.append_many(self.path, entries, fsync=self.fsync)
        except JournalWriteError as exc:
            if not exc.written:
                raise
            log.warning("hotcb: %s", exc)


def tail_state(path: str) -> tuple[int, int]:
    """``(seq, cursor)`` of the last well-formed entry (:func:`last_entry`), or ``(0, 0)``
    for a new ledger (or one without a single such entry)."""
    entry = last_entry(path)
    if entry is None:
        return 0, 0
    return entry["seq"], entry["cursor"]


def last_entry(path: str) -> dict[str, Any] | None:
    """The ledger's last well-formed entry (read back from its end), or None when it has none:
    missing, empty, zero-filled or garbage throughout.

    Well-formed: a JSON object whose ``seq`` and ``cursor`` are integers from 0 to 2**63 - 1.
    A line that is not (``"seq": "abc"``, ``1e400``, a negative cursor, absurd nesting, a
    torn write) is skipped, so a kernel resumes from the last entry it can trust."""
    found = jsonl.last_records(path, 1, keep=_well_formed)
    return found[0] if found else None


def _well_formed(entry: dict[str, Any]) -> bool:
    return _count(entry.get("seq")) and _count(entry.get("cursor"))


def _count(value: Any) -> bool:
    return type(value) is int and 0 <= value < 1 << 63


def _in_seq_order(entries: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Drop an entry whose integer ``seq`` is not above the last one seen.

    ``seq`` only grows, so a smaller or equal one is a batch written twice (a retry by an older
    hotcb after a half-written batch): the first copy is what happened."""
    last = None
    for e in entries:
        seq = e.get("seq")
        if type(seq) is int:
            if last is not None and seq <= last:
                continue
            last = seq
        yield e


def iter_entries(
    path: str, keep: Callable[[bytes], bool] | None = None
) -> Iterator[dict[str, Any]]:
    """Every entry of the ledger, in order, each ``seq`` once; with ``keep``, only those
    whose raw line it accepts (a cheap byte test: the others are not parsed)."""
    return _in_seq_order(jsonl.iter_records(path, keep=keep))


def find_entry(path: str, cmd_id: str, decision: str | None = "applied") -> dict[str, Any] | None:
    """The last entry for ``cmd_id`` (with that decision), scanning the whole ledger (parsing
    only the lines that hold the id's JSON)."""
    found = None
    needle = jsonl.dumps(cmd_id).encode()
    for e in iter_entries(path, keep=lambda line: needle in line):
        if e.get("cmd_id") == cmd_id and (decision is None or e.get("decision") == decision):
            found = e
    return found


def holds_command(path: str, *cmd_ids: str) -> bool:
    """Whether any entry of the ledger records one of ``cmd_ids``. Reads the whole file, but
    parses only the lines that hold one's JSON."""
    needles = [jsonl.dumps(c).encode() for c in cmd_ids]
    lines = jsonl.iter_records(path, keep=lambda line: any(n in line for n in needles))
    return any(e.get("cmd_id") in cmd_ids for e in lines)


#: A ``checkpoint`` field that names no file: the loop was only asked to save (no
#: ``save_checkpoint`` callable in its env).
_REQUESTED = "requested"


def checkpoint_field(saved: str | os.PathLike[str], run_dir: str | os.PathLike[str]) -> str:
    """What a checkpoint entry records for the file ``saved`` (the save function's answer):
    its path relative to the run directory when it lies inside, else its absolute path (an
    allowed root elsewhere). :func:`checkpoint_path` reads it back."""
    where = run_relative(saved, run_dir)
    return os.path.join(os.curdir, where) if where == _REQUESTED else where


def checkpoint_path(entry: Mapping[str, Any], run_dir: str | os.PathLike[str]) -> str | None:
    """The absolute path of the file a ``checkpoint`` entry saved, to open or resume from;
    None when it names none (``"requested"``: the loop was asked to save, or no path came back).

    The entry's ``checkpoint`` field is relative to the run directory when the file lies
    inside it, so give the run directory as it is reached from here; an absolute one (an
    allowed root elsewhere) is kept."""
    where = entry.get("checkpoint")
    if not isinstance(where, str) or where in ("", _REQUESTED):
        return None
    return os.path.abspath(os.path.join(os.fspath(run_dir), where))


def pending_scheduled(path: str) -> list[dict[str, Any]]:
    """Scheduled entries with no later entry for the same command: what is still waiting.

    Reads the whole ledger, but parses only lines that can matter (a ``scheduled`` decision,
    or naming a command still waiting): a kernel does this at start, on ledgers of any size."""
    view = LedgerView(max_entries=0)
    marker = b'"scheduled"'

    def keep(line: bytes) -> bool:
        return marker in line or any(b in line for b in view.pending_ids.values())

    # only kept lines' seqs are compared, which is enough: the ``scheduled`` lines of a batch
    # written twice were kept the first time, so their seqs were seen
    for e in jsonl.iter_records(path, keep=keep):
        view.add(e)
    return list(view.pending.values())


def open_ramps(path: str) -> list[dict[str, Any]]:
    """The ramps' start entries with no end entry (``source: "ramp"``, same cmd_id) after
    them: the ramps a life that ended without ``close()`` (killed, or a notebook's kernel made
    again) left under way. Parses only the lines of ramps, on ledgers of any size."""
    started: dict[str, dict[str, Any]] = {}
    for e in iter_entries(path, keep=lambda line: b'"transition"' in line or b'"ramp"' in line):
        cmd_id = e.get("cmd_id")
        if not isinstance(cmd_id, str):
            continue
        if e.get("ramp"):
            started.pop(cmd_id, None)
        elif e.get("transition") and e.get("decision") == Decision.APPLIED.value:
            started[cmd_id] = e
    return list(started.values())


#: Seconds without a new metric or ledger entry after which a running run counts as idle
#: (``hotcb status``; the dashboard's ``ui.stale_after_sec`` defaults to the same).
STALE_AFTER_SEC = 30.0
_INVERSE = {"enable": "disable", "disable": "enable", "load": "unload"}


class LedgerView:
    """The one reducer of a ledger into state; the kernel, the CLI, the server and the
    autopilot all ask it instead of interpreting entries themselves.

    Feed it entries in file order with :meth:`add` (or build it with :meth:`read`). It keeps
    the last ``max_entries`` entries (all when None), skips an entry whose ``seq`` is not above
    the last one (a batch written twice), and maintains:

    - ``pending``: scheduled commands still waiting, by cmd_id;
    - ``control``: the last applied run control (``pause``, ``resume`` or ``stop``), whence
      :attr:`paused` and :attr:`stopped`, and ``control_wall_time``, when it was applied; a
      ``kernel resume`` entry (a new life from a checkpoint) or ``kernel reopen`` (another
      loop on the same kernel) clears it, and :meth:`control_now`
      and :meth:`run_state` drop the control of an earlier life (:func:`life_started`);
    - ``last_step``, ``last_wall_time``: of the newest entry;
    - ``callbacks``: each callback's state, in load order (see :meth:`callback_list`).
    """

    def __init__(self, max_entries: int | None = None) -> None:
        self.entries: deque[dict[str, Any]] = deque(maxlen=max_entries)
        self.pending: dict[str, dict[str, Any]] = {}
        self.pending_ids: dict[str, bytes] = {}  # cmd_id -> its JSON, for byte filters
        self.control: str | None = None
        self.control_wall_time: float | None = None
        self.last_seq: int | None = None
        self.last_step: int | None = None
        self.last_wall_time: float | None = None
        self.callbacks: dict[str, dict[str, Any]] = {}
        self._cb_ops: dict[str, dict[str, Any]] = {}  # cmd_id -> applied cb entry (for undo)
        self._cb_problem: dict[str, str] = {}  # id -> the op whose problem is its last_error
        self._cb_entries: list[dict[str, Any]] = []  # what callbacks were reduced from
        #: id -> wall time of its last applied load or checkpoint restore (callback_list)
        self._cb_life: dict[str, float] = {}

    @classmethod
    def read(cls, path: str, max_entries: int | None = None) -> LedgerView:
        view = cls(max_entries)
        for e in jsonl.iter_records(path):
            view.add(e)
        return view

    @property
    def paused(self) -> bool:
        return self.control == "pause"

    @property
    def stopped(self) -> bool:
        return self.control == "stop"

    def add(self, e: dict[str, Any]) -> bool:
        """Reduce one entry; False when it was skipped as a duplicate."""
        seq = e.get("seq")
        if type(seq) is int:
            if self.last_seq is not None and seq <= self.last_seq:
                return False
            self.last_seq = seq
        self.entries.append(e)
        cid, decision = e.get("cmd_id"), e.get("decision")
        if decision == Decision.SCHEDULED.value and isinstance(cid, str):
            self.pending[cid] = e
            self.pending_ids[cid] = jsonl.dumps(cid).encode()
        elif cid in self.pending:
            del self.pending[cid]
            del self.pending_ids[cid]
        self._add_run_control(e)
        step, wall = e.get("step"), e.get("wall_time")
        if type(step) is int:
            self.last_step = step
        if isinstance(wall, (int, float)) and not isinstance(wall, bool):
            self.last_wall_time = float(wall)
        self._add_callback(e)
        return True

    def _add_run_control(self, e: dict[str, Any]) -> None:
        op, module = e.get("op"), e.get("module")
        # a kernel restored from a checkpoint, or reopened for another loop
        new_life = module == "kernel" and op in ("resume", "reopen")
        if new_life or (
            module == "control"
            and op in ("pause", "resume", "stop")
            and e.get("decision") == Decision.APPLIED.value
        ):
            self.control = None if new_life else op
            self.control_wall_time = _number(e.get("wall_time"))

    def control_now(self, meta: Mapping[str, Any] | None = None) -> str | None:
        """The run control in force: ``control``, unless it was applied before the life of the
        run that goes on now began (:func:`life_started`, from ``hotcb.run.json``, ``meta``).
        A kernel starts neither paused nor stopped, so a run started again in its directory
        (after a ``stop``, or a pause and a kill) runs, whether it resumed from a checkpoint or
        started afresh."""
        life, at = life_started(meta), self.control_wall_time
        if life is not None and at is not None and at < life:
            return None  # of an earlier life
        return self.control

    def run_state(
        self,
        last_activity: float | None,
        now: float,
        stale_after: float = STALE_AFTER_SEC,
        *,
        meta: Mapping[str, Any] | None = None,
        root: str | None = None,
    ) -> str:
        """What the run is doing, for a person: ``finished at step N`` / ``stopped at step N``
        / ``interrupted at step N`` (Ctrl-C unwound its loop through ``close()``)
        (its loop closed the kernel: ``ended`` in ``hotcb.run.json``, ``meta``), ``crashed``
        or ``interrupted by SIGINT`` (its process is gone without closing), ``stopped``,
        ``paused``, ``running``, ``idle`` (nothing new for ``stale_after`` seconds), ``ended
        before it started`` (``hotcb launch`` saw its training exit before a kernel opened the
        run) or ``not started``. ``last_activity``: the newest wall time of its metrics or
        ledger. A ``stop`` or ``pause`` of an earlier life (:meth:`control_now`) no longer
        counts, nor does activity before this life began (:func:`life_started`). ``root``:
        the run directory read; one that is not the directory its live trainer opened (a copy
        made with ``cp -a`` while it ran) says so instead of that trainer's state."""
        meta = meta or {}
        ended = meta.get("ended")
        if isinstance(ended, Mapping):
            if ended.get("step") is None:  # its kernel opened the run and closed it at once
                before = meta.get("ended_before")
                last = (
                    f" (the life before it {_ended(before)})" if isinstance(before, Mapping) else ""
                )
                return f"closed before its first step{last}"
            return _ended(ended)
        alive = process_alive(meta) if meta.get("started") is not None else None
        if alive is False:
            return _gone(meta)
        elsewhere = meta.get("run_dir")
        if (
            alive
            and root is not None
            and isinstance(elsewhere, str)
            and not _same_dir(elsewhere, root)
        ):
            return (
                f"copied or moved here from {elsewhere} while its trainer (pid "
                f"{meta.get('pid')}) ran there: nothing trains in this directory"
            )
        came = meta.get("branch")
        if meta.get("started") is None and isinstance(came, Mapping):  # inherited entries only
            return f"not started (a branch of {came.get('parent')} at step {came.get('step')})"
        control = self.control_now(meta)
        if control == "stop":
            return "stopped"
        if control == "pause":
            return "paused"
        life = life_started(meta)
        if last_activity is not None and life is not None and last_activity < life:
            last_activity = None  # all of an earlier life: this one has written nothing yet
        if last_activity is None:
            if alive and not _never_started(meta):  # (a notebook's kernel cell run again)
                return f"not started (its kernel is open in pid {meta.get('pid')}: no step yet)"
            return _never_started(meta) or "not started"
        return "idle" if now - last_activity > stale_after else "running"

    def callback_list(self, meta: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """The callbacks in load order: ``id``, ``state`` (``enabled`` | ``disabled`` |
        ``load failed`` | ``not loaded``), ``target``, ``sha256``, ``params`` (set so far),
        ``errors``, ``last_error`` (its last exception, or the last refused command about it
        that no later one of the same kind made moot), ``warning`` (the last one the callback
        gave, e.g. no gradients at this safe point; None if none), ``step`` (of the last change; for
        ``load failed``, of the last attempt). Entries a later resume superseded
        (:func:`live_entries`) count for nothing.

        ``meta`` (``hotcb.run.json``) says when the trainer's current life began
        (:func:`life_started`): a callback loaded in an earlier life that this one neither
        loaded again nor restored from a checkpoint (a ``cb restore`` entry, written by
        ``kernel.load_state_dict``) is ``not loaded``: a trainer started again in the run
        directory without its checkpoint has none of the old callbacks."""
        life = life_started(meta)
        out = []
        for ident, cb in self.callbacks.items():
            seen = self._cb_life.get(ident)
            if (
                life is not None
                and seen is not None
                and seen < life
                and cb["state"] in ("enabled", "disabled")
            ):
                cb = {**cb, "state": "not loaded", "last_error": _NOT_IN_THIS_LIFE}
            out.append(cb)
        return out

    # -- callbacks ---------------------------------------------------------------------------
    def _as_cb(self, e: dict[str, Any]) -> dict[str, Any]:
        """An applied ``control undo`` of a cb command, rewritten as the cb op it amounts to."""
        target = self._cb_ops.get(e.get("undo_of") or "")
        if target is None or e.get("decision") != Decision.APPLIED.value:
            return e
        changes = e.get("changes") or {}
        params = {k: v.get("new") for k, v in changes.items() if isinstance(v, dict)}
        op = _INVERSE.get(target.get("op") or "", target.get("op"))
        return {**e, "module": "cb", "op": op, "id": target.get("id"), "params": params}

    def _add_callback(self, e: dict[str, Any]) -> None:
        if e.get("module") == "kernel" and e.get("op") == "resume":
            at = (e.get("resumed_from") or {}).get("seq")
            if isinstance(at, int):
                self._rewind_callbacks(at)
            return
        if e.get("module") == "cb" and e.get("op") == "restore" and "restored" in e:
            # the callbacks a checkpoint brought back into this life (not superseded by the
            # resume entry that follows it: it is that same life)
            wall = _number(e.get("wall_time"))
            for ident in e.get("restored") or ():
                if wall is not None and isinstance(ident, str):
                    self._cb_life[ident] = wall
            return
        if self._reduce_callback(self._as_cb(e)):
            self._cb_entries.append(e)

    def _rewind_callbacks(self, seq: int) -> None:
        """A resume from the checkpoint at ``seq``: the cb entries after it are superseded
        (:func:`replaced_by_resume`; those it applied again follow), so the callbacks are
        what the others made them."""
        kept = [e for e in self._cb_entries if not (type(e.get("seq")) is int and e["seq"] > seq)]
        self.callbacks, self._cb_ops, self._cb_problem, self._cb_entries = {}, {}, {}, []
        for e in kept:
            self._add_callback(e)

    def _reduce_callback(self, e: dict[str, Any]) -> bool:
        """Reduce one entry into ``callbacks``; False when it is not about a callback."""
        ident = e.get("id")
        if e.get("module") != "cb" or not ident:
            return False
        if e.get("decision") == Decision.APPLIED.value and isinstance(e.get("cmd_id"), str):
            self._cb_ops[e["cmd_id"]] = e
        if e.get("op") == "load":
            self._load_callback(ident, e)
        elif ident in self.callbacks:
            self._change_callback(ident, e)
        return True

    def _change_callback(self, ident: str, e: dict[str, Any]) -> None:
        """Any other cb entry about a known callback: errors, unload, enable/disable, params."""
        op, decision, cbs = e.get("op"), e.get("decision"), self.callbacks
        cur = cbs[ident]
        if op == "callback_error":
            # a report of suppressed errors only (at an unload, a disable, the run's end)
            # brings no new error of its own
            cur["errors"] += int(e.get("suppressed") or 0) + (0 if e.get("flushed_on") else 1)
            cur["last_error"] = e.get("error")
            self._cb_problem[ident] = op
            if e.get("auto_disabled"):
                cur["state"] = "disabled"
        elif decision in ("failed", "rejected"):
            cur["last_error"] = e.get("error")
            self._cb_problem[ident] = str(op)
        elif op == "warning":  # the callback's own word: its loop lacks what it measures
            cur["warning"] = e.get("error")
            return
        elif decision != Decision.APPLIED.value:
            return
        elif op == "unload":
            del cbs[ident]
            self._cb_problem.pop(ident, None)
            return
        elif op in ("enable", "disable"):
            cur["state"] = op + "d"
        elif op == "set_params":
            cur["params"].update(e.get("params") or {})
            if self._cb_problem.get(ident) == op:  # a refused set_params, since made moot
                cur["last_error"] = None
                del self._cb_problem[ident]
        cur["step"] = e.get("step")

    def _load_callback(self, ident: str, e: dict[str, Any]) -> None:
        """A ``cb load`` entry: applied replaces the callback; failed or rejected records the
        error, on the loaded callback, else on a placeholder in ``load failed`` state that
        shows the last attempt (its target, step and error)."""
        decision, cbs = e.get("decision"), self.callbacks
        cur = cbs.get(ident)
        if decision == Decision.APPLIED.value:
            if cur is not None and cur["state"] == "load failed":
                del cbs[ident]  # loaded now: it takes its place in the load order here
            # a reload keeps its place (and no stale fields)
            cbs[ident] = _callback(e, "disabled" if e.get("enabled") is False else "enabled")
            cbs[ident]["sha256"] = (e.get("source_capture") or {}).get("sha256")
            self._cb_problem.pop(ident, None)
            wall = _number(e.get("wall_time"))
            if wall is not None:
                self._cb_life[ident] = max(wall, self._cb_life.get(ident, wall))
        elif decision in ("failed", "rejected"):
            if cur is None or cur["state"] == "load failed":
                cbs[ident] = cur = _callback(e, "load failed")
            cur["last_error"] = e.get("error")
            self._cb_problem[ident] = "load"


#: ``last_error`` of a callback of an earlier life of the trainer (:meth:`LedgerView.callback_list`).
_NOT_IN_THIS_LIFE = (
    "the trainer started again in this run directory without restoring a checkpoint: this "
    "callback is not loaded in it (cb load it again)"
)


def _callback(e: Mapping[str, Any], state: str) -> dict[str, Any]:
    return {
        "id": e["id"],
        "state": state,
        "target": e.get("target"),
        "sha256": None,
        "params": {},
        "errors": 0,
        "warning": None,
        "last_error": None,
        "step": e.get("step"),
    }


#: The fields of a ledger entry that make up the command it recorded.
_COMMAND_FIELDS = ("cmd_id", "module", "op", "params", "id", "target", "init", "enabled",
                   "transition", "mode", "recipe_path", "adjust_path", "step_offset",
                   "source_capture")  # fmt: skip
#: Run control a resume does not re-apply: the resumed run was started on purpose, it is not
#: paused, its checkpoints were saved and its evaluations run already. (``extend`` is: the
#: checkpoint holds the horizon of the extends before it, the ones after it land again.)
_NOT_RESUMED = frozenset({"pause", "resume", "checkpoint", "stop", "evaluate"})


def applied_params(entry: Mapping[str, Any]) -> dict[str, Any]:
    """An entry's params as it applied them: a multiplier sent ``relative_to`` a value that
    had moved by the time it landed (``rebased``) applied to the value in force, and that is
    the value to apply again (a resume, a replay), not the number that was sent."""
    params = dict(entry.get("params") or {})
    rebased, changes = entry.get("rebased"), entry.get("changes")
    if isinstance(rebased, Mapping) and isinstance(changes, Mapping):
        for key in rebased:
            made = changes.get(key)
            if key in params and isinstance(made, Mapping) and "new" in made:
                params[key] = made["new"]
    return params


@dataclass
class LedgerEntry:
    """One line of ``hotcb.applied.jsonl``: what happened to one command at one step.

    The fields every entry has are attributes; anything else a writer added (``target``,
    ``traceback``, ``undo_of``, ``checkpoint``, …) is in :attr:`extra`. :meth:`to_dict` gives
    the line as written, keys in :data:`ENTRY_KEYS` order first."""

    seq: int = 0
    step: int | None = None
    event: str | None = None
    wall_time: float | None = None
    rank: int = 0
    cmd_id: str | None = None
    source: str | None = None
    module: str | None = None
    op: str | None = None
    params: Any = None
    id: str | None = None
    decision: str | None = None
    changes: dict[str, Any] | None = None
    error: str | None = None
    cursor: int = 0
    v: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LedgerEntry:
        known = {k: d[k] for k in ENTRY_KEYS if k in d and d[k] is not None}
        entry = cls(**known, extra={k: v for k, v in d.items() if k not in ENTRY_KEYS})
        entry.seq = entry.seq if type(entry.seq) is int else 0
        entry.cursor = entry.cursor if type(entry.cursor) is int else 0
        return entry

    @property
    def inherited(self) -> bool:
        """Copied from a parent run by ``hotcb branch``: history, never applied again here."""
        return self.extra.get("inherited") is True

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ENTRY_KEYS}
        out.update(self.extra)
        return out

    def to_command(self, keep: Sequence[str] = (), **override: Any) -> dict[str, Any]:
        """The command record this entry recorded, to apply it again (a resume, a restarted
        schedule, a recipe). An ``undo`` names the change it undid, so it undoes the same one
        again rather than "the last change". ``keep``: more entry fields to carry over."""
        whole = self.to_dict()
        record = {k: whole[k] for k in _COMMAND_FIELDS if whole.get(k) is not None}
        record["params"] = applied_params(whole)
        for k in keep:
            if whole.get(k) is not None:
                record[k] = whole[k]
        if self.extra.get("undo_of"):
            record["params"] = {"cmd_id": self.extra["undo_of"]}
        record.update(override)
        return record

    def to_op(self, keep: Sequence[str] = (), **override: Any) -> HotOp | None:
        """:meth:`to_command` as a validated op; None when it no longer validates."""
        try:
            return command_to_hotop(self.to_command(keep, **override))
        except CommandError:
            return None

    def reapplied_on_resume(self) -> bool:
        """Whether a run resumed from a checkpoint before this entry applies it again.

        Not: anything not applied, kernel entries, ramp completions (the op that started the
        ramp restarts it), recipe entries (the restored recipe player fires them again) and run
        control (:data:`_NOT_RESUMED`), and the tuner's own ops (a resumed tuner decides again
        from its checkpointed state; ``tune enable``/``disable`` do come back). A recipe export (``recipe.ledger_to_entries``) keeps
        recipe entries (they are part of the trajectory to reproduce elsewhere) and drops
        ``freeze`` (a replay sets its own mode); a resume keeps ``freeze`` (the same run goes
        on in the mode it had)."""
        if self.decision != Decision.APPLIED.value or self.source in ("ramp", "recipe"):
            return False
        if self.module in (None, "kernel"):
            return False
        if self.module == "tune" and self.op not in ("enable", "disable"):
            return False  # the tuner decides again from its checkpointed state
        return not (self.module == "control" and self.op in _NOT_RESUMED)


#: Signals a person (or a scheduler) ends a training with: the run was interrupted, not crashed.
_INTERRUPTS = {int(signal.SIGINT): "SIGINT", int(signal.SIGTERM): "SIGTERM",
               int(signal.SIGKILL): "SIGKILL", int(signal.SIGHUP): "SIGHUP"}  # fmt: skip


def _same_dir(a: str, b: str) -> bool:
    """Whether two paths name one directory (through links; a missing one by its path)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def _gone(meta: Mapping[str, Any]) -> str:
    """The state of a run whose process is gone without closing it: ``interrupted by SIGINT``
    when ``hotcb launch`` saw the training end on a signal it forwarded (Ctrl-C), else
    ``crashed`` (``killed by SIGKILL``: the OOM killer)."""
    gone = "its process is gone and did not close the run"
    launch = meta.get("launch")
    code = launch.get("exit_code") if isinstance(launch, Mapping) else None
    if not isinstance(code, int) or isinstance(code, bool) or not isinstance(launch, Mapping):
        return f"crashed ({gone})"
    ended, started = launch.get("ended"), meta.get("started")
    if isinstance(ended, (int, float)) and isinstance(started, (int, float)) and ended < started:
        return f"crashed ({gone})"  # that exit code is of an earlier life
    sig = -code if code < 0 else code - 128 if code > 128 else None
    # only a signal hotcb launch forwarded (Ctrl-C, a SIGTERM; SIGKILL after the third) is an
    # interruption: a SIGKILL from elsewhere (the OOM killer) is a crash, and was not alerted
    sent = launch.get("signal_sent")  # (torchrun answers a forwarded SIGINT with 1)
    if sent in _INTERRUPTS.values() and sig in _INTERRUPTS:
        return f"interrupted by {_INTERRUPTS[sig]} ({gone})"
    if sent in _INTERRUPTS.values() and code != 0:
        return f"interrupted by {sent} (exit code {code}; {gone})"
    if sig is not None and 0 < sig < signal.NSIG:
        return f"crashed (killed by {signal.Signals(sig).name}; {gone})"
    return f"crashed (exit code {code}; {gone})"


def closed_on_error(meta: Mapping[str, Any]) -> bool:
    """Whether the run's loop was unwound by an error through ``close()`` (``ended`` in
    ``hotcb.run.json`` holds it): a crash, though its process closed the run."""
    ended = meta.get("ended")
    if not isinstance(ended, Mapping) or ended.get("stopped") or ended.get("signal_pending"):
        return False  # (a signal it did not live to act on: interrupted)
    return isinstance(ended.get("error"), str)


def _ended(ended: Mapping[str, Any]) -> str:
    """``finished at step N`` and the like, for ``ended`` in ``hotcb.run.json``; ``crashed at
    step N (ValueError: …)`` for a loop that an error unwound through ``close()``."""
    if closed_on_error({"ended": ended}):
        return f"crashed at step {ended.get('step')} ({ended['error']})"
    pending = ended.get("signal_pending")
    if isinstance(pending, str) and not ended.get("stopped"):  # no safe point took it
        why = f"; {ended['error']}" if isinstance(ended.get("error"), str) else ""
        return f"interrupted by {pending} at step {ended.get('step')} (before its checkpoint{why})"
    how = ("stopped" if ended.get("stopped") else
           "interrupted" if ended.get("interrupted") else "finished")  # fmt: skip
    return f"{how} at step {ended.get('step')}"


def _never_started(meta: Mapping[str, Any]) -> str | None:
    """``ended before it started (…)`` when ``hotcb launch`` recorded the training's exit and
    no kernel opened the run in that life (a script that failed on its arguments or imports)."""
    launch = meta.get("launch")
    code = launch.get("exit_code") if isinstance(launch, Mapping) else None
    if not isinstance(code, int) or isinstance(code, bool):
        return None
    started = _number(meta.get("started"))
    if started is not None and started == life_started(meta):
        return None  # a kernel opened the run after this launch started its training
    return f"ended before it started (its training exited with code {code})"


_OVER = (
    "finished",
    "stopped at",
    "crashed",
    "interrupted",
    "ended before",
    "copied or moved",
    "closed before",
)


def run_over(meta: Mapping[str, Any], now: float, root: str | None = None) -> str | None:
    """How the run's training ended (``finished at step N``, ``crashed (…)``, ``ended before
    it started (…)`` …: see :meth:`LedgerView.run_state`) when its process is gone, from
    ``hotcb.run.json``; None while it runs, before it starts, or for a run with no record.
    With ``root``, the directory read: a copy of a live run's (``copied or moved here …``)."""
    state = LedgerView().run_state(None, now, meta=meta, root=root)
    return state if state.startswith(_OVER) else None


def life_started(meta: Mapping[str, Any] | None) -> float | None:
    """When the life of the run that goes on now began, from ``hotcb.run.json`` (``meta``):
    the later of ``started`` (its kernel opened the run) and ``launch.started`` (``hotcb
    launch`` started its training, whose kernel may not be open yet); None with neither.

    A run started again in its directory (resumed from a checkpoint or afresh) is a new life:
    what the ledger, the metrics and the heartbeat say from before it (a ``stop``, a ``pause``,
    the steps the last life reached) is history, not its state."""
    meta = meta or {}
    launch = meta.get("launch")
    times = [_number(meta.get("started"))]
    if isinstance(launch, Mapping):
        times.append(_number(launch.get("started")))
    known = [t for t in times if t is not None]
    return max(known) if known else None


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def current_step(
    records: Iterable[tuple[Any, Any]], meta: Mapping[str, Any] | None = None
) -> int | None:
    """The run's step now, from ``(step, wall_time)`` of its newest records (the last metrics
    record, the last ledger entry, the kernel's heartbeat): the step of the newest one, not the
    largest, since a run started again in its directory counts from its checkpoint's step or
    from 0. Records written before the run's current life began (:func:`life_started`, from
    ``hotcb.run.json``, ``meta``) do not count: None until this life writes one."""
    life = life_started(meta)
    best: tuple[float, int] | None = None
    for step, wall in records:
        if type(step) is not int:
            continue
        t = _number(wall)
        if t is not None and life is not None and t < life:
            continue  # of an earlier life
        key = (-math.inf if t is None else t, step)
        if best is None or key > best:
            best = key
    return None if best is None else best[1]


def new_entry(**fields: Any) -> dict[str, Any]:
    """A ledger line with every :data:`ENTRY_KEYS` key (writers fill in what they know)."""
    return LedgerEntry.from_dict(fields).to_dict()


def live_entries(entries: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The ledger without what a resume superseded: the entries written before a ``kernel
    resume`` entry whose ``seq`` is past the checkpoint's (``resumed_from.seq``). The commands
    among them were applied again by the resume (their copies follow it); the tuner's own
    trials of that life were not, and a recipe must not replay them."""
    rows = list(entries)
    gone = replaced_by_resume(rows)
    return [e for e in rows if e.get("seq") not in gone]


def replaced_by_resume(entries: Sequence[Mapping[str, Any]]) -> dict[int, Mapping[str, Any]]:
    """The ``seq`` of each entry a later resume superseded (see :func:`live_entries`), with
    that resume's ``kernel resume`` entry."""
    gone: dict[int, Mapping[str, Any]] = {}
    floor: float = math.inf  # the lowest checkpoint seq of a resume after this entry
    by: Mapping[str, Any] = {}
    for e in reversed(entries):
        seq = e.get("seq")
        if isinstance(seq, int) and seq > floor and not _saved_it(e, by):
            gone[seq] = by
        if e.get("module") == "kernel" and e.get("op") == "resume":
            at = (e.get("resumed_from") or {}).get("seq")
            if isinstance(at, int) and at < floor:
                floor, by = at, e
    return gone


def _saved_it(e: Mapping[str, Any], resume: Mapping[str, Any]) -> bool:
    """Whether ``e`` is the ``control checkpoint`` entry of the checkpoint ``resume`` came
    from: its state was taken before the entry got its ``seq``, so it follows the checkpoint's
    ``seq``, but it happened in the life that goes on (a branch still finds it)."""
    came = resume.get("resumed_from") or {}
    return (
        e.get("module") == "control"
        and e.get("op") == "checkpoint"
        and e.get("decision") == Decision.APPLIED.value
        and e.get("step") == came.get("step")
    )

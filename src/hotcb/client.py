"""HotClient: the Python writer that the CLI, the dashboard, autopilots and notebooks use.

Every method validates the command (same rules as the kernel), appends it to the run's
``hotcb.commands.jsonl`` and returns its ``cmd_id``; :meth:`HotClient.wait` returns the ledger
entry once the training process has handled it.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import socket
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeGuard, overload

from . import jsonl
from .actuators import ActuatorType, HotcbActuator
from .errors import ActuatorError, CommandError, JournalWriteError
from .ledger import iter_entries
from .ledger import run_over as _run_over
from .ops import make_command
from .runfiles import RunPaths, folder_of_runs, is_network_fs, shell_path

__all__ = ["HotClient", "route_keys"]

log = logging.getLogger("hotcb")

_OPT_PATTERN = re.compile(
    r"^(opt\d*\.)?(lr|learning_rate|weight_decay|momentum|betas|beta1|beta2|eps|dampening|nesterov)(@.+)?$"
)
_LOSS_PATTERN = re.compile(r"^(loss|weight|w|lambda|terms?)[._]|(_weight|_loss|_w)$")


def route_keys(keys: Sequence[str], actuators: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Which module (opt / loss / custom) each key belongs to: by the run's registered
    actuators first, then by name patterns (``lr`` → opt, ``*_weight`` → loss, else custom)."""
    groups = {a["param_key"]: a.get("group", "custom") for a in actuators}
    out: dict[str, list[str]] = {}
    for key in keys:
        module = groups.get(key)
        if module is None:
            if _OPT_PATTERN.match(key):
                module = "opt"
            elif _LOSS_PATTERN.search(key):
                module = "loss"
            else:
                module = "custom"
        out.setdefault(module, []).append(key)
    return out


_ACTUATOR_MODULES = ("opt", "loss", "custom")


def _a(word: str) -> str:
    """``word`` with its indefinite article: "an opt", "a loss"."""
    return f"an {word}" if word[:1] in tuple("aeiou") else f"a {word}"


def _validator(d: Mapping[str, Any]) -> HotcbActuator:
    """An actuator that validates like the published one ``d`` (it applies nothing)."""
    return HotcbActuator(
        param_key=d["param_key"],
        type=ActuatorType(d["type"]),
        apply_fn=lambda value, env: None,
        min_value=d.get("min"),
        max_value=d.get("max"),
        choices=tuple(d["choices"]) if d.get("choices") else None,
        length=d.get("length"),
        group=d.get("group") or "custom",
    )


def _near(key: str, names: Sequence[str]) -> list[str]:
    """The known name ``key`` was likely meant for: a close spelling (``lrr``: ``lr``), else
    the one name that has it as a word (``ce``: ``ce_weight``); ``[]`` when none is."""
    close = difflib.get_close_matches(key, names, n=1)
    if close:
        return close
    words = [n for n in names if key in re.split(r"[_.\-]", n)]
    return words if len(words) == 1 else []


def check_actuator_params(
    module: str, params: Mapping[str, Any], published: Sequence[Mapping[str, Any]]
) -> None:
    """Refuse what the run's published actuators (``hotcb.actuators.json``) would refuse:
    unknown names (with the closest known one), wrong types, values out of bounds."""
    by_key = {a["param_key"]: a for a in published}
    for key, value in params.items():
        d = by_key.get(key)
        if d is not None and (d.get("group") or "custom") != module:  # the run's words for it
            group = d.get("group") or "custom"
            raise ActuatorError(f"{key!r} is {_a(group)} actuator, not {module}: send it as "
                                f"'hotcb {group} set_params {key}=...'")  # fmt: skip
        if d is None:
            mine = sorted(k for k, a in by_key.items() if (a.get("group") or "custom") == module)
            close = _near(key, mine)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            near = [] if close else _near(key, list(by_key))
            if near:  # a typo of another group's knob (`hotcb set lrr=…` routes to custom)
                group = by_key[near[0]].get("group") or "custom"
                hint = f"; did you mean {near[0]!r} (in {group})?"
            others = ""
            if not mine and by_key:  # none there: what the run does have
                groups: dict[str, list[str]] = {}
                for k, a in sorted(by_key.items()):
                    groups.setdefault(a.get("group") or "custom", []).append(k)
                others = (
                    " (the run's knobs: "
                    + "; ".join(f"{g}: {', '.join(ks)}" for g, ks in sorted(groups.items()))
                    + ")"
                )
            # the kernel's words (``ActuatorSet.lookup``), then what only the client can add
            known = ", ".join(mine) or "none registered"
            raise ActuatorError(
                f"unknown actuator {key!r} in group {module!r}; known: {known}{hint}{others}"
            )
        if d.get("state") == "disabled":  # (the kernel's words)
            raise ActuatorError(
                f"actuator {key!r} is disabled after {d.get('failures')} failed applies "
                f"(last error: {d.get('last_error')})"
            )
        _validator(d).validate(value)


def check_group_moves(
    params: Mapping[str, Any],
    published: Sequence[Mapping[str, Any]],
    relative_to: Mapping[str, Any] | None = None,
) -> None:
    """Refuse an ``lr`` (or ``weight_decay``) that would move a param group out of its bounds
    (the kernel keeps the groups' ratios: ``lr=5`` with group 1 at 10× group 0's lr), as the
    kernel would with the values published now, unless the command sets that group itself.
    For a command about to be sent (a recipe's entries are checked without it: an earlier
    entry may move the ratio first). A multiplier (``relative_to``) computed from a value
    that is no longer the one published is left to the kernel, which applies its factor to
    the value in force."""
    by_key = {a["param_key"]: a for a in published}
    for key, value in params.items():
        if key not in by_key:
            continue
        basis = (relative_to or {}).get(key)
        if basis is not None and basis != by_key[key].get("current"):
            continue  # rebased by the kernel
        _check_groups(key, value, params, by_key)


def _check_groups(
    key: str, value: Any, params: Mapping[str, Any], by_key: Mapping[str, Mapping[str, Any]]
) -> None:
    base = by_key[key].get("current")
    if "@" in key or not _number(base) or not base or not _number(value):
        return
    for gkey, g in by_key.items():
        now = g.get("current")
        if not gkey.startswith(f"{key}@") or gkey in params or not _number(now) or not now:
            continue
        target = value * now / base
        lo, hi = g.get("min"), g.get("max")
        where = (f"below the minimum {lo:g}" if _number(lo) and target < lo * (1 - 1e-9) else
                 f"above the maximum {hi:g}" if _number(hi) and target > hi * (1 + 1e-9) else "")  # fmt: skip
        if where:
            raise ActuatorError(f"{key}={value:g} would set {gkey} to {target:g}, {where} for "
                                f"actuator {gkey!r}; nothing changed")  # fmt: skip


def _number(v: Any) -> TypeGuard[float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_space(
    space: Sequence[Any],
    published: Sequence[Mapping[str, Any]],
    where: str,
    lines: Mapping[str, int] | None = None,
) -> None:
    """A tuner recipe's knobs that the run does not have as numeric actuators: refused with
    each one named, and its line in the recipe (``lines``, from
    :func:`~hotcb.modules.tune.read_recipe`), once the run has published its actuators (the
    tuner sat `active` and never made a trial, a warning in `tune status --json` the only
    sign)."""
    items = [{"key": k.key, "module": k.module} for k in space]
    problems = _space_problems(items, published, lines or {})
    if problems:
        from .modules.tune import RecipeError

        raise RecipeError(where, problems)


def _space_problems(
    space: Sequence[Any], published: Sequence[Mapping[str, Any]], lines: Mapping[str, int]
) -> list[str]:
    """What :func:`_check_space` refuses, for the knobs of a space as written (mappings with
    ``key`` and ``module``; the others are the file's own problems)."""
    if not published:
        return []
    by_key = {a["param_key"]: a for a in published}
    problems = []
    for i, item in enumerate(space):
        key = item.get("key") if isinstance(item, Mapping) else None
        if not isinstance(key, str):
            continue
        module = item.get("module") or "opt"
        act = by_key.get(key)
        group = (act or {}).get("group") or "custom"
        if act is not None and group == module and act.get("type") in _NUMBER_TYPES:
            continue
        field = "module" if act is not None and group != module else "key"
        line = lines.get(f"space[{i}].{field}") or lines.get(f"space[{i}]")
        name = f"line {line}: {module}.{key}" if line else f"{module}.{key}"
        if act is None:
            close = _near(key, list(by_key))
            hint = f"; did you mean {close[0]!r}?" if close else ""
            knobs = sorted(k for k, a in by_key.items() if a.get("type") in _NUMBER_TYPES)
            problems.append(f"{name}: the run has no actuator {key!r}{hint} (its knobs: "
                            f"{', '.join(knobs)})")  # fmt: skip
        elif group != module:
            problems.append(f"{name}: {key!r} is in {group}, not {module} (module: {group})")
        else:
            problems.append(f"{name}: a {act.get('type')} actuator; the tuner moves numbers")
    return problems


_NUMBER_TYPES = ("float", "log_float", "int")


def _raw_space(path: str) -> tuple[list[Any], dict[str, int]]:
    """A tuner recipe's ``space`` as written, and the lines of its items (nothing when the
    file does not parse)."""
    from ._checks import parse_document
    from .modules.tune import RecipeError

    try:
        with open(path, encoding="utf-8") as f:
            doc, lines = parse_document(f.read(), path, RecipeError)
    except (OSError, RecipeError):
        return [], {}
    space = doc.get("space") if isinstance(doc, Mapping) else None
    return (space if isinstance(space, list) else []), lines


def _check_rampable(params: Mapping[str, Any], published: Sequence[Mapping[str, Any]]) -> None:
    """A ramp moves a number step by step: refuse one on a bool or choice knob up front, as
    the run would (it said so only in the ledger, after the CLI had exited 0)."""
    types = {a["param_key"]: a.get("type") for a in published}
    for key in params:
        if types.get(key) in ("bool", "choice"):
            raise ActuatorError(
                f"transition needs a numeric actuator; {key!r} is {types[key]} (set it without "
                "--ramp)"
            )


#: What makes two records one command: a retry under the same ``cmd_id`` sends these again
_SAME = ("module", "op", "params", "id", "target", "init", "enabled", "at_step", "transition")


class HotClient:
    """Send commands to a run directory.

    Args:
        run_dir: the run directory.
        source: who sends (recorded in the ledger).
        validate: check ``opt``/``loss``/``custom`` parameters against the actuators the run
            published (``hotcb.actuators.json``) before appending, so a typo fails at once.
            Before the run has published them, commands are appended unchecked (the kernel
            checks them when it applies them; :attr:`last_unchecked` says so).
        create: create the run directory when it does not exist (commands wait there for a
            run to start). ``False`` refuses a directory that does not exist: a typo (the CLI).
        warn_over: log a warning (logger ``hotcb``) when a command is written to a run that is
            over (finished, stopped, crashed): it waits in the commands file for the next run
            started in the directory, which applies it (a pause then holds that run at its
            first step). The CLI and the dashboard say it their own way.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        source: str = "python",
        validate: bool = True,
        create: bool = True,
        warn_over: bool = True,
    ) -> None:
        self.paths = RunPaths(os.fspath(run_dir))
        self.run_dir = self.paths.root
        self.source = source
        self.validate = validate
        self.create = create
        self.warn_over = warn_over
        #: the last command was appended without checking its parameters (nothing published)
        self.last_unchecked = False
        self.last_routed: dict[str, str] = {}  # set(): key -> module, when routed by name only
        self._checked_host = False
        self._published_sig: tuple[int, int, int] | None = None
        self._published_acts: list[dict[str, Any]] = []

    # -- raw -------------------------------------------------------------------------------
    def send(self, module: str, op: str, **fields: Any) -> str:
        """Validate and append one command; return its ``cmd_id``.

        Raises :class:`~hotcb.errors.CommandError` or :class:`~hotcb.errors.ActuatorError`
        for an invalid command (nothing written), and
        :class:`~hotcb.errors.JournalWriteError` (an ``OSError``) when it could not be written
        (disk full): nothing of it is in the file, and no ``cmd_id`` exists."""
        given = fields.get("cmd_id")
        if isinstance(given, str) and given[:1] in ("#", "@"):
            raise CommandError(f"'cmd_id' must not start with {given[0]!r}, got {given!r}: "
                               "'#N' names the ledger's entry N on the command line, and '@…' "
                               "is the id hotcb gives a command sent without one")  # fmt: skip
        return self._append(self._record(module, op, **fields), named=bool(given))[0]

    def _record(self, module: str, op: str, **fields: Any) -> dict[str, Any]:
        """The validated record of a command, checked against the published actuators."""
        fields.setdefault("source", self.source)
        record = make_command(module, op, **fields)
        self.last_unchecked = False
        if self.validate and module in _ACTUATOR_MODULES and op == "set_params":
            published = self._published()
            if published:
                check_actuator_params(module, record["params"], published)
                check_group_moves(record["params"], published, record.get("relative_to"))
                if record.get("transition") is not None:
                    _check_rampable(record["params"], published)
            else:
                self.last_unchecked = True
        if os.path.exists(self.run_dir) and not os.path.isdir(self.run_dir):
            raise CommandError(f"{self.run_dir} is a file, not a run directory: give the run's "
                               "folder")  # fmt: skip
        if not self.create and not os.path.isdir(self.run_dir):
            raise CommandError(
                f"no run directory at {self.run_dir}; 'hotcb --dir {shell_path(self.run_dir)} init' or "
                f"HotClient({self.run_dir!r}, create=True) creates one on purpose (a run "
                "started with HotKernel(run_dir=...) creates its own)"
            )
        if module == "cb" and op == "set_params" and not record.get("params"):
            raise CommandError(
                "cb set_params needs at least one key=value, e.g. "
                f"cb('set_params', {record.get('id')!r}, every=50)"
            )
        folder = folder_of_runs(self.run_dir)
        if folder is not None:  # a command there would wait for a run that never starts
            raise CommandError(folder)
        return record

    def _append(self, *records: dict[str, Any], named: bool = False) -> list[str]:
        """Write ``records``, all in one write (all of them or none: a ``set`` of knobs in
        two modules half written was said to be unwritten, and half of it applied); their
        ``cmd_id``s. ``named``: the ids came from the sender, who may send them again (a
        retry after a crash, not knowing whether the first write landed): the same commands
        again are not written twice, another command under an id is refused (the run would
        skip it as a duplicate while its sender waited on the first one's entry). Checked
        under the commands file's lock, so two senders of one id cannot both write."""
        os.makedirs(self.run_dir, exist_ok=True)
        if not self._checked_host:
            self._checked_host = True
            self._warn_if_remote_writer()
        try:
            wrote = jsonl.append_many(self.paths.commands, records, unless=(
                (lambda: self._all_sent_before(records)) if named else None))  # fmt: skip
        except JournalWriteError as exc:  # nothing was written: no cmd_id to wait on
            what = ", ".join(f"{r['module']} {r['op']}" for r in records)
            raise JournalWriteError(
                f"the command{'s' if len(records) > 1 else ''} ({what}) "
                f"{'were' if len(records) > 1 else 'was'} not written: {exc}",
                errno=exc.errno,
                path=exc.path,
            ) from exc
        if self.warn_over and wrote:  # (a retry of commands sent before: said back then)
            self._say_if_over(records)
        return [str(r["cmd_id"]) for r in records]

    def _all_sent_before(self, records: Sequence[Mapping[str, Any]]) -> bool:
        """Whether every one of ``records`` was sent already (a retry: nothing to write);
        :class:`CommandError` when only some were (their ids are taken: written alone before)
        or when another command has one's id."""
        sent = [self._sent_before(r) for r in records]
        if all(sent) or not any(sent):
            return all(sent)
        taken = [str(r["cmd_id"]) for r, s in zip(records, sent, strict=True) if s]
        raise CommandError(f"cmd_id {', '.join(taken)} {'is' if len(taken) == 1 else 'are'} "
                           "sent already, the rest of this command not: send the rest under "
                           "another cmd_id")  # fmt: skip

    def _say_if_over(self, records: Sequence[Mapping[str, Any]]) -> None:
        over = self.run_over()
        if over is None:
            return
        for record in records:
            held = " (and holds it at its first step)" if record["op"] == "pause" else ""
            log.warning("hotcb: the run %s; %s %s waits in the commands file for the next "
                        "run started in this directory (or the next loop of the same "
                        "process)%s", over, record["module"], record["op"], held)  # fmt: skip

    def _warn_if_remote_writer(self) -> None:
        """Appending from another host to a run on a network filesystem can tear lines:
        say so once (the trainer's host is in ``hotcb.run.json``)."""
        meta = jsonl.read_json(self.paths.run_meta, {}) or {}
        host, fstype = meta.get("host"), meta.get("filesystem")
        if host and host != socket.gethostname() and is_network_fs(fstype):
            warnings.warn(
                f"this run trains on {host} and its directory is on {fstype}: appends from "
                f"{socket.gethostname()} are not serialised with the trainer's host. Send "
                f"commands through 'hotcb serve' on {host} instead (docs/core.md).",
                RuntimeWarning,
                stacklevel=3,
            )

    def send_record(self, record: Mapping[str, Any]) -> str:
        """Append a prepared record (missing cmd_id/ts/source are filled in)."""
        fields = dict(record)
        module, op = fields.pop("module", None), fields.pop("op", None)
        if not isinstance(module, str) or not isinstance(op, str):
            raise CommandError("a command needs 'module' and 'op' strings")
        fields.pop("ts", None)
        return self.send(module, op, **fields)

    # -- actuators -------------------------------------------------------------------------
    def set_params(self, module: str, params: Mapping[str, Any], **fields: Any) -> str:
        return self.send(module, "set_params", params=dict(params), **fields)

    def opt(self, **params: Any) -> str:
        """Set optimizer knobs: ``opt(lr=1e-4, at_step=500)``. ``at_step``, ``transition``,
        ``cmd_id``, ``source`` and ``reason`` are the command's own fields, not knobs."""
        knobs, fields = _knobs_and_fields(params)
        return self.set_params("opt", knobs, **fields)

    def loss(self, **params: Any) -> str:
        """Set loss weights and toggles (the command's fields as in :meth:`opt`)."""
        knobs, fields = _knobs_and_fields(params)
        return self.set_params("loss", knobs, **fields)

    def custom(self, **params: Any) -> str:
        """Set custom knobs (the command's fields as in :meth:`opt`)."""
        knobs, fields = _knobs_and_fields(params)
        return self.set_params("custom", knobs, **fields)

    def _published(self) -> list[dict[str, Any]]:
        """The run's published actuators, re-read only when the file changed."""
        try:
            st = os.stat(self.paths.actuators)
        except (FileNotFoundError, NotADirectoryError):  # none yet; a file given as the run
            return []
        sig = (st.st_ino, st.st_size, st.st_mtime_ns)
        if sig != self._published_sig:
            self._published_sig, self._published_acts = sig, self.actuators()
        return self._published_acts

    def actuators(self) -> list[dict[str, Any]]:
        doc = jsonl.read_json(self.paths.actuators, {}) or {}
        return list(doc.get("actuators") or [])

    def set(self, params: Mapping[str, Any], **fields: Any) -> list[str]:
        """Route each key to opt / loss / custom by the run's actuators; one command per module."""
        published = self.actuators()
        routed = route_keys(list(params), published)
        # routed by name only: say where each key went (a loss weight named like a knob lands
        # in custom, and the run refuses it there)
        self.last_routed = {} if published else {k: m for m, ks in routed.items() for k in ks}
        # every module's command is checked before any is written: all or nothing
        given = fields.pop("cmd_id", None)

        def part(module: str) -> str | None:  # one cmd_id names one command: a part a module
            return (f"{given}.{module}" if len(routed) > 1 else given) if given else None

        records = [
            self._record(
                module,
                "set_params",
                params={k: params[k] for k in keys},
                cmd_id=part(module),
                **fields,
            )
            for module, keys in routed.items()
        ]
        unchecked = self.last_unchecked
        ids = self._append(*records, named=bool(given))
        self.last_unchecked = unchecked
        return ids

    # -- control ---------------------------------------------------------------------------
    def pause(self, at_step: int | None = None) -> str:
        """Pause at the next safe point (or the first with step >= ``at_step``)."""
        return self.send("control", "pause", **_at(at_step))

    def resume(self) -> str:
        return self.send("control", "resume")

    def stop(self, at_step: int | None = None) -> str:
        """Stop at the next safe point (or the first with step >= ``at_step``). On a run that
        is over, :class:`CommandError` and nothing is queued: a stop queued then would stop the
        next run in this directory at its first step (``hotcb stop`` says "nothing to stop")."""
        over = self.run_over()
        if over is not None:
            raise CommandError(f"the run {over}: nothing to stop (a stop queued now would stop "
                               "the next run in this directory at its first step)")  # fmt: skip
        return self.send("control", "stop", **_at(at_step))

    def checkpoint(self, path: str | None = None, at_step: int | None = None) -> str:
        """Save a checkpoint at the next safe point (or the first with step >= ``at_step``)."""
        params = {"path": path} if path else {}
        return self.send("control", "checkpoint", params=params, **_at(at_step))

    def evaluate(self, at_step: int | None = None) -> str:
        """Ask the run to evaluate at its next safe point (the HF Trainer right after that
        step; Lightning after that batch, or at the epoch's end where validation is
        epoch-based; a bare loop sees ``kernel.evaluate_requested``; the ledger says when it
        ran or why it cannot), or at the first with step >= ``at_step``."""
        return self.send("control", "evaluate", **_at(at_step))

    def extend(
        self,
        steps: int | None = None,
        *,
        epochs: int | None = None,
        to_step: int | None = None,
        at_step: int | None = None,
    ) -> str:
        """Change how long the run trains: add ``steps`` optimizer steps (negative: fewer),
        add ``epochs``, or set the horizon ``to_step`` (``max_steps``); exactly one of them.
        A horizon at or below the run's current step ends it there. The ledger entry holds
        the old and the new horizon (``undo`` puts the old one back)."""
        given = {"steps": steps, "epochs": epochs, "to_step": to_step}
        params = {k: v for k, v in given.items() if v is not None}
        return self.send("control", "extend", params=params, at_step=at_step)

    def undo(self, cmd_id: str | None = None) -> str:
        """Undo the run's last change, or the command ``cmd_id`` (:class:`CommandError` for an
        id that names no command of this run: the run would only reject it later)."""
        if cmd_id:
            found = self._require_command(cmd_id)
            if found.get("cmd_id") == cmd_id and (found.get("module"), found.get("op")) == (
                "control",
                "undo",
            ):  # the run's words
                raise CommandError(f"command {cmd_id!r} is an undo: control undo cannot be undone "
                                   "(there is no redo); set the value you want instead")  # fmt: skip
        return self.send("control", "undo", params={"cmd_id": cmd_id} if cmd_id else {})

    def cancel(self, cmd_id: str) -> str:
        """Cancel a command scheduled for a later step (``at_step``)."""
        self._require_command(cmd_id, exact=True)  # (a cut id passed, and the run refused it)
        return self.send("control", "cancel", params={"cmd_id": cmd_id})

    def _known(self, cmd_id: str, *, exact: bool = False) -> dict[str, Any] | None:
        """The first record of this run (in its commands file, then its ledger) with the id
        ``cmd_id`` (not ``exact``: or one that begins with it, as X.opt, the part of a tuner
        command), or None."""
        # as hotcb writes it (non-ASCII escaped) and as a person may (UTF-8)
        quoted = {json.dumps(cmd_id, ensure_ascii=a).encode() for a in (True, False)}
        needles = quoted if exact else {q[:-1] for q in quoted}
        for path in (self.paths.commands, self.paths.ledger):
            try:
                with open(path, "rb") as f:
                    for line in f:
                        if not any(n in line for n in needles):
                            continue
                        record = jsonl.parse_line(line)
                        if record is not None and (
                                not exact or record.get("cmd_id") == cmd_id):  # fmt: skip
                            return record
            except OSError:
                continue
        return None

    def _sent_before(self, record: Mapping[str, Any]) -> bool:
        """Whether the command ``record`` was sent already under its ``cmd_id`` (a retry:
        nothing to write); :class:`CommandError` when another command has that id."""
        cmd_id = str(record["cmd_id"])
        found = self._known(cmd_id, exact=True)
        if found is None:
            return False
        if {k: v for k, v in found.items() if k in _SAME} == {
                k: v for k, v in record.items() if k in _SAME}:  # fmt: skip
            return True
        raise CommandError(f"cmd_id {cmd_id!r} is taken by another command of {self.run_dir} "
                           "(the run would skip this one as a duplicate); leave cmd_id out and "
                           "a fresh one is made")  # fmt: skip

    def _require_command(self, cmd_id: str, *, exact: bool = False) -> dict[str, Any]:
        """Refuse an id that names no command of this run (in its commands file or ledger;
        not ``exact``: or the part of one, X.opt); its first record."""
        found = self._known(str(cmd_id), exact=exact)
        if found is None:
            raise CommandError(
                f"no command {cmd_id!r} in {self.run_dir} (a command's id is what sending it "
                f"returned; 'hotcb --dir {shell_path(self.run_dir)} log --json' shows each entry's cmd_id, "
                "and the CLI takes '#N' for the entry 'hotcb log' shows as #N)"
            )
        return found

    def freeze(
        self,
        mode: str,
        *,
        recipe_path: str | None = None,
        adjust_path: str | None = None,
        step_offset: int | None = None,
        at_step: int | None = None,
    ) -> str:
        """Set the freeze mode (at the first safe point with step >= ``at_step``, when given).
        A recipe or overlay outside the run directory is copied into it first
        (``hotcb.replay/``), with the callback sources it captured: the trainer reads only
        inside its run directory and allowed roots. ``adjust_path`` goes with ``replay_adjusted``
        only (``replay`` plays the recipe as it is: an overlay there was silently ignored)."""
        if adjust_path is not None and mode != "replay_adjusted":
            raise CommandError(
                f"adjust_path only applies to mode 'replay_adjusted', not {mode!r}: use "
                "freeze('replay_adjusted', recipe_path=..., adjust_path=...)"
            )
        if recipe_path is not None:
            from .recipe import import_for_replay

            recipe_path, adjust_path = import_for_replay(self.run_dir, recipe_path, adjust_path)
        return self.send(
            "freeze",
            "set",
            mode=mode,
            recipe_path=recipe_path,
            adjust_path=adjust_path,
            step_offset=step_offset,
            **_at(at_step),
        )

    # -- callbacks -------------------------------------------------------------------------
    def cb_load(
        self,
        id: str,
        *,
        symbol: str,
        file: str | None = None,
        path: str | None = None,
        init: Mapping[str, Any] | None = None,
        enabled: bool = True,
    ) -> str:
        if (file is None) == (path is None):
            raise CommandError(
                "cb load needs exactly one of file= (a .py file) or path= (a module)"
            )
        if file is not None and not os.path.isfile(file):  # the run would say only ENOENT
            raise CommandError(f"no such file: {file} (cb load file= names a .py file)")
        target = (
            {"kind": "python_file", "path": os.path.abspath(file), "symbol": symbol}
            if file is not None
            else {"kind": "python_path", "path": path, "symbol": symbol}
        )
        return self.send("cb", "load", id=id, target=target, init=dict(init or {}), enabled=enabled)

    def cb(self, op: str, id: str, **params: Any) -> str:
        return self.send("cb", op, id=id, params=params)

    # -- the tuner (docs/tune.md) ----------------------------------------------------------
    def tune_enable(self, mode: str | None = None, **settings: Any) -> str:
        """Turn the online tuner on (``mode``: active, suggest or observe; default active), or
        change the settings of one that is on: what is not named stays as it is (its mode
        too). ``settings``: objective, direction, segment_steps, segment_evals, recipe,
        storage, study, seed, risk, threshold, startup_trials, total_steps, abort, restore,
        start, sync. Bad settings raise :class:`~hotcb.modules.tune.RecipeError` listing every
        problem; the run itself refuses it when optuna is missing there. A ``storage`` URL
        with a password in it is sent with a warning on stderr: the command and its ledger
        entry keep it in plain text (docs/tune.md)."""
        from .modules.tune import parse_settings
        from .modules.tune._space import storage_password_note

        params = {"mode": mode, **{k: v for k, v in settings.items() if v is not None}}
        recipe = params.get("recipe")
        # the recipe is checked here, as the run will read it: nothing is sent for a file
        # that is missing or broken
        path = os.path.join(self.run_dir, "hotcb.tune.yaml")
        outside = False  # a file from elsewhere, copied in once it is checked
        if isinstance(recipe, str):
            given_path = os.path.expanduser(recipe)
            path = os.path.join(self.run_dir, given_path)
            if not os.path.isabs(given_path) and os.path.isfile(path):
                pass  # a relative recipe is the run directory's first
            elif os.path.isfile(given_path):
                path, outside = os.path.abspath(given_path), True  # problems name this file
            elif os.path.isabs(given_path):
                raise CommandError(f"no recipe file at {given_path}")
            else:  # both places it was looked for
                raise CommandError(f"no recipe file {recipe}: neither {path} (a relative "
                                   f"--recipe is read from the run directory first) nor "
                                   f"{os.path.abspath(given_path)}")  # fmt: skip
        given = {k: v for k, v in params.items() if k != "recipe"}
        doc, lines = self._read_tune_recipe(path) if os.path.isfile(path) else (None, {})
        settings_ = parse_settings(given, doc)
        if "space" in given:  # knobs named by flag (no lines)
            _check_space(settings_.space, self._published(), where="space")
        elif doc and "space" in doc:  # the recipe's knobs, each problem with its line
            _check_space(settings_.space, self._published(), where=path, lines=lines)
        if outside:
            # the trainer reads files inside its run directory only (DESIGN.md §10): the
            # recipe goes in as hotcb.replay/<sha>.tune.yaml, as freeze's does
            from .recipe import bring_into_run

            params["recipe"] = bring_into_run(self.run_dir, path, "tune.yaml")
        note = storage_password_note(params.get("storage"))
        if note is not None:  # (`hotcb tune enable --storage`, `hotcb launch --tune-storage` too)
            print(f"hotcb: warning: {note}", file=sys.stderr)
        return self.send("tune", "enable", params=params)

    def _read_tune_recipe(self, path: str) -> tuple[dict[str, Any], dict[str, int]]:
        """:func:`~hotcb.modules.tune.read_recipe`; when it refuses the file, the knobs the
        run does not have are listed with the file's other problems (they came only once the
        others were fixed: every problem in one round)."""
        from .modules.tune import RecipeError, read_recipe
        from .modules.tune._space import _line_of

        try:
            return read_recipe(path)
        except RecipeError as exc:
            raw, lines = _raw_space(path)
            more = _space_problems(raw, self._published(), lines)
            if not more:
                raise
            raise RecipeError(path, sorted([*exc.problems, *more], key=_line_of)) from None

    def tune_disable(self) -> str:
        """Turn the tuner off. What it kept stays; a trial still open is told FAIL and its
        change is taken back (a knob a command set since the trial began keeps that value)."""
        return self.send("tune", "disable")

    def tune_accept(self, proposal: str | int) -> str:
        """Apply a proposal of a tuner in suggest mode (``tune_status()["proposals"]``).
        Raises :class:`~hotcb.errors.CommandError` for an id the tuner never proposed, one
        that is no longer pending, or when the run is over."""
        proposal = self.pending_proposal(proposal)  # "p3" is P3
        return self.send("tune", "accept", params={"id": proposal})

    def tune_reject(self, proposal: str | int) -> str:
        """Turn a proposal down: the run is not touched; Optuna hears the trial failed."""
        proposal = self.pending_proposal(proposal)
        return self.send("tune", "reject", params={"id": proposal})

    def pending_proposal(self, proposal: str | int) -> str:
        """The id of a proposal that can still be decided: pending, in a run still going (a
        queued decision would otherwise wait for a later run, whose tuner proposes afresh)."""
        found = self.tune_proposal(proposal)
        if found.get("state") != "pending":
            raise CommandError(
                f"proposal {found.get('id')} is {found.get('state')}, not pending "
                "(see 'tune proposals')"
            )
        over = self.run_over()
        if over is not None:
            raise CommandError(
                f"the run {over}: proposal {found.get('id')} ended with it (a run started "
                "again in this directory proposes afresh)"
            )
        return str(found["id"])

    def run_over(self) -> str | None:
        """``finished at step N`` / ``stopped at step N`` / ``crashed (…)`` / ``interrupted
        by SIGINT (…)`` when the run's training process is gone (``hotcb.run.json``), ``copied
        or moved here …`` in a copy of a live run's directory; None while it runs or before it
        starts."""
        meta = jsonl.read_json(self.paths.run_meta, {}) or {}
        if not isinstance(meta, dict):
            return None
        return _run_over(meta, time.time(), root=self.paths.root)

    def tune_proposal(self, proposal: str | int) -> dict[str, Any]:
        """The tuner's proposal ``proposal`` (``"P3"``, ``"p3"`` or ``3``: ``id``, ``state``,
        ``changes``, … from ``hotcb.tune.json``); a CommandError that lists the pending ones
        when there is none."""
        if isinstance(proposal, int) and not isinstance(proposal, bool):
            proposal = f"P{proposal}"
        if not isinstance(proposal, str):
            raise CommandError(f"a proposal id looks like P3, got {proposal!r}")
        st = self.tune_status()
        rows = st.get("proposals") or []
        for row in rows:
            if isinstance(row, dict) and str(row.get("id")).upper() == proposal.upper():
                return row
        pending = [str(p.get("id")) for p in rows if p.get("state") == "pending"]
        mode = st.get("mode") or "off"
        over = self.run_over() if pending else None
        if over is not None:  # (what it left pending ended with it)
            pending, why = [], f"; the run {over}"
        elif pending:
            why = ""
        elif mode != "suggest":
            why = (f"; the tuner is {mode}: proposals come in suggest mode ('tune enable --mode "
                   "suggest')")  # fmt: skip
        else:  # on, and nothing proposed yet: baseline segments come first
            nxt = st.get("next_boundary")
            when = f" (the next boundary is at step {nxt})" if isinstance(nxt, int) else ""
            why = (f"; the tuner proposes at a segment boundary, after its baseline "
                   f"segments{when}: 'tune proposals' lists them")  # fmt: skip
        shape = "" if re.fullmatch(r"[Pp]\d+", proposal) else " (ids look like P3)"
        raise CommandError(
            f"no proposal {proposal!r}{shape}; pending: {', '.join(pending) or 'none'}{why}"
        )

    def tune_status(self) -> dict[str, Any]:
        """The tuner's state (``hotcb.tune.json``): mode, phase, trials, proposals, counts."""
        state = jsonl.read_json(self.paths.tune, None)
        if isinstance(state, dict):
            return state
        if os.path.exists(self.paths.tune):  # damaged from outside: the run writes it whole
            return {"mode": "off", "unreadable": f"{self.paths.tune} is not a JSON object the "
                    "tuner wrote (damaged?); what the tuner did is in the ledger ('hotcb log'), "
                    "and the run writes the file again at its next change"}  # fmt: skip
        return {"mode": "off"}

    def wait_tune_open(self, cmd_id: str, timeout: float = 30.0) -> dict[str, Any]:
        """After the ``tune enable`` command ``cmd_id`` applied: the tuner's state once its study
        is open (``study_open``), or the ``failed`` ledger entry that says why the run could not
        open it (a storage URL it cannot use, a database it cannot reach). The run opens the
        study off its training thread, in a second or two, while it trains; a paused run opens
        it when it trains again: then the state, with ``study_open`` false, at once."""
        paused = same = False

        def failed(entry: dict[str, Any]) -> dict[str, Any] | None:
            nonlocal paused, same
            if entry.get("cmd_id") == cmd_id:
                if entry.get("decision") == "failed":
                    return entry
                same = same or entry.get("decision") == "noop"  # the tuner as it was: its study
            if entry.get("module") == "control" and entry.get("decision") == "applied":
                paused = {"pause": True, "resume": False}.get(str(entry.get("op")), paused)
            return None

        def opened() -> dict[str, Any] | None:
            state = self.tune_status()
            ours = same or state.get("enable_cmd") == cmd_id
            return state if ours and (state.get("study_open") or paused) else None

        return self._watch_ledger(
            failed, timeout, 0.05,
            f"the tuner's study is not open {timeout:g}s after {cmd_id} (a run that is paused "
            "opens it when it trains again); 'hotcb tune status' says when it is",
            between=opened,
        )  # fmt: skip

    def tune_export(self, out: str | os.PathLike[str] | None = None) -> str:
        """Write the kept changes as a recipe for ``freeze(mode="replay")``; its path."""
        from .modules.tune._export import export_kept

        return export_kept(self.run_dir, out)[0]

    # -- reading back ----------------------------------------------------------------------
    def entries(self, cmd_id: str) -> list[dict[str, Any]]:
        return [e for e in iter_entries(self.paths.ledger) if e.get("cmd_id") == cmd_id]

    @overload
    def wait(
        self,
        cmd_id: str,
        timeout: float = ...,
        *,
        final: bool = ...,
        interval: float = ...,
        until_over: bool = ...,
    ) -> dict[str, Any]: ...

    @overload
    def wait(
        self,
        cmd_id: list[str] | tuple[str, ...],
        timeout: float = ...,
        *,
        final: bool = ...,
        interval: float = ...,
        until_over: bool = ...,
    ) -> list[dict[str, Any]]: ...

    def wait(
        self,
        cmd_id: str | list[str] | tuple[str, ...],
        timeout: float = 30.0,
        *,
        final: bool = True,
        interval: float = 0.02,
        until_over: bool = False,
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """The ledger entry for ``cmd_id`` once the kernel handled it; for a list of ids (what
        :meth:`set` returns), their entries, in order.

        With ``final`` a ``scheduled`` entry is not enough: wait for the entry that applied,
        rejected or cancelled it. Raises ``TimeoutError`` after ``timeout`` seconds (saying
        so when the run is over: nothing will handle the command until it runs again, and
        when no command of the run has that id). ``until_over``: raise it as soon as the run's
        training process ends (crashed, stopped, finished) without handling the command,
        instead of waiting out ``timeout`` (``hotcb … --wait`` does: a run that crashed while
        it waited is over; a run started again later would take it).
        """
        if not isinstance(cmd_id, str) or not cmd_id:
            given: list[Any] = list(cmd_id) if isinstance(cmd_id, (list, tuple)) else [None]
            ids = [i for i in given if isinstance(i, str) and i]
            if len(ids) != len(given):
                raise TypeError(f"wait() takes a cmd_id or a list of them, got {cmd_id!r}")
            deadline = time.monotonic() + timeout
            return [self.wait(i, max(0.0, deadline - time.monotonic()), final=final,
                              interval=interval, until_over=until_over) for i in ids]  # fmt: skip

        scheduled: list[dict[str, Any]] = []

        def handled(entry: dict[str, Any]) -> dict[str, Any] | None:
            if entry.get("cmd_id") != cmd_id:
                return None
            if final and entry.get("decision") == "scheduled":
                scheduled.append(entry)
                return None
            return entry

        def late() -> str:
            if scheduled:  # it said "no ledger entry …: is the run alive?"
                at, then = scheduled[-1].get("at_step"), scheduled[-1].get("step")
                over = self.run_over()
                if over is not None:  # it said "'hotcb log' shows it when it lands"
                    return (f"{cmd_id} is scheduled for step {at} (since step {then}), and the "
                            f"run {over} before it (a resume from a checkpoint still applies "
                            f"it at that step); 'hotcb --dir "
                            f"{shell_path(self.run_dir)} cancel {cmd_id}' cancels it")  # fmt: skip
                return (f"{cmd_id} is scheduled for step {at} (since step {then}): not applied "
                        f"after {timeout:.3g}s; 'hotcb --dir {shell_path(self.run_dir)} log' shows "
                        f"it when it lands, 'hotcb --dir {shell_path(self.run_dir)} cancel "
                        f"{cmd_id}' cancels it")  # fmt: skip
            if not cmd_id.startswith("@") and self._known(cmd_id, exact=True) is None:
                return (f"no command with id {cmd_id!r} was sent to {self.run_dir} (it is in "
                        "neither its commands file nor its ledger): a command's id is what "
                        f"sending it returned; 'hotcb --dir {shell_path(self.run_dir)} log --json' shows "
                        "each entry's cmd_id")  # fmt: skip
            over = self.run_over()
            if over is not None:
                return (f"no ledger entry for {cmd_id}: the run {over}; the command waits in "
                        "the commands file for the next run in this directory")  # fmt: skip
            if not os.path.exists(self.paths.run_meta):
                return (f"no ledger entry for {cmd_id} after {timeout:.3g}s: the run has not "
                        "started (no trainer has opened this directory); the command waits in "
                        "the commands file for it")  # fmt: skip
            return f"no ledger entry for {cmd_id} after {timeout:.3g}s: is the run alive?"

        return self._watch_ledger(
            handled, timeout, interval, late, over=self._over_check() if until_over else None,
            mark=_id_mark(cmd_id),
        )  # fmt: skip

    def _over_check(self) -> Callable[[], bool]:
        """Whether the run is over (:meth:`run_over`), asked at most every 0.2 s."""
        next_ask = 0.0

        def over() -> bool:
            nonlocal next_ask
            now = time.monotonic()
            if now < next_ask:
                return False
            next_ask = now + 0.2
            return self.run_over() is not None

        return over

    def wait_ramp(
        self, cmd_id: str, timeout: float = 30.0, *, until_over: bool = False
    ) -> dict[str, Any]:
        """The entry that ends the ramp ``cmd_id`` started: ``ramp: complete`` (the target is
        reached), ``superseded`` (another command took over, or the loop ended) or a ``failed``
        one. ``until_over``: raise ``TimeoutError`` as soon as the run's training process is
        gone without that entry (killed mid-ramp), instead of waiting out ``timeout``."""

        def ended(entry: dict[str, Any]) -> dict[str, Any] | None:
            over = entry.get("ramp") or entry.get("decision") == "failed"
            return entry if entry.get("cmd_id") == cmd_id and over else None

        def late() -> str:
            over = self.run_over()
            if over is not None:
                return f"the run {over} before the ramp of {cmd_id} ended (see 'hotcb log')"
            return (f"the ramp of {cmd_id} has not ended after {timeout:.3g}s; it goes on in the "
                    "run (see 'hotcb log')")  # fmt: skip

        return self._watch_ledger(
            ended, timeout, 0.02, late, over=self._over_check() if until_over else None,
            mark=_id_mark(cmd_id),
        )  # fmt: skip

    def _watch_ledger(
        self,
        pick: Callable[[dict[str, Any]], dict[str, Any] | None],
        timeout: float,
        interval: float,
        error: str | Callable[[], str],
        *,
        between: Callable[[], dict[str, Any] | None] | None = None,
        over: Callable[[], bool] | None = None,
        mark: bytes | None = None,
    ) -> dict[str, Any]:
        """Read the ledger's entries as they come until ``pick(entry)`` returns something, or
        ``between()`` does (asked after each read); ``TimeoutError(error)`` after ``timeout``
        seconds, or as soon as ``over()`` says the run ended (asked before a read, so an
        entry written before the end is still read). ``mark``: bytes every line ``pick`` may
        pick holds (:func:`_id_mark`); the others are not parsed."""
        deadline = time.monotonic() + timeout
        tail = jsonl.JsonlTail(self.paths.ledger)
        try:
            while True:
                ended = over is not None and over()
                for _, line in tail.read_lines():
                    if mark is not None and mark not in line:
                        continue  # not the entry waited on: a long ledger is not parsed whole
                    entry = jsonl.parse_line(line)
                    got = pick(entry) if entry is not None else None
                    if got is not None:
                        return got
                got = between() if between is not None else None
                if got is not None:
                    return got
                if ended or time.monotonic() > deadline:
                    raise TimeoutError(error if isinstance(error, str) else error())
                time.sleep(interval)
        finally:
            tail.close()


_COMMAND_FIELDS = ("at_step", "transition", "cmd_id", "source", "reason")


def _id_mark(cmd_id: str) -> bytes:
    """What every ledger line naming ``cmd_id`` holds: the id as the ledger's JSON writes it."""
    return jsonl.dumps(cmd_id).encode()


def _knobs_and_fields(given: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``opt(lr=..., at_step=...)``'s keywords into knobs and the command's fields."""
    knobs = {k: v for k, v in given.items() if k not in _COMMAND_FIELDS}
    fields = {k: v for k, v in given.items() if k in _COMMAND_FIELDS}
    return knobs, fields


def _at(at_step: int | None) -> dict[str, Any]:
    """The ``at_step`` field of a control command, when one is given."""
    return {} if at_step is None else {"at_step": at_step}

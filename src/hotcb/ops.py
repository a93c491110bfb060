"""Commands and ops: the record a writer appends, and its validated, typed form ``HotOp``.

``command_to_hotop(record)`` is the single validation point: the client calls it before
appending (so the CLI fails fast) and the kernel calls it on every line it reads (so a record
written by hand is held to the same rules). Errors say what was expected and what arrived.
"""

from __future__ import annotations

import json
import math
import os
import time
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from .errors import CommandError
from .modules import module_ops
from .runfiles import FORMAT_VERSION

__all__ = [
    "EXTEND_KEYS",
    "FREEZE_MODES",
    "MAX_COMMAND_BYTES",
    "MAX_COMMAND_DEPTH",
    "MODULE_OPS",
    "CallbackTarget",
    "HotOp",
    "Transition",
    "check_size",
    "command_to_hotop",
    "known_ops",
    "make_command",
    "new_cmd_id",
]

#: Ops of the kernel's built-in handlers. Modules (``cb``, ``tune``, …) add theirs through
#: the registry (:func:`hotcb.modules.register_module`), the one list of module op names.
MODULE_OPS: dict[str, frozenset[str]] = {
    "opt": frozenset({"set_params"}),
    "loss": frozenset({"set_params"}),
    "custom": frozenset({"set_params"}),
    "control": frozenset(
        {"pause", "resume", "stop", "checkpoint", "undo", "cancel", "evaluate", "extend"}
    ),
    "freeze": frozenset({"set"}),
}


def known_ops() -> dict[str, frozenset[str]]:
    """Every valid ``{module: ops}``: the built-in ones and the registered modules'."""
    return {**MODULE_OPS, **module_ops()}


#: Modules whose ``set_params`` go to the actuators (the default stream).
ACTUATOR_MODULES = frozenset({"opt", "loss", "custom"})

FREEZE_MODES = ("off", "prod", "replay", "replay_adjusted")
TARGET_KINDS = ("python_path", "python_file")
TRANSITION_SHAPES = ("linear", "cosine")
#: The largest step a command may be scheduled for (``at_step``): torch's int64.
MAX_STEP = 2**63 - 1

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_cmd_id() -> str:
    """A sortable unique id: 48 bits of milliseconds then 80 random bits, Crockford base32."""
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


@dataclass(frozen=True, slots=True)
class CallbackTarget:
    """Where a callback's code lives: an importable module or a file."""

    kind: str  # "python_path" | "python_file"
    path: str
    symbol: str

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "path": self.path, "symbol": self.symbol}


@dataclass(frozen=True, slots=True)
class Transition:
    """Ramp a numeric actuator to its new value over ``steps`` steps instead of jumping."""

    steps: int
    shape: str = "linear"

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "shape": self.shape}


@dataclass(slots=True)
class HotOp:
    """One validated command, ready to route."""

    module: str
    op: str
    cmd_id: str
    params: dict[str, Any] = field(default_factory=dict)
    source: str = "unknown"
    ts: float | None = None
    id: str | None = None
    target: CallbackTarget | None = None
    init: dict[str, Any] | None = None
    enabled: bool | None = None
    at_step: int | None = None
    transition: Transition | None = None
    #: Fields kept for upstream compatibility and for modules (mode, recipe_path, …).
    extra: dict[str, Any] = field(default_factory=dict)
    #: Byte offset in the commands file just after this command (0 when not read from it).
    cursor: int = 0

    def to_record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "cmd_id": self.cmd_id,
            "ts": self.ts,
            "source": self.source,
            "module": self.module,
            "op": self.op,
            "params": self.params,
            "id": self.id,
            "target": self.target.to_dict() if self.target else None,
            "init": self.init,
            "enabled": self.enabled,
            "at_step": self.at_step,
            "transition": self.transition.to_dict() if self.transition else None,
        }
        rec.update(self.extra)
        return rec


_KNOWN_FIELDS = frozenset(
    {
        "cmd_id",
        "ts",
        "source",
        "module",
        "op",
        "params",
        "id",
        "target",
        "init",
        "enabled",
        "at_step",
        "transition",
        "v",
    }
)
#: Fields kept for upstream compatibility (freeze requests, captured callback sources) and the
#: markers the kernel and the recipe player add to the ops they generate themselves.
COMPAT_FIELDS = frozenset(
    {
        "mode",
        "recipe_path",
        "adjust_path",
        "step_offset",
        "source_capture",
        "recipe_line",
        "adjusted",
        "reason",  # why a controller sent it (the autopilot's rule and evidence), ledgered as is
        "relative_to",  # {key: the value a multiplier was computed from}: see _check_relative
    }
)
#: The longest command line accepted (bytes of JSON). A command is a few hundred bytes; the cap
#: keeps a runaway or hostile writer from copying megabytes into the ledger.
MAX_COMMAND_BYTES = 64 * 1024
#: How deep lists and objects may nest in a command's fields (``params`` itself is level 1).
#: A real command nests a few levels; 2 KB of brackets nest a thousand, past what Python's
#: JSON encoder (and every recursive walk) can take, which cost the ledger a whole batch.
MAX_COMMAND_DEPTH = 64


def _check_finite(value: Any, where: str, depth: int = 1) -> None:
    """No NaN or inf anywhere in ``value``, and no nesting deeper than
    :data:`MAX_COMMAND_DEPTH` (checked level by level, so no walk goes deeper than that)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise CommandError(f"{where} is {value!r}; send a finite number")
    if isinstance(value, (dict, list)) and depth > MAX_COMMAND_DEPTH:
        field = where.split("[", 1)[0].split(".", 2)
        raise CommandError(
            f"{'.'.join(field[:2])[:80]} nests lists and objects more than {MAX_COMMAND_DEPTH} "
            f"levels deep; a command may nest at most {MAX_COMMAND_DEPTH}: send large data as a "
            "file inside the run directory and name its path"
        )
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, f"{where}.{k}", depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_finite(v, f"{where}[{i}]", depth + 1)


def valid_text(value: Any) -> bool:
    """No lone UTF-16 surrogate in any string of ``value`` (``"\\ud800"`` is valid JSON):
    stored in the ledger, it broke every reader that writes UTF-8 (``hotcb log``, the
    dashboard's ledger and markers) for good."""
    try:
        json.dumps(value, ensure_ascii=False, default=str).encode("utf-8")
    except UnicodeEncodeError:
        return False
    except (TypeError, ValueError, RecursionError):  # the other checks say what is wrong
        pass
    return True


def _opt_dict(record: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = record.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise CommandError(f"'{key}' must be an object, got {type(value).__name__} {value!r}")
    _check_finite(value, key)
    return value


def _target(value: Any) -> CallbackTarget | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise CommandError(f"'target' must be an object {{kind, path, symbol}}, got {value!r}")
    kind, path, symbol = value.get("kind"), value.get("path"), value.get("symbol")
    if kind not in TARGET_KINDS:
        raise CommandError(f"target.kind must be one of {', '.join(TARGET_KINDS)}, got {kind!r}")
    if not isinstance(path, str) or not path:
        raise CommandError(f"target.path must be a non-empty string, got {path!r}")
    if not isinstance(symbol, str) or not symbol.isidentifier() or symbol.startswith("__"):
        raise CommandError(
            f"target.symbol must be one attribute name of the module or file (a class or a "
            f"factory, e.g. 'MyCallback'), got {symbol!r}; dotted paths are not followed"
        )
    return CallbackTarget(kind, path, symbol)


def _transition(value: Any) -> Transition | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise CommandError(f"'transition' must be an object {{steps, shape}}, got {value!r}")
    steps = value.get("steps")
    shape = value.get("shape", "linear")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise CommandError(f"transition.steps must be an integer >= 1, got {steps!r}")
    if steps > MAX_STEP:  # as at_step: a ramp no run finishes, its end step beyond int64
        raise CommandError(f"transition.steps must be at most {MAX_STEP} (2**63 - 1), got {steps}")
    if shape not in TRANSITION_SHAPES:
        raise CommandError(
            f"transition.shape must be one of {', '.join(TRANSITION_SHAPES)}, got {shape!r}"
        )
    return Transition(steps, shape)


def _validate_module_op(module: str, op: str) -> None:
    ops = MODULE_OPS.get(module) or module_ops().get(module)
    if ops is not None and op in ops:
        return
    table = known_ops()
    if module not in table:
        raise CommandError(f"unknown module {module!r}; expected one of {', '.join(sorted(table))}")
    if op not in table[module]:
        raise CommandError(
            f"unknown op {op!r} for module {module!r}; expected one of "
            f"{', '.join(sorted(table[module]))}"
        )


def _validate_semantics(op: HotOp) -> None:
    m, o = op.module, op.op
    _check_actuator_fields(op)
    if m == "cb":
        if not op.id:
            raise CommandError(f"cb {o} needs 'id', the callback's name")
        if o == "load" and op.target is None:
            raise CommandError("cb load needs 'target': {kind, path, symbol}")
    if m == "freeze":
        mode = op.extra.get("mode", op.params.get("mode"))
        if mode not in FREEZE_MODES:
            raise CommandError(
                f"freeze mode must be one of {', '.join(FREEZE_MODES)}, got {mode!r}"
            )
    if m == "control" and o in ("undo", "cancel"):
        target = op.params.get("cmd_id")
        if o == "cancel" and not isinstance(target, str):
            raise CommandError(
                "control cancel needs params.cmd_id, the scheduled command to cancel"
            )
        if target is not None and not isinstance(target, str):
            raise CommandError(f"params.cmd_id must be a string, got {target!r}")
    if m == "control" and o == "extend":
        _check_extend(op.params)


def _check_actuator_fields(op: HotOp) -> None:
    """An actuator command has params; ``transition`` and ``relative_to`` belong to one."""
    m, o = op.module, op.op
    if m in ACTUATOR_MODULES and not op.params:
        raise CommandError(
            f"{m} set_params needs at least one parameter, e.g. params={{'lr': 1e-4}}"
        )
    if op.transition is not None and m not in ACTUATOR_MODULES:
        raise CommandError(f"'transition' applies to opt/loss/custom set_params, not {m} {o}")
    if op.extra.get("relative_to") is not None:
        _check_relative(op)


def _check_relative(op: HotOp) -> None:
    """``relative_to: {key: basis}`` marks a set as a multiplier the sender computed from the
    value it last saw (``value = basis × factor``): the kernel applies the same factor to the
    value in force when the command lands, which something else (a tuner's roll-back, a
    person) may have changed in between."""
    rel = op.extra["relative_to"]
    if op.module not in ACTUATOR_MODULES:
        raise CommandError(f"'relative_to' applies to opt/loss/custom set_params, not {op.module}")
    if not isinstance(rel, dict) or not rel:
        raise CommandError(f"'relative_to' must be an object {{key: value}}, got {rel!r}")
    for key, basis in rel.items():
        if key not in op.params:
            raise CommandError(f"relative_to.{key}: not one of the command's params")
        for name, v in ((f"relative_to.{key}", basis), (f"params.{key}", op.params[key])):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v == 0:
                raise CommandError(f"{name} must be a non-zero number, got {v!r}")


#: ``control extend`` takes exactly one of these: add steps, add epochs, or set the last step.
EXTEND_KEYS = ("steps", "epochs", "to_step")


def _check_extend(params: dict[str, Any]) -> None:
    """``control extend`` params: exactly one of ``steps`` / ``epochs`` (a non-zero integer,
    negative shortens) or ``to_step`` (an integer >= 0: the new ``max_steps``)."""
    given = [k for k in EXTEND_KEYS if k in params]
    unknown = sorted(set(params) - set(EXTEND_KEYS))
    if unknown or len(given) != 1:
        raise CommandError(
            "control extend needs exactly one of params.steps (add N steps), params.epochs "
            f"(add N epochs) or params.to_step (the new max_steps), got {sorted(params)}"
        )
    key = given[0]
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise CommandError(f"params.{key} must be an integer, got {value!r}")
    if key == "to_step" and value < 0:
        raise CommandError(f"params.to_step must be >= 0, got {value}")
    if key != "to_step" and value == 0:
        raise CommandError(f"params.{key} must not be 0 (negative shortens the run)")
    if abs(value) > MAX_STEP:  # as at_step: a horizon no run reaches, beyond torch's int64
        raise CommandError(f"params.{key} must be at most {MAX_STEP} (2**63 - 1) in size, "
                           f"got {value}")  # fmt: skip


def _check_reason(reason: Any) -> None:
    if reason is not None and (not isinstance(reason, str) or len(reason) > 2000):
        raise CommandError("'reason' must be a string of at most 2000 characters")


def _cmd_id(cmd_id: Any, fallback_id: Any) -> str:
    if cmd_id is None:
        cmd_id = fallback_id
    if not isinstance(cmd_id, str) or not cmd_id:
        raise CommandError(f"'cmd_id' must be a non-empty string, got {cmd_id!r}")
    # a newline in an id broke `hotcb log`'s lines; an invisible one cannot be typed back
    if not cmd_id.strip() or any(unicodedata.category(c)[0] in "CZ" and c != " " for c in cmd_id):
        raise CommandError(f"'cmd_id' must be printable (no newline, control, format or "
                           f"other invisible character), got {cmd_id!r}")  # fmt: skip
    return cmd_id


def command_to_hotop(
    record: Any,
    *,
    cursor: int = 0,
    fallback_id: str | None = None,
) -> HotOp:
    """Validate a command record and return its ``HotOp``; raise :class:`CommandError` saying
    what is wrong and how to fix it."""
    if not isinstance(record, dict):
        raise CommandError(f"a command must be a JSON object, got {type(record).__name__}")
    if not valid_text(record):
        raise CommandError("a command's text must be valid Unicode: it holds a lone surrogate "
                           "(an unpaired \\ud800-\\udfff escape); send the character itself")  # fmt: skip
    module, op_name = record.get("module"), record.get("op")
    if not isinstance(module, str):
        raise CommandError(f"'module' must be a string, got {module!r}")
    if not isinstance(op_name, str):
        raise CommandError(f"'op' must be a string, got {op_name!r}")
    _validate_module_op(module, op_name)

    cmd_id = _cmd_id(record.get("cmd_id"), fallback_id)
    params = _opt_dict(record, "params") or {}
    init = _opt_dict(record, "init")
    ident = record.get("id")
    if ident is not None and not isinstance(ident, str):
        raise CommandError(f"'id' must be a string, got {ident!r}")
    enabled = record.get("enabled")
    if enabled is not None and not isinstance(enabled, bool):
        raise CommandError(f"'enabled' must be true or false, got {enabled!r}")
    at_step = record.get("at_step")
    if at_step is not None and (
        isinstance(at_step, bool) or not isinstance(at_step, int) or at_step < 0
    ):
        raise CommandError(f"'at_step' must be an integer >= 0, got {at_step!r}")
    if at_step is not None and at_step > MAX_STEP:  # a step no run reaches; torch's int64 neither
        raise CommandError(f"'at_step' must be at most {MAX_STEP} (2**63 - 1), got {at_step}")
    ts = record.get("ts")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, (int, float))):
        raise CommandError(f"'ts' must be a number, got {ts!r}")
    source = record.get("source") or "unknown"
    if not isinstance(source, str):
        raise CommandError(f"'source' must be a string, got {source!r}")
    extra = {k: v for k, v in record.items() if k not in _KNOWN_FIELDS}
    unknown = sorted(k for k in extra if k not in COMPAT_FIELDS)
    if unknown:
        shown = ", ".join(repr(k[:40]) for k in unknown[:5])
        raise CommandError(
            f"unknown command field(s) {shown}; a command has "
            f"{', '.join(sorted(_KNOWN_FIELDS | COMPAT_FIELDS))}"
        )
    _check_finite(extra, "command", depth=0)  # (its fields are level 1, as params is)
    _check_reason(extra.get("reason"))

    hot = HotOp(
        module=module,
        op=op_name,
        cmd_id=cmd_id,
        params=params,
        source=source,
        ts=float(ts) if ts is not None else None,
        id=ident,
        target=_target(record.get("target")),
        init=init,
        enabled=enabled,
        at_step=at_step,
        transition=_transition(record.get("transition")),
        extra=extra,
        cursor=cursor,
    )
    _validate_semantics(hot)
    return hot


def make_command(module: str, op: str, *, source: str = "python", **fields: Any) -> dict[str, Any]:
    """A complete, validated command record with a fresh ``cmd_id`` and timestamp."""
    record: dict[str, Any] = {
        "v": FORMAT_VERSION,  # so a reader can tell the record format apart from later ones
        "cmd_id": fields.pop("cmd_id", None) or new_cmd_id(),
        "ts": time.time(),
        "source": source,
        "module": module,
        "op": op,
        "params": fields.pop("params", None) or {},
        "id": fields.pop("id", None),
        "target": fields.pop("target", None),
        "init": fields.pop("init", None),
        "enabled": fields.pop("enabled", None),
        "at_step": fields.pop("at_step", None),
        "transition": fields.pop("transition", None),
    }
    record.update({k: v for k, v in fields.items() if v is not None})
    command_to_hotop(record)  # raises CommandError with the reason
    check_size(record)
    return record


def check_size(record: dict[str, Any]) -> None:
    """Raise :class:`CommandError` when ``record`` is longer than :data:`MAX_COMMAND_BYTES`
    as one JSON line (the kernel refuses longer lines unread)."""
    from .jsonl import dumps

    size = len(dumps(record).encode())
    if size > MAX_COMMAND_BYTES:
        raise CommandError(
            f"the command is {size} bytes as JSON, more than the {MAX_COMMAND_BYTES} accepted; "
            "send large data as a file inside the run directory and name its path"
        )

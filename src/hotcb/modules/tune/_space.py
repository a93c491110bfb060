"""The tuner's search space and settings: defaults, the recipe file, and their validation.

A recipe (``hotcb.tune.yaml`` in the run directory, or ``--recipe FILE``) overrides the
default space and settings. A broken file is refused with every problem and its line.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..._checks import Checker, CheckError, parse_document
from ...errors import RecipeError as _RecipeError
from ...metrics._collector import guess_direction
from ...runfiles import redact_url, url_secrets

__all__ = [
    "DEFAULT_SPACE",
    "MODES",
    "Knob",
    "RecipeError",
    "Settings",
    "bracket_knob",
    "load_recipe",
    "parse_settings",
    "read_recipe",
    "storage_password_note",
]

MODES = ("observe", "suggest", "active")
DIRECTIONS = ("minimize", "maximize")
RISKS = ("low", "medium", "high")
#: How a tuner begins: two baseline segments, or a bracket of the lr from the same weights.
STARTS = ("baseline", "bracket")
KNOB_MODES = ("mult", "set", "delta")
KNOB_MODULES = ("opt", "loss", "custom")


@dataclass(frozen=True)
class Knob:
    """One actuator the tuner may change, and how.

    ``mode``: ``mult`` multiplies the current value by a sampled factor in [low, high];
    ``set`` sets a sampled value in [low, high]; ``delta`` adds one. ``min``/``max`` bound the
    resulting value; ``prior`` is tried first; ``cooldown`` is the number of segments to leave
    the knob alone after a kept change of it.
    """

    key: str
    module: str = "opt"
    mode: str = "mult"
    low: float = 0.5
    high: float = 2.0
    log: bool = True
    prior: float | None = None
    min: float | None = None
    max: float | None = None
    cooldown: int = 0

    @property
    def name(self) -> str:
        """The knob's name (``opt.lr``)."""
        return f"{self.module}.{self.key}"

    @property
    def param(self) -> str:
        """The Optuna parameter name: ``opt.lr`` for a log-scale multiplier (the defaults),
        else with its mode and scale (``opt.lr (set, linear)``). One name for two kinds of
        draw made a study refuse every trial after a recipe changed a knob's scale ("Cannot
        set different log configuration to the same parameter name"), or, on the same
        scale, mixed multipliers with values in what the sampler learns from."""
        if self.mode == "mult" and self.log:
            return self.name
        return f"{self.name} ({self.mode}, {'log' if self.log else 'linear'})"

    def scaled(self, risk: str) -> Knob:
        """The knob's range for a risk level: ``low`` halves it (in log space for a log knob),
        ``high`` lifts the cooldown."""
        if risk == "high":
            return replace(self, cooldown=0)
        if risk != "low":
            return self
        if self.mode == "mult" or (self.log and self.low > 0):
            centre = 1.0 if self.mode == "mult" else math.sqrt(self.low * self.high)
            lo = centre * (self.low / centre) ** 0.5
            hi = centre * (self.high / centre) ** 0.5
            return replace(self, low=lo, high=hi)
        mid = 0.0 if self.mode == "delta" else (self.low + self.high) / 2
        return replace(self, low=mid + (self.low - mid) / 2, high=mid + (self.high - mid) / 2)

    def target(
        self,
        current: float,
        sampled: float,
        bounds: tuple[float | None, float | None] = (None, None),
    ) -> float:
        """The new value for a sampled number, clamped to ``min``/``max`` and to ``bounds``
        (the actuator's own)."""
        if self.mode == "mult":
            value = current * sampled
        elif self.mode == "delta":
            value = current + sampled
        else:
            value = sampled
        for low in (self.min, bounds[0]):
            if low is not None:
                value = max(value, low)
        for high in (self.max, bounds[1]):
            if high is not None:
                value = min(value, high)
        return value

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


#: With no recipe: lr as a log-uniform multiplier in [0.25, 4], weight decay in [0.5, 2].
DEFAULT_SPACE = (
    Knob("lr", "opt", "mult", 0.25, 4.0, True, min=1e-8, max=10.0),
    Knob("weight_decay", "opt", "mult", 0.5, 2.0, True, min=0.0, max=1.0),
)


@dataclass(frozen=True)
class Settings:
    """What ``tune enable`` asked for, merged over the recipe and the defaults."""

    mode: str = "active"
    objective: str = "val_loss"
    direction: str = "minimize"
    segment_steps: int = 200
    segment_evals: int | None = None
    storage: str | None = None
    study: str | None = None
    seed: int | None = None
    risk: str = "medium"
    threshold: float = 0.0
    startup_trials: int = 5
    reject_streak: int = 3
    backoff_segments: int = 2
    abort: float = 1.0
    total_steps: int | None = None
    restore: str = "values"
    start: str = "baseline"
    sync: bool = False
    recipe: str | None = None
    space: tuple[Knob, ...] = field(default=DEFAULT_SPACE)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["space"] = [k.to_dict() for k in self.space]
        return out


class RecipeError(CheckError, _RecipeError):
    """A settings dict or tuner recipe with problems; ``problems`` lists every one."""


_SETTING_KEYS = {
    "mode", "objective", "direction", "segment_steps", "segment_evals", "storage", "study",
    "seed", "risk", "threshold", "startup_trials", "reject_streak", "backoff_segments",
    "recipe", "space", "abort", "total_steps", "restore", "start", "sync",
}  # fmt: skip
_KNOB_KEYS = {"key", "module", "mode", "low", "high", "log", "prior", "min", "max", "cooldown"}
#: The settings of ``tune enable`` that a recipe file cannot hold, and why.
_NOT_IN_FILE = {
    "mode": "the mode is chosen by 'tune enable --mode', not the recipe",
    "recipe": "a recipe cannot name another recipe: give the one to use with 'tune enable "
              "--recipe FILE'",
}  # fmt: skip


def _check_settings(
    doc: Mapping[str, Any], ck: Checker, prefix: str = "", allowed: set[str] = _SETTING_KEYS
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in sorted(set(doc) - allowed):
        ck.add(f"{prefix}{key}", f"unknown setting; expected one of {', '.join(sorted(allowed))}")
    out["mode"] = ck.choice(doc, "mode", f"{prefix}mode", MODES)
    out["direction"] = ck.choice(doc, "direction", f"{prefix}direction", DIRECTIONS)
    out["risk"] = ck.choice(doc, "risk", f"{prefix}risk", RISKS)
    out["restore"] = ck.choice(doc, "restore", f"{prefix}restore", ("values", "state"))
    out["start"] = ck.choice(doc, "start", f"{prefix}start", STARTS)
    for key in ("objective", "storage", "study", "recipe"):
        out[key] = ck.string(doc, key, f"{prefix}{key}")
    if out["storage"] is not None and (trouble := storage_trouble(out["storage"])):
        ck.add(f"{prefix}storage", trouble)
    for key, lo in (("segment_steps", 1), ("segment_evals", 1), ("startup_trials", 0),
                    ("reject_streak", 1), ("backoff_segments", 0)):  # fmt: skip
        out[key] = ck.number(doc, key, f"{prefix}{key}", integer=True, minimum=lo)
    out["seed"] = ck.number(doc, "seed", f"{prefix}seed", integer=True, minimum=0)
    out["total_steps"] = ck.number(doc, "total_steps", f"{prefix}total_steps", integer=True,
                                   minimum=1)  # fmt: skip
    out["abort"] = ck.number(doc, "abort", f"{prefix}abort", minimum=0)
    out["threshold"] = ck.number(doc, "threshold", f"{prefix}threshold")
    if doc.get("sync") is not None and not isinstance(doc["sync"], bool):
        ck.add(f"{prefix}sync", f"expected true or false, got {doc['sync']!r}")
    elif doc.get("sync") is not None:
        out["sync"] = doc["sync"]
    if "space" in doc:
        out["space"] = _check_space(doc["space"], ck, f"{prefix}space")
    return {k: v for k, v in out.items() if v is not None}


#: The databases Optuna's RDB storage runs on, through SQLAlchemy (its ``+driver`` aside).
_DIALECTS = frozenset({"sqlite", "postgresql", "mysql", "mariadb", "oracle", "mssql"})


def storage_trouble(url: str) -> str | None:
    """What is wrong with a storage URL that cannot be one, said before the run tries it: a
    bare file name (SQLAlchemy cannot parse it), ``postgres://`` (SQLAlchemy has no such
    dialect), an in-memory SQLite database, a scheme that is no database, an empty journal
    path. Whether the database answers, only the run can tell."""
    if url.startswith("journal:"):
        return None if url[len("journal:") :] else "journal: needs a file path, journal:PATH"
    if "://" not in url:
        if url.endswith((".log", ".journal")):
            return None  # a journal file
        return (
            f"{url!r} is neither a database URL nor a journal file: for a SQLite file write "
            f"sqlite:///{url} (relative to the training's working directory; sqlite:////abs/path "
            "for an absolute one), for a journal file journal:PATH"
        )
    scheme, rest = url.split("://", 1)
    if scheme == "postgres":  # said back without its password
        _, shown = redact_url(url).split("://", 1)
        return f"SQLAlchemy has no 'postgres' dialect: write postgresql://{shown}"
    dialect = scheme.split("+", 1)[0].lower()
    if dialect == "sqlite" and rest in ("", "/", "/:memory:"):
        return (
            f"{url!r} is a SQLite database in the training process's memory: the study would end "
            "with it and no other run could share it; write sqlite:///PATH for a file"
        )
    if dialect not in _DIALECTS:
        return (
            f"Optuna cannot keep a study in {scheme}://: write a SQLAlchemy URL (sqlite:///PATH, "
            "postgresql://USER@HOST/DB, mysql+pymysql://USER@HOST/DB) or journal:PATH"
        )
    return None


def storage_password_note(url: Any) -> str | None:
    """What to say about a storage URL that holds a password (``user:PASSWORD@``, or a
    ``?password=`` parameter): it travels to the run in the ``tune enable`` command, so it is
    written in plain text to the commands file and the ledger. None for one without."""
    if not isinstance(url, str) or not any(url_secrets(url)):
        return None
    return (
        f"the storage URL {redact_url(url)} holds a password: it is written in plain text to "
        "the run's commands file (hotcb.commands.jsonl) and ledger (hotcb.applied.jsonl), "
        "which whoever can read the run directory can read. Keep it out of the URL and give it "
        "to the training's environment: for PostgreSQL, postgresql://USER@HOST/DB with "
        "PGPASSWORD or ~/.pgpass (libpq: psycopg2, psycopg); for MySQL, an option file, "
        "mysql+pymysql://USER@HOST/DB?read_default_file=~/.my.cnf (docs/tune.md)"
    )


def _check_space(space: Any, ck: Checker, where: str) -> tuple[Knob, ...] | None:
    if not isinstance(space, list) or not space:
        ck.add(where, "expected a non-empty list of knobs ({key, module, mode, low, high, ...})")
        return None
    knobs: list[Knob] = []
    seen: set[str] = set()
    for i, item in enumerate(space):
        at = f"{where}[{i}]"
        if not isinstance(item, Mapping):
            ck.add(at, f"expected a mapping with at least 'key', got {item!r}")
            continue
        key, module = item.get("key"), item.get("module") or "opt"
        name = f"{module}.{key}" if isinstance(key, str) and isinstance(module, str) else None
        twice = name is not None and name in seen
        if twice:
            ck.add(at, f"{name} appears twice")
        if name is not None:
            seen.add(name)
        knob = _check_knob(item, ck, at)  # whatever else is wrong with it is said too
        if knob is not None and not twice:
            knobs.append(knob)
    return tuple(knobs) if len(knobs) == len(space) else None


def _check_knob(item: Mapping[str, Any], ck: Checker, at: str) -> Knob | None:
    before = len(ck.problems)
    for key in sorted(set(item) - _KNOB_KEYS):
        ck.add(f"{at}.{key}", f"unknown field; a knob has {', '.join(sorted(_KNOB_KEYS))}")
    key = ck.string(item, "key", f"{at}.key")
    if key is None and "key" not in item:
        ck.add(f"{at}.key", "missing: the actuator's name, e.g. lr")
    module = ck.choice(item, "module", f"{at}.module", KNOB_MODULES) or "opt"
    mode = ck.choice(item, "mode", f"{at}.mode", KNOB_MODES) or "mult"
    nums = {k: ck.number(item, k, f"{at}.{k}") for k in ("low", "high", "prior", "min", "max")}
    cooldown = ck.number(item, "cooldown", f"{at}.cooldown", integer=True, minimum=0) or 0
    log = item.get("log", mode == "mult")
    if not isinstance(log, bool):
        ck.add(f"{at}.log", f"expected true or false, got {log!r}")
        log = False
    low, high = nums["low"], nums["high"]
    for k, v in (("low", low), ("high", high)):
        if v is None and k not in item:
            ck.add(f"{at}.{k}", "missing: the range to sample from")
    if low is not None and high is not None:
        if low >= high:
            ck.add(f"{at}.high", f"must be greater than low ({low!r}), got {high!r}")
        elif log and low <= 0:
            ck.add(f"{at}.low", f"a log-scale range must be positive, got {low!r}")
    prior, lo_bound, hi_bound = nums["prior"], nums["min"], nums["max"]
    if (prior is not None and low is not None and high is not None and low < high
            and not low <= prior <= high):  # fmt: skip
        ck.add(f"{at}.prior", f"must lie in [low, high] = [{low!r}, {high!r}], got {prior!r}")
    if lo_bound is not None and hi_bound is not None and lo_bound > hi_bound:
        ck.add(f"{at}.max", f"must be at least min ({lo_bound!r}), got {hi_bound!r}")
    if len(ck.problems) > before or key is None or low is None or high is None:
        return None
    return Knob(key, module, mode, float(low), float(high), log, prior, lo_bound, hi_bound,
                int(cooldown))  # fmt: skip


def bracket_knob(space: Sequence[Knob]) -> Knob | None:
    """The knob ``start: bracket`` moves: the optimizer's lr as a multiplier (its range's ends
    are the bracket's two moves)."""
    return next((k for k in space if k.module == "opt" and k.key == "lr" and k.mode == "mult"
                 and k.low < 1 < k.high), None)  # fmt: skip


def parse_settings(params: Mapping[str, Any], recipe: Mapping[str, Any] | None = None) -> Settings:
    """The settings for an ``enable`` command's params over a recipe's (both checked)."""
    merged: dict[str, Any] = {}
    if recipe:
        merged.update(recipe)
    ck = Checker()
    given = {k: v for k, v in params.items() if v is not None}
    checked = _check_settings(given, ck)
    # a segment given by flag wins over the file's, whichever way the file counts it
    if "segment_steps" in checked:
        merged.pop("segment_evals", None)
    merged.update(checked)
    if (
        merged.get("start") == "bracket"
        and bracket_knob(merged.get("space") or DEFAULT_SPACE) is None
    ):
        ck.add("start", "bracket moves the lr: the space needs an lr knob in mult mode "
               "({key: lr, mode: mult, low: 0.25, high: 4})")  # fmt: skip
    if ck.problems:
        raise RecipeError("tune enable", ck.problems)
    if "direction" not in merged:  # not given: the objective's name says (val_acc: maximize)
        merged["direction"] = guess_direction(merged.get("objective") or Settings.objective)
    return Settings(**merged)


# ---------------------------------------------------------------------------------- the file
def load_recipe(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked settings of a recipe file (YAML or JSON); :class:`RecipeError` lists every
    problem with its line."""
    return read_recipe(path)[0]


def read_recipe(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, int]]:
    """:func:`load_recipe`, and the line of every key and item in the file
    (``{"space[0].key": 3}``), for problems found later (a knob the run does not have)."""
    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    doc, lines = parse_document(text, path, RecipeError)
    if doc is None or doc == {}:  # an empty file: most likely not the one meant
        raise RecipeError(path, ["the recipe is empty: expected a mapping of settings "
                                 "(objective: val_loss, space: [...]; docs/tune.md)"])  # fmt: skip
    if not isinstance(doc, Mapping):
        raise RecipeError(path, [f"expected a mapping of settings, got {type(doc).__name__}"])
    ck = Checker(lines)
    for key in _NOT_IN_FILE.keys() & set(doc):
        ck.add(key, _NOT_IN_FILE[key])
    kept = {k: v for k, v in doc.items() if k not in _NOT_IN_FILE}
    settings = _check_settings(kept, ck, allowed=_SETTING_KEYS - _NOT_IN_FILE.keys())
    if "segment_steps" in doc and "segment_evals" in doc:  # the flags are exclusive too
        ck.add("segment_evals", "give segment_steps or segment_evals, not both")
    if ck.problems:  # in the file's order
        raise RecipeError(path, sorted(ck.problems, key=_line_of))
    return settings, lines


def _line_of(problem: str) -> int:
    """The line a problem names (``line 7: …``); 0 for one without a line."""
    head, _, _ = problem.partition(":")
    number = head[len("line ") :] if head.startswith("line ") else ""
    return int(number) if number.isdigit() else 0

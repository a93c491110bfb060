"""Activation capture: per-layer summaries of a model's outputs in ``hotcb.features.jsonl``.

:class:`FeatureCapture` puts forward hooks on the modules whose names match glob patterns (and,
optionally, whose types match) and, every ``every`` steps, records for each of them the output's
mean, std, max |x|, the fraction of dead units and the L2 norm. It is a hot callback: load it
into a running job, switch it on and off, change its patterns, with the ``cb`` commands::

    hotcb --dir RUN cb load feats --path hotcb.features --symbol FeatureCapture \\
        --init 'patterns=["layers.*"]' every=50

or use it from Python without a kernel (``FeatureCapture(model=..., run_dir=...)`` and
``capture.step(step)`` in the loop). User docs: docs/features.md.

Cost: nothing on the steps it does not capture. The hooks are attached at the end of the step
before a capture step, run once (each removes itself after it fired), and the stats are torch
reductions under ``no_grad`` on the detached output; the capture step ends with one
``tolist()`` (one device sync) for all layers and one appended line.

This module imports only the standard library at import time; torch is imported when the first
hooks are attached.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from . import jsonl
from .modules.cb._protocol import CallbackBase
from .runfiles import FEATURES

__all__ = ["DEFAULT_EVERY", "STATS", "FeatureCapture", "activation_stats", "read_features"]

log = logging.getLogger("hotcb.features")

Env = Mapping[str, Any]

#: The figures recorded per layer, in this order.
STATS = ("mean", "std", "max_abs", "dead", "norm")

#: Capture every this many steps by default. Measured in benchmarks/features.py (docs/
#: benchmarks/features.md): on small CPU models (1-2 ms steps) a capture step costs 0.5-0.9 of
#: a step more, so one in 100 keeps the average overhead near 1% of a step (target: < 2%).
DEFAULT_EVERY = 100

#: At most this many modules are hooked by default (a pattern that matches every module of a
#: large model would otherwise make each capture slow); ``max_layers=0`` lifts the cap.
DEFAULT_MAX_LAYERS = 64


def _as_list(value: Any, what: str, classes: bool = False) -> list[Any] | None:
    """``None``, a comma-separated string or a list of strings (and, with ``classes``,
    classes) → list (or None)."""
    if value is None:
        return None
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
        return [v for v in items if v] or None
    if isinstance(value, (list, tuple)):
        out: list[Any] = []
        for v in value:
            if classes and isinstance(v, type):
                out.append(v)
            elif isinstance(v, str) and v.strip():
                out.append(v.strip())
            else:
                raise TypeError(f"{what} must be strings, got {v!r}")
        return out or None
    raise TypeError(f"{what} must be a list of strings or a comma-separated string, got {value!r}")


def _type_matches(module: Any, types: Sequence[Any]) -> bool:
    """True when the module is an instance of one of ``types``: classes, or glob patterns on
    the class name of any class in its MRO (``ReLU``, ``_ConvNd``, ``*Norm*``; a dotted name
    such as ``torch.nn.Conv2d`` is matched by its last part)."""
    mro = type(module).__mro__
    for t in types:
        if isinstance(t, type):
            if isinstance(module, t):
                return True
            continue
        name = t.rsplit(".", 1)[-1]  # "torch.nn.ReLU", "nn.ReLU" → "ReLU"
        if any(fnmatch.fnmatchcase(cls.__name__, name) for cls in mro):
            return True
    return False


def _name_matches(name: str, patterns: Sequence[str]) -> bool:
    """Glob match on the module's name from ``named_modules()``, also under any prefix (so
    ``layers.*`` matches ``model.layers.0`` of a Lightning module wrapping ``model``)."""
    return any(
        fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, "*." + p) for p in patterns
    )


def select_modules(
    model: Any,
    patterns: Sequence[str] | None = None,
    types: Sequence[Any] | None = None,
    max_layers: int = DEFAULT_MAX_LAYERS,
) -> list[tuple[str, Any]]:
    """The ``(name, module)`` pairs that :class:`FeatureCapture` hooks, in model order.

    With neither ``patterns`` nor ``types``: every leaf module (no children). The model itself
    (name ``""``) is never selected. At most ``max_layers`` (0: no limit)."""
    out = []
    for name, mod in model.named_modules():
        if not name:
            continue
        if patterns:
            if not _name_matches(name, patterns):
                continue
        elif not types and next(iter(mod.children()), None) is not None:
            continue
        if types and not _type_matches(mod, types):
            continue
        out.append((name, mod))
    if max_layers and len(out) > max_layers:
        log.warning(
            "hotcb features: %d module(s) match, hooking the first %d (raise max_layers or "
            "narrow the patterns)",
            len(out),
            max_layers,
        )
        out = out[:max_layers]
    return out


def _first_tensor(out: Any) -> Any:
    """The module's output tensor: itself, or the first tensor of a tuple/list/dict output."""
    if hasattr(out, "detach") and hasattr(out, "dim"):
        return out
    if isinstance(out, (tuple, list)):
        for item in out:
            t = _first_tensor(item)
            if t is not None:
                return t
    if isinstance(out, Mapping):
        for item in out.values():
            t = _first_tensor(item)
            if t is not None:
                return t
    return None


def _unit_dim(ndim: int, unit_dim: int | None) -> int:
    """The dimension that indexes units/channels: ``unit_dim`` when given, else 1 for 4-D and
    5-D outputs (N, C, H, W[, D]: convolutions) and the last one otherwise ((N, F) and
    (N, T, F): linear layers, sequences)."""
    if unit_dim is not None:
        return unit_dim if unit_dim >= 0 else ndim + unit_dim
    return 1 if ndim >= 4 else ndim - 1


def _raw_stats(t: Any, unit_dim: int | None) -> tuple[list[Any], int, int]:
    """What a hook computes: five 0-d tensors ``[mean, min, max, dead units, L2 norm]`` on
    ``t``'s device (no sync: five reductions), the element count and the unit count. The
    capture stacks those of every layer at once and :func:`_summarise` turns each row into the
    :data:`STATS` after the one ``tolist()``."""
    import torch

    with torch.no_grad():
        x = t.detach()
        if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        if x.dim() == 0:
            x = x.reshape(1)
        lo, hi = torch.aminmax(x)
        if x.dim() == 1:
            units = x.numel()
            dead = (x <= 0).sum(dtype=torch.float32)
        else:
            d = _unit_dim(x.dim(), unit_dim)
            if not 0 <= d < x.dim():
                raise ValueError(f"unit_dim {unit_dim} does not fit an output of {x.dim()} "
                                 f"dims {tuple(x.shape)}")  # fmt: skip
            units = x.shape[d]
            dead = (x.amax(dim=[i for i in range(x.dim()) if i != d]) <= 0).sum(dtype=torch.float32)
        return [x.mean(), lo, hi, dead, torch.linalg.vector_norm(x)], x.numel(), units


def _summarise(row: Sequence[float], n: int, units: int) -> dict[str, float | None]:
    """:data:`STATS` from a :func:`_raw_stats` row. The std is the population std from the
    norm and the mean, ``sqrt(norm²/n - mean²)`` in double precision (a separate std
    reduction costs several times the other four together on small CPU tensors)."""
    mean, lo, hi, dead, norm = (float(v) for v in row)
    var = norm * norm / n - mean * mean if math.isfinite(norm) and math.isfinite(mean) else math.nan
    return {
        "mean": _finite(mean),
        "std": _finite(math.sqrt(max(var, 0.0))) if math.isfinite(var) else None,
        "max_abs": _finite(max(hi, -lo)),
        "dead": dead / units if units else None,
        "norm": _finite(norm),
    }


def activation_stats(t: Any, unit_dim: int | None = None) -> dict[str, float | None]:
    """The :data:`STATS` of tensor ``t`` (one sync): mean, population std, max |x|, dead
    fraction, L2 norm; a non-finite figure is None.

    ``dead`` is the fraction of units (channels for N×C×H×W, features otherwise, see
    ``unit_dim``) that are ≤ 0 everywhere in the batch: for the output of a ReLU (or of the
    layer feeding one) the units that no input switched on. For outputs that are not
    ReLU-like, read it as "never positive in this batch"."""
    import torch

    raw, n, units = _raw_stats(t, unit_dim)
    return _summarise(torch.stack(raw).tolist(), n, units)


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _leader() -> bool:
    from .distributed import first_rank

    return first_rank()


class FeatureCapture(CallbackBase):
    """Forward hooks on chosen modules; every ``every`` steps one record of their outputs'
    mean, std, max |x|, dead fraction and L2 norm in ``hotcb.features.jsonl``.

    Args:
        patterns: glob patterns on the names of ``model.named_modules()`` (``"layers.*"``,
            ``"fc?"``, ``"encoder.*.act"``); a pattern also matches under a prefix
            (``"layers.*"`` matches ``"model.layers.0"``). A list, or a comma-separated string.
            None: every leaf module (or every module of ``types``).
        types: module types to keep among those: classes or glob patterns on class names
            (``["ReLU", "GELU"]``, ``"*Conv*"``, ``"torch.nn.Linear"``); a class's bases count
            (``_ConvNd`` matches every convolution).
        every: capture at steps that are multiples of ``every`` (1: every step). Default
            :data:`DEFAULT_EVERY`.
        unit_dim: the dimension of the output that indexes units, for ``dead``; default 1 for
            4-D/5-D outputs (conv channels) and the last dimension otherwise.
        max_layers: hook at most this many modules (0: no limit).
        train_only: capture only forwards in training mode (``module.training``), so that a
            validation pass between two steps is not recorded as a training step.
        model: the model, for use without a kernel (with the kernel it comes from
            ``env["model"]``, which the Lightning and HF adapters fill in).
        run_dir: where to write ``hotcb.features.jsonl`` without a kernel (with the kernel:
            the run directory). None without a kernel: keep the last record only (``last``).

    A record: ``{"step", "epoch"?, "wall_time", "id"?, "ms", "layers": {name: {"mean", "std",
    "max_abs", "dead", "norm"}}}`` (``ms``: the capture's cost at the step's end, in
    milliseconds; a non-finite value is written as ``null``).
    """

    rank_zero_only = True

    def __init__(
        self,
        patterns: Sequence[str] | str | None = None,
        types: Sequence[Any] | str | None = None,
        every: int = DEFAULT_EVERY,
        unit_dim: int | None = None,
        max_layers: int = DEFAULT_MAX_LAYERS,
        train_only: bool = True,
        model: Any = None,
        run_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self._patterns = _as_list(patterns, "patterns")
        self._types = _as_list(types, "types", classes=True)
        self.every = self._check_every(every)
        self.unit_dim = None if unit_dim is None else int(unit_dim)
        self.max_layers = self._check_max_layers(max_layers)
        self.train_only = bool(train_only)
        self.model = model
        self.run_dir = os.fspath(run_dir) if run_dir is not None else None
        self.last: dict[str, Any] | None = None  # the last record written
        self.captures = 0
        self._leader = True if run_dir is None else _leader()
        self._selected: list[tuple[str, Any]] | None = None
        self._selected_for: Any = None  # the model _selected was made from
        self._handles: dict[str, Any] = {}
        self._fd: int | None = None
        self._fd_path: str | None = None
        self._pending: dict[str, Any] = {}
        self._failed: dict[str, str] = {}  # a layer whose output could not be summarised
        self._armed_step: int | None = None
        self._warned_no_model = False

    # ------------------------------------------------------------------ parameters
    @staticmethod
    def _check_every(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"every must be an integer >= 1, got {value!r}")
        return value

    @staticmethod
    def _check_max_layers(value: Any) -> int:
        """An integer >= 0 (0: no limit). A negative one hooked nothing, and the warnings
        blamed the patterns."""
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"max_layers must be an integer >= 0 (0: no limit), got {value!r}")
        return value

    @property
    def patterns(self) -> list[str] | None:
        return self._patterns

    @property
    def types(self) -> list[Any] | None:
        return self._types

    def set_params(self, **params: Any) -> None:
        """``cb set_params``: ``patterns``, ``types``, ``every``, ``unit_dim``, ``max_layers``,
        ``train_only``. A change of what is hooked takes effect at the next capture."""
        known = ("patterns", "types", "every", "unit_dim", "max_layers", "train_only")
        unknown = [k for k in params if k not in known]
        if unknown:
            raise AttributeError(
                f"FeatureCapture has no parameter {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(known)}"
            )
        # validate everything before changing anything
        new = dict(params)
        if "patterns" in new:
            new["patterns"] = _as_list(new["patterns"], "patterns")
        if "types" in new:
            new["types"] = _as_list(new["types"], "types", classes=True)
        if "every" in new:
            new["every"] = self._check_every(new["every"])
        dim = new.get("unit_dim")
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int)):
            raise ValueError(f"unit_dim must be an integer or null, got {dim!r}")
        if "max_layers" in new:
            new["max_layers"] = self._check_max_layers(new["max_layers"])
        if "train_only" in new and not isinstance(new["train_only"], bool):
            # ("no" is a non-empty text: bool() made it true)
            raise ValueError(f"train_only must be true or false, got {new['train_only']!r}")
        self.remove_hooks()
        for key, value in new.items():
            setattr(self, "_" + key if key in ("patterns", "types") else key, value)
        self._selected = None

    def params(self) -> dict[str, Any]:
        return {
            "patterns": self._patterns,
            "types": [t if isinstance(t, str) else t.__name__ for t in self._types or ()] or None,
            "every": self.every,
            "unit_dim": self.unit_dim,
            "max_layers": self.max_layers,
            "train_only": self.train_only,
        }

    # ------------------------------------------------------------------ callback protocol
    def on_load(self, env: Env) -> None:
        super().on_load(env)
        if self.ctx is not None:
            self._leader = self.ctx.is_leader

    def on_unload(self, env: Env) -> None:
        self.remove_hooks()
        self._close_file()

    def handle(self, event: str, env: Env) -> None:
        """At ``train_step_end``: write the capture of this step when hooks were armed for it,
        and arm the hooks when the next step is a capture step."""
        if event != "train_step_end":
            return
        step = env.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            return
        if self._armed_step is not None:
            self._finish(step, env)
        if (step + 1) % self.every == 0:
            model = env.get("model", self.model)
            if model is None:
                if not self._warned_no_model:
                    self._warned_no_model = True
                    self.log("FeatureCapture: env has no 'model'; nothing to capture", env)
                return
            self._arm(model, step + 1)

    def step(self, step: int, model: Any = None, epoch: int | None = None) -> None:
        """Python use without a kernel: call at the end of each training step."""
        env: dict[str, Any] = {"step": step, "model": model if model is not None else self.model}
        if epoch is not None:
            env["epoch"] = epoch
        self.handle("train_step_end", env)

    def close(self) -> None:
        """Remove the hooks and close the file (Python use); a later :meth:`step` attaches
        them again."""
        self.remove_hooks()
        self._close_file()

    def __enter__(self) -> FeatureCapture:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ hooks
    def _modules(self, model: Any) -> list[tuple[str, Any]]:
        if self._selected is None or self._selected_for is not model:
            self._selected = select_modules(model, self._patterns, self._types, self.max_layers)
            self._selected_for = model
            names = [n for n, _ in model.named_modules() if n]
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            if not self._selected:
                self._warn(
                    f"FeatureCapture: no module of {type(model).__name__} matches "
                    f"patterns={self._patterns} types={self.params()['types']} "
                    f"(its modules: {shown or 'none'})",
                )
            else:  # some match: say which patterns matched nothing (a typo, a renamed layer)
                idle = [
                    p for p in self._patterns or () if not any(_name_matches(n, [p]) for n in names)
                ]
                if idle:
                    self._warn(
                        f"FeatureCapture: pattern(s) {', '.join(map(repr, idle))} match no "
                        f"module of {type(model).__name__} (its modules: {shown})",
                    )
        return self._selected

    def _warn(self, message: str) -> None:
        """Patterns that capture nothing, said where a user looks: a warning, and in a run the
        ledger (``hotcb log``: a ``noop`` entry of this callback)."""
        log.warning("hotcb %s", message)
        if self.ctx is not None:
            self.ctx.record("capture", message)

    def _arm(self, model: Any, step: int) -> None:
        self.remove_hooks()
        self._pending, self._failed = {}, {}
        for name, mod in self._modules(model):
            self._handles[name] = mod.register_forward_hook(self._hook_for(name))
        self._armed_step = step if self._handles else None

    def _hook_for(self, name: str) -> Any:
        def hook(module: Any, inputs: Any, output: Any) -> None:
            if self.train_only and not module.training:
                return  # stays armed for the training forward
            handle = self._handles.pop(name, None)
            if handle is not None:
                handle.remove()  # once per capture: a second call (weight sharing) is skipped
            t = _first_tensor(output)
            if t is not None and t.numel() > 0:
                try:  # inside the user's forward pass: never raise there
                    self._pending[name] = _raw_stats(t, self.unit_dim)
                except Exception as exc:
                    self._failed[name] = f"{type(exc).__name__}: {exc}"

        return hook

    def remove_hooks(self) -> None:
        """Detach every hook this capture attached (disarm)."""
        for handle in self._handles.values():
            handle.remove()
        self._handles.clear()
        self._armed_step = None

    # ------------------------------------------------------------------ records
    def _finish(self, step: int, env: Env) -> None:
        armed, pending, failed = self._armed_step, self._pending, self._failed
        self.remove_hooks()
        self._pending, self._failed = {}, {}
        if armed == step and failed:  # after the forward pass: a callback error, ledgered
            self._record(step, env, pending)
            said = "; ".join(f"{name}: {why}" for name, why in failed.items())
            raise ValueError(f"could not summarise the output of {said}")
        if armed != step or not pending:
            return  # stale (the callback was off in between) or nothing ran
        self._record(step, env, pending)

    def _record(self, step: int, env: Env, pending: Mapping[str, Any]) -> None:
        if not pending:
            return
        t0 = time.perf_counter()
        import torch

        names = list(pending)
        flat = torch.stack([v for n in names for v in pending[n][0]]).tolist()  # the one sync
        k = len(STATS)
        layers = {
            name: _summarise(flat[i * k : (i + 1) * k], pending[name][1], pending[name][2])
            for i, name in enumerate(names)
        }
        record: dict[str, Any] = {"step": step}
        epoch = env.get("epoch")
        if isinstance(epoch, int) and not isinstance(epoch, bool):
            record["epoch"] = epoch
        record["wall_time"] = time.time()
        if self.ctx is not None:
            record["id"] = self.ctx.id
        record["layers"] = layers
        self.captures += 1
        self.last = record
        path = self._path()
        if path is not None and self._leader:
            record["ms"] = round((time.perf_counter() - t0) * 1000, 3)
            try:
                self._write(path, record)
            except OSError as exc:
                log.warning("hotcb features: could not write %s: %s", path, exc)

    def _write(self, path: str, record: dict[str, Any]) -> None:
        """One ``os.write`` of the line on a file kept open (``O_APPEND``), like the metrics
        collector: opening and locking the file for every capture cost more than the rest of
        the record."""
        if self._fd is None or self._fd_path != path:
            self._close_file()
            os.makedirs(os.path.dirname(path), exist_ok=True)
            # never through a link planted in the run directory (appended to its target)
            self._fd = jsonl.open_own(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)[0]
            self._fd_path = path
        os.write(self._fd, (jsonl.dumps(record) + "\n").encode())

    def _close_file(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _path(self) -> str | None:
        root = self.ctx.run_dir if self.ctx is not None else self.run_dir
        if root is None:
            return None
        return os.path.join(root, FEATURES)


#: The most of the features file one :func:`read_features` call reads (a 2 GB sparse file
#: planted in a served run took the dashboard to 2.3 GB at each request).
READ_MAX = 64 * 1024 * 1024


def read_features(
    run_dir: str | os.PathLike[str], start: int = 0
) -> tuple[list[dict[str, Any]], int]:
    """The records of ``RUN/hotcb.features.jsonl`` from byte ``start`` on, and the byte offset
    after the last complete line (for incremental reads), :data:`READ_MAX` bytes at most per
    call (a line longer than that is skipped). A missing file: ``([], 0)``; one that is not a
    regular file (a FIFO would block the reader): nothing new."""
    path = os.path.join(os.fspath(run_dir), FEATURES)
    try:
        fd, _ = jsonl.open_regular(path)
        with open(fd, "rb") as f:
            f.seek(start)
            data = f.read(READ_MAX)
    except FileNotFoundError:
        return [], 0
    except OSError:
        return [], start
    end = data.rfind(b"\n") + 1
    if not end and len(data) == READ_MAX:  # no line end in READ_MAX bytes: not a record
        return [], start + len(data)
    out = []
    for line in data[:end].split(b"\n"):
        rec = jsonl.parse_line(line) if line.strip() else None
        if rec is not None and isinstance(rec.get("layers"), dict):
            out.append(rec)
    return out, start + end


def _iter_names(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """Layer names in first-seen order."""
    seen: dict[str, None] = {}
    for rec in records:
        for name in rec.get("layers") or ():
            seen.setdefault(name, None)
    return list(seen)

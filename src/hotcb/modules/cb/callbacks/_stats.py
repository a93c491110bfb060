"""Diagnostics that read tensors and the machine: system, tensor and gradient statistics."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from .._protocol import CallbackBase
from ._params import checks, flag, names, number, whole
from ._say import no_grads_reason, warn, who

Env = Mapping[str, Any]


def _due_step(event: str, env: Env, every: int) -> Any:
    """The step when this is a ``train_step_end`` on a multiple of ``every``, else None."""
    if event != "train_step_end":
        return None
    step = env.get("step", 0)
    if every <= 1 or (isinstance(step, int) and step % every == 0):
        return step
    return None


class SystemStatsCallback(CallbackBase):
    """CPU, memory and GPU memory → metrics ``sys/*`` every ``every_steps`` steps.

    With psutil (``pip install "hotcb[stats]"``): ``sys/cpu_percent`` (this process, can exceed
    100 on several cores), ``sys/rss_mb``, ``sys/ram_percent`` (the machine). Without it: RSS from
    ``/proc`` or ``resource`` and the load average. GPU: ``sys/gpu{i}_mem_alloc_mb`` and
    ``sys/gpu{i}_mem_reserved_mb`` when the training process uses torch with CUDA.
    """

    rank_zero_only = False
    _param_checks = checks(every_steps=whole("every_steps", 1), gpu=flag("gpu"))

    def __init__(self, every_steps: int = 50, gpu: bool = True) -> None:
        c = self._param_checks
        self.every_steps = c["every_steps"](every_steps)
        self.gpu = c["gpu"](gpu)
        self.last: dict[str, float] = {}
        self._proc: Any = None
        try:
            import psutil

            self._proc = psutil.Process(os.getpid())
            self._proc.cpu_percent(None)  # first call primes the counter
        except ImportError:
            self._proc = None

    def sample(self) -> dict[str, float]:
        """The current figures (also usable outside a run)."""
        out: dict[str, float] = {}
        if self._proc is not None:
            import psutil

            out["sys/cpu_percent"] = float(self._proc.cpu_percent(None))
            out["sys/rss_mb"] = self._proc.memory_info().rss / 2**20
            out["sys/ram_percent"] = float(psutil.virtual_memory().percent)
        else:
            rss = _rss_bytes()
            if rss is not None:
                out["sys/rss_mb"] = rss / 2**20
            if hasattr(os, "getloadavg"):
                out["sys/load1"] = os.getloadavg()[0]
        torch = sys.modules.get("torch")  # never import torch for this
        if self.gpu and torch is not None:
            try:
                if torch.cuda.is_available():
                    for i in range(torch.cuda.device_count()):
                        out[f"sys/gpu{i}_mem_alloc_mb"] = torch.cuda.memory_allocated(i) / 2**20
                        out[f"sys/gpu{i}_mem_reserved_mb"] = torch.cuda.memory_reserved(i) / 2**20
            except Exception:  # a broken CUDA setup must not stop the CPU figures
                pass
        return out

    def handle(self, event: str, env: Env) -> None:
        step = _due_step(event, env, self.every_steps)
        if step is None:
            return
        self.last = self.sample()
        self.log_metrics(step, self.last, env.get("epoch"))


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak * (1 if sys.platform == "darwin" else 1024))
    except (ImportError, OSError):
        return None


class TensorStatsCallback(CallbackBase):
    """mean / std / min / max of named tensors (default ``loss``) → metrics ``<name>/mean`` …
    every ``every_steps`` steps. A name is looked up in env, then in ``env["metrics"]`` (where
    the adapters and a loop that logs put the loss). Numbers are accepted too. ``std`` is the
    population std (0 for one element, never NaN).

    A name that is in neither is skipped; one never found is said once (a warning and a ledger
    entry) after :data:`MISSES_WITH_METRICS` measured steps whose env had ``metrics`` without
    it, or :data:`MISSES` measured steps in all (a loop may log only every so many steps)."""

    _param_checks = checks(keys=names("keys"), every_steps=whole("every_steps", 1))

    def __init__(self, keys: Sequence[str] | str = ("loss",), every_steps: int = 1) -> None:
        c = self._param_checks
        self.keys = c["keys"](keys)
        self.every_steps = c["every_steps"](every_steps)
        self.last: dict[str, float] = {}
        # a key not found yet -> [misses at steps with metrics, misses in all]; a key found
        # once, or said missing, leaves it for good
        self._misses: dict[str, list[int]] = {}
        self._settled: set[str] = set()

    def handle(self, event: str, env: Env) -> None:
        step = _due_step(event, env, self.every_steps)
        if step is None:
            return
        metrics = env.get("metrics")
        if not isinstance(metrics, Mapping):
            metrics = None
        out: dict[str, float] = {}
        for key in self.keys:
            value = env.get(key)
            if value is None and metrics is not None:
                value = metrics.get(key)
            stats = tensor_stats(value) if value is not None else None
            if stats is None:
                if key not in self._settled:
                    self._missed(key, step, env, metrics)
                continue
            self._settled.add(key)
            for name, v in stats.items():
                out[f"{key}/{name}"] = v
        self.last = out
        self.log_metrics(step, out, env.get("epoch"))

    def _missed(self, key: str, step: Any, env: Env, metrics: Mapping[str, Any] | None) -> None:
        counts = self._misses.setdefault(key, [0, 0])
        if metrics is not None:
            counts[0] += 1
        counts[1] += 1
        if counts[0] < MISSES_WITH_METRICS and counts[1] < MISSES:
            return
        self._settled.add(key)
        del self._misses[key]
        have = sorted(k for k in env if k not in ("step", "metrics") and _measurable(env[k]))
        logged = "absent" if metrics is None else ", ".join(sorted(metrics)) or "empty"
        warn(
            self,
            f"{who(self)}: no tensor or number named {key!r} in env or env['metrics'] at the "
            f"{counts[1]} steps it measured up to step {step}, so it records nothing for it "
            f"(tensors and numbers in env: {', '.join(have) or 'none'}; env['metrics']: "
            f"{logged}). Set keys to names the loop hands over (cb set_params ID keys=...).",
        )


#: :class:`TensorStatsCallback` says a key is missing after this many measured steps whose env
#: had ``metrics`` without it ...
MISSES_WITH_METRICS = 10
#: ... or after this many measured steps in all.
MISSES = 1000


def _measurable(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) or callable(
        getattr(value, "detach", None)
    )


def tensor_stats(value: Any) -> dict[str, float] | None:
    """mean/std/min/max of a tensor or number (None for anything else)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        v = float(value)
        return {"mean": v, "std": 0.0, "min": v, "max": v}
    detach = getattr(value, "detach", None)
    if not callable(detach):
        return None
    import torch

    t = detach().float()
    if t.numel() == 0:
        return None
    with torch.no_grad():
        return {
            "mean": t.mean().item(),
            "std": t.std(unbiased=False).item(),
            "min": t.min().item(),
            "max": t.max().item(),
        }


class GradStatsCallback(CallbackBase):
    """Gradient norms of ``env["model"]`` → metrics ``grad/global_norm`` and, with
    ``per_layer``, ``grad/norm/<layer>`` (a layer is the module that owns the parameters, e.g.
    ``0`` for ``0.weight`` and ``0.bias``). Call it where gradients exist: after
    ``backward()`` (the usual ``kernel.apply`` after ``optimizer.step()`` qualifies as long as
    ``zero_grad`` runs at the start of the next step).

    A step where no trainable parameter has a gradient records nothing and is said once (a
    warning and a ledger entry): under the HF Trainer, whose ``zero_grad`` comes before
    hotcb's safe point, that is every step (the Trainer's own ``grad_norm`` metric is there)."""

    _param_checks = checks(
        every_steps=whole("every_steps", 1),
        per_layer=flag("per_layer"),
        norm_type=number("norm_type", above=0),
    )

    def __init__(self, every_steps: int = 1, per_layer: bool = True, norm_type: float = 2.0):
        c = self._param_checks
        self.every_steps = c["every_steps"](every_steps)
        self.per_layer = c["per_layer"](per_layer)
        self.norm_type = c["norm_type"](norm_type)
        self.last: dict[str, float] = {}
        self._said_no_grads = False

    def handle(self, event: str, env: Env) -> None:
        step = _due_step(event, env, self.every_steps)
        if step is None:
            return
        model = env.get("model")
        if model is None or not hasattr(model, "named_parameters"):
            return
        self.last = grad_norms(model, self.norm_type, self.per_layer)
        if self.last:
            self.log_metrics(step, self.last, env.get("epoch"))
        elif not self._said_no_grads and any(p.requires_grad for p in model.parameters()):
            self._said_no_grads = True
            warn(
                self,
                f"{who(self)}: no parameter of env['model'] has a gradient at step {step}, so "
                f"it records nothing. {no_grads_reason(env)}",
            )


def grad_norms(model: Any, norm_type: float = 2.0, per_layer: bool = True) -> dict[str, float]:
    """``{"grad/global_norm": …, "grad/norm/<layer>": …}`` over parameters that have a grad."""
    import torch

    layers: dict[str, list[Any]] = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.grad is None:
                continue
            layer = name.rpartition(".")[0] or name
            layers.setdefault(layer, []).append(
                torch.linalg.vector_norm(p.grad.detach().float(), norm_type)
            )
        if not layers:
            return {}
        out: dict[str, float] = {}
        total = 0.0
        for layer, norms in layers.items():
            n = torch.linalg.vector_norm(torch.stack(norms), norm_type).item()
            total += n**norm_type if math.isfinite(n) else math.inf
            if per_layer:
                out[f"grad/norm/{layer}"] = n
        out["grad/global_norm"] = total ** (1.0 / norm_type) if math.isfinite(total) else total
    return out

"""Step drivers: a :class:`~hotcb.HotKernel` stepped by hand, in-process, for tests.

:class:`StepDriver` needs no third-party package: its "model" is a dict of loss weights that
the kernel steers through :func:`~hotcb.loss_actuators`. :class:`TorchStepDriver` adds a real
torch training step (TinyMLP on digits by default). torch is imported only when a
``TorchStepDriver`` is made.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any

from .. import jsonl
from ..actuators import HotcbActuator, MutableState, loss_actuators
from ..client import HotClient
from ..freeze import FreezeState
from ..kernel import HotKernel
from ..runfiles import RunPaths

__all__ = ["StepDriver", "TorchStepDriver"]

#: ``actions[step](client)``: something sent (with the driver's client) during ``step``.
Action = Callable[[HotClient], Any]


class StepDriver:
    """Drive a :class:`~hotcb.HotKernel` through training steps by hand, the way a training
    loop would, and read back what happened the way a user would (ledger, actuators file).

    ::

        drv = StepDriver(run_dir, weights={"ce": 1.0, "aux": 0.0})
        drv.steps(3)                     # steps 0, 1, 2: kernel.apply({"step": s, ...})
        cid = drv.client.loss(aux=0.5)   # a command, written as every writer writes it
        drv.steps()                      # step 3 reads and applies it
        assert drv.only(cid)["step"] == 3 and drv.weights["aux"] == 0.5
        drv.close()                      # or: with StepDriver(...) as drv: ...

    Args:
        run_dir: the run directory (created on first use, like the kernel does).
        weights: the tiny torch-free model: a dict of loss weights the kernel steers. The
            driver keeps this very dict (``drv.weights is weights``) and binds it with
            :func:`~hotcb.loss_actuators`, unless ``mutable_state`` or ``kernel`` is given.
        mutable_state: the kernel's actuators instead of the weights'.
        freeze: the kernel's initial freeze state (:class:`~hotcb.freeze.FreezeState`).
        env_extra: entries added to every step's env (``save_checkpoint``, ``request_stop``,
            ...); ``drv.env_extra`` may be replaced between steps.
        source: the ``source`` of the client's commands (in the ledger).
        validate: whether the client checks parameters against the published actuators
            before appending (:class:`~hotcb.HotClient`'s ``validate``). Off by default: the
            kernel is what a driver tests, so bad values reach it and its checks are exercised.
        kernel: drive this kernel instead of making one (e.g. one made with options of your
            own); then ``mutable_state``, ``freeze`` and kernel options are not accepted.
        **kernel_kwargs: passed to :class:`~hotcb.HotKernel` (``poll_interval_sec`` defaults to
            0 here, so every step is a safe point that reads new commands).

    Attributes: ``kernel``, ``client`` (a :class:`~hotcb.HotClient` on the run directory),
    ``paths`` (:class:`~hotcb.runfiles.RunPaths`), ``run_dir`` (as given), ``weights``,
    ``env_extra`` and ``step``: the last step applied (``-1`` before the first; set it to
    resume at ``step + 1``).

    Subclass hooks: :meth:`train_step` (the training work of a step; returns env entries) and
    :meth:`after_apply` (runs after the step's ``kernel.apply``).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        weights: MutableMapping[str, Any] | None = None,
        mutable_state: MutableState | Iterable[HotcbActuator] | None = None,
        freeze: FreezeState | None = None,
        env_extra: Mapping[str, Any] | None = None,
        source: str = "test",
        validate: bool = False,
        kernel: HotKernel | None = None,
        **kernel_kwargs: Any,
    ) -> None:
        self.run_dir = os.fspath(run_dir)
        self.paths = RunPaths(self.run_dir)
        self.weights: MutableMapping[str, Any] = {} if weights is None else weights
        self.env_extra: dict[str, Any] = dict(env_extra or {})
        self.step = -1
        if kernel is not None:
            if mutable_state is not None or freeze is not None or kernel_kwargs:
                raise TypeError("kernel= drives an existing kernel: pass no kernel options")
            self.kernel = kernel
        else:
            if mutable_state is None:
                mutable_state = MutableState(loss_actuators(self.weights))
            kernel_kwargs.setdefault("poll_interval_sec", 0)
            self.kernel = HotKernel(
                self.run_dir, mutable_state=mutable_state, freeze=freeze, **kernel_kwargs
            )
        self.client = HotClient(self.run_dir, source=source, validate=validate)

    # -- stepping ------------------------------------------------------------------------------
    def steps(
        self,
        n: int = 1,
        *,
        actions: Mapping[int, Action] | None = None,
        events: Sequence[str] | None = None,
        **env: Any,
    ) -> None:
        """Run ``n`` steps: for each, :meth:`train_step`, then ``actions[step](client)`` if
        there is one (a command written now is read by this step's apply), then
        ``kernel.apply(env, events)`` with ``{"step": step, **train_step, **env_extra, **env}``,
        then :meth:`after_apply`."""
        for _ in range(n):
            self.step += 1
            step_env = {"step": self.step, **self.train_step(self.step), **self.env_extra, **env}
            if actions and self.step in actions:
                actions[self.step](self.client)
            if events is None:
                self.kernel.apply(step_env)
            else:
                self.kernel.apply(step_env, events=events)
            self.after_apply(step_env)

    def train_step(self, step: int) -> Mapping[str, Any]:
        """The training work of ``step``; returns entries for its env. Here: none."""
        return {}

    def after_apply(self, env: Mapping[str, Any]) -> None:
        """Called after each step's ``kernel.apply(env)``. Here: nothing."""

    # -- reading back --------------------------------------------------------------------------
    def ledger(self) -> list[dict[str, Any]]:
        """Every entry of the run's ledger (``hotcb.applied.jsonl``), in order."""
        return list(jsonl.iter_records(self.paths.ledger))

    def entries(self, cmd_id: str) -> list[dict[str, Any]]:
        """The ledger entries of one command, in order (a scheduled command has several)."""
        return [e for e in self.ledger() if e.get("cmd_id") == cmd_id]

    def only(self, cmd_id: str) -> dict[str, Any]:
        """The one ledger entry of ``cmd_id`` (fails unless there is exactly one)."""
        found = self.entries(cmd_id)
        assert len(found) == 1, f"{len(found)} ledger entries for {cmd_id}: {found}"
        return found[0]

    def entry(self, cmd_id: str) -> dict[str, Any]:
        """The latest ledger entry of ``cmd_id`` (fails if there is none)."""
        found = self.entries(cmd_id)
        assert found, f"no ledger entry for {cmd_id}"
        return found[-1]

    def actuators(self) -> dict[str, dict[str, Any]]:
        """The published actuators file, by ``param_key``."""
        doc = jsonl.read_json(self.paths.actuators)
        return {a["param_key"]: a for a in doc["actuators"]}

    def raw(self, text: str) -> None:
        """Append ``text`` to the commands file as is (torn lines, bad JSON, hand-written)."""
        os.makedirs(self.paths.root, exist_ok=True)
        with open(self.paths.commands, "ab") as f:
            f.write(text.encode())

    # -- lifetime ------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the kernel (flushes the ledger; a second close does nothing)."""
        self.kernel.close()

    def __enter__(self) -> StepDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TorchStepDriver(StepDriver):
    """A :class:`StepDriver` whose steps train a real torch model: each step takes a batch,
    computes the loss, ``zero_grad`` / ``backward`` / ``optimizer.step()`` (and
    ``scheduler.step()``), then applies the kernel with the env a real loop passes:
    ``framework`` ``"torch"``, ``model``, ``optimizer``, ``scheduler`` (when there is one),
    ``loss`` (detached), ``metrics`` ``{"loss": float}`` and ``batch_size``.

    ::

        with TorchStepDriver(run_dir) as drv:   # TinyMLP on digits, AdamW(lr=1e-2)
            drv.steps(3)
            drv.client.opt(lr=1e-3)
            drv.steps()
            assert drv.lr[3] == 1e-3

    Args (besides :class:`StepDriver`'s):
        model: the model (default :func:`~hotcb.testing.TinyMLP` with ``seed``).
        optimizer: ``optimizer(model.parameters())`` makes the optimizer
            (default ``torch.optim.AdamW(params, lr=1e-2)``).
        scheduler: ``scheduler(opt)`` makes an LR scheduler, stepped after each optimizer step.
        data: ``(x, y)`` tensors to draw batches from (default :func:`~hotcb.testing.digits`).
        batch_size: samples per step.
        seed: seeds the default model and the batch generator ``gen``.
        weights: loss weights, one per term of :meth:`loss_terms` (default ``{"ce": 1.0}``).

    Attributes (besides :class:`StepDriver`'s): ``model``, ``opt``, ``sched``, ``data``,
    ``gen`` (the ``torch.Generator`` batches are drawn with: part of a checkpoint),
    ``lr`` (``{step: group 0's lr after the step's apply}``) and ``poison_at`` (a step whose
    loss is made NaN, to exercise anomaly guards; ``None``).

    Subclass hooks: :meth:`batch` and :meth:`loss_terms`.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        model: Any = None,
        optimizer: Callable[[Any], Any] | None = None,
        scheduler: Callable[[Any], Any] | None = None,
        data: tuple[Any, Any] | None = None,
        batch_size: int = 32,
        seed: int = 0,
        weights: MutableMapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        import torch

        from . import TinyMLP, digits

        self.model = model if model is not None else TinyMLP(seed=seed)
        params = self.model.parameters()
        self.opt = optimizer(params) if optimizer else torch.optim.AdamW(params, lr=1e-2)
        self.sched = scheduler(self.opt) if scheduler else None
        self.data = data if data is not None else digits()
        self.batch_size = batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.lr: dict[int, float] = {}
        self.poison_at: int | None = None
        super().__init__(run_dir, weights={"ce": 1.0} if weights is None else weights, **kwargs)

    def batch(self, step: int) -> tuple[Any, Any]:
        """The batch of ``step``: ``batch_size`` random rows of ``data`` (drawn with ``gen``)."""
        import torch

        x, y = self.data
        idx = torch.randint(0, len(x), (self.batch_size,), generator=self.gen)
        return x[idx], y[idx]

    def loss_terms(self, logits: Any, y: Any) -> dict[str, Any]:
        """The loss terms, by weight name; the loss is ``sum(weights[name] * term)``.
        Here: ``{"ce": cross_entropy(logits, y)}``."""
        from torch import nn

        return {"ce": nn.functional.cross_entropy(logits, y)}

    def train_step(self, step: int) -> Mapping[str, Any]:
        x, y = self.batch(step)
        logits = self.model(x)
        loss: Any = None
        for name, term in self.loss_terms(logits, y).items():
            weighted = self.weights.get(name, 1.0) * term
            loss = weighted if loss is None else loss + weighted
        if self.poison_at == step:
            loss = loss * float("nan")
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        if self.sched is not None:
            self.sched.step()
        env = {
            "framework": "torch",
            "model": self.model,
            "optimizer": self.opt,
            "loss": loss.detach(),
            "metrics": {"loss": loss.item()},
            "batch_size": len(y),
        }
        if self.sched is not None:
            env["scheduler"] = self.sched
        return env

    def after_apply(self, env: Mapping[str, Any]) -> None:
        self.lr[self.step] = self.opt.param_groups[0]["lr"]

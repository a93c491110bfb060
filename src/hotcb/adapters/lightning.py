"""PyTorch Lightning adapter: ``trainer = Trainer(callbacks=[HotCBLightning(kernel)])``.

The callback hands the kernel what Lightning owns at each safe point — after every optimizer
step (``on_train_batch_end``) and after each validation run (``on_validation_end``):

- ``step`` = ``trainer.global_step``; micro-batches of gradient accumulation are passed with
  ``is_accumulation_step=True`` (no command lands there, so a change always falls on an
  optimizer-step boundary);
- the optimizer(s) and LR scheduler(s) (``trainer.lr_scheduler_configs``): lr, weight_decay,
  momentum/betas become actuators, and a live lr change survives the scheduler;
- the LightningModule as ``model``: its ``mutable_state`` attribute (loss weights, knobs) is
  picked up;
- ``trainer.callback_metrics`` (train and val) as ``metrics``;
- ``stop`` → ``trainer.should_stop``; ``checkpoint`` → ``trainer.save_checkpoint(path)``
  (default ``<run dir>/checkpoints/hotcb-step<N>.ckpt``); ``pause`` blocks at the safe point.

The kernel's state goes into every Lightning checkpoint (``checkpoint["hotcb"]``) and comes back
with ``trainer.fit(ckpt_path=...)``. Works with ``lightning`` and with ``pytorch_lightning``:
:class:`HotCBLightning` derives from ``lightning.pytorch.Callback`` when that is installed (else
``pytorch_lightning.Callback``); ``HotCBPytorchLightning`` is the ``pytorch_lightning`` one for
code that imports the old package while both are installed.
"""

from __future__ import annotations

import os
from typing import Any

from ..kernel import HotKernel

_MISSING = 'hotcb.adapters.lightning needs Lightning: pip install "hotcb[lightning]"'

try:
    import lightning.pytorch as _pl
except ImportError:  # pragma: no cover - depends on what is installed
    try:
        import pytorch_lightning as _pl  # type: ignore[no-redef]
    except ImportError as exc:
        raise ImportError(_MISSING) from exc

__all__ = ["HotCBLightning"]  # and HotCBPytorchLightning, built on first access

_TRAIN = ("train_step_end",)
_MICRO = ("train_batch_end",)
_VAL = ("val_epoch_end",)


class _Hooks:
    """The hooks, shared by the ``lightning`` and ``pytorch_lightning`` callback classes."""

    def __init__(
        self,
        kernel: HotKernel,
        *,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        metrics_every: int = 1,
    ) -> None:
        super().__init__()
        self.kernel = kernel
        self.checkpoint_dir = os.fspath(checkpoint_dir) if checkpoint_dir is not None else None
        self.metrics_every = max(1, int(metrics_every))
        self._last_step: int | None = None
        self._trainer: Any = None

    # -- env --------------------------------------------------------------------------------
    def _env(self, trainer: Any, pl_module: Any, phase: str, accumulating: bool) -> dict[str, Any]:
        opts = list(trainer.optimizers)
        env: dict[str, Any] = {
            "framework": "lightning",
            "phase": phase,
            "step": int(trainer.global_step),
            "epoch": int(trainer.current_epoch),
            "model": pl_module,
            "trainer": trainer,
            "optimizers": opts,
            "schedulers": [cfg.scheduler for cfg in trainer.lr_scheduler_configs],
            "max_steps": trainer.max_steps,
            "is_accumulation_step": accumulating,
            "request_stop": self._request_stop,
            "save_checkpoint": self._save_checkpoint,
        }
        if opts:
            env["optimizer"] = opts[0]
        # callback_metrics is most of this hook's cost (Lightning assembles it on each access)
        if not accumulating and (phase == "val" or env["step"] % self.metrics_every == 0):
            metrics = dict(trainer.callback_metrics)
            if opts and "lr" not in metrics:
                metrics["lr"] = opts[0].param_groups[0]["lr"]
            if metrics:
                env["metrics"] = metrics
        return env

    def _request_stop(self) -> None:
        self._trainer.should_stop = True

    def _save_checkpoint(self, path: str | None = None) -> str:
        trainer = self._trainer
        if path is None:
            folder = self.checkpoint_dir or os.path.join(self.kernel.run_dir, "checkpoints")
            path = os.path.join(folder, f"hotcb-step{trainer.global_step}.ckpt")
        # every rank calls this (each applies the same op), as Lightning's strategies expect
        trainer.save_checkpoint(path)
        return path

    # -- hooks ------------------------------------------------------------------------------
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._trainer = trainer
        self._last_step = int(trainer.global_step)

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._trainer = trainer
        step = int(trainer.global_step)
        # global_step moves when an optimizer stepped in this batch; a batch that did not move it
        # is a micro-batch of gradient accumulation
        accumulating = step == self._last_step
        self._last_step = step
        env = self._env(trainer, pl_module, "train", accumulating)
        self.kernel.apply(env, _MICRO if accumulating else _TRAIN)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        # after the epoch-level val metrics are in callback_metrics (on_validation_epoch_end
        # comes before they are computed); not during the sanity check, nor in trainer.validate
        if trainer.sanity_checking or getattr(trainer.state.fn, "value", trainer.state.fn) != "fit":
            return
        self._trainer = trainer
        self.kernel.apply(self._env(trainer, pl_module, "val", False), _VAL)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.kernel.flush()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.kernel.flush()

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        checkpoint["hotcb"] = self.kernel.state_dict()

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("hotcb")
        if state:
            self.kernel.load_state_dict(state)


class HotCBLightning(_Hooks, _pl.Callback):
    """Lightning callback that steers training through a :class:`hotcb.HotKernel`.

    Args:
        kernel: the kernel of this run (one per training process; under DDP each rank has its
            own, on the same run directory).
        checkpoint_dir: where a ``checkpoint`` command without a path saves
            (default ``<run dir>/checkpoints``).
        metrics_every: forward ``trainer.callback_metrics`` every this many optimizer steps
            (validation metrics always).
    """


def __getattr__(name: str) -> Any:
    if name == "HotCBPytorchLightning":
        try:
            import pytorch_lightning
        except ImportError as exc:
            raise ImportError(
                'HotCBPytorchLightning needs pytorch_lightning: pip install "pytorch_lightning"'
            ) from exc
        if pytorch_lightning.Callback is _pl.Callback:
            cls: Any = HotCBLightning
        else:
            cls = type(
                "HotCBPytorchLightning",
                (_Hooks, pytorch_lightning.Callback),
                {"__doc__": HotCBLightning.__doc__, "__module__": __name__},
            )
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

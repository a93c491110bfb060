"""HuggingFace Trainer adapter: ``Trainer(..., callbacks=[HotCBHFCallback(kernel)])``.

- ``on_step_end`` (once per optimizer step, after the Trainer's scheduler stepped) is the safe
  point: ``kernel.apply`` gets ``step = state.global_step``, the model (its ``mutable_state``
  attribute is picked up), the optimizer and the Trainer's own LR scheduler — a live lr change
  rescales the scheduler's ``base_lrs``, so the next ``lr_scheduler.step()`` continues from it
  instead of undoing it.
- ``on_log`` sends the Trainer's logs (loss, grad_norm, learning_rate, ...) and ``on_evaluate``
  the eval metrics (event ``val_epoch_end``) to ``hotcb.metrics.jsonl``.
- ``stop`` → ``control.should_training_stop``; ``checkpoint`` → ``control.should_save`` (the
  Trainer saves ``<output_dir>/checkpoint-<step>`` at that step; a ``path`` in the command is
  not supported by the Trainer and is ignored); ``pause`` blocks at the safe point.
- ``on_save`` writes the kernel's state to ``hotcb_state.json`` in the checkpoint folder; on
  ``trainer.train(resume_from_checkpoint=...)`` it is read back before the first step (from
  ``<output_dir>/checkpoint-<resumed step>``, or from ``resume_from`` when given).

Under ``torchrun`` every rank has a kernel on the same run directory; rank 0 reads the commands
and broadcasts them, and every rank applies them at the same step (``hotcb.distributed``).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from .. import jsonl
from ..kernel import HotKernel

try:
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError('hotcb.adapters.hf needs transformers: pip install "hotcb[hf]"') from exc

__all__ = ["HotCBHFCallback", "STATE_FILE"]

log = logging.getLogger("hotcb")

#: The file in an HF checkpoint folder that holds ``kernel.state_dict()``.
STATE_FILE = "hotcb_state.json"
_TRAIN = ("train_step_end",)
_VAL = ("val_epoch_end",)


class HotCBHFCallback(TrainerCallback):
    """HF ``TrainerCallback`` that steers training through a :class:`hotcb.HotKernel`.

    Args:
        kernel: the kernel of this run (under torchrun: one per rank, same run directory).
        resume_from: a checkpoint folder whose ``hotcb_state.json`` to restore; by default the
            one the Trainer resumes from (``<output_dir>/checkpoint-<global_step>``).
    """

    def __init__(self, kernel: HotKernel, *, resume_from: str | os.PathLike[str] | None = None):
        self.kernel = kernel
        self.resume_from = os.fspath(resume_from) if resume_from is not None else None
        self._restored = False
        self._control: Any = None
        self._checkpoint_dir: str | None = None

    # -- env --------------------------------------------------------------------------------
    def _env(self, args: Any, state: Any, control: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        self._control = control
        self._checkpoint_dir = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        optimizer = kwargs.get("optimizer")
        scheduler = kwargs.get("lr_scheduler")
        inner = getattr(scheduler, "scheduler", scheduler)  # accelerate's AcceleratedScheduler
        # the optimizer actuators keep a scheduler in step only when it holds the very same
        # optimizer object: hand over the one the scheduler was built on
        owner = getattr(inner, "optimizer", None)
        if owner is not None and hasattr(owner, "param_groups"):
            optimizer = owner
        return {
            "framework": "hf",
            "phase": "train",
            "step": int(state.global_step),
            "epoch": int(state.epoch or 0),
            "model": kwargs.get("model"),
            "optimizer": optimizer,
            "scheduler": inner,
            "max_steps": state.max_steps,
            "request_stop": self._request_stop,
            "save_checkpoint": self._save_checkpoint,
        }

    def _request_stop(self) -> None:
        self._control.should_training_stop = True

    def _save_checkpoint(self, path: str | None = None) -> str | None:
        if path is not None:
            log.warning(
                "hotcb: the HF Trainer saves to <output_dir>/checkpoint-<step>; %r ignored", path
            )
        self._control.should_save = True
        return self._checkpoint_dir

    # -- hooks ------------------------------------------------------------------------------
    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self._restored:
            self._restored = True  # global_step is the resumed one only from here on
            folder = self.resume_from
            if folder is None and state.global_step > 0:
                folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if folder is not None:
                self._restore(folder)

    def _restore(self, folder: str) -> None:
        saved = jsonl.read_json(os.path.join(folder, STATE_FILE))
        if saved:
            self.kernel.load_state_dict(saved)
        else:
            log.warning("hotcb: no %s in %s; hotcb's state starts fresh", STATE_FILE, folder)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.kernel.apply(self._env(args, state, control, kwargs), _TRAIN)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        # straight to the metrics stream: no poll here, so no extra safe point (and, under
        # torchrun, no collective that depends on when each rank logs)
        metrics = self.kernel.metrics
        if not logs or any(k.startswith("eval_") for k in logs):
            return  # eval logs: on_evaluate records them, with its safe point
        if metrics is not None:
            try:
                metrics.log(int(state.global_step), logs, epoch=int(state.epoch or 0))
            except Exception as exc:  # never into the training loop
                log.warning("hotcb: could not record HF logs: %r", exc)

    def on_evaluate(
        self,
        args: Any,
        state: Any,
        control: Any,
        metrics: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        env = self._env(args, state, control, kwargs)
        env["phase"] = "val"
        if metrics:
            env["metrics"] = metrics
        self.kernel.apply(env, _VAL)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if state.is_world_process_zero and os.path.isdir(folder):
            try:
                jsonl.write_json_atomic(os.path.join(folder, STATE_FILE), self.kernel.state_dict())
            except OSError as exc:
                log.warning("hotcb: could not write %s in %s: %s", STATE_FILE, folder, exc)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.kernel.flush()

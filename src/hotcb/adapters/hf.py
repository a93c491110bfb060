"""HuggingFace Trainer adapter: ``Trainer(..., callbacks=[HotCBHFCallback(kernel)])``.

- ``on_step_end`` (once per optimizer step, after the Trainer's scheduler stepped) is the safe
  point: ``kernel.apply`` gets ``step = state.global_step``, the model (its ``mutable_state``
  attribute is picked up), the optimizer and the Trainer's own LR scheduler — a live lr change
  rescales the scheduler's ``base_lrs``, so the next ``lr_scheduler.step()`` continues from it
  instead of undoing it.
- ``on_log`` sends the Trainer's logs (loss, grad_norm, learning_rate, ...) to
  ``hotcb.metrics.jsonl`` and to the tuner (:meth:`hotcb.HotKernel.observe`: no safe point), and
  ``on_evaluate`` the eval metrics (event ``val_epoch_end``) with its safe point.
- ``stop`` → ``control.should_training_stop``; ``checkpoint`` → ``control.should_save`` (the
  Trainer saves ``<output_dir>/checkpoint-<step>`` at that step; a ``path`` in the command is
  not supported by the Trainer and is ignored); ``pause`` blocks at the safe point.
- ``evaluate`` → ``control.should_evaluate``: the Trainer evaluates right after this step (when
  it has an eval dataset: ``eval_strategy`` other than ``"no"``, or ``can_evaluate=True``).
- ``extend`` → ``state.max_steps``, the horizon the Trainer checks after every step
  (``DefaultFlowCallback.on_step_end``: ``global_step >= state.max_steps`` ends training);
  ``args.max_steps`` is read once, when ``train()`` starts, and is left alone. The loop over
  epochs is fixed when ``train()`` starts too (``ceil(max_steps / steps per epoch)`` epochs), so a
  sized dataset cannot run past the end of that last epoch: a longer horizon is cut there and
  the ledger says so (``requested``, ``limit``). Epochs cannot be extended.
- SIGTERM / Ctrl-C (``checkpoint_on_signal``, on by default): ``control.should_save`` and
  ``control.should_training_stop`` at the next step end, so ``train()`` saves
  ``checkpoint-<step>`` and returns normally. With ``enable_jit_checkpoint`` the Trainer's own
  SIGTERM handling is left to it (Ctrl-C is still caught).
- ``on_save`` writes the kernel's state to ``hotcb_state.json`` in the checkpoint folder; on
  ``trainer.train(resume_from_checkpoint=...)`` it is read back before the first step (from
  ``<output_dir>/checkpoint-<resumed step>``, or from ``resume_from`` when given).

Under ``torchrun`` every rank has a kernel on the same run directory; rank 0 reads the commands
and broadcasts them, and every rank applies them at the same step (``hotcb.distributed``).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
from types import CodeType, FrameType
from typing import Any

from .. import jsonl
from .._signals import DEFAULT_SIGNALS
from ..errors import HotcbError
from ..kernel import HotKernel
from . import LazyEnv

try:
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError('hotcb.adapters.hf needs transformers: pip install "hotcb[hf]"') from exc

__all__ = ["STATE_FILE", "TENSOR_STATE_FILE", "HotCBHFCallback"]

log = logging.getLogger("hotcb")

_HANDLER_MODULE = TrainerCallback.__module__  # the module whose CallbackHandler calls ours

#: The file in an HF checkpoint folder that holds ``kernel.state_dict()``.
STATE_FILE = "hotcb_state.json"
#: The same state through ``torch.save``, so a callback's tensors come back as tensors (JSON
#: holds them as lists); read first, with ``weights_only=True``.
TENSOR_STATE_FILE = "hotcb_state.pt"
_TRAIN = ("train_step_end",)
_VAL = ("val_epoch_end",)
#: Every key of the env this callback hands over; those after ``step`` are built only when the
#: kernel reads one (see :class:`hotcb.adapters.LazyEnv`).
_KEYS = frozenset(
    {
        "framework",
        "phase",
        "step",
        "epoch",
        "model",
        "optimizer",
        "scheduler",
        "max_steps",
        "max_epochs",
        "request_stop",
        "save_checkpoint",
        "set_max_steps",
        "set_max_epochs",
        "request_evaluate",
    }
)
_KEYS_METRICS = _KEYS | {"metrics"}


def _fill(
    hooks: HotCBHFCallback,
    args: Any,
    state: Any,
    control: Any,
    kwargs: dict[str, Any],
    key: str,
    values: dict[str, Any],
) -> None:
    """The rest of the env (all of it at once: it is cheap once anything is needed)."""
    optimizer = kwargs.get("optimizer")
    scheduler = kwargs.get("lr_scheduler")
    inner = getattr(scheduler, "scheduler", scheduler)  # accelerate's AcceleratedScheduler
    # the optimizer actuators keep a scheduler in step only when it holds the very same
    # optimizer object: hand over the one the scheduler was built on
    owner = getattr(inner, "optimizer", None)
    if owner is not None and hasattr(owner, "param_groups"):
        optimizer = owner
    folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")

    def request_stop() -> None:
        control.should_training_stop = True

    def save_checkpoint(path: str | None = None) -> str:
        if path is not None:
            log.warning(
                "hotcb: the HF Trainer saves to <output_dir>/checkpoint-<step>; %r ignored", path
            )
        control.should_save = True
        return folder

    values["epoch"] = int(state.epoch or 0)
    values["model"] = kwargs.get("model")
    values["optimizer"] = optimizer
    values["scheduler"] = inner
    values["max_steps"] = state.max_steps
    values["max_epochs"] = state.num_train_epochs
    values["request_stop"] = request_stop
    values["save_checkpoint"] = save_checkpoint
    values["set_max_steps"] = functools.partial(hooks.set_max_steps, state, control)
    values["set_max_epochs"] = _no_epochs
    values["request_evaluate"] = functools.partial(
        hooks.request_evaluate, args, control, values.get("phase") == "val"
    )


def _no_epochs(max_epochs: int) -> None:
    raise HotcbError(
        "the HF Trainer fixes its number of epochs when train() starts; extend by steps "
        "(hotcb extend --steps N or --to-step S)"
    )


def _capacity(args: Any, state: Any, dataloader: Any) -> tuple[int, int] | None:
    """``(epochs, steps per epoch)`` of the loop ``train()`` set up: the Trainer cannot step
    past their product. None for a dataloader without a length (then it loops until
    ``state.max_steps``)."""
    try:
        batches = len(dataloader)
    except TypeError:
        return None
    accumulate = max(1, int(args.gradient_accumulation_steps))
    per_epoch = max(batches // accumulate + int(batches % accumulate > 0), 1)
    max_steps = int(state.max_steps)
    return max_steps // per_epoch + int(max_steps % per_epoch > 0), per_epoch


class HotCBHFCallback(TrainerCallback):
    """HF ``TrainerCallback`` that steers training through a :class:`hotcb.HotKernel`.

    Args:
        kernel: the kernel of this run (under torchrun: one per rank, same run directory).
        resume_from: a checkpoint folder whose ``hotcb_state.json`` to restore; by default the
            one the Trainer resumes from (``<output_dir>/checkpoint-<global_step>``).
        can_evaluate: whether ``evaluate`` may ask the Trainer to evaluate. Default: when
            ``args.eval_strategy`` is not ``"no"`` (the Trainer then has an eval dataset; one
            without would raise inside its loop). Pass True when you gave the Trainer an eval
            dataset but no evaluation schedule.
        checkpoint_on_signal: on SIGTERM / Ctrl-C, save a checkpoint at the next step end and
            stop (see :meth:`hotcb.HotKernel.catch_signals`); installed when training begins and
            released when it ends.
    """

    def __init__(
        self,
        kernel: HotKernel,
        *,
        resume_from: str | os.PathLike[str] | None = None,
        can_evaluate: bool | None = None,
        checkpoint_on_signal: bool = True,
    ):
        self.kernel = kernel
        self.resume_from = os.fspath(resume_from) if resume_from is not None else None
        self.can_evaluate = can_evaluate
        self.checkpoint_on_signal = checkpoint_on_signal
        self._restored = False
        self._caught = False  # this callback installed the signal handlers (and releases them)
        self._capacity: tuple[int, int] | None = None
        # a logging step's env whose train_step_end waits for the Trainer's logs (on_log)
        self._held: LazyEnv | None = None
        self._training = False  # inside train(): an evaluation is one of its safe points
        self._evaluate_next = False  # an evaluate read during an evaluation, for the next step

    # -- env --------------------------------------------------------------------------------
    def _env(
        self,
        args: Any,
        state: Any,
        control: Any,
        kwargs: dict[str, Any],
        phase: str = "train",
        metrics: dict[str, Any] | None = None,
    ) -> LazyEnv:
        """The env of this safe point: what is at hand now, the rest when the kernel reads it."""
        known: dict[str, Any] = {"framework": "hf", "phase": phase, "step": int(state.global_step)}
        keys = _KEYS
        if metrics:
            known["metrics"] = metrics
            keys = _KEYS_METRICS
        return LazyEnv(known, keys, functools.partial(_fill, self, args, state, control, kwargs))

    # -- what the kernel's env calls ----------------------------------------------------------
    def request_evaluate(self, args: Any, control: Any, evaluating: bool = False) -> str:
        can = self.can_evaluate
        if can is None:
            strategy = getattr(args, "eval_strategy", "no")
            can = getattr(strategy, "value", strategy) != "no"
        if not can:
            raise HotcbError(
                "this Trainer has eval_strategy='no', so hotcb cannot tell whether it has an "
                "eval dataset (evaluating without one raises inside the Trainer's loop); pass "
                "HotCBHFCallback(kernel, can_evaluate=True) if it has one"
            )
        if evaluating:
            # read during the Trainer's evaluation: this step's is over, and the next step's
            # begin clears the flag; set at the next step's end, which evaluates then
            self._evaluate_next = True
            return "at_next_step_end"
        control.should_evaluate = True
        return "at_step_end"

    def set_max_steps(self, state: Any, control: Any, max_steps: int) -> dict[str, Any]:
        facts: dict[str, Any] = {}
        if self._capacity is not None and max_steps > self._capacity[0] * self._capacity[1]:
            epochs, per_epoch = self._capacity
            max_steps = epochs * per_epoch
            facts = {
                "max_steps": max_steps,
                "limit": f"the Trainer's loop ends at step {max_steps}: train() fixed {epochs} "
                f"epoch(s) of {per_epoch} steps when it started",
            }
        old, state.max_steps = state.max_steps, max_steps
        if state.global_step >= max_steps:
            control.should_training_stop = True
        elif (
            control.should_training_stop
            and state.global_step >= old
            and not self.kernel.stop_requested
        ):
            control.should_training_stop = False  # set at this step for the old horizon
        return facts

    # -- hooks ------------------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # another train() with this callback: a stop the last one ended on does not hold for it
        self.kernel.reopen()
        self._training = True
        self._capacity = _capacity(args, state, kwargs.get("train_dataloader"))
        # (a train() that raised kept this callback's handlers: they are its again)
        if self.checkpoint_on_signal and (self._caught or not self.kernel.signals_caught):
            # with enable_jit_checkpoint the Trainer saves on SIGTERM itself
            jit = getattr(args, "enable_jit_checkpoint", False)
            signals = (signal.SIGINT,) if jit else DEFAULT_SIGNALS
            # a train() that raises calls no hook: a later Ctrl-C, outside the loop, must not
            # wait for a safe point that never comes
            self._caught = bool(self.kernel.catch_signals(signals, within=_loop_code()))

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self._restored:
            self._restored = True  # global_step is the resumed one only from here on
            folder = self.resume_from
            if folder is None and state.global_step > 0:
                folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if folder is not None:
                self._restore(folder, state, control)

    def _restore(self, folder: str, state: Any, control: Any) -> None:
        saved = _load_tensors(folder) or jsonl.read_json(os.path.join(folder, STATE_FILE))
        if saved:
            self.kernel.load_state_dict(saved)
            horizon = self.kernel.horizon.get("max_steps")
            if horizon is not None:  # the run had been extended: go on to that horizon
                self.set_max_steps(state, control, horizon)
        else:
            log.warning("hotcb: no %s in %s; hotcb's state starts fresh", STATE_FILE, folder)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # most steps: nothing due -> no env, no apply() (the Trainer's logs reach the metrics
        # stream and the tuner through on_log)
        if self._held is not None:  # its logs never came (another callback cancelled them)
            held, self._held = self._held, None
            self.kernel.observe(held, _TRAIN)
        if self._evaluate_next:
            self._evaluate_next = False
            control.should_evaluate = True
        if self.kernel.nothing_due(state.global_step):
            return
        env = self._env(args, state, control, kwargs)
        if control.should_log:
            # the Trainer logs this step's loss right after this hook (on_log): loaded
            # callbacks (one this apply loads too) get the step's event there, with its
            # metrics; commands land here, and a replayed recipe's entries at the event too
            # (given no event, they fired a step late at every logging step)
            self.kernel.apply(env, _TRAIN, deliver=False)
            if self.kernel.takes_events:
                self._held = env
            return
        self.kernel.apply(env, _TRAIN)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        # the training logs come after this step's safe point (on_step_end): recorded and shown
        # to the tuner with no poll, so no extra safe point (and, under torchrun, no collective
        # that depends on when each rank logs)
        if not logs or any(k.startswith("eval_") for k in logs):
            return  # eval logs: on_evaluate records them, with its safe point
        step = int(state.global_step)
        if self._held is not None and self._held["step"] == step:
            # the step's event, held back at on_step_end, with its logs (recorded too)
            self._held = None
            self.kernel.observe(self._env(args, state, control, kwargs, metrics=logs), _TRAIN)
            return
        self.kernel.observe({"step": step, "epoch": int(state.epoch or 0), "metrics": logs})

    def on_evaluate(
        self,
        args: Any,
        state: Any,
        control: Any,
        metrics: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not self._training:
            # trainer.evaluate() outside train(): no step comes after it to act on a command
            # (a checkpoint, an evaluate) and a pause would hang it; commands wait for train()
            return
        self.kernel.apply(self._env(args, state, control, kwargs, "val", metrics), _VAL)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if state.is_world_process_zero and os.path.isdir(folder):
            saved = self.kernel.state_dict()
            try:
                jsonl.write_json_atomic(os.path.join(folder, STATE_FILE), saved)
                _save_tensors(folder, saved)
            except OSError as exc:
                log.warning("hotcb: could not write %s in %s: %s", STATE_FILE, folder, exc)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._held is not None:  # the last step's logs never came
            held, self._held = self._held, None
            self.kernel.observe(held, _TRAIN)
        # on_step_end skips apply() when nothing is due: the last steps may have had none
        self.kernel.reached(int(state.global_step))
        self._training = self._evaluate_next = False
        if self._caught:
            self._caught = False
            self.kernel.release_signals()
        # training is over: `hotcb status` says "finished at step N" (not "crashed" once the
        # script exits without kernel.close()); another train() opens the run again
        self.kernel.close()


def _loop_code() -> CodeType | None:
    """The code of the Trainer's loop that calls ``on_train_begin``: the first caller above
    the callback handler (``Trainer._inner_training_loop``, or a subclass's own loop)."""
    frame: FrameType | None = sys._getframe(2)  # above on_train_begin
    while frame is not None and frame.f_globals.get("__name__") == _HANDLER_MODULE:
        frame = frame.f_back
    return frame.f_code if frame is not None else None


def _save_tensors(folder: str, saved: dict[str, Any]) -> None:
    """``saved`` through ``torch.save`` beside the JSON file, when it holds a tensor (a
    callback's state): JSON would bring it back as a list."""
    import torch

    if not _holds_tensor(saved, torch.Tensor):
        return
    # a new temporary file of a random name: none that a writer of the folder planted
    with jsonl.atomic_writer(os.path.join(folder, TENSOR_STATE_FILE)) as f:
        torch.save(saved, f)


def _holds_tensor(obj: Any, tensor: type, depth: int = 0) -> bool:
    if isinstance(obj, tensor):
        return True
    if depth > 32:
        return False
    if isinstance(obj, dict):
        return any(_holds_tensor(v, tensor, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_holds_tensor(v, tensor, depth + 1) for v in obj)
    return False


def _load_tensors(folder: str) -> dict[str, Any] | None:
    """The state :func:`_save_tensors` wrote, or None (none there, or one that
    ``weights_only`` refuses: the JSON file then)."""
    path = os.path.join(folder, TENSOR_STATE_FILE)
    if not os.path.isfile(path):
        return None
    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a value only pickle could bring back: never unpickled here
        log.warning("hotcb: %s in %s not read (%s); using %s", TENSOR_STATE_FILE, folder, exc,
                    STATE_FILE)  # fmt: skip
        return None
    return loaded if isinstance(loaded, dict) else None

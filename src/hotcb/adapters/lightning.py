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
- ``extend`` → ``trainer.fit_loop.epoch_loop.max_steps`` / ``trainer.fit_loop.max_epochs``, the
  attributes Lightning's own LR finder and ``StochasticWeightAveraging`` write during fit; the
  fit loop reads them after every batch. A horizon at or below ``global_step`` ends fit after
  this batch.
- ``evaluate`` → validation at Lightning's next validation check, brought forward: Lightning 2.x
  has no public way to start validation inside ``fit()`` at once (``trainer.validate()`` there
  breaks the fit loop, and the loops that run it are private classes), but after every training
  batch the fit loop asks whether to validate, from Trainer attributes it reads each time.

  - Step-based validation (``check_val_every_n_epoch=None``, ``val_check_interval=N``: every N
    batches across epochs, as in ``examples/lightning_digits.py``): Lightning validates after
    a batch when ``(total_batch_idx + 1) % trainer.val_check_batch == 0``. The callback sets
    ``trainer.val_check_batch = 1`` (computed by Lightning from ``val_check_interval`` at the
    start of fit) in ``on_train_batch_end``, which comes before that check for the same batch,
    so validation runs right after this training batch; the callback puts the old value back
    in ``on_validation_end``, and the regular schedule (multiples of N) is unchanged. The
    ledger says ``"evaluate": "runs after training step S"``. Only on a Lightning 2.x whose
    Trainer has that attribute (else refused with the reason); should validation not run
    after that batch, the value is put back at the next batch and the ledger says
    ``"did not run"``.
  - Epoch-based validation: the callback sets ``trainer.check_val_every_n_epoch`` to 1 (the
    attribute Lightning's own ``fast_dev_run`` sets) until the validation has run, then puts it
    back. Validation then runs at this epoch's next validation check: its end with the default
    ``val_check_interval=1.0``. The ledger says ``"evaluate": "deferred to the end of epoch N"``.

  An entry with ``"evaluate": "ran"`` follows when the validation has run (``"did not run"``
  when fit ended first). Refused with the reason when there is nothing to validate (no val
  dataloader, no ``validation_step``, ``limit_val_batches=0``) or when validation runs on a
  clock (a time-based ``val_check_interval``: no batch or epoch to bring it to).
- SIGTERM / Ctrl-C (``checkpoint_on_signal``, on by default): a checkpoint at the next safe
  point, then ``trainer.should_stop``. In one process Lightning itself answers SIGTERM by
  raising ``SIGTERMException`` out of ``fit()`` after that batch (the checkpoint is saved by
  then; catch it if your script should exit 0); Ctrl-C ends ``fit()`` normally. Under DDP
  (``world_size > 1``) hotcb's handler is the only SIGTERM handler while fit trains: rank 0
  sends the checkpoint and the stop to every rank for the next agreed poll step, every rank
  saves and stops there, and ``fit()`` returns normally (no ``SIGTERMException``).

The kernel's state goes into every Lightning checkpoint (``checkpoint["hotcb"]``) and comes back
with ``trainer.fit(ckpt_path=...)``. Works with ``lightning`` and with ``pytorch_lightning``:
:class:`HotCBLightning` derives from ``lightning.pytorch.Callback`` when that is installed (else
``pytorch_lightning.Callback``); ``HotCBPytorchLightning`` is the ``pytorch_lightning`` one for
code that imports the old package while both are installed.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import signal
import sys
from typing import Any

from ..errors import HotcbError
from ..kernel import HotKernel
from . import LazyEnv

_MISSING = 'hotcb.adapters.lightning needs Lightning: pip install "hotcb[lightning]"'

try:
    import lightning.pytorch as _pl
except ImportError:  # pragma: no cover - depends on what is installed
    try:
        import pytorch_lightning as _pl  # type: ignore[no-redef]
    except ImportError as exc:
        raise ImportError(_MISSING) from exc

__all__ = ["HotCBLightning"]  # and HotCBPytorchLightning, built on first access

#: What Lightning raises out of fit() after a SIGTERM (Lightning >= 2.1; None before).
_SIGTERM_EXCEPTION: Any = getattr(
    importlib.import_module(_pl.__name__ + ".utilities.exceptions"), "SIGTERMException", None
)

_TRAIN = ("train_step_end",)
_MICRO = ("train_batch_end",)
_VAL = ("val_epoch_end",)
_KEEP = object()  # a deferred evaluate left check_val_every_n_epoch as it was
#: Every key of the env this callback hands over; those after ``trainer`` are built only when the
#: kernel reads one (see :class:`hotcb.adapters.LazyEnv`).
_KEYS = frozenset(
    {
        "framework",
        "phase",
        "step",
        "is_accumulation_step",
        "model",
        "trainer",
        "epoch",
        "optimizers",
        "optimizer",
        "schedulers",
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


class _Hooks:
    """The hooks, shared by the ``lightning`` and ``pytorch_lightning`` callback classes."""

    def __getstate__(self) -> Any:
        # a spawning strategy pickles the Trainer, callbacks and all, into its new processes:
        # the kernel holds open files and handlers, and the pickle error named a lambda
        raise TypeError(
            "HotCBLightning cannot be sent to processes Lightning spawns (strategy="
            "'ddp_spawn'): use strategy='ddp' from a script, where each rank runs the script "
            "and builds its own HotKernel and callback"
        )

    def __init__(
        self,
        kernel: HotKernel,
        *,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        metrics_every: int = 1,
        checkpoint_on_signal: bool = True,
    ) -> None:
        super().__init__()
        self.kernel = kernel
        self.checkpoint_dir = os.fspath(checkpoint_dir) if checkpoint_dir is not None else None
        self.metrics_every = max(1, int(metrics_every))
        self.checkpoint_on_signal = checkpoint_on_signal
        self._last_step: int | None = None
        #: the last batch was a micro-batch: a validation now (val_check_interval not a
        #: multiple of accumulate_grad_batches) falls inside an accumulation window
        self._mid_window = False
        #: a deferred ``evaluate``: the step it was asked at, the epoch it runs in, ``batch``:
        #: the ``total_batch_idx`` it validates after (step-based validation; None: at the
        #: epoch's validation check), and the ``val_check_batch`` (step-based) or
        #: ``check_val_every_n_epoch`` to put back once it ran (_KEEP: it was not changed)
        self._eval: dict[str, Any] | None = None
        #: callback_metrics as the last validation left them, and the last train step's
        #: record (see _fill)
        self._val_metrics: dict[str, Any] = {}
        self._train_metrics: dict[str, Any] = {}
        self._train_step: int | None = None  # the step of that record
        self._caught = False  # this callback installed the signal handlers (and releases them)
        self._trained = False  # on_train_end came: the fit trained to its end

    # -- env --------------------------------------------------------------------------------
    def _env(
        self,
        trainer: Any,
        pl_module: Any,
        step: int,
        phase: str,
        accumulating: bool,
        metrics: bool | None = None,
    ) -> LazyEnv:
        """The env of this safe point: what is at hand now, the rest when the kernel reads it.
        ``metrics`` is a key on the steps that record metrics (validation: always)."""
        known = {
            "framework": "lightning",
            "phase": phase,
            "step": step,
            "is_accumulation_step": accumulating,
            "model": pl_module,
            "trainer": trainer,
        }
        if metrics is None:
            metrics = not accumulating and (phase == "val" or step % self.metrics_every == 0)
        return LazyEnv(known, _KEYS_METRICS if metrics else _KEYS, self._fill)

    def _fill(self, key: str, values: dict[str, Any]) -> None:
        trainer = values["trainer"]
        if key == "metrics":
            # most of what this callback costs when it is read: Lightning assembles
            # callback_metrics on each access
            metrics = dict(trainer.callback_metrics)
            if values["phase"] == "val":
                self._val_metrics = metrics.copy()
                # the training metrics of the step it follows come along, recorded already;
                # at that very step a name is not recorded twice whatever its value (after a
                # micro-batch of gradient accumulation it holds that micro-batch's loss)
                same_step = self._train_step == values["step"]
                for name, value in self._train_metrics.items():
                    if name in metrics and (same_step or _same(metrics[name], value)):
                        del metrics[name]
            else:
                # what the last validation logged stays in callback_metrics until the next
                # one: recorded at the validation, not again on every train step (a reader
                # would count one validation as hundreds). By value: the user's code reading
                # callback_metrics after the validation makes Lightning build new tensors
                for name, value in self._val_metrics.items():
                    if name in metrics and _same(metrics[name], value):
                        del metrics[name]
                self._train_metrics = metrics.copy()
                self._train_step = values["step"]
            opts = trainer.optimizers
            if opts and "lr" not in metrics:
                metrics["lr"] = opts[0].param_groups[0]["lr"]
            values["metrics"] = metrics
            return
        values["epoch"] = int(trainer.current_epoch)  # recorded with the metrics
        if key == "epoch":
            return
        opts = list(trainer.optimizers)
        values["optimizers"] = opts
        values["optimizer"] = opts[0] if opts else None
        values["schedulers"] = [cfg.scheduler for cfg in trainer.lr_scheduler_configs]
        values["max_steps"] = trainer.max_steps
        values["max_epochs"] = trainer.max_epochs
        values["request_stop"] = functools.partial(_request_stop, trainer)
        values["save_checkpoint"] = functools.partial(self._save_checkpoint, trainer)
        values["set_max_steps"] = functools.partial(_set_max_steps, trainer)
        values["set_max_epochs"] = functools.partial(_set_max_epochs, trainer)
        values["request_evaluate"] = functools.partial(self._request_evaluate, trainer)

    def _save_checkpoint(self, trainer: Any, path: str | None = None) -> str:
        if path is None:
            folder = self.checkpoint_dir or os.path.join(self.kernel.run_dir, "checkpoints")
            path = os.path.join(folder, f"hotcb-step{trainer.global_step}.ckpt")
        # every rank calls this (each applies the same op), as Lightning's strategies expect
        trainer.save_checkpoint(path)
        return path

    def _request_evaluate(self, trainer: Any) -> str:
        """``evaluate``: validation after this training batch (step-based validation) or at this
        epoch's next validation check (see the module docstring); what the ledger entry says."""
        _check_can_evaluate(trainer)
        if trainer.check_val_every_n_epoch is None:
            return self._evaluate_after_batch(trainer)
        epoch = int(trainer.current_epoch)
        if trainer.validating and trainer.is_last_batch:
            epoch += 1  # asked right after this epoch's last validation: the next epoch's
        interval = trainer.val_check_interval  # a number: _check_can_evaluate saw to it
        where = (
            f"the end of epoch {epoch}"
            if interval == 1.0
            else f"epoch {epoch}'s next validation check (val_check_interval={interval!r})"
        )
        if self._eval is not None:
            return f"deferred to {where} (already asked at step {self._eval['step']})"
        every = trainer.check_val_every_n_epoch
        scheduled = (epoch + 1) % every == 0  # this epoch validates anyway
        self._eval = {"step": int(trainer.global_step), "epoch": epoch, "batch": None,
                      "restore": _KEEP if scheduled else every}  # fmt: skip
        if not scheduled:
            # read by the fit loop at every batch end; put back in on_validation_end
            trainer.check_val_every_n_epoch = 1
        return f"deferred to {where}"

    def _evaluate_after_batch(self, trainer: Any) -> str:
        """Step-based validation: ``val_check_batch = 1`` makes the fit loop validate after this
        training batch (its check comes after ``on_train_batch_end``); put back in
        ``on_validation_end``."""
        step = int(trainer.global_step)
        batch = int(trainer.fit_loop.epoch_loop.total_batch_idx)
        if trainer.validating:
            # asked in on_validation_end, after this batch's check: the next batch validates
            batch += 1
            where = "runs after the next training batch"
        else:
            where = f"runs after training step {step}"
        if self._eval is not None:
            return f"{where} (already asked at step {self._eval['step']})"
        self._eval = {"step": step, "epoch": int(trainer.current_epoch), "batch": batch,
                      "restore": trainer.val_check_batch}  # fmt: skip
        trainer.val_check_batch = 1
        return where

    def _evaluated(self, trainer: Any, ran: bool, why: str | None = None) -> None:
        """The deferred ``evaluate`` ran (or fit ended first, or ``why`` it did not run): the
        schedule goes back, and the ledger says so."""
        ev, self._eval = self._eval, None
        if ev is None:
            return
        if ev["batch"] is not None:
            trainer.val_check_batch = ev["restore"]
        elif ev["restore"] is not _KEEP:
            trainer.check_val_every_n_epoch = ev["restore"]
        fields: dict[str, Any] = {
            "source": "lightning", "module": "control", "op": "evaluate",
            "step": int(trainer.global_step), "requested_step": ev["step"], "epoch": ev["epoch"],
        }  # fmt: skip
        if ran:
            fields.update(decision="applied", event=_VAL[0], evaluate="ran")
        else:
            if why is None:
                why = "fit ended before " + (
                    f"epoch {ev['epoch']}'s validation" if ev["batch"] is None
                    else "the validation after the next training batch"
                )  # fmt: skip
            fields.update(decision="noop", evaluate="did not run",
                          error=f"{why}: the evaluate asked at step {ev['step']} did not "
                          "run")  # fmt: skip
        self.kernel.record(fields)

    # -- hooks ------------------------------------------------------------------------------
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        # before fit registers Lightning's own SIGTERM handler, which then chains this one (in
        # one process; under DDP _own_sigterm sets Lightning's aside)
        if stage == "fit" and self.checkpoint_on_signal and not self.kernel.signals_caught:
            self._caught = bool(self.kernel.catch_signals())

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self._caught:
            self._caught = False
            self.kernel.release_signals()
        if self._trained:
            # the fit trained to its end: `hotcb status` says "finished at step N", not
            # "crashed" once a script that never calls kernel.close() exits; another fit opens
            # the run again. Here, after Lightning put its signal handlers back (a close in
            # on_train_end left hotcb's, closed, installed for good)
            self._trained = False
            self.kernel.close()

    def on_sanity_check_start(self, trainer: Any, pl_module: Any) -> None:
        self._own_sigterm(trainer)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        # another fit with this callback: a stop the last fit ended on does not hold for it
        self.kernel.reopen()
        self._own_sigterm(trainer)
        step = self._last_step = int(trainer.global_step)
        self._mid_window = False
        if step > 0:
            # resumed from a checkpoint saved at a batch's end: Lightning does not run that
            # step's validation again, so what was due at it (a recipe's entry at
            # val_epoch_end, a change the resume re-applies at that step) lands here, before
            # the first batch; a live command waits for the first batch's safe point
            env = self._env(trainer, pl_module, step, "train", False, False)
            self.kernel.catch_up(env, _VAL)

    def _own_sigterm(self, trainer: Any) -> None:
        """Under DDP, hotcb's SIGTERM handler alone, once Lightning has registered its own (after
        ``on_fit_start``; these hooks come after that). Lightning's would end ``fit()`` with
        ``SIGTERMException`` on every rank right after the batch the signal came in, before the
        ranks agree on hotcb's checkpoint and stop (rank 0 sends them to every rank at the next
        poll step); without it every rank saves and stops at that step and ``fit()`` returns.
        Lightning's teardown puts hotcb's handler back, ``teardown`` the one before it."""
        if trainer.world_size > 1 and signal.SIGTERM in self.kernel.signals_caught:
            self.kernel.reclaim_signals((signal.SIGTERM,))

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        ev = self._eval
        if (
            ev is not None
            and ev["batch"] is not None
            and trainer.fit_loop.epoch_loop.total_batch_idx > ev["batch"]
        ):
            # the batch it was due after went by without a validation (Lightning skipped it):
            # the schedule goes back
            self._evaluated(trainer, False, "Lightning did not validate after that batch")
        step = int(trainer.global_step)
        # global_step moves when an optimizer stepped in this batch; a batch that did not move it
        # is a micro-batch of gradient accumulation
        accumulating = step == self._last_step
        self._last_step = step
        self._mid_window = accumulating
        kernel = self.kernel
        records = not accumulating and step % self.metrics_every == 0 and kernel.metrics is not None
        # most steps: no metrics to record, nothing due -> no env, no apply()
        if not records and kernel.nothing_due(step):
            return
        env = self._env(trainer, pl_module, step, "train", accumulating)
        kernel.apply(env, _MICRO if accumulating else _TRAIN)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        # after the epoch-level val metrics are in callback_metrics (on_validation_epoch_end
        # comes before they are computed); not during the sanity check, nor in trainer.validate
        if trainer.sanity_checking or getattr(trainer.state.fn, "value", trainer.state.fn) != "fit":
            return
        self._evaluated(trainer, ran=True)
        # inside an accumulation window no command lands: half the window's micro-batches
        # would have the old value, half the new, in one gradient (its metrics still count)
        env = self._env(trainer, pl_module, int(trainer.global_step), "val", self._mid_window,
                        metrics=True)  # fmt: skip
        self.kernel.apply(env, _VAL)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._evaluated(trainer, ran=False)
        # a batch end with nothing due skips apply() (metrics_every > 1): the run's last step
        self.kernel.reached(int(trainer.global_step))
        self.kernel.flush()
        self._trained = True  # teardown closes the run (not a fit that raised)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        kernel = self.kernel
        if (
            _SIGTERM_EXCEPTION is not None
            and isinstance(exception, _SIGTERM_EXCEPTION)
            and kernel.signal_pending
            and trainer.world_size == 1
        ):
            # Lightning raised at a step boundary (during validation, or between micro-batches)
            # before a safe point took the signal: save and stop here, like OnExceptionCheckpoint.
            # Not under DDP: there rank 0 sends the checkpoint as a command for the next poll
            # step, which this fit will not reach, and apply() could enter a poll's collective
            # that the other ranks never call (the signal came before _own_sigterm, then)
            env = self._env(trainer, pl_module, int(trainer.global_step), "train", False, False)
            kernel.apply(env, _TRAIN)
        self._evaluated(trainer, ran=False)
        kernel.flush()
        self._fit_raised(trainer, exception)

    def _fit_raised(self, trainer: Any, exception: BaseException) -> None:
        """The fit ends by ``exception``, and Lightning calls no ``teardown`` hook then: Ctrl-C
        and SIGTERM must act as without hotcb again (a script that catches the error, a
        notebook, a sweep: the first Ctrl-C after it was swallowed). Lightning's own handlers
        go first (it would put hotcb's back after this hook), then hotcb's. A stop hotcb made
        of a SIGTERM (checkpoint, then Lightning's ``SIGTERMException``) ends the run
        ``stopped at step N``, not ``crashed``."""
        connector = getattr(trainer, "_signal_connector", None)
        if connector is not None and self._caught:
            # (another Lightning's: its own teardown puts them back later)
            with contextlib.suppress(Exception):
                connector.teardown()
        if self._caught:
            self._caught = False
            self.kernel.release_signals()
        if (self.kernel.stop_requested and _SIGTERM_EXCEPTION is not None
                and isinstance(exception, _SIGTERM_EXCEPTION)):  # fmt: skip
            self.kernel.close()

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        checkpoint["hotcb"] = self.kernel.state_dict()

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("hotcb")
        if state:
            self.kernel.load_state_dict(state)
            # before the fit loop looks at its limits: a run extended past the script's
            # max_steps goes on to the horizon it had
            horizon = self.kernel.horizon
            if "max_steps" in horizon:
                _set_max_steps(trainer, horizon["max_steps"])
            if "max_epochs" in horizon:
                _set_max_epochs(trainer, horizon["max_epochs"])


class HotCBLightning(_Hooks, _pl.Callback):
    """Lightning callback that steers training through a :class:`hotcb.HotKernel`.

    Args:
        kernel: the kernel of this run (one per training process; under DDP each rank has its
            own, on the same run directory).
        checkpoint_dir: where a ``checkpoint`` command without a path saves
            (default ``<run dir>/checkpoints``).
        metrics_every: forward ``trainer.callback_metrics`` every this many optimizer steps
            (validation metrics always). Reading them is most of what the callback costs at a
            step that records them; the other steps cost about as much as a bare
            ``kernel.apply`` (the env is built only when the kernel has work for it).
        checkpoint_on_signal: on SIGTERM / Ctrl-C, save a checkpoint at the next safe point and
            stop (see :meth:`hotcb.HotKernel.catch_signals`); installed for ``fit`` and released
            when it ends. Under DDP every rank saves and stops at the same step and ``fit()``
            returns (Lightning's own SIGTERM handler is set aside while fit trains).
    """


def _same(a: Any, b: Any) -> bool:
    """The same number (a tensor Lightning rebuilt from the same value, or the object)."""
    if a is b:
        return True
    try:
        return float(a) == float(b)
    except (TypeError, ValueError, RuntimeError):  # not one number
        return False


def _request_stop(trainer: Any) -> None:
    trainer.should_stop = True


def _set_max_steps(trainer: Any, max_steps: int) -> dict[str, Any]:
    trainer.fit_loop.epoch_loop.max_steps = max_steps  # FitLoop.max_steps reads it
    epochs = trainer.max_epochs
    # both limits end fit: say so when the other one is set too
    return {"other_limit": {"max_epochs": epochs}} if epochs not in (None, -1) else {}


def _set_max_epochs(trainer: Any, max_epochs: int) -> dict[str, Any]:
    trainer.fit_loop.max_epochs = max_epochs
    steps = trainer.max_steps
    return {"other_limit": {"max_steps": steps}} if steps not in (None, -1) else {}


def _check_can_evaluate(trainer: Any) -> None:
    """Raise the reason when ``evaluate`` cannot be brought to a validation check."""
    if not getattr(trainer, "enable_validation", True):
        raise HotcbError(
            "nothing to evaluate: this fit has no validation (a val dataloader, a "
            f"validation_step and limit_val_batches > 0 are needed; "
            f"limit_val_batches={trainer.limit_val_batches!r})"
        )
    # time-based validation (val_check_interval="HH:MM:SS", a timedelta, a dict): Lightning
    # keeps the seconds and no val_check_interval attribute
    interval = getattr(trainer, "val_check_interval", None)
    seconds = getattr(trainer, "_val_check_time_interval", None)
    if seconds is not None or not isinstance(interval, (int, float)):
        raise HotcbError(
            f"validation runs on a clock (every {seconds} s): it has no batch or epoch "
            "boundary to bring it to, and Lightning 2.x has no public way to start it sooner"
        )
    if trainer.check_val_every_n_epoch is None:
        why = _cannot_validate_after_batch(trainer)
        if why is not None:
            raise HotcbError(
                f"validation runs every {interval} training batches across epochs "
                f"(val_check_interval={interval!r}, check_val_every_n_epoch=None) and {why}: "
                "it has no epoch boundary to defer it to, and Lightning has no public way to "
                "start validation inside fit() at once"
            )


def _cannot_validate_after_batch(trainer: Any) -> str | None:
    """Why ``val_check_batch = 1`` would not make this trainer validate after the current batch
    (None: it does). Lightning 2.x validates after a batch when ``check_val_every_n_epoch`` is
    None and ``(epoch_loop.total_batch_idx + 1) % trainer.val_check_batch == 0``."""
    package = sys.modules.get(type(trainer).__module__.partition(".")[0], _pl)
    version = str(getattr(package, "__version__", "?"))
    if version.partition(".")[0] != "2":
        return f"hotcb knows how Lightning 2.x schedules it, not Lightning {version}"
    batches = getattr(trainer, "val_check_batch", None)
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    if (
        not isinstance(batches, int)
        or isinstance(batches, bool)
        or not isinstance(getattr(loop, "total_batch_idx", None), int)
        or not callable(getattr(loop, "_should_check_val_fx", None))
    ):
        return (
            f"this Lightning {version} schedules it in a way hotcb does not know "
            f"(trainer.val_check_batch={batches!r})"
        )
    return None


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

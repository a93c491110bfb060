"""HotCBLightning with a real ``lightning.pytorch.Trainer`` on digits (CPU, a few steps).

The LightningModule is the one of ``examples/lightning_digits.py``. Commands come from a
controller in another process (``adapter_helpers.CONTROLLER``) while ``Trainer.fit`` runs here.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from adapter_helpers import load_example, read_jsonl

from hotcb import HotClient, HotKernel
from hotcb.ledger import checkpoint_path
from hotcb.testing import read_ledger

pl = pytest.importorskip("lightning.pytorch")
torch = pytest.importorskip("torch")

from hotcb.adapters.lightning import HotCBLightning  # noqa: E402

EX = load_example("lightning_digits")


def _lam(epoch: int) -> float:
    return 1.0 / (1.0 + 0.01 * epoch)  # the example's LambdaLR


class Recorder(pl.Callback):
    """After HotCBLightning in the callback list: what the trainer really uses, per batch."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        opt = trainer.optimizers[0]
        sched = trainer.lr_scheduler_configs[0].scheduler
        self.rows.append(
            {
                "step": trainer.global_step,
                "lr": opt.param_groups[0]["lr"],
                "sched_epoch": sched.last_epoch,
                "weights": dict(pl_module.loss_weights),
            }
        )


def _trainer(kernel: HotKernel, recorder: Recorder, metrics_every: int = 1, **kw: Any) -> Any:
    opts: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "logger": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
    }
    opts.update(kw)
    hot = HotCBLightning(kernel, metrics_every=metrics_every)
    return pl.Trainer(callbacks=[hot, recorder], **opts)


@pytest.mark.slow
def test_fit_is_steered_from_another_process_checkpointed_stopped_and_resumed(
    tmp_path: Path, controller: Any
) -> None:
    run_dir = os.fspath(tmp_path / "run")
    plan = [
        {"module": "opt", "op": "set_params", "fields": {"params": {"lr": 0.003}}, "after_step": 2},
        {"module": "loss", "op": "set_params", "fields": {"params": {"l2": 0.001}}},
        {"module": "control", "op": "checkpoint"},
        {"module": "loss", "op": "set_params", "fields": {"params": {"ce": 0.5}}},
        {"module": "control", "op": "stop"},
    ]
    ctl = controller(run_dir, plan)
    kernel = HotKernel(run_dir)
    rec = Recorder()
    module = EX.DigitsModule(step_delay=0.02)
    trainer = _trainer(kernel, rec, max_steps=600)
    train, _ = EX.loaders()
    trainer.fit(module, train)
    kernel.close()
    lr_e, l2_e, ck_e, ce_e, stop_e = (r["entry"] for r in ctl.results())
    assert all(e["decision"] == "applied" for e in (lr_e, l2_e, ck_e, ce_e, stop_e))

    # stop ended fit early, at the step it was applied
    assert trainer.global_step == stop_e["step"] < 600
    by_step = {r["step"]: r for r in rec.rows}
    # the lr change is in the optimizer at its step and survives the LambdaLR afterwards
    s = lr_e["step"]
    assert by_step[s]["lr"] == pytest.approx(0.003)
    base = 0.003 / _lam(by_step[s]["sched_epoch"])
    later = [r for r in rec.rows if r["step"] > s]
    assert len(later) >= 3
    for r in later:
        assert r["lr"] == pytest.approx(base * _lam(r["sched_epoch"]))
    # the loss weights changed in the LightningModule, at their steps
    assert by_step[l2_e["step"] - 1]["weights"]["l2"] == 0.0
    assert by_step[l2_e["step"]]["weights"]["l2"] == 0.001
    assert by_step[ce_e["step"]]["weights"]["ce"] == 0.5
    assert module.loss_weights == {"ce": 0.5, "l2": 0.001}

    # checkpoint wrote a Lightning checkpoint that carries hotcb's state
    assert ck_e["checkpoint"] == os.path.join("checkpoints", f"hotcb-step{ck_e['step']}.ckpt")
    path = checkpoint_path(ck_e, run_dir)
    assert path is not None and os.path.isfile(path)
    saved = torch.load(path, weights_only=False)
    assert saved["global_step"] == ck_e["step"]
    assert saved["hotcb"]["actuators"]["l2"] == 0.001

    # resume: a fresh module (l2=0.0) gets hotcb's l2 back; the later ce change is re-applied
    # at its original step; nothing is applied twice
    kernel2 = HotKernel(run_dir)
    rec2 = Recorder()
    module2 = EX.DigitsModule()
    trainer2 = _trainer(kernel2, rec2, max_steps=stop_e["step"] + 2)
    trainer2.fit(module2, EX.loaders()[0], ckpt_path=path)
    kernel2.close()
    assert rec2.rows[0]["step"] == ck_e["step"] + 1
    assert rec2.rows[0]["weights"]["l2"] == 0.001
    ledger = read_ledger(run_dir)
    replayed = [e for e in ledger if e.get("source") == "resume"]
    assert [(e["cmd_id"], e["step"]) for e in replayed] == [(ce_e["cmd_id"], ce_e["step"])]
    assert {r["step"]: r for r in rec2.rows}[ce_e["step"]]["weights"]["ce"] == 0.5
    assert trainer2.global_step == stop_e["step"] + 2  # the old stop is not applied again


def test_accumulation_validation_and_metrics(tmp_path: Path) -> None:
    """Fast: a command waiting before fit lands on the first optimizer step, not on the
    micro-batch before it; train and val metrics reach hotcb.metrics.jsonl."""
    run_dir = os.fspath(tmp_path / "run")
    cid = HotClient(run_dir).opt(lr=0.004)
    kernel = HotKernel(run_dir)
    rec = Recorder()
    trainer = _trainer(
        kernel,
        rec,
        max_steps=3,
        accumulate_grad_batches=2,
        limit_val_batches=1,
        val_check_interval=4,
        check_val_every_n_epoch=None,
    )
    train, val = EX.loaders()
    trainer.fit(EX.DigitsModule(), train, val)
    kernel.close()
    (entry,) = [e for e in read_ledger(run_dir) if e["cmd_id"] == cid]
    assert entry["decision"] == "applied" and entry["step"] == 1
    assert [r["step"] for r in rec.rows] == [0, 1, 1, 2, 2, 3]
    assert rec.rows[0]["lr"] == pytest.approx(0.01)  # micro-batch: untouched
    assert rec.rows[1]["lr"] == pytest.approx(0.004)
    metrics = read_jsonl(os.path.join(run_dir, "hotcb.metrics.jsonl"))
    assert {m["step"] for m in metrics} == {1, 2, 3}  # once per optimizer step, none at 0
    assert "train_loss" in metrics[0]["metrics"] and "lr" in metrics[0]["metrics"]
    assert any("val_loss" in m["metrics"] and m["step"] == 2 for m in metrics)


class ReadsValLoss(EX.DigitsModule):  # type: ignore[misc,name-defined]
    """A module that prints its val_loss after each validation, as many scripts do: reading
    ``trainer.callback_metrics`` makes Lightning build its tensors anew."""

    def on_validation_end(self) -> None:
        self.seen = float(self.trainer.callback_metrics["val_loss"])


@pytest.mark.parametrize("module", [EX.DigitsModule, ReadsValLoss], ids=["plain", "reads-it"])
def test_a_validation_is_recorded_once_not_on_every_train_step_after_it(
    tmp_path: Path, module: Any
) -> None:
    """Lightning keeps the last val_loss in callback_metrics until the next validation: a
    reader of hotcb.metrics.jsonl (the autopilot, the charts) must see one value per
    validation, or one plateau looks like hundreds of evaluations that never improve. The
    validation's record does not repeat the training loss of its step either. A module that
    read callback_metrics itself after a validation had its val_loss recorded again on every
    train step (32 of 52 records in a probe)."""
    run_dir = os.fspath(tmp_path / "run")
    kernel = HotKernel(run_dir)
    trainer = _trainer(
        kernel, Recorder(), max_steps=12, limit_val_batches=1, val_check_interval=4,
        check_val_every_n_epoch=None,
    )  # fmt: skip
    train, val = EX.loaders()
    trainer.fit(module(), train, val)
    kernel.close()
    metrics = read_jsonl(os.path.join(run_dir, "hotcb.metrics.jsonl"))
    assert [m["step"] for m in metrics if "val_loss" in m["metrics"]] == [4, 8, 12]
    # and the training loss once a step: not again with the validation that follows the step
    assert [m["step"] for m in metrics if "train_loss" in m["metrics"]] == list(range(1, 13))


def test_metrics_every_n_steps(tmp_path: Path) -> None:
    run_dir = os.fspath(tmp_path / "run")
    kernel = HotKernel(run_dir)
    trainer = _trainer(kernel, Recorder(), metrics_every=2, max_steps=5)
    trainer.fit(EX.DigitsModule(), EX.loaders()[0])
    kernel.close()
    metrics = read_jsonl(os.path.join(run_dir, "hotcb.metrics.jsonl"))
    assert [m["step"] for m in metrics] == [2, 4]


@pytest.mark.parametrize("poll_sec", [0.0, 3600.0], ids=["poll-every-step", "no-poll-due"])
def test_nothing_is_built_at_steps_without_work_and_commands_land_on_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, poll_sec: float
) -> None:
    """Steps with nothing due cost no env: with a poll at every step (that finds nothing) the
    env is not built there; with no poll due, ``apply`` is not even called there. Either way
    metrics come every 3rd step, and a command waiting before fit and one scheduled at step 5
    land at steps 1 and 5."""
    run_dir = os.fspath(tmp_path / "run")
    client = HotClient(run_dir)
    lr_id = client.opt(lr=0.004)
    l2_id = client.set_params("loss", {"l2": 0.001}, at_step=5)
    kernel = HotKernel(run_dir, poll_interval_sec=poll_sec)
    rec = Recorder()
    trainer = _trainer(kernel, rec, metrics_every=3, max_steps=8)
    (hot,) = [cb for cb in trainer.callbacks if isinstance(cb, HotCBLightning)]
    built: list[tuple[int, str]] = []
    applied: list[int] = []
    fill, apply = hot._fill, kernel.apply

    def spy_fill(key: str, values: dict[str, Any]) -> None:
        built.append((values["step"], key))
        fill(key, values)

    def spy_apply(env: Any, events: Any) -> None:
        applied.append(env["step"])
        apply(env, events)

    monkeypatch.setattr(hot, "_fill", spy_fill)
    monkeypatch.setattr(kernel, "apply", spy_apply)
    trainer.fit(EX.DigitsModule(), EX.loaders()[0])
    kernel.close()

    ledger = {e["cmd_id"]: e for e in read_ledger(run_dir) if e["decision"] == "applied"}
    assert ledger[lr_id]["step"] == 1 and ledger[l2_id]["step"] == 5
    by_step = {r["step"]: r for r in rec.rows}
    assert by_step[1]["lr"] == pytest.approx(0.004)
    assert by_step[4]["weights"]["l2"] == 0.0 and by_step[5]["weights"]["l2"] == 0.001
    metrics = read_jsonl(os.path.join(run_dir, "hotcb.metrics.jsonl"))
    assert [m["step"] for m in metrics] == [3, 6]
    assert "train_loss" in metrics[0]["metrics"] and "lr" in metrics[0]["metrics"]
    # nothing is due at steps 2, 4, 7 and 8: nothing is built there. Step 1: the kernel starts;
    # the ops at steps 1 and 5 read what they need; steps 3 and 6: the metrics (and the epoch
    # recorded with them) only
    steps = {step for step, _ in built}
    assert steps.isdisjoint({2, 4, 7, 8}) and {1, 3, 6} <= steps
    assert {key for step, key in built if step in (3, 6)} == {"metrics", "epoch"}
    if poll_sec:
        assert applied == [1, 3, 5, 6]
    else:
        assert applied == list(range(1, 9))


def test_pytorch_lightning_package_gets_its_own_callback_class(tmp_path: Path) -> None:
    """Code that imports ``pytorch_lightning`` (not ``lightning``) uses HotCBPytorchLightning."""
    ptl = pytest.importorskip("pytorch_lightning")
    from hotcb.adapters.lightning import HotCBPytorchLightning

    assert issubclass(HotCBPytorchLightning, ptl.Callback)

    class Tiny(ptl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(64, 10)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    run_dir = os.fspath(tmp_path / "run")
    cid = HotClient(run_dir).opt(momentum=0.5)
    kernel = HotKernel(run_dir)
    trainer = ptl.Trainer(
        max_steps=2,
        accelerator="cpu",
        callbacks=[HotCBPytorchLightning(kernel)],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=False,
    )
    trainer.fit(Tiny(), EX.loaders()[0])
    kernel.close()
    (entry,) = [e for e in read_ledger(run_dir) if e["cmd_id"] == cid]
    assert entry["decision"] == "applied" and entry["step"] == 1
    assert trainer.optimizers[0].param_groups[0]["momentum"] == 0.5


def test_importing_the_adapters_package_imports_no_framework() -> None:
    code = (
        "import sys, hotcb, hotcb.adapters; "
        "heavy = {'torch', 'lightning', 'pytorch_lightning', 'transformers'} & set(sys.modules); "
        "assert not heavy, heavy; "
        "assert 'HotCBLightning' in dir(hotcb.adapters)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_tuner_catches_a_blow_up_in_lightnings_train_loss(tmp_path: Path) -> None:
    """The LightningModule logs `train_loss` every step and `val_loss` every 40: a tuner trial
    that sets a ruinous lr is rolled back within a few steps on `train_loss`, not at the next
    validation 40 steps later, and the run goes on with the lr it had."""
    pytest.importorskip("optuna")
    run_dir = os.fspath(tmp_path / "run")
    ruin = [{"key": "lr", "module": "opt", "mode": "set", "low": 5.0, "high": 9.0}]
    HotClient(run_dir).tune_enable("active", objective="val_loss", segment_steps=40, seed=0,
                                   space=ruin, sync=True)  # fmt: skip
    kernel = HotKernel(run_dir)
    rec = Recorder()
    trainer = _trainer(kernel, rec, max_steps=240, limit_val_batches=1, val_check_interval=40,
                       check_val_every_n_epoch=None)  # fmt: skip
    train, val = EX.loaders()
    trainer.fit(EX.DigitsModule(), train, val)
    kernel.close()
    tune = [e for e in read_ledger(run_dir) if e["module"] == "tune"]
    mutates = {e["tune"]["trial"]: e for e in tune if e["op"] == "mutate"}
    rollbacks = [e for e in tune if e["op"] == "rollback"]
    assert mutates and len(rollbacks) == len(mutates), tune
    for r in rollbacks:
        assert r["step"] - mutates[r["tune"]["trial"]]["step"] <= 10, (r, mutates)
        assert r["tune"]["score"] == -1.0
    assert rec.rows[-1]["lr"] < 0.02  # back on the schedule it had


def test_ddp_spawn_is_refused_with_what_to_use_instead(tmp_path: Path) -> None:
    """``strategy="ddp_spawn"`` pickles the Trainer, callbacks and all, into its processes;
    the error named a lambda inside HotKernel. It says what to use instead."""
    kernel = HotKernel(tmp_path / "run")
    try:
        with pytest.raises(TypeError, match="use strategy='ddp' from a script"):
            pickle.dumps(HotCBLightning(kernel))
    finally:
        kernel.close()


class SendsDuringValidation(EX.DigitsModule):  # type: ignore[misc,name-defined]
    """Records the loss weight each micro-batch trains with; a person sends ``ce=0.25`` while
    the first validation runs."""

    run_dir = ""

    def __init__(self) -> None:
        super().__init__()
        self.used: list[tuple[int, float]] = []  # (global_step of the window, ce)
        self.sent: str | None = None

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        self.used.append((int(self.trainer.global_step), self.loss_weights["ce"]))
        return super().training_step(batch, batch_idx)

    def on_validation_start(self) -> None:
        if self.sent is None:
            self.sent = HotClient(self.run_dir).loss(ce=0.25)


@pytest.mark.slow
def test_a_command_read_at_a_validation_inside_an_accumulation_window_waits_for_its_step(
    tmp_path: Path,
) -> None:
    """Validation every 6 batches, accumulation by 4: the validation after batch 6 comes in
    the middle of a window. A command read there was applied at once, so that window's
    gradient mixed two loss weightings (ce 1, 1, 0.25, 0.25)."""
    run_dir = os.fspath(tmp_path / "run")
    kernel = HotKernel(run_dir, poll_interval_sec=0)
    module = SendsDuringValidation()
    module.run_dir = run_dir
    trainer = _trainer(
        kernel,
        Recorder(),
        max_steps=4,
        accumulate_grad_batches=4,
        limit_val_batches=1,
        val_check_interval=6,
        check_val_every_n_epoch=None,
    )
    train, val = EX.loaders()
    trainer.fit(module, train, val)
    kernel.close()
    windows: dict[int, list[float]] = {}
    for step, ce in module.used:
        windows.setdefault(step, []).append(ce)
    assert windows == {0: [1.0] * 4, 1: [1.0] * 4, 2: [0.25] * 4, 3: [0.25] * 4}, windows
    (entry,) = [e for e in read_ledger(run_dir) if e.get("cmd_id") == module.sent]
    assert entry["decision"] == "applied" and entry["step"] == 2
    val_rows = [r for r in read_jsonl(os.path.join(run_dir, "hotcb.metrics.jsonl"))
                if "val_loss" in r["metrics"]]  # fmt: skip
    assert [r["step"] for r in val_rows][:1] == [1]  # the mid-window validation is recorded

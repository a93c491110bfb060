"""``control evaluate`` with a real Lightning ``Trainer`` (issue #15): validation runs at the next
epoch boundary even when ``check_val_every_n_epoch`` would skip that epoch, and right after the
training batch it lands on when validation is step-based (``check_val_every_n_epoch=None``, as in
``examples/lightning_digits.py``); the schedule comes back afterwards, and the ledger says when
it runs and that it ran.

The model and data are ``examples/lightning_digits.py``'s (TinyMLP on digits, CPU). Commands are
written before ``fit`` (the real ``hotcb evaluate`` CLI lands on the first step; HotClient with
``at_step`` on a known one), so the steps are known; nothing sleeps.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from adapter_helpers import ENV, EXAMPLES, load_example, read_jsonl

from hotcb import HotClient, HotKernel
from hotcb.testing import read_ledger, wait_for

pytestmark = pytest.mark.slow

pl = pytest.importorskip("lightning.pytorch")

from hotcb.adapters.lightning import HotCBLightning  # noqa: E402

LIT = load_example("lightning_digits")


class Validations(pl.Callback):
    """The global steps at which fit's validation ran (not the sanity check)."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self.steps.append(trainer.global_step)


def _fit(run_dir: str, *, val: bool = True, **kw: Any) -> tuple[Any, list[int]]:
    kernel = HotKernel(run_dir)
    seen = Validations()
    opts: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "logger": False,
        "num_sanity_val_steps": 0,
        "limit_train_batches": 4,
        "limit_val_batches": 1 if val else 0,
        "check_val_every_n_epoch": 100,  # without hotcb: no validation in these runs
        **kw,
    }
    trainer = pl.Trainer(callbacks=[HotCBLightning(kernel), seen], **opts)
    train, val_loader = LIT.loaders()
    trainer.fit(LIT.DigitsModule(), train, val_loader if val else None)
    kernel.close()
    return trainer, seen.steps


def _settled(run_dir: str) -> list[dict[str, Any]]:
    """The control evaluate entries, without the ``scheduled`` ones."""
    return [
        e
        for e in read_ledger(run_dir)
        if e.get("op") == "evaluate" and e["decision"] != "scheduled"
    ]


def test_lightning_validation_does_not_run_without_evaluate(tmp_path: Path) -> None:
    _, validated = _fit(os.fspath(tmp_path / "run"), max_epochs=3)
    assert validated == []  # the baseline the next test changes


def test_lightning_evaluate_runs_validation_at_the_end_of_the_epoch(
    tmp_path: Path, cli: Any
) -> None:
    run = os.fspath(tmp_path / "run")
    assert cli(run, "init").returncode == 0
    assert cli(run, "evaluate").returncode == 0  # the real CLI: lands on the first step
    later = HotClient(run).send("control", "evaluate", at_step=6)  # in epoch 1 (steps 5-8)
    trainer, validated = _fit(run, max_epochs=3)
    # epochs 0 and 1 end with a validation; epoch 2 does not: the schedule came back
    assert validated == [4, 8]
    assert trainer.global_step == 12 and trainer.check_val_every_n_epoch == 100

    asked, ran, asked_later, ran_later = _settled(run)
    assert asked["decision"] == "applied" and asked["source"] == "cli" and asked["step"] == 1
    assert asked["evaluate"] == "deferred to the end of epoch 0"
    assert ran["decision"] == "applied" and ran["evaluate"] == "ran"
    assert (ran["step"], ran["requested_step"], ran["epoch"]) == (4, 1, 0)
    assert ran["event"] == "val_epoch_end" and ran["source"] == "lightning"
    assert asked_later["cmd_id"] == later and asked_later["step"] == 6
    assert asked_later["evaluate"] == "deferred to the end of epoch 1"
    assert (ran_later["step"], ran_later["requested_step"], ran_later["evaluate"]) == (8, 6, "ran")

    # the validation's metrics reached the run's metrics stream at those steps (Lightning keeps
    # the last val_loss in callback_metrics: a new value is a new validation)
    firsts: dict[float, int] = {}
    for r in read_jsonl(os.path.join(run, "hotcb.metrics.jsonl")):
        if "val_loss" in r["metrics"]:
            firsts.setdefault(r["metrics"]["val_loss"], r["step"])
    assert sorted(firsts.values()) == [4, 8]


# A Lightning training process, as a user runs one: validation every 100 epochs (never, here).
TRAIN = r"""
import importlib.util, sys
import lightning.pytorch as pl
from hotcb import HotKernel
from hotcb.adapters.lightning import HotCBLightning

spec = importlib.util.spec_from_file_location("lit", sys.argv[2])
lit = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lit)
kernel = HotKernel(sys.argv[1])
trainer = pl.Trainer(
    accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False,
    enable_checkpointing=False, logger=False, num_sanity_val_steps=0, limit_train_batches=4,
    limit_val_batches=1, check_val_every_n_epoch=100, max_epochs=3,
    callbacks=[HotCBLightning(kernel)],
)
train, val = lit.loaders()
trainer.fit(lit.DigitsModule(), train, val)
kernel.close()
"""


def test_lightning_evaluate_sent_to_a_live_training_process(tmp_path: Path, cli: Any) -> None:
    run = os.fspath(tmp_path / "run")
    pause = HotClient(run).pause()  # holds the run at its first step, so the steps are known
    proc = subprocess.Popen(
        [sys.executable, "-c", TRAIN, run, os.fspath(EXAMPLES / "lightning_digits.py")],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: any(e["cmd_id"] == pause and e["decision"] == "applied"
                        for e in read_ledger(run)),
            120,
            what="the run to pause",
        )  # fmt: skip
        done = cli(run, "evaluate")  # while it trains (held at step 1)
        assert done.returncode == 0, done.stderr
        entry = HotClient(run).wait(done.stdout.strip(), timeout=60)
        assert entry["decision"] == "applied" and entry["step"] == 1
        assert entry["evaluate"] == "deferred to the end of epoch 0"
        assert cli(run, "resume").returncode == 0
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    (ran,) = [e for e in _settled(run) if e["cmd_id"] is None]
    assert (ran["evaluate"], ran["step"], ran["requested_step"]) == ("ran", 4, 1)
    firsts: dict[float, int] = {}
    for r in read_jsonl(os.path.join(run, "hotcb.metrics.jsonl")):
        if "val_loss" in r["metrics"]:
            firsts.setdefault(r["metrics"]["val_loss"], r["step"])
    assert list(firsts.values()) == [4]  # one validation, at the end of epoch 0


def test_lightning_evaluate_asked_twice_in_an_epoch_validates_once(tmp_path: Path) -> None:
    run = os.fspath(tmp_path / "run")
    c = HotClient(run)
    first, second = (
        c.send("control", "evaluate", at_step=1),
        c.send("control", "evaluate", at_step=2),
    )
    _, validated = _fit(run, max_epochs=2)
    assert validated == [4]
    entries = {e.get("cmd_id"): e for e in _settled(run)}
    assert entries[first]["evaluate"] == "deferred to the end of epoch 0"
    assert entries[second]["evaluate"] == (
        "deferred to the end of epoch 0 (already asked at step 1)"
    )
    assert [e["evaluate"] for e in _settled(run) if e["cmd_id"] is None] == ["ran"]


def test_lightning_evaluate_in_an_epoch_that_validates_anyway(tmp_path: Path) -> None:
    run = os.fspath(tmp_path / "run")
    HotClient(run).send("control", "evaluate", at_step=2)
    trainer, validated = _fit(run, max_epochs=2, check_val_every_n_epoch=1)
    assert validated == [4, 8] and trainer.check_val_every_n_epoch == 1
    assert [e["evaluate"] for e in _settled(run)] == ["deferred to the end of epoch 0", "ran"]


def test_lightning_evaluate_when_fit_ends_before_the_epoch_does(tmp_path: Path) -> None:
    run = os.fspath(tmp_path / "run")
    HotClient(run).send("control", "evaluate", at_step=1)
    trainer, validated = _fit(run, max_steps=3)  # ends inside epoch 0
    assert validated == [] and trainer.check_val_every_n_epoch == 100
    asked, missed = _settled(run)
    assert asked["evaluate"] == "deferred to the end of epoch 0"
    assert missed["decision"] == "noop" and missed["evaluate"] == "did not run"
    assert "fit ended before epoch 0's validation" in missed["error"]


def test_lightning_evaluate_is_refused_without_validation(tmp_path: Path) -> None:
    run = os.fspath(tmp_path / "run")
    cid = HotClient(run).evaluate()
    trainer, validated = _fit(run, val=False, max_steps=3)
    (e,) = _settled(run)
    assert e["cmd_id"] == cid and e["decision"] == "rejected" and e["evaluate"] == "unsupported"
    assert e["error"].startswith("nothing to evaluate: this fit has no validation")
    assert trainer.global_step == 3 and validated == []


def test_lightning_evaluate_is_refused_when_validation_runs_on_a_clock(tmp_path: Path) -> None:
    clock = os.fspath(tmp_path / "clock")
    HotClient(clock).evaluate()
    _, validated = _fit(clock, max_steps=3, val_check_interval="00:01:00:00")
    (e,) = _settled(clock)
    assert e["decision"] == "rejected" and validated == []
    assert e["error"].startswith("validation runs on a clock (every 3600.0 s)")


# ---------------------------------------------- step-based validation (check_val_every_n_epoch=None)
# Every N training batches across epochs, as in examples/lightning_digits.py (47 batches an
# epoch here): Lightning validates after a batch when (total_batch_idx + 1) % val_check_batch
# == 0, checked after on_train_batch_end; the callback sets val_check_batch = 1 for that batch.
BY_STEPS: dict[str, Any] = {
    "val_check_interval": 50,
    "check_val_every_n_epoch": None,
    "limit_train_batches": 1.0,
}


def test_lightning_evaluate_with_step_based_validation_runs_after_that_batch(
    tmp_path: Path,
) -> None:
    run = os.fspath(tmp_path / "run")
    c = HotClient(run)
    cid, again, late = (
        c.send("control", "evaluate", at_step=7),
        c.send("control", "evaluate", at_step=7),  # asked twice: one validation
        c.send("control", "evaluate", at_step=61),  # in epoch 1 (steps 48-94)
    )
    trainer, validated = _fit(run, max_steps=100, **BY_STEPS)
    # right after steps 7 and 61, and the regular schedule is unchanged: 50, 100
    assert validated == [7, 50, 61, 100]
    assert trainer.val_check_batch == 50 and trainer.check_val_every_n_epoch is None

    entries = _settled(run)
    by_id = {e["cmd_id"]: e for e in entries if e["cmd_id"] is not None}
    assert by_id[cid]["decision"] == "applied" and by_id[cid]["step"] == 7
    assert by_id[cid]["evaluate"] == "runs after training step 7"
    assert by_id[again]["evaluate"] == "runs after training step 7 (already asked at step 7)"
    assert by_id[late]["evaluate"] == "runs after training step 61"
    ran = [e for e in entries if e["cmd_id"] is None]
    assert [(e["evaluate"], e["step"], e["requested_step"], e["epoch"]) for e in ran] == [
        ("ran", 7, 7, 0),
        ("ran", 61, 61, 1),
    ]
    assert all(e["source"] == "lightning" and e["event"] == "val_epoch_end" for e in ran)

    firsts: dict[float, int] = {}
    for r in read_jsonl(os.path.join(run, "hotcb.metrics.jsonl")):
        if "val_loss" in r["metrics"]:
            firsts.setdefault(r["metrics"]["val_loss"], r["step"])
    assert sorted(firsts.values()) == [7, 50, 61, 100]


def test_lightning_evaluate_with_step_based_validation_on_a_scheduled_batch(
    tmp_path: Path,
) -> None:
    run = os.fspath(tmp_path / "run")
    HotClient(run).send("control", "evaluate", at_step=50)  # validates there anyway
    trainer, validated = _fit(run, max_steps=60, **BY_STEPS)
    assert validated == [50] and trainer.val_check_batch == 50
    assert [e["evaluate"] for e in _settled(run)] == ["runs after training step 50", "ran"]


class AskDuringValidation(pl.Callback):
    """Sends ``hotcb evaluate`` from the validation at ``step``, before HotCBLightning's
    ``on_validation_end`` (callbacks run in list order), which picks it up there."""

    def __init__(self, run_dir: str, step: int) -> None:
        self.run_dir, self.step, self.cid = run_dir, step, ""

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.global_step == self.step and not self.cid:
            self.cid = HotClient(self.run_dir).evaluate()


def test_lightning_evaluate_with_step_based_validation_asked_during_a_validation(
    tmp_path: Path,
) -> None:
    run = os.fspath(tmp_path / "run")
    kernel = HotKernel(run, poll_interval_sec=0)  # reads the command at the next safe point
    ask, seen = AskDuringValidation(run, 50), Validations()
    trainer = pl.Trainer(
        callbacks=[ask, HotCBLightning(kernel), seen], accelerator="cpu", devices=1,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        logger=False, num_sanity_val_steps=0, limit_val_batches=1, max_steps=100, **BY_STEPS,
    )  # fmt: skip
    train, val = LIT.loaders()
    trainer.fit(LIT.DigitsModule(), train, val)
    kernel.close()
    # this batch's check is past: after the next one (step 51), then the schedule as before
    assert seen.steps == [50, 51, 100] and trainer.val_check_batch == 50
    asked, ran = _settled(run)
    assert asked["cmd_id"] == ask.cid and asked["step"] == 50
    assert asked["event"] == "val_epoch_end"
    assert asked["evaluate"] == "runs after the next training batch"
    assert (ran["evaluate"], ran["step"], ran["requested_step"]) == ("ran", 51, 50)


def test_lightning_evaluate_with_step_based_validation_and_gradient_accumulation(
    tmp_path: Path,
) -> None:
    run = os.fspath(tmp_path / "run")
    HotClient(run).send("control", "evaluate", at_step=3)
    # 2 batches an optimizer step, 47 batches an epoch (its last step has one): Lightning's own
    # schedule (batches 50 and 100) is at steps 25 and 51, with the evaluate as without it
    _, baseline = _fit(os.fspath(tmp_path / "baseline"), max_steps=51, accumulate_grad_batches=2,
                       **BY_STEPS)  # fmt: skip
    trainer, validated = _fit(run, max_steps=51, accumulate_grad_batches=2, **BY_STEPS)
    assert baseline == [25, 51] and validated == [3, 25, 51] and trainer.val_check_batch == 50
    assert [(e["evaluate"], e["step"]) for e in _settled(run)] == [
        ("runs after training step 3", 3),
        ("ran", 3),
    ]


def test_lightning_evaluate_with_step_based_validation_that_lightning_skips(
    tmp_path: Path,
) -> None:
    """An empty val dataloader: Lightning skips the validation loop (no on_validation_end), so
    the callback puts val_check_batch back at the next batch and says it did not run."""
    run = os.fspath(tmp_path / "run")
    HotClient(run).send("control", "evaluate", at_step=2)
    kernel = HotKernel(run)
    seen = Validations()
    trainer = pl.Trainer(
        callbacks=[HotCBLightning(kernel), seen], accelerator="cpu", devices=1,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        logger=False, num_sanity_val_steps=0, max_steps=5, **BY_STEPS,
    )  # fmt: skip
    train, val = LIT.loaders()
    empty = torch.utils.data.DataLoader(torch.utils.data.Subset(val.dataset, []), batch_size=8)
    trainer.fit(LIT.DigitsModule(), train, empty)
    kernel.close()
    assert seen.steps == [] and trainer.val_check_batch == 50 and trainer.global_step == 5
    asked, missed = _settled(run)
    assert asked["evaluate"] == "runs after training step 2"
    assert missed["decision"] == "noop" and missed["evaluate"] == "did not run"
    assert missed["step"] == 3 and missed["requested_step"] == 2
    assert missed["error"].startswith("Lightning did not validate after that batch")


def test_lightning_evaluate_with_step_based_validation_on_an_unknown_lightning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Lightning whose scheduling hotcb does not know: refused with the reason, training goes
    on, nothing is changed."""
    import lightning

    monkeypatch.setattr(lightning, "__version__", "3.0.0")
    run = os.fspath(tmp_path / "run")
    cid = HotClient(run).evaluate()
    trainer, validated = _fit(run, max_steps=4, val_check_interval=100,
                              check_val_every_n_epoch=None)  # fmt: skip
    (e,) = _settled(run)
    assert e["cmd_id"] == cid and e["decision"] == "rejected" and e["evaluate"] == "unsupported"
    assert e["error"].startswith(
        "validation runs every 100 training batches across epochs (val_check_interval=100, "
        "check_val_every_n_epoch=None) and hotcb knows how Lightning 2.x schedules it, not "
        "Lightning 3.0.0"
    )
    assert trainer.global_step == 4 and validated == [] and trainer.val_check_batch == 100


def test_lightning_digits_example_accepts_hotcb_evaluate(tmp_path: Path, cli: Any) -> None:
    """The flagship example (validation every --val-every batches, check_val_every_n_epoch=None)
    as a user runs it, with `hotcb evaluate` from the real CLI (it lands on the first step)."""
    run = os.fspath(tmp_path / "run")
    assert cli(run, "init").returncode == 0
    done = cli(run, "evaluate")
    assert done.returncode == 0, done.stderr
    argv = [sys.executable, os.fspath(EXAMPLES / "lightning_digits.py"), "--run-dir", run,
            "--steps", "20", "--val-every", "10", "--step-delay", "0"]  # fmt: skip
    proc = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "done at step 20" in proc.stdout
    asked, ran = _settled(run)
    assert asked["cmd_id"] == done.stdout.strip() and asked["source"] == "cli"
    assert (asked["decision"], asked["step"]) == ("applied", 1)
    assert asked["evaluate"] == "runs after training step 1"
    assert (ran["evaluate"], ran["step"], ran["requested_step"]) == ("ran", 1, 1)
    firsts: dict[float, int] = {}
    for r in read_jsonl(os.path.join(run, "hotcb.metrics.jsonl")):
        if "val_loss" in r["metrics"]:
            firsts.setdefault(r["metrics"]["val_loss"], r["step"])
    assert sorted(firsts.values()) == [1, 10, 20]  # then every 10 batches, as before

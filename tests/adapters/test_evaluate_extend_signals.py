"""Evaluate now, extend or shorten, and checkpoint on SIGTERM / Ctrl-C with a real Lightning
``Trainer`` and a real HF ``Trainer`` (issue #15).

The models and data are the examples' (``examples/lightning_digits.py``: TinyMLP on digits;
``examples/hf_tiny.py``: a one-layer BERT from a config, synthetic tokens; nothing downloaded).
Commands are written before ``fit``/``train`` with ``at_step`` so they land on known steps; the
signal tests send a real signal to a real training process. Waits are on conditions.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from adapter_helpers import ENV, EXAMPLES, load_example, read_jsonl

from hotcb import HotClient, HotKernel
from hotcb.ledger import checkpoint_path
from hotcb.testing import read_ledger, wait_for

pytestmark = pytest.mark.slow

pl = pytest.importorskip("lightning.pytorch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from hotcb.adapters.hf import HotCBHFCallback  # noqa: E402
from hotcb.adapters.lightning import HotCBLightning  # noqa: E402

LIT = load_example("lightning_digits")
HF = load_example("hf_tiny")


def _log(run_dir: str) -> str:
    """``hotcb --dir RUN log``, as a person reads the ledger."""
    done = subprocess.run([sys.executable, "-m", "hotcb", "--dir", run_dir, "log"],
                          capture_output=True, text=True, timeout=120, env=ENV, check=True)  # fmt: skip
    return done.stdout


def _entry(run_dir: str, cmd_id: str) -> dict[str, Any]:
    """The entry that settled ``cmd_id`` (not its ``scheduled`` one)."""
    (entry,) = [
        e for e in read_ledger(run_dir) if e["cmd_id"] == cmd_id and e["decision"] != "scheduled"
    ]
    return entry


# ------------------------------------------------------------------------------ Lightning
class Steps(pl.Callback):
    """The optimizer steps the trainer really took (after HotCBLightning)."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        self.steps.append(trainer.global_step)


def _fit(run_dir: str, val: bool = False, ckpt_path: str | None = None, **kw: Any) -> Any:
    kernel = HotKernel(run_dir)
    steps = Steps()
    opts: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "logger": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 1 if val else 0,
        **kw,
    }
    trainer = pl.Trainer(callbacks=[HotCBLightning(kernel), steps], **opts)
    train, val_loader = LIT.loaders()
    trainer.fit(LIT.DigitsModule(), train, val_loader if val else None, ckpt_path=ckpt_path)
    kernel.close()
    trainer.steps = steps.steps
    return trainer


def test_lightning_extend_lengthens_shortens_and_adds_epochs(tmp_path: Path) -> None:
    run = os.fspath(tmp_path / "longer")
    c = HotClient(run)
    more, at_end = c.extend(4, at_step=3), c.extend(2, at_step=10)
    trainer = _fit(run, max_steps=6)
    assert trainer.global_step == 12 and trainer.steps == list(range(1, 13))
    assert _entry(run, more)["changes"] == {"max_steps": {"old": 6, "new": 10}}
    # applied at the step that was the last one: the run goes on
    assert _entry(run, at_end)["step"] == 10
    assert _entry(run, at_end)["changes"] == {"max_steps": {"old": 10, "new": 12}}
    assert _entry(run, more)["lr_schedule"].startswith("unchanged")

    run = os.fspath(tmp_path / "shorter")
    fewer = HotClient(run).extend(to_step=3, at_step=5)
    trainer = _fit(run, max_steps=20)
    assert trainer.global_step == 5  # below the step it landed on: fit ends after that batch
    assert _entry(run, fewer)["changes"] == {"max_steps": {"old": 20, "new": 3}}

    run = os.fspath(tmp_path / "epochs")
    c = HotClient(run)
    epochs, steps = c.extend(epochs=1, at_step=1), c.extend(3, at_step=2)
    trainer = _fit(run, max_epochs=1, limit_train_batches=3)
    assert trainer.global_step == 6 and trainer.current_epoch == 2
    assert _entry(run, epochs)["changes"] == {"max_epochs": {"old": 1, "new": 2}}
    refused = _entry(run, steps)  # bounded by epochs only: there are no steps to add to
    assert refused["decision"] == "rejected" and "no steps limit (max_steps=-1)" in refused["error"]


def test_lightning_evaluate_is_refused_with_the_reason_and_training_goes_on(
    tmp_path: Path,
) -> None:
    run = os.fspath(tmp_path / "run")
    cid = HotClient(run).evaluate()
    trainer = _fit(run, val=True, max_steps=4, val_check_interval="00:01:00:00")  # on a clock
    e = _entry(run, cid)
    assert e["decision"] == "rejected" and e["evaluate"] == "unsupported" and e["step"] == 1
    assert "no public way to start it sooner" in e["error"]
    assert "validation runs on a clock (every 3600.0 s)" in e["error"]
    assert trainer.global_step == 4


def test_lightning_run_resumed_from_a_checkpoint_trains_to_its_extended_horizon(
    tmp_path: Path,
) -> None:
    run = os.fspath(tmp_path / "run")
    c = HotClient(run)
    c.extend(to_step=10, at_step=2)
    ck = c.send("control", "checkpoint", at_step=7)
    assert _fit(run, max_steps=6).global_step == 10
    path = checkpoint_path(_entry(run, ck), run)
    assert path is not None and os.path.isfile(path)
    # the same script again (max_steps=6), resumed at step 7: the horizon comes back with the
    # checkpoint before Lightning looks at its limits
    trainer = _fit(run, max_steps=6, ckpt_path=path)
    assert trainer.steps == [8, 9, 10]


# ------------------------------------------------------------------------------ HF Trainer
def test_hf_evaluate_now_runs_the_trainers_evaluation_after_that_step(tmp_path: Path) -> None:
    run = os.fspath(tmp_path / "run")
    cid = HotClient(run).evaluate()
    later = HotClient(run).send("control", "evaluate", at_step=4)
    trainer, kernel = HF.build(run, 6)  # eval_steps=0: no evaluation of its own
    trainer.train()
    kernel.close()
    assert [_entry(run, c)["evaluate"] for c in (cid, later)] == ["at_step_end"] * 2
    metrics = read_jsonl(os.path.join(run, "hotcb.metrics.jsonl"))
    assert [m["step"] for m in metrics if "eval_loss" in m["metrics"]] == [1, 4]
    assert "control evaluate -> applied: evaluates at the end of this step" in _log(run)


class SendDuringEvaluation(transformers.TrainerCallback):
    """Sends ``hotcb evaluate`` from inside the Trainer's evaluation at ``step`` (placed before
    HotCBHFCallback, whose on_evaluate then reads it)."""

    def __init__(self, run: str, step: int) -> None:
        self.run, self.step = run, step
        self.cid: str | None = None

    def on_evaluate(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if state.global_step == self.step and self.cid is None:
            self.cid = HotClient(self.run).evaluate()


def _hf_polling_every_step(run: str, steps: int, **build: Any) -> tuple[Any, HotKernel]:
    """``HF.build``'s Trainer with a kernel that polls at every safe point."""
    trainer, built = HF.build(run, steps, **build)
    trainer.pop_callback(HotCBHFCallback)
    built.close()
    kernel = HotKernel(run, poll_interval_sec=0.0)
    return trainer, kernel


def test_hf_evaluate_read_during_an_evaluation_runs_after_the_next_step(tmp_path: Path) -> None:
    """The Trainer clears ``should_evaluate`` as the next step begins: an evaluate read in the
    Trainer's own evaluation was ledgered applied and never ran."""
    run = os.fspath(tmp_path / "run")
    trainer, kernel = _hf_polling_every_step(run, 10, eval_steps=4)
    sender = SendDuringEvaluation(run, 4)
    trainer.add_callback(sender)
    trainer.add_callback(HotCBHFCallback(kernel, can_evaluate=True))
    trainer.train()
    kernel.close()
    assert sender.cid is not None
    e = _entry(run, sender.cid)
    assert (e["step"], e["event"], e["evaluate"]) == (4, "val_epoch_end", "at_next_step_end")
    metrics = read_jsonl(os.path.join(run, "hotcb.metrics.jsonl"))
    assert [m["step"] for m in metrics if "eval_loss" in m["metrics"]] == [4, 5, 8, 10]
    assert "evaluates at the end of the next step" in _log(run)


def test_hf_evaluate_after_train_applies_no_command_and_a_pause_does_not_hang_it(
    tmp_path: Path,
) -> None:
    """``trainer.evaluate()`` after ``train()`` was taken for a training safe point: a
    checkpoint was ledgered with a folder nothing saved, and a pause blocked it for good.
    Commands now wait for the next ``train()``."""
    run = os.fspath(tmp_path / "run")
    trainer, kernel = _hf_polling_every_step(run, 4)
    trainer.add_callback(HotCBHFCallback(kernel, can_evaluate=True))
    trainer.train()
    client = HotClient(run)
    sent = [client.checkpoint(), client.pause()]
    done = threading.Thread(target=trainer.evaluate, daemon=True)
    done.start()
    try:
        done.join(timeout=120)
        assert not done.is_alive(), "trainer.evaluate() hung on a pause"
    finally:
        client.resume()  # (lets a hung evaluate end)
        done.join(timeout=120)
    assert not [e for e in read_ledger(run) if e["cmd_id"] in sent]
    trainer.args.max_steps = 6
    trainer.train()  # the next train() takes them (its first step: the pause, then resume)
    kernel.close()
    assert {e["cmd_id"] for e in read_ledger(run) if e["decision"] == "applied"} >= set(sent)


def test_hf_evaluate_is_refused_without_a_known_eval_dataset(tmp_path: Path) -> None:
    run = os.fspath(tmp_path / "run")
    cid = HotClient(run).evaluate()
    trainer, kernel = HF.build(run, 3)
    trainer.pop_callback(HotCBHFCallback)  # the default: can_evaluate from eval_strategy
    trainer.add_callback(HotCBHFCallback(kernel))
    trainer.train()
    kernel.close()
    e = _entry(run, cid)
    assert e["decision"] == "rejected" and "eval_strategy='no'" in e["error"]
    assert trainer.state.global_step == 3


def test_hf_extend_lengthens_shortens_and_stops_at_the_end_of_the_planned_epochs(
    tmp_path: Path,
) -> None:
    run = os.fspath(tmp_path / "longer")
    c = HotClient(run)
    more, at_end, epochs = c.extend(4, at_step=3), c.extend(2, at_step=10), c.extend(epochs=1)
    trainer, kernel = HF.build(run, 6)
    trainer.train()
    kernel.close()
    assert trainer.state.global_step == 12
    assert _entry(run, more)["changes"] == {"max_steps": {"old": 6, "new": 10}}
    assert _entry(run, at_end)["changes"] == {"max_steps": {"old": 10, "new": 12}}
    refused = _entry(run, epochs)
    assert refused["decision"] == "rejected" and "fixes its number of epochs" in refused["error"]

    # 512 samples in batches of 16: 32 steps an epoch, and train() planned one epoch
    run = os.fspath(tmp_path / "capped")
    past = HotClient(run).extend(to_step=40, at_step=2)
    trainer, kernel = HF.build(run, 6)
    trainer.train()
    kernel.close()
    e = _entry(run, past)
    assert e["changes"] == {"max_steps": {"old": 6, "new": 32}} and e["requested"] == 40
    assert "ends at step 32" in e["limit"] and trainer.state.global_step == 32
    # and `hotcb log` says that it got less than it asked for, and why
    assert ("(max_steps: 6 -> 32): asked for 40; the Trainer's loop ends at step 32: train() "
            "fixed 1 epoch(s) of 32 steps when it started") in _log(run)  # fmt: skip

    run = os.fspath(tmp_path / "shorter")
    fewer = HotClient(run).extend(to_step=2, at_step=4)
    trainer, kernel = HF.build(run, 20)
    trainer.train()
    kernel.close()
    assert trainer.state.global_step == 4
    assert _entry(run, fewer)["changes"] == {"max_steps": {"old": 20, "new": 2}}


# ------------------------------------------------------------------------------ signals
def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as in a terminal, whatever the CI shell does


def _train_and_signal(argv: list[str], run_dir: str, sig: int) -> tuple[int, str, str]:
    """Start the example, send ``sig`` once it has trained a few steps, wait for its end."""
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        preexec_fn=_default_sigint,
    )
    metrics = os.path.join(run_dir, "hotcb.metrics.jsonl")
    try:
        wait_for(
            lambda: proc.poll() is not None or len(read_jsonl(metrics)) >= 3,
            180,
            what="a few training steps",
        )
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err


def _signal_entries(run_dir: str) -> tuple[dict[str, Any], dict[str, Any]]:
    ck, stop = [e for e in read_ledger(run_dir) if e.get("source") == "signal"]
    assert (ck["op"], ck["decision"]) == ("checkpoint", "applied")
    assert (stop["op"], stop["step"]) == ("stop", ck["step"])
    return ck, stop


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_lightning_saves_a_checkpoint_on_a_signal(tmp_path: Path, sig: int) -> None:
    run = os.fspath(tmp_path / "run")
    argv = [sys.executable, os.fspath(EXAMPLES / "lightning_digits.py"), "--run-dir", run,
            "--steps", "100000", "--step-delay", "0.01", "--val-every", "1000"]  # fmt: skip
    code, out, err = _train_and_signal(argv, run, sig)
    assert code == 0, err[-3000:]
    ck, _ = _signal_entries(run)
    path = checkpoint_path(ck, run)
    assert ck["checkpoint"] == os.path.join("checkpoints", f"hotcb-step{ck['step']}.ckpt")
    assert path is not None and os.path.isfile(path)
    # SIGTERM: Lightning raises SIGTERMException out of fit() after that batch (the example
    # catches it); Ctrl-C: fit() ends normally
    said = "SIGTERM: stopped at step" if sig == signal.SIGTERM else "done at step"
    assert f"{said} {ck['step']}" in out, out


NO_CLOSE = """
import importlib.util, sys, time
import lightning.pytorch as pl
from lightning.pytorch.utilities.exceptions import SIGTERMException
from hotcb import HotKernel
from hotcb.adapters.lightning import HotCBLightning

spec = importlib.util.spec_from_file_location("ex", sys.argv[1])
ex = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ex)


class Slow(pl.Callback):
    def on_train_batch_end(self, *args, **kwargs):
        time.sleep(0.01)


kernel = HotKernel(sys.argv[2])  # and no kernel.close() anywhere
trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=100000, enable_progress_bar=False,
                     enable_model_summary=False, enable_checkpointing=False, logger=False,
                     num_sanity_val_steps=0, limit_val_batches=0,
                     default_root_dir=sys.argv[2], callbacks=[HotCBLightning(kernel), Slow()])
try:
    trainer.fit(ex.DigitsModule(lr=0.05), ex.loaders()[0])
except SIGTERMException:
    print("caught", flush=True)
"""


def test_a_lightning_fit_hotcb_stopped_on_sigterm_reads_stopped_without_close(
    tmp_path: Path, cli: Any
) -> None:
    """In one process Lightning raises SIGTERMException out of fit() after hotcb saved its
    checkpoint and stopped: a script that catches it and never calls kernel.close() read
    "crashed" at exit."""
    run = os.fspath(tmp_path / "run")
    (tmp_path / "no_close.py").write_text(NO_CLOSE)
    argv = [sys.executable, os.fspath(tmp_path / "no_close.py"),
            os.fspath(EXAMPLES / "lightning_digits.py"), run]  # fmt: skip
    code, out, err = _train_and_signal(argv, run, signal.SIGTERM)
    assert code == 0 and "caught" in out, err[-3000:]
    ck, _ = _signal_entries(run)
    status = cli(run, "status").stdout.splitlines()[0]
    assert status.endswith(f"[stopped at step {ck['step']}]"), status


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_hf_saves_a_checkpoint_on_a_signal(tmp_path: Path, sig: int) -> None:
    run = os.fspath(tmp_path / "run")
    argv = [sys.executable, os.fspath(EXAMPLES / "hf_tiny.py"), "--run-dir", run,
            "--steps", "100000", "--step-delay", "0.01", "--eval-steps", "0"]  # fmt: skip
    code, out, err = _train_and_signal(argv, run, sig)
    assert code == 0, err[-3000:]
    ck, _ = _signal_entries(run)
    assert ck["checkpoint"] == os.path.join("output", f"checkpoint-{ck['step']}")
    folder = checkpoint_path(ck, run)
    assert folder is not None
    assert os.path.isfile(os.path.join(folder, "model.safetensors"))
    assert os.path.isfile(os.path.join(folder, "hotcb_state.json"))
    assert f"done at step {ck['step']}" in out, out

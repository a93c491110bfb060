"""Another training loop on the same kernel: a notebook's training cell run again after
``kernel.close()``, a second Lightning ``fit`` or HF ``train()`` with the same callback. The
kernel applied commands in the new loop, but ``hotcb status`` still said ``finished`` (so
``hotcb stop`` answered "nothing to stop") or ``stopped``: a stop of the last loop held on."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
from adapter_helpers import load_example

from hotcb import HotClient, HotKernel
from hotcb.testing import read_ledger, wait_for

torch = pytest.importorskip("torch")


def _status(cli: Any, run: str) -> str:
    res = cli(run, "status")
    assert res.returncode == 0, res.stderr
    return res.stdout.splitlines()[0]


def _reopens(run: str) -> list[dict[str, Any]]:
    return [e for e in read_ledger(run) if (e["module"], e["op"]) == ("kernel", "reopen")]


def test_a_loop_after_close_is_a_running_run_again(tmp_path: Path, cli: Any) -> None:
    run = os.fspath(tmp_path / "run")
    kernel = HotKernel(run, poll_interval_sec=0.0, checkpoint_on_signal=True)  # first cell
    net = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)

    def train(steps: range) -> None:  # the training cell, closing at its end
        for step in steps:
            kernel.apply({"step": step, "optimizer": opt, "metrics": {"loss": 1.0 / step}})
            if kernel.stop_requested:
                break

    train(range(1, 6))
    kernel.close()
    assert "finished at step 5" in _status(cli, run)
    assert kernel.signals_caught == ()  # close() put the handlers back

    train(range(6, 8))  # the cell run again
    assert "[running]" in _status(cli, run)
    assert set(kernel.signals_caught) == {signal.SIGTERM, signal.SIGINT}
    stop = cli(run, "stop")
    assert stop.returncode == 0 and "nothing to stop" not in stop.stdout + stop.stderr
    train(range(8, 100))
    kernel.close()
    assert opt.param_groups[0]["lr"] == 0.1
    assert "stopped at step 8" in _status(cli, run)
    (reopen,) = _reopens(run)
    assert reopen["step"] == 6 and reopen["reopened"] == {
        "closed": True, "stopped": False, "paused": False}  # fmt: skip
    log = cli(run, "log").stdout
    assert "kernel reopen -> noop" in log and "after close()" in log


def test_a_loop_after_one_that_ended_paused_is_not_paused(
    tmp_path: Path, cli: Any, request: pytest.FixtureRequest
) -> None:
    """A loop that ended while paused (a signal during the pause: checkpoint and stop) left
    the kernel paused: the next loop on it sat at its first step while ``hotcb status`` said
    ``[running]``, until someone sent ``resume``."""
    run = os.fspath(tmp_path / "run")
    # hotcb chains to the handler it found: one that ends this process (Python's default, or
    # a kernel of an earlier test, closed) must not be it
    before = signal.signal(signal.SIGTERM, lambda *_: None)
    request.addfinalizer(lambda: signal.signal(signal.SIGTERM, before))
    kernel = HotKernel(run, poll_interval_sec=0.0, pause_poll_sec=0.01, checkpoint_on_signal=True)
    client = HotClient(run)
    steps: list[int] = []

    def train(first: int) -> None:
        for step in range(first, first + 3):
            kernel.apply({"step": step, "metrics": {"loss": 1.0}})
            steps.append(step)
            if kernel.stop_requested:
                break

    train(1)
    client.pause()

    def preempt() -> None:  # a scheduler's SIGTERM while the run is paused
        wait_for(lambda: kernel.paused, 60, what="the pause")
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=preempt, daemon=True).start()
    train(4)  # held at its first step until the signal, which stops it there
    kernel.close()
    assert steps[-1] == 4 and kernel.paused
    cell = threading.Thread(target=train, args=(10,), daemon=True)  # the cell run again
    cell.start()
    cell.join(timeout=60)
    if cell.is_alive():  # (held at the pause: free it, then fail)
        client.resume()
        cell.join(timeout=60)
        pytest.fail("the new loop was held by the last loop's pause")
    kernel.close()
    assert steps[-3:] == [10, 11, 12] and not kernel.paused
    (reopen,) = _reopens(run)
    assert reopen["reopened"] == {"closed": True, "stopped": True, "paused": True}
    assert "finished at step 12" in _status(cli, run)


def test_a_ramp_under_way_when_a_loop_ends_stops_there_and_says_so(tmp_path: Path) -> None:
    """A ramp still under way when a loop closed ran again in the next loop on the kernel,
    whose steps counted from 0 again (the lr jumped back up and ramped down a second time);
    with a new optimizer it vanished without an entry, and ``--ramp --wait`` waited on."""
    run = os.fspath(tmp_path / "run")
    kernel = HotKernel(run, poll_interval_sec=0.0)
    net = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    ramp = HotClient(run).opt(lr=0.001, transition={"steps": 100})
    lrs: list[float] = []

    def train(optimizer: Any) -> None:
        for step in range(20):
            kernel.apply({"step": step, "optimizer": optimizer, "metrics": {"loss": 1.0}})
            lrs.append(optimizer.param_groups[0]["lr"])

    train(opt)
    kernel.close()
    reached = lrs[-1]
    assert 0.001 < reached < 0.1
    train(opt)  # the cell run again, steps from 0
    assert lrs[-20:] == [reached] * 20
    ended = HotClient(run).wait_ramp(ramp, timeout=5)
    assert ended["ramp"] == "superseded" and "the training loop it ran in ended" in ended["error"]
    assert ended["changes"]["lr"]["new"] == pytest.approx(reached)

    again = HotClient(run).opt(lr=0.5, transition={"steps": 100})
    train(opt)  # a loop that ends on its own (no close, no stop); the next has a new optimizer
    train(torch.optim.SGD(net.parameters(), lr=0.2))
    ended = HotClient(run).wait_ramp(again, timeout=5)
    assert "the optimizer it ramped was replaced" in ended["error"]
    kernel.close()


pl = pytest.importorskip("lightning.pytorch")
from hotcb.adapters.lightning import HotCBLightning  # noqa: E402


@pytest.mark.slow
def test_a_second_lightning_fit_after_a_stop_trains_and_says_so(tmp_path: Path, cli: Any) -> None:
    ex = load_example("lightning_digits")
    run = os.fspath(tmp_path / "run")
    kernel = HotKernel(run, poll_interval_sec=0.0)
    module = ex.DigitsModule(lr=0.05)
    train, _ = ex.loaders()

    def fit(max_steps: int) -> pl.Trainer:
        trainer = pl.Trainer(
            accelerator="cpu", devices=1, max_steps=max_steps, enable_progress_bar=False,
            enable_model_summary=False, enable_checkpointing=False, logger=False,
            num_sanity_val_steps=0, limit_val_batches=0, callbacks=[HotCBLightning(kernel)],
        )  # fmt: skip
        trainer.fit(module, train)
        return trainer

    HotClient(run).send("control", "stop", at_step=3)
    assert fit(50).global_step == 3
    assert "[stopped at step 3]" in _status(cli, run)  # the fit closed the run at its end
    second = fit(8)  # the user asks for more training
    assert second.global_step == 8 and not kernel.stop_requested
    # no kernel.close() in the script: the fit that trained to its end says it finished (the
    # script's exit read "crashed")
    assert "finished at step 8" in _status(cli, run)
    (reopen,) = _reopens(run)
    assert reopen["reopened"] == {"closed": True, "stopped": True, "paused": False}


@pytest.mark.slow
def test_a_lightning_fit_that_raised_is_not_said_finished(tmp_path: Path, cli: Any) -> None:
    """Only a fit that trained to its end closes the run: one that raised did not finish; its
    signal handlers are let go all the same."""
    ex = load_example("lightning_digits")
    run = os.fspath(tmp_path / "run")
    kernel = HotKernel(run, poll_interval_sec=0.0)

    class Breaks(ex.DigitsModule):  # type: ignore[misc,name-defined]
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            if self.global_step == 3:
                raise RuntimeError("a bug in the model")
            return super().training_step(batch, batch_idx)

    train, _ = ex.loaders()
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=10, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, logger=False,
        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[HotCBLightning(kernel)],
    )  # fmt: skip
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(RuntimeError, match="a bug in the model"):
        trainer.fit(Breaks(lr=0.05), train)
    assert "finished" not in _status(cli, run) and not kernel._closed
    # Ctrl-C and SIGTERM act as without hotcb again (Lightning calls no teardown hook on an
    # error: the first Ctrl-C after a caught failed fit was swallowed)
    assert {s: signal.getsignal(s) for s in handlers} == handlers
    kernel.close()


transformers = pytest.importorskip("transformers")


@pytest.mark.slow
def test_a_second_hf_train_after_a_stop_trains(tmp_path: Path, cli: Any) -> None:
    ex = load_example("hf_tiny")
    run = os.fspath(tmp_path / "run")
    HotClient(run).send("control", "stop", at_step=2)
    trainer, kernel = ex.build(run, 6)
    trainer.train()
    assert trainer.state.global_step == 2
    assert "[stopped at step 2]" in _status(cli, run)  # train() closed the run at its end
    trainer.train()  # again, as a notebook cell run twice
    assert trainer.state.global_step == 6 and not kernel.stop_requested
    assert "finished at step 6" in _status(cli, run)  # with no kernel.close() in the script
    assert [e["reopened"] for e in _reopens(run)] == [
        {"closed": True, "stopped": True, "paused": False}
    ]


@pytest.mark.slow
def test_ctrl_c_after_a_hf_train_that_raised_acts_as_without_hotcb(
    tmp_path: Path, cli: Any
) -> None:
    """The HF Trainer calls no hook when ``train()`` raises, so hotcb's handlers stayed: the
    first Ctrl-C after a caught failure was swallowed, noted for a safe point that never came."""
    ex = load_example("hf_tiny")
    run = os.fspath(tmp_path / "run")

    class Breaks(transformers.TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 3:
                raise RuntimeError("a bug in a callback")

    trainer, kernel = ex.build(run, 10, extra_callbacks=[Breaks()])
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(RuntimeError, match="a bug in a callback"):
        trainer.train()
    assert "finished" not in _status(cli, run)
    with pytest.raises(KeyboardInterrupt):  # the person's Ctrl-C at the prompt
        signal.raise_signal(signal.SIGINT)
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # hotcb's are gone
    assert not kernel.signal_pending
    kernel.close()

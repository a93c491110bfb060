"""The runner's API for scripts (``benchmarks/autopilot.py`` and ``tune.py`` run their
conditions through it): a run trained in chunks, the run and optimizer after the last step,
the lr at each evaluation, and the tuner's settings."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")


def test_training_in_chunks_is_training_at_once() -> None:
    from hotcb.bench.runner import train
    from hotcb.bench.tasks import digits_mlp

    task = digits_mlp()
    whole_run = task.make(0)
    whole = train(whole_run, task.base_optimizer(whole_run.model.parameters()), 35, 10,
                  eval_last=False)  # fmt: skip
    run = task.make(0)
    opt = task.base_optimizer(run.model.parameters())
    first = train(run, opt, 20, 10, eval_last=False)
    rest = train(run, opt, 15, 10, start=20, eval_last=False)
    assert first.step + rest.step == whole.step == list(range(1, 36))
    assert first.train_loss + rest.train_loss == whole.train_loss  # bit for bit
    assert [s for s, _, _ in whole.evals()] == [10, 20, 30]  # no evaluation at step 35
    assert [s for s, _, _ in first.evals() + rest.evals()] == [10, 20, 30]
    again = task.make(0)
    last = train(again, task.base_optimizer(again.model.parameters()), 15, 10, start=20)
    assert last.evals()[-1][0] == 35  # eval_last: the last step evaluates too


def test_train_run_hands_back_the_run_and_its_optimizer(tmp_path: Path) -> None:
    from hotcb.bench.runner import Runner, Settings
    from hotcb.bench.tasks import digits_mlp

    task = dataclasses.replace(digits_mlp(), total_steps=40)
    done = Runner(Settings([], [])).train_run(task, "cosine", 0, os.fspath(tmp_path))
    curve = done.result.curve
    assert done.final_lr < 1e-6  # cosine down to 0 after the last step
    assert curve.lr[-1] > done.final_lr  # the curve holds the lr each step used
    assert done.evaluate() == (curve.val_loss[-1], curve.val_acc[-1])  # the same weights
    used = curve.eval_lrs(done.final_lr)
    after = curve.eval_lrs(done.final_lr, after=True)
    assert [s for s, _ in used] == [s for s, _ in after] == [0, 10, 20, 30, 40]
    assert used[1][1] == curve.lr[9] and after[1][1] == curve.lr[10]
    assert after[-1][1] == done.final_lr and used[0] == after[0] == (0, task.lr)


def test_tuner_settings_reach_the_tuner(tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    from hotcb import HotClient
    from hotcb.bench.runner import Runner, Settings
    from hotcb.bench.tasks import digits_mlp

    task = dataclasses.replace(digits_mlp(), total_steps=60)
    settings = Settings([], [], segment_steps=20, tune_restore="state", tune_sync=True)
    run_dir = os.fspath(tmp_path / "tuned")
    done = Runner(settings).train_run(task, "tune", 0, os.fspath(tmp_path), run_dir=run_dir)
    assert done.result.run_dir == run_dir
    saved = HotClient(run_dir).tune_status()["settings"]
    assert (saved["segment_steps"], saved["restore"], saved["sync"]) == (20, "state", True)


def test_an_action_the_run_never_applied_is_not_counted(tmp_path: Path) -> None:
    """The autopilot's last round can act at the run's last step: its command is written, but
    no step is left to apply it. The bench's "hotcb actions" counts what the ledger applied."""
    from hotcb import HotClient, HotKernel, jsonl
    from hotcb.autopilot.engine import RECORDS
    from hotcb.bench.runner import _pilot_summary

    run_dir = os.fspath(tmp_path / "run")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    kernel = HotKernel(run_dir, poll_interval_sec=0.0)
    landed = HotClient(run_dir, source="autopilot").opt(lr=0.05)
    kernel.apply({"step": 1, "optimizer": opt})
    kernel.close()
    late = HotClient(run_dir, source="autopilot").opt(lr=0.01)  # after the last step
    for step, cid in ((1, landed), (2, late)):
        jsonl.append(os.path.join(run_dir, RECORDS), {
            "kind": "action", "rule": "plateau_cut_lr", "step": step, "state": "applied",
            "cmd_ids": [cid],
        })  # fmt: skip
    assert _pilot_summary(run_dir) == {"actions": 1, "undone": 0}


def test_the_untimed_warm_up_changes_no_run(tmp_path: Path) -> None:
    """The bench warms each task up once before its first timed run (so that run's seconds
    are not ~10× the others'); every run seeds itself, so its curve is the same either way."""
    from hotcb.bench.runner import Runner, Settings
    from hotcb.bench.tasks import digits_mlp

    task = dataclasses.replace(digits_mlp(), total_steps=30)
    cold = Runner(Settings([], [])).run(task, "fixed", 1, os.fspath(tmp_path / "cold"))
    runner = Runner(Settings([], []))
    runner.warm(task)
    torch.rand(7)  # the global generator moved on too
    warm = runner.run(task, "fixed", 1, os.fspath(tmp_path / "warm"))
    assert warm.curve.train_loss == cold.curve.train_loss  # bit for bit
    assert warm.curve.val_loss == cold.curve.val_loss

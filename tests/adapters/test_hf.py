"""HotCBHFCallback with a real ``transformers.Trainer`` on a tiny BERT made from a config.

The model, data and Trainer come from ``examples/hf_tiny.py`` (random weights, synthetic tokens,
``use_cpu=True``, ``report_to=[]``; nothing is downloaded). The Trainer's own linear LR schedule
runs throughout.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import pytest
from adapter_helpers import load_example, read_jsonl

from hotcb import HotClient, HotKernel
from hotcb.ledger import checkpoint_path
from hotcb.testing import read_ledger

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")


EX = load_example("hf_tiny")


class Recorder(transformers.TrainerCallback):
    """After HotCBHFCallback: what the Trainer really uses at each optimizer step."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        sched = kwargs["lr_scheduler"]
        self.rows.append(
            {
                "step": state.global_step,
                "lr": kwargs["optimizer"].param_groups[0]["lr"],
                "factor": sched.lr_lambdas[0](sched.last_epoch),
                "max_grad_norm": args.max_grad_norm,
            }
        )


def _check_lr_survives_scheduler(rows: list[dict[str, Any]], step: int, lr: float) -> None:
    by_step = {r["step"]: r for r in rows}
    assert by_step[step]["lr"] == pytest.approx(lr)
    base = lr / by_step[step]["factor"]
    later = [r for r in rows if r["step"] > step]
    assert len(later) >= 2
    for r in later:
        # the next scheduler steps continue from the new lr instead of snapping back
        assert r["lr"] == pytest.approx(base * r["factor"])
        assert r["factor"] < by_step[step]["factor"]


@pytest.mark.slow
def test_train_is_steered_from_another_process_checkpointed_stopped_and_resumed(
    tmp_path: Path, controller: Any
) -> None:
    run_dir = os.fspath(tmp_path / "run")
    plan = [
        {"module": "opt", "op": "set_params", "fields": {"params": {"lr": 1e-3}}, "after_step": 2},
        {"module": "control", "op": "checkpoint"},
        {"module": "custom", "op": "set_params", "fields": {"params": {"max_grad_norm": 0.5}}},
        {"module": "control", "op": "stop"},
    ]
    ctl = controller(run_dir, plan)
    rec = Recorder()
    trainer, kernel = EX.build(run_dir, 400, step_delay=0.02, extra_callbacks=[rec])
    trainer.train()
    kernel.close()
    lr_e, ck_e, mgn_e, stop_e = (r["entry"] for r in ctl.results())
    assert all(e["decision"] == "applied" for e in (lr_e, ck_e, mgn_e, stop_e))

    assert trainer.state.global_step == stop_e["step"] < 400
    _check_lr_survives_scheduler(rec.rows, lr_e["step"], 1e-3)
    by_step = {r["step"]: r for r in rec.rows}
    assert by_step[mgn_e["step"] - 1]["max_grad_norm"] == 1.0
    assert by_step[mgn_e["step"]]["max_grad_norm"] == 0.5

    # checkpoint: the Trainer saved that step's folder, with hotcb's state in it
    folder = os.path.join(run_dir, "output", f"checkpoint-{ck_e['step']}")
    assert ck_e["checkpoint"] == os.path.join("output", f"checkpoint-{ck_e['step']}")
    assert checkpoint_path(ck_e, run_dir) == folder
    assert os.path.isfile(os.path.join(folder, "model.safetensors"))
    state = read_jsonl_doc(os.path.join(folder, "hotcb_state.json"))
    assert state["step"] == ck_e["step"] and state["actuators"]["max_grad_norm"] == 1.0

    # resume from it: the later max_grad_norm change is re-applied at its original step
    rec2 = Recorder()
    trainer2, kernel2 = EX.build(run_dir, stop_e["step"] + 2, extra_callbacks=[rec2])
    trainer2.train(resume_from_checkpoint=folder)
    kernel2.close()
    by_step2 = {r["step"]: r for r in rec2.rows}
    assert rec2.rows[0]["step"] == ck_e["step"] + 1
    assert by_step2[mgn_e["step"]]["max_grad_norm"] == 0.5
    if mgn_e["step"] > ck_e["step"] + 1:
        assert by_step2[mgn_e["step"] - 1]["max_grad_norm"] == 1.0
    replayed = [e for e in read_ledger(run_dir) if e.get("source") == "resume"]
    assert [(e["cmd_id"], e["step"]) for e in replayed] == [(mgn_e["cmd_id"], mgn_e["step"])]
    assert trainer2.state.global_step == stop_e["step"] + 2  # the old stop is not applied again


def read_jsonl_doc(path: str) -> dict[str, Any]:
    import json

    with open(path) as f:
        return dict(json.load(f))


def test_lr_change_survives_the_trainers_scheduler_and_stop_at_step(tmp_path: Path) -> None:
    """Fast: commands written before train() land at the first step; a scheduled stop ends
    training at its step; train and eval metrics reach hotcb.metrics.jsonl once each."""
    run_dir = os.fspath(tmp_path / "run")
    client = HotClient(run_dir)
    lr_id = client.opt(lr=2e-3)
    stop_id = client.send("control", "stop", at_step=4)
    rec = Recorder()
    trainer, kernel = EX.build(run_dir, 50, eval_steps=2, extra_callbacks=[rec])
    trainer.train()
    kernel.close()
    ledger = {e["cmd_id"]: e for e in read_ledger(run_dir) if e["decision"] != "scheduled"}
    assert ledger[lr_id]["step"] == 1 and ledger[stop_id]["step"] == 4
    assert trainer.state.global_step == 4
    _check_lr_survives_scheduler(rec.rows, 1, 2e-3)
    metrics = read_jsonl(os.path.join(run_dir, "hotcb.metrics.jsonl"))
    train = [m for m in metrics if "loss" in m["metrics"]]
    evals = [m for m in metrics if "eval_loss" in m["metrics"]]
    assert [m["step"] for m in train] == [1, 2, 3, 4]
    assert [m["step"] for m in evals] == [2, 4]
    # the Trainer's `learning_rate` is hotcb's `lr`, as in the bare loop and Lightning
    assert all("lr" in m["metrics"] and "learning_rate" not in m["metrics"] for m in train)


@pytest.mark.parametrize("poll_sec", [0.0, 3600.0], ids=["poll-every-step", "no-poll-due"])
def test_nothing_is_built_at_steps_without_work_and_commands_land_on_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, poll_sec: float
) -> None:
    """Steps with nothing due cost no env: with a poll at every step (that finds nothing) the
    env is not built there; with no poll due, ``apply`` is not even called there. Either way
    commands land at their steps and the Trainer's logs reach the metrics file at every step
    (logging_steps=1)."""
    from hotcb.adapters import hf

    run_dir = os.fspath(tmp_path / "run")
    client = HotClient(run_dir)
    lr_id = client.opt(lr=2e-3)
    mgn_id = client.set_params("custom", {"max_grad_norm": 0.5}, at_step=3)
    stop_id = client.send("control", "stop", at_step=5)
    rec = Recorder()
    monkeypatch.setattr(EX, "HotKernel", functools.partial(HotKernel, poll_interval_sec=poll_sec))
    trainer, kernel = EX.build(run_dir, 50, extra_callbacks=[rec])
    built: list[int] = []
    applied: list[int] = []
    fill, apply = hf._fill, kernel.apply

    def spy_fill(*args: Any) -> None:
        built.append(args[-1]["step"])
        fill(*args)

    def spy_apply(env: Any, events: Any, **kw: Any) -> None:
        applied.append(env["step"])
        apply(env, events, **kw)

    monkeypatch.setattr(hf, "_fill", spy_fill)
    monkeypatch.setattr(kernel, "apply", spy_apply)
    trainer.train()
    kernel.close()

    ledger = {e["cmd_id"]: e for e in read_ledger(run_dir) if e["decision"] == "applied"}
    assert [ledger[c]["step"] for c in (lr_id, mgn_id, stop_id)] == [1, 3, 5]
    assert trainer.state.global_step == 5
    by_step = {r["step"]: r for r in rec.rows}
    assert by_step[1]["lr"] == pytest.approx(2e-3)
    assert by_step[2]["max_grad_norm"] == 1.0 and by_step[3]["max_grad_norm"] == 0.5
    metrics = read_jsonl(os.path.join(run_dir, "hotcb.metrics.jsonl"))
    assert [m["step"] for m in metrics if "loss" in m["metrics"]] == [1, 2, 3, 4, 5]
    # nothing is due at steps 2 and 4: nothing is built there (step 1: the kernel starts;
    # step 5: stop needs the Trainer's control)
    assert set(built).isdisjoint({2, 4}) and {1, 5} <= set(built)
    assert applied == ([1, 3, 5] if poll_sec else [1, 2, 3, 4, 5])


def test_the_tuner_scores_the_trainers_training_loss(tmp_path: Path) -> None:
    """`--objective loss` with the HF Trainer: its training logs come through on_log, after the
    step's safe point, and still reach the tuner; it judges trials on them (before, it saw only
    evaluations and never started one) and every one of its changes moved the Trainer's lr."""
    pytest.importorskip("optuna")
    run_dir = os.fspath(tmp_path / "run")
    space = [{"key": "lr", "module": "opt", "mode": "mult", "low": 0.5, "high": 2.0}]
    HotClient(run_dir).tune_enable("active", objective="loss", segment_steps=5, seed=0,
                                   space=space, sync=True)  # fmt: skip
    rec = Recorder()
    trainer, kernel = EX.build(run_dir, 40, extra_callbacks=[rec])
    trainer.train()
    kernel.close()
    status = HotClient(run_dir).tune_status()
    assert status["objective_used"] == "loss" and not status["warnings"], status
    judged = [r for r in status["trials"] if r["decision"] in ("kept", "rolled_back")]
    assert judged and all(isinstance(r["score"], float) for r in judged), status["trials"]
    by_step = {r["step"]: r for r in rec.rows}
    mutates = [e for e in read_ledger(run_dir) if e["module"] == "tune" and e["op"] == "mutate"]
    assert mutates
    for m in mutates:
        assert by_step[m["step"]]["lr"] == pytest.approx(m["changes"]["lr"]["new"])

"""The tasks and conditions of ``hotcb bench``: a user task through the documented contract,
the charlm task (tiny config), skipped tasks and conditions, and the optimizer conditions."""

from __future__ import annotations

import base64
import json
import math
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

USER_TASK = '''
"""A user task for hotcb bench: linear regression on a fixed random problem."""
import torch
from torch.nn import functional as F


class Run:
    def __init__(self, seed):
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.model = torch.nn.Linear(4, 1)
        w = torch.tensor([[1.0, -2.0, 0.5, 3.0]])
        self.x = torch.randn(256, 4, generator=torch.Generator().manual_seed(0))
        self.y = self.x @ w.T
        self.g = g

    def train_step(self, opt):
        idx = torch.randint(0, 192, (32,), generator=self.g)
        loss = F.mse_loss(self.model(self.x[idx]), self.y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    @torch.no_grad()
    def evaluate(self):
        return float(F.mse_loss(self.model(self.x[192:]), self.y[192:])), None


class Task:
    title = "linear regression"
    total_steps = 40
    eval_every = 5
    lr = 0.05

    def make(self, seed):
        return Run(seed)


def make_task():
    return Task()


def broken():
    return object()
'''


@pytest.mark.slow
def test_user_task_follows_the_contract(cli: Any, tmp_path: Path) -> None:
    (tmp_path / "mytask.py").write_text(USER_TASK)
    out = tmp_path / "out"
    done = cli(None, "bench", "run", "--task", "mytask:make_task", "--conditions",
               "fixed,cosine", "--seeds", "2", "--out", os.fspath(out), "--no-progress",
               cwd=os.fspath(tmp_path), timeout=180)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    meta = json.loads((out / "bench.json").read_text())
    assert meta["tasks"]["mytask:make_task"]["title"] == "linear regression"
    assert meta["tasks"]["mytask:make_task"]["steps"] == 40  # the task's own total_steps
    for cond in ("fixed", "cosine"):
        for seed in (0, 1):
            doc = json.loads((out / f"runs/mytask_make_task/{cond}/s{seed}/curve.json").read_text())
            assert len(doc["curve"]["step"]) == 40
            vals = [v for v in doc["curve"]["val_loss"] if v is not None]
            assert len(vals) == 8 and vals[-1] < vals[0]  # it learns
            assert doc["final"]["final_val_acc"] is None  # no accuracy: None, not 0
    cos = json.loads((out / "runs/mytask_make_task/cosine/s0/curve.json").read_text())
    assert cos["curve"]["lr"][0] == 0.05 and cos["curve"]["lr"][-1] < 0.001
    assert (out / "img" / "bench_mytask_make_task.png").exists()
    assert "linear regression" in (out / "report.html").read_text()


@pytest.mark.slow
def test_user_task_that_breaks_the_contract(cli: Any, tmp_path: Path) -> None:
    (tmp_path / "mytask.py").write_text(USER_TASK)
    done = cli(None, "bench", "run", "--task", "mytask:broken", "--conditions", "fixed",
               "--out", os.fspath(tmp_path / "o"), cwd=os.fspath(tmp_path))  # fmt: skip
    assert done.returncode == 2
    assert "without total_steps, eval_every, lr, make" in done.stderr
    done = cli(None, "bench", "run", "--task", "nosuchmodule:make", "--conditions", "fixed",
               "--out", os.fspath(tmp_path / "o"), cwd=os.fspath(tmp_path))  # fmt: skip
    assert done.returncode == 2
    assert "cannot load it" in done.stderr
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_charlm_makes_a_step_and_evaluates() -> None:
    from hotcb.bench.tasks import CHARLM_FILES, CharLMConfig, charlm, charlm_corpus

    corpus = charlm_corpus()
    assert len(corpus.files) + len(corpus.missing) == len(CHARLM_FILES)
    assert len(corpus.files) >= len(CHARLM_FILES) // 2
    assert len(corpus.train) > 1_000_000  # several MB of real text
    assert 0.05 < len(corpus.val) / (len(corpus.train) + len(corpus.val)) < 0.15
    task = charlm(CharLMConfig(context=16, d=16, layers=1, heads=2, batch=4, val_windows=8))
    assert task.info["corpus"]["sha256"] == corpus.sha256
    run = task.make(0)
    opt = task.base_optimizer(run.model.parameters())
    before = run.evaluate()
    loss = run.train_step(opt)
    assert math.isfinite(loss) and loss > 3  # ~ln(256) at the start
    val_loss, acc = run.evaluate()
    assert math.isfinite(val_loss) and val_loss != before[0]
    assert acc is not None and 0 <= acc <= 1
    again = task.make(0)  # a seed makes the same run
    assert again.train_step(task.base_optimizer(again.model.parameters())) == loss


@pytest.mark.slow
def test_unavailable_task_and_condition_are_skipped_with_a_message(
    cli: Any, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    env_key = os.environ.pop("HOTCB_AI_KEY", None)
    try:
        done = cli(None, "bench", "run", "--task", "cifar10_resnet20,digits_mlp", "--conditions",
                   "fixed,ai", "--steps", "20", "--out", os.fspath(out), "--no-progress",
                   timeout=180)  # fmt: skip
    finally:
        if env_key is not None:
            os.environ["HOTCB_AI_KEY"] = env_key
    assert done.returncode == 0, done.stderr
    assert "cifar10_resnet20:" in done.stderr and "skipped" in done.stderr
    assert "cifar10_resnet20: cifar10_resnet20" not in done.stderr  # its name once
    assert "ai: not configured (missing HOTCB_AI_KEY" in done.stderr
    assert "skipped ai: not configured (missing HOTCB_AI_KEY, --ai-base-url, --ai-model)\n" in (
        done.stdout
    )  # "skipped" once, not "skipped ai: …; skipped"
    assert "; skipped" not in done.stdout
    meta = json.loads((out / "bench.json").read_text())
    assert list(meta["tasks"]) == ["digits_mlp"]
    assert meta["conditions"] == ["fixed"]
    assert {s["what"] for s in meta["skipped"]} == {"cifar10_resnet20", "ai"}
    assert "Skipped" in (out / "report.md").read_text()


@pytest.mark.slow
def test_optimizer_and_tuner_conditions_run(tmp_path: Path) -> None:
    """Schedule-Free, Prodigy and hotcb tune, in process (the runner's API)."""
    pytest.importorskip("schedulefree")
    pytest.importorskip("prodigyopt")
    pytest.importorskip("optuna")
    from hotcb.bench.runner import Settings, load_bench, run_bench

    out = tmp_path / "out"
    s = Settings(tasks=["digits_mlp"], conditions=["schedulefree", "prodigy", "tune"], seeds=1,
                 steps=120, out=os.fspath(out), progress=False)  # fmt: skip
    meta = run_bench(s, log=lambda msg: None)
    assert meta["conditions"] == ["schedulefree", "prodigy", "tune"]
    _, runs = load_bench(os.fspath(out))
    by = {r["condition"]: r for r in runs}
    assert by["schedulefree"]["curve"]["lr"][0] == 0.0025  # its published default lr
    assert by["prodigy"]["curve"]["lr"][0] < 1e-3  # d0 · lr 1.0: Prodigy's own estimate
    assert by["prodigy"]["curve"]["lr"][-1] > by["prodigy"]["curve"]["lr"][0]  # it grew
    assert os.path.exists(out / "runs/digits_mlp/tune/s0/run/hotcb.applied.jsonl")
    for r in runs:
        assert r["final"]["final_val_acc"] > 0.5, r["condition"]


def test_names_are_checked_without_torch() -> None:
    import subprocess

    code = textwrap.dedent("""
        import sys
        from hotcb.cli import build_parser
        build_parser()
        from hotcb.bench import parse_names, CONDITIONS
        assert parse_names("fixed, autopilot,fixed", CONDITIONS, "condition") == ["fixed", "autopilot"]
        assert "torch" not in sys.modules, "hotcb's CLI imported torch"
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_the_documented_user_task_runs(cli: Any, tmp_path: Path) -> None:
    """docs/bench.md's example task, as written there, with fixed and the autopilot."""
    import re

    doc = (Path(__file__).resolve().parents[2] / "docs" / "bench.md").read_text()
    (block,) = [
        b for b in re.findall(r"```python\n(.*?)```", doc, flags=re.S) if "# mytask.py" in b
    ]
    (tmp_path / "mytask.py").write_text(block)
    out = tmp_path / "out"
    done = cli(None, "bench", "run", "--task", "mytask:make_task", "--conditions",
               "fixed,autopilot,replay", "--steps", "60", "--out", os.fspath(out),
               "--no-progress", "--no-report", cwd=os.fspath(tmp_path), timeout=180)  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads((out / "summary.json").read_text())
    assert [r["condition"] for r in rows] == ["fixed", "autopilot", "replay"]
    assert rows[2]["replay_matched"] is True
    assert rows[0]["final_val_loss"] < 1.0


@pytest.mark.slow
def test_ai_condition_asks_the_configured_endpoint(tmp_path: Path, monkeypatch: Any) -> None:
    """With HOTCB_AI_KEY, --ai-base-url and --ai-model, ``ai`` runs the LLM autopilot
    (``ai_auto``) against the endpoint: here a local scripted chat server."""
    pytest.importorskip("openai")
    from hotcb.bench.runner import Settings, load_bench, run_bench
    from hotcb.testing import wait_for
    from hotcb.testing.chat_server import NOTHING, ScriptedChatServer

    monkeypatch.setenv("HOTCB_AI_KEY", "test-key")
    out = tmp_path / "out"
    with ScriptedChatServer([NOTHING]) as srv:
        # a login in the base URL reaches the endpoint, and no file of the report
        url = srv.base_url.replace("http://", "http://me:PW-SECRET-1@")
        s = Settings(tasks=["digits_badlr"], conditions=["ai"], seeds=1, steps=400,
                     out=os.fspath(out), progress=False, ai_base_url=url, ai_model="scripted",
                     command=f"hotcb bench run --task digits_badlr --ai-base-url {url}")  # fmt: skip
        meta = run_bench(s, log=lambda msg: None)
        assert meta["conditions"] == ["ai"] and not meta["skipped"]
        # the call runs in the engine's thread: it may land after the run's last step
        wait_for(lambda: srv.requests, 30, what="a request from the ai condition")
        asked = list(srv.requests)
    login = base64.b64encode(b"me:PW-SECRET-1").decode()  # the URL's login, over the key
    assert asked[0]["headers"]["authorization"] == f"Basic {login}"
    assert asked[0]["body"]["model"] == "scripted"
    _, runs = load_bench(os.fspath(out))
    assert len(runs[0]["curve"]["step"]) == 400
    leaked = [p for p in out.rglob("*") if p.is_file() and b"PW-SECRET-1" in p.read_bytes()]
    assert not leaked, leaked


@pytest.mark.parametrize(
    ("url", "skipped"),
    [("http://127.0.0.1:8000/v1", []), ("http://localhost:11434/v1", []),
     ("https://api.example.com/v1", [("ai", "not configured (missing HOTCB_AI_KEY)")])],
)  # fmt: skip
def test_the_ai_condition_needs_no_key_for_a_server_on_this_machine(
    monkeypatch: Any, url: str, skipped: list[tuple[str, str]]
) -> None:
    """``hotcb autopilot`` asks a local server without a key (docs/autopilot.md); the bench's
    ``ai`` condition was skipped for the missing key all the same."""
    from hotcb.bench.runner import Settings, check_plan

    monkeypatch.delenv("HOTCB_AI_KEY", raising=False)
    s = Settings(tasks=["digits_mlp"], conditions=["fixed", "ai"], seeds=1, steps=20,
                 ai_base_url=url, ai_model="local")  # fmt: skip
    assert check_plan(s) == skipped


def test_resnet20_run_on_cifar_shaped_tensors() -> None:
    """The cifar10_resnet20 task's model and run, on random CIFAR-shaped tensors (the data set
    itself is never downloaded; with --data the same run trains on it)."""
    from hotcb.bench.tasks import CifarRun, _sgd, resnet20

    model = resnet20()
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(272_474, rel=0.01)
    g = torch.Generator().manual_seed(0)
    data = (torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 10, (64,), generator=g),
            torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g))  # fmt: skip
    run = CifarRun(0, data)
    run.batch_size = 8
    loss = run.train_step(_sgd(run.model.parameters(), 0.1))
    assert math.isfinite(loss)
    val_loss, acc = run.evaluate()
    assert math.isfinite(val_loss) and acc is not None and 0 <= acc <= 1


def test_cifar_task_without_torchvision_or_data_says_why() -> None:
    from hotcb.bench.tasks import TaskUnavailable, load_task

    with pytest.raises(
        TaskUnavailable, match=r"^cifar10_resnet20: (torchvision|CIFAR-10|no CIFAR)"
    ):
        load_task("cifar10_resnet20", data_dir=None)


def _second_run_raises(tmp_path: Path, exc: BaseException) -> tuple[Path, dict[str, Any]]:
    """A bench of two runs whose second raises ``exc``; its folder and ``bench.json``, once
    the report is written."""
    from hotcb.bench.report import write_report
    from hotcb.bench.runner import Runner, Settings, run_bench

    calls = {"n": 0}
    real_run = Runner.run

    def run_then_raise(self: Any, *args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise exc
        return real_run(self, *args)

    out = tmp_path / "out"
    s = Settings(tasks=["digits_mlp"], conditions=["fixed", "cosine"], steps=20,
                 out=os.fspath(out), progress=False)  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Runner, "run", run_then_raise)
        with pytest.raises(type(exc)):
            run_bench(s, log=lambda msg: None)
    write_report(os.fspath(out))
    return out, json.loads((out / "bench.json").read_text())


def test_an_interrupted_bench_keeps_its_finished_runs(tmp_path: Path) -> None:
    out, meta = _second_run_raises(tmp_path, KeyboardInterrupt())
    assert meta["interrupted_after_runs"] == 1
    assert [r["condition"] for r in json.loads((out / "summary.json").read_text())] == ["fixed"]
    assert "INTERRUPTED after 1 run: a partial bench" in (out / "report.md").read_text()


def test_a_bench_stopped_by_a_run_s_error_says_so_not_interrupted(tmp_path: Path) -> None:
    """A task whose run raised: the report said "INTERRUPTED" as for a Ctrl-C nobody pressed,
    with no word of the error, and the failed run's empty folder stayed under runs/."""
    out, meta = _second_run_raises(tmp_path, ValueError("cannot make run"))
    assert meta["interrupted_run"]["error"] == "ValueError: cannot make run"
    assert not (out / "runs" / "digits_mlp" / "cosine").exists()
    md = (out / "report.md").read_text()
    assert (
        "STOPPED by an error after 1 run, in digits_mlp · cosine · seed 0 (ValueError: "
        "cannot make run): a partial bench" in md
    )
    assert "INTERRUPTED" not in md

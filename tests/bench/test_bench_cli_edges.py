"""``hotcb bench`` as a user meets it at the edges: a second Ctrl-C while the partial report is
written, going on with an interrupted bench (``--resume``), a bug in a user's task, the ``ai``
condition that never asked its model, a tie for the best, ``bench report --dir``. Every bench
is a real ``hotcb bench`` subprocess, on tiny tasks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from hotcb.testing import wait_for

pytestmark = pytest.mark.slow

pytest.importorskip("torch")

#: This environment without HOTCB_DIR (a developer's shell may set it) and the AI key.
ENV = {k: v for k, v in os.environ.items() if k not in ("HOTCB_DIR", "HOTCB_AI_KEY")}

# A user task whose third run made (the warm-up makes the first: so the second timed run)
# trains until Ctrl-C while the file "block" exists in the current folder, saying so first.
BLOCKING_TASK = """
import os, time
import torch
from torch.nn import functional as F


class Run:
    def __init__(self, seed, block):
        torch.manual_seed(seed)
        self.block = block
        self.model = torch.nn.Linear(2, 1)
        self.x = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
        self.y = self.x.sum(1, keepdim=True)

    def train_step(self, opt):
        if self.block:
            open("blocked", "w").close()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # until Ctrl-C
                time.sleep(0.02)
        loss = F.mse_loss(self.model(self.x), self.y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    @torch.no_grad()
    def evaluate(self):
        return float(F.mse_loss(self.model(self.x), self.y)), None


class Task:
    total_steps, eval_every, lr = 6, 3, 0.05
    made = 0

    def make(self, seed):
        Task.made += 1
        return Run(seed, block=Task.made == 3 and os.path.exists("block"))


def make_task():
    return Task()
"""

BENCH = ["--task", "blocking:make_task", "--conditions", "fixed,cosine", "--seeds", "2"]


def _default_sigint() -> None:
    # a child of a shell that ignores SIGINT (a background job, CI) would ignore it too:
    # give it the default, as in a terminal, where Python turns it into KeyboardInterrupt
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _bench(cwd: Path, *args: str, env: dict[str, str] | None = None,
           timeout: float = 300) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run([sys.executable, "-m", "hotcb", "bench", *args], cwd=cwd,
                          env=env or ENV, capture_output=True, text=True, timeout=timeout)  # fmt: skip


def _interrupt_in_the_second_run(tmp_path: Path, out: Path, *, again_when: Path | None) -> Any:
    """``hotcb bench run`` of the blocking task, Ctrl-C once its second run trains, and again
    once ``again_when`` exists (None: once); the finished process, its stdout and stderr."""
    (tmp_path / "blocking.py").write_text(textwrap.dedent(BLOCKING_TASK))
    (tmp_path / "block").touch()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hotcb", "bench", "run", *BENCH, "--out", os.fspath(out),
         "--no-progress"],
        cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, preexec_fn=_default_sigint,
    )  # fmt: skip
    try:
        wait_for(lambda: (tmp_path / "blocked").exists() or proc.poll() is not None, 120,
                 what="the second run to start")  # fmt: skip
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        if again_when is not None:
            wait_for(lambda: again_when.exists() or proc.poll() is not None, 120,
                     what=f"{again_when.name} to be made")  # fmt: skip
            proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc, stdout, stderr


def test_a_second_ctrl_c_while_the_report_is_written_still_gets_the_report(
    tmp_path: Path,
) -> None:
    """The second Ctrl-C lands once the partial report has begun (its img/ folder is made
    first): it ended the bench with exit code 130 and neither the line saying how far it got
    nor report.md/report.html."""
    out = tmp_path / "out"
    proc, stdout, stderr = _interrupt_in_the_second_run(tmp_path, out, again_when=out / "img")
    assert proc.returncode == 130, stdout + stderr
    assert (out / "report.html").exists(), stderr
    assert "INTERRUPTED after 1 run" in (out / "report.md").read_text()
    lines = stderr.splitlines()
    line = (f"hotcb bench: interrupted after 1 run; partial results in {out} (report: "
            f"{out / 'report.md'}, report.html); the same command with --resume (not --force) "
            "runs the rest")  # fmt: skip
    assert line in lines, stderr
    assert ("hotcb bench: saving the finished runs and their partial report first (Ctrl-C once "
            "more skips the report)") in lines, stderr  # fmt: skip
    assert "Traceback" not in stderr


def test_an_interrupted_bench_goes_on_with_resume(tmp_path: Path) -> None:
    """Running the same command again was refused ('already holds a bench'), and --force
    deleted the finished runs: --resume keeps them and runs the rest, with the figures an
    uninterrupted bench has."""
    out = tmp_path / "out"
    proc, stdout, stderr = _interrupt_in_the_second_run(tmp_path, out, again_when=None)
    assert proc.returncode == 130, stdout + stderr
    kept = out / "runs/blocking_make_task/fixed/s0/curve.json"
    kept_before = kept.read_bytes()
    (tmp_path / "block").unlink()

    again = _bench(tmp_path, "run", *BENCH, "--out", os.fspath(out), "--no-progress")
    assert again.returncode == 2, again.stderr
    assert (f"{out} already holds a bench (bench.json): --resume goes on with it (its finished "
            "runs are kept), --force replaces it (its runs are deleted)") in again.stderr  # fmt: skip
    other = _bench(tmp_path, "run", *BENCH[:-1], "3", "--out", os.fspath(out), "--resume")
    assert other.returncode == 2, other.stderr
    assert "--resume: the bench in" in other.stderr and "seeds 2 there, 3 here" in other.stderr
    steps = _bench(tmp_path, "run", *BENCH, "--steps", "7", "--out", os.fspath(out), "--resume")
    assert steps.returncode == 2, steps.stderr  # said in words, not Python's None
    assert "steps the task's default there, 7 here" in steps.stderr, steps.stderr
    afile = tmp_path / "afile"
    afile.write_text("")
    for where, said in ((afile, f"--out {afile} is a file, not a folder"),
                        (afile / "sub", f"--out: cannot make the folder {afile / 'sub'}: ")):  # fmt: skip
        bad = _bench(tmp_path, "run", *BENCH, "--out", os.fspath(where))
        assert bad.returncode == 2 and said in bad.stderr, bad.stderr
        assert "[Errno" not in bad.stderr
    nothing = _bench(tmp_path, "run", *BENCH, "--out", os.fspath(tmp_path / "none"), "--resume")
    assert nothing.returncode == 2 and "bench.json is missing" in nothing.stderr, nothing.stderr
    assert kept.read_bytes() == kept_before  # none of that touched the bench

    resumed = _bench(tmp_path, "run", *BENCH, "--out", os.fspath(out), "--no-progress",
                     "--resume")  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"hotcb bench: resuming {out}: 1 finished run(s) kept, 3 to run" in resumed.stderr
    assert kept.read_bytes() == kept_before  # kept, not trained again
    meta = json.loads((out / "bench.json").read_text())
    assert "interrupted_after_runs" not in meta and len(meta["resumed"]) == 1
    rows = json.loads((out / "summary.json").read_text())
    assert [(r["condition"], r["seed"]) for r in rows] == [
        ("fixed", 0), ("cosine", 0), ("fixed", 1), ("cosine", 1)]  # fmt: skip
    assert "INTERRUPTED" not in (out / "report.md").read_text()

    fresh = tmp_path / "fresh"
    done = _bench(tmp_path, "run", *BENCH, "--out", os.fspath(fresh), "--no-progress",
                  "--no-report")  # fmt: skip
    assert done.returncode == 0, done.stderr
    for run in ("fixed/s0", "cosine/s0", "fixed/s1", "cosine/s1"):
        ours, theirs = (json.loads((d / "runs/blocking_make_task" / run / "curve.json")
                                   .read_text())["curve"] for d in (out, fresh))  # fmt: skip
        assert ours == theirs, run


BUGGY_TASK = """
import torch
from torch.nn import functional as F


class Run:
    def __init__(self, seed):
        self.seed = seed
        self.model = torch.nn.Linear(2, 1)
        self.x = torch.ones(8, 2)

    def train_step(self, opt):
        loss = F.mse_loss(self.model(self.x), self.x[:, :1])
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    def evaluate(self):
        return 1 / (self.seed - 1), None  # seed 1: a bug


class Task:
    total_steps, eval_every, lr = 4, 2, 0.05

    def make(self, seed):
        return Run(seed)


class Unmakeable(Task):
    def make(self, seed):
        raise ValueError("cannot make run")


def make_task():
    return Task()


def unmakeable():
    return Unmakeable()
"""


@pytest.mark.parametrize(
    ("task", "said", "where"),
    [
        ("buggy:unmakeable", "task buggy:unmakeable (its untimed warm-up, seed 0): make(0) "
         "raised ValueError: cannot make run (in the task's own code, not hotcb's)",
         ('line 32, in make\n    raise ValueError("cannot make run")\n'
          "ValueError: cannot make run\n")),
        ("buggy:make_task", "task buggy:make_task, condition fixed, seed 1: run.evaluate() "
         "raised ZeroDivisionError: division by zero (in the task's own code, not hotcb's)",
         "line 20, in evaluate\n    return 1 / (self.seed - 1), None  # seed 1: a bug\n"),
    ],
    ids=["make", "evaluate"],
)  # fmt: skip
def test_an_error_in_the_tasks_own_code_says_which_task_and_where(
    tmp_path: Path, task: str, said: str, where: str
) -> None:
    """It printed 'hotcb: error: cannot make run' and nothing else: which task, which run,
    and that it was the task's bug, not hotcb's, were left to guess."""
    (tmp_path / "buggy.py").write_text(textwrap.dedent(BUGGY_TASK))
    done = _bench(tmp_path, "run", "--task", task, "--conditions", "fixed,cosine", "--seeds",
                  "2", "--out", "out", "--no-progress")  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert lines[-1] == f"hotcb: error: {said}", done.stderr
    assert "Traceback (most recent call last):" in lines, done.stderr
    assert f'File "{tmp_path / "buggy.py"}", {where}' in done.stderr, done.stderr
    assert "hotcb/bench/runner.py" not in done.stderr  # the task's frames only
    # the runs that finished before it are reported (only a Ctrl-C wrote their report)
    report = tmp_path / "out" / "report.md"
    if task == "buggy:make_task":
        assert "STOPPED by an error after 2 runs, in buggy:make_task" in report.read_text()
        assert ("hotcb bench: stopped by an error after 2 runs (partial report: out/report.md); "
                "once it is fixed, the same command with --resume runs the rest") in lines  # fmt: skip
    else:  # in the warm-up: none finished
        assert not report.exists() and "stopped by an error" not in done.stderr


@pytest.fixture(scope="module")
def short_ai_bench(tmp_path_factory: Any) -> Path:
    """fixed and ai on 20 steps of digits_mlp: too short for the LLM autopilot to ask its
    model (a scripted local endpoint), so both run at the task's lr; no report yet."""
    pytest.importorskip("openai")
    from hotcb.testing.chat_server import ScriptedChatServer

    out = tmp_path_factory.mktemp("bench") / "out"
    with ScriptedChatServer() as srv:
        done = _bench(out.parent, "run", "--task", "digits_mlp", "--conditions", "fixed,ai",
                      "--steps", "20", "--ai-base-url", srv.base_url, "--ai-model", "scripted",
                      "--out", os.fspath(out), "--no-progress", "--no-report",
                      env={**ENV, "HOTCB_AI_KEY": "test-key"})  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert srv.requests == []
    assert [r["condition"] for r in json.loads((out / "summary.json").read_text())] == [
        "fixed", "ai"]  # fmt: skip
    return out


def _report_md(out: Path) -> str:
    done = _bench(out.parent, "report", os.fspath(out))
    assert done.returncode == 0, done.stderr
    return (out / "report.md").read_text()


def test_the_ai_condition_that_never_asked_its_model_says_so(short_ai_bench: Path) -> None:
    """The report said it 'ends level with fixed lr' as if the model had been asked."""
    md = _report_md(short_ai_bench)
    assert ("- hotcb AI autopilot never asked the model on digits_mlp (0 LLM calls in its run), "
            "applied no action and so ran at the task's lr, as fixed lr does: its figures say "
            "nothing about the LLM.") in md  # fmt: skip


def test_a_tie_for_the_best_is_said_so(short_ai_bench: Path) -> None:
    """Two conditions with the same final val loss: fixed lr alone was marked '(best)', the
    first in the plan's order."""
    md = _report_md(short_ai_bench)
    rows = [ln.split("|")[1].strip() for ln in md.splitlines() if ln.startswith("| ")]
    assert "fixed lr (tied best)" in rows and "hotcb AI autopilot (tied best)" in rows, rows
    assert "fixed lr (best)" not in rows
    assert "- fixed lr and hotcb AI autopilot tie for the lowest mean final val loss" in md
    html = (short_ai_bench / "report.html").read_text()
    assert 'data-row="fixed lr"' in html and 'data-row="hotcb AI autopilot"' in html


def test_bench_report_takes_its_folder_as_dir_or_with_dir(short_ai_bench: Path) -> None:
    """``bench report --dir X`` took --dir and still demanded the positional DIR."""
    out = short_ai_bench
    (out / "report.md").unlink(missing_ok=True)
    done = _bench(out.parent, "report", "--dir", os.fspath(out))
    assert done.returncode == 0, done.stderr
    assert f"summary: {out / 'report.md'}" in done.stdout and (out / "report.md").exists()
    done = _bench(out.parent, "report")
    assert done.returncode == 2 and "which bench? give its folder" in done.stderr, done.stderr
    done = _bench(out.parent, "report", os.fspath(out), "--dir", os.fspath(out.parent))
    assert done.returncode == 2 and "give one" in done.stderr, done.stderr


def test_a_bench_whose_extra_is_missing_says_which_before_it_trains(tmp_path: Path) -> None:
    """Without scikit-learn a bundled task failed "in the task's own code, not hotcb's"
    (with a traceback); without schedulefree the run stopped when that condition's turn came,
    after the others had trained. Both are named up front, with the extra."""
    code = ("import sys\n"
            "for name in ('sklearn', 'schedulefree'): sys.modules[name] = None\n"
            "from hotcb.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")  # fmt: skip
    argv = [sys.executable, "-c", code, "bench", "run", "--task", "digits_mlp", "--conditions",
            "fixed,schedulefree", "--seeds", "1", "--steps", "5", "--out", "b"]  # fmt: skip
    res = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=ENV)
    assert res.returncode == 2, res.stderr
    assert (
        'hotcb bench needs sklearn, schedulefree, not installed here: pip install "hotcb[bench]"'
        in (res.stderr)
    )
    assert "Traceback" not in res.stderr and not (tmp_path / "b").exists()

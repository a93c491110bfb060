"""``hotcb bench run`` and ``hotcb bench report`` as real subprocesses, the report opened in
headless Chromium.

One small bench (digits_mlp and digits_badlr, fixed/plateau/autopilot/replay, 1 seed, 250
steps: the autopilot's first lr cut on digits_badlr lands at step ~211, so the replay has a
recipe to replay) is shared by the tests of this module.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

TASKS = ("digits_mlp", "digits_badlr")
CONDITIONS = ("fixed", "plateau", "autopilot", "replay")
LABELS = {
    "fixed": "fixed lr",
    "plateau": "ReduceLROnPlateau",
    "autopilot": "hotcb autopilot (rules)",
    "replay": "replay (recipe)",
}
STEPS = 250
_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = _ROOT / "tests" / "artifacts" / "bench_report.png"


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


#: A rule that acts in every run (a "plateau": less than 100 % better, as a loss always is):
#: whether the default rules act within 250 steps of a chaotic run at lr 0.1 depends on the
#: CPU's float arithmetic (on one machine they did, on another nothing was replayed), and the
#: replay needs actions to replay.
ACTING_RULES = """\
rules:
  - id: cut_lr_every_100_steps
    when: {detector: plateau, metric: key, params: {window: 4, eps: 1.0}}
    then: {action: lr_mult, params: {factor: 0.5}}
    cooldown_steps: 100
    confidence: high
"""


@pytest.fixture(scope="module")
def bench(tmp_path_factory: Any, cli: Any) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "out"
    rules = out.parent / "rules.yaml"
    rules.write_text(ACTING_RULES)
    done = cli(
        None, "bench", "run", "--task", ",".join(TASKS), "--conditions", ",".join(CONDITIONS),
        "--seeds", "1", "--steps", str(STEPS), "--out", os.fspath(out), "--no-report",
        "--rules", os.fspath(rules), timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return {"out": out, "stdout": done.stdout, "stderr": done.stderr}


def test_every_run_is_saved(bench: dict[str, Any]) -> None:
    out = bench["out"]
    meta = json.loads((out / "bench.json").read_text())
    assert list(meta["tasks"]) == list(TASKS)
    assert meta["conditions"] == list(CONDITIONS)
    assert meta["wall_seconds"] > 0
    for task in TASKS:
        for cond in CONDITIONS:
            folder = out / "runs" / task / cond / "s0"
            doc = json.loads((folder / "curve.json").read_text())
            assert doc["curve"]["step"] == list(range(1, STEPS + 1))
            assert all(x is not None for x in doc["curve"]["train_loss"])
            evals = [v for v in doc["curve"]["val_loss"] if v is not None]
            assert len(evals) == STEPS // 10  # every 10 steps, and the last step is one of them
            rows = _csv(folder / "curve.csv")
            assert len(rows) == STEPS
            assert set(rows[0]) == {"step", "train_loss", "val_loss", "val_acc", "lr"}
            assert float(rows[-1]["train_loss"]) == doc["curve"]["train_loss"][-1]
            if cond in ("autopilot", "replay"):  # a real hotcb run directory
                assert (folder / "run" / "hotcb.metrics.jsonl").exists()
    summary = _csv(out / "summary.csv")
    assert [(r["task"], r["condition"]) for r in summary] == [
        (t, c) for t in TASKS for c in CONDITIONS
    ]
    assert len(json.loads((out / "summary.json").read_text())) == len(summary)
    # one progress line per run, and the bar (tqdm) on stderr
    assert bench["stderr"].count("replay matched bit for bit") == len(TASKS)
    assert "run/s" in bench["stderr"] or "s/run" in bench["stderr"]


def test_replay_matches_the_autopilot_bit_for_bit(bench: dict[str, Any]) -> None:
    out = bench["out"]
    ap = json.loads((out / "runs/digits_badlr/autopilot/s0/curve.json").read_text())
    rp = json.loads((out / "runs/digits_badlr/replay/s0/curve.json").read_text())
    assert ap["notes"]["actions"] >= 1, "the autopilot did nothing: nothing was replayed"
    # the actions counted are those the run applied (one sent at the last step never is)
    ap_ledger = (out / "runs/digits_badlr/autopilot/s0/run/hotcb.applied.jsonl").read_text()
    made = [e for e in map(json.loads, ap_ledger.splitlines())
            if e.get("source") == "autopilot" and e.get("op") != "undo"
            and e.get("decision") == "applied"]  # fmt: skip
    assert ap["notes"]["actions"] == len(made)
    assert rp["notes"]["matched"] is True
    assert rp["notes"]["replayed_entries"] >= 1
    assert rp["curve"] == ap["curve"]  # every step, every column, exactly
    lrs = ap["curve"]["lr"]
    assert lrs[-1] < lrs[0]  # the autopilot cut the lr, and the replay did the same
    ledger = (out / "runs/digits_badlr/replay/s0/run/hotcb.applied.jsonl").read_text()
    sources = {json.loads(line)["source"] for line in ledger.splitlines()}
    assert "recipe" in sources


def test_report_html_md_and_pngs(bench: dict[str, Any], cli: Any) -> None:
    out = bench["out"]
    done = cli(None, "bench", "report", os.fspath(out), timeout=180)
    assert done.returncode == 0, done.stderr
    assert "report.html" in done.stdout
    md = (out / "report.md").read_text()
    for task in TASKS:
        assert (out / "img" / f"bench_{task}.png").stat().st_size > 10_000
        assert f"![{task}](img/bench_{task}.png)" in md
    assert md.count("Replay matched its autopilot run bit for bit") == len(TASKS)
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(TASKS)  # self-contained


@pytest.mark.browser
def test_report_in_chromium(bench: dict[str, Any], cli: Any) -> None:
    pytest.importorskip("playwright.sync_api")
    from hotcb.server.testing import chromium

    out = bench["out"]
    if not (out / "report.html").exists():
        assert cli(None, "bench", "report", os.fspath(out), timeout=180).returncode == 0
    errors: list[str] = []
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto((out / "report.html").as_uri())
        page.wait_for_load_state("load")
        assert page.locator("h1").inner_text() == "hotcb bench"
        for task in TASKS:
            table = page.locator(f'table.task[data-task="{task}"]')
            assert table.is_visible()
            for cond in CONDITIONS:
                row = table.locator(f'tr[data-row="{LABELS[cond]}"]')
                assert row.count() == 1, (task, cond)
                assert row.is_visible()
            img = page.locator(f'img[alt="curves of {task}"]')
            img.scroll_into_view_if_needed()
            assert img.is_visible()
            width = img.evaluate("i => i.complete ? i.naturalWidth : 0")
            assert width > 500  # the PNG decoded
        summary = page.locator("table.summary")
        assert summary.locator("tr").count() == 1 + len(TASKS)
        assert page.get_by_text("Replay matched its autopilot run bit for bit").count() == len(
            TASKS
        )
        page.evaluate("window.scrollTo(0, 0)")
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=os.fspath(SCREENSHOT), full_page=True)
    assert not errors
    assert SCREENSHOT.stat().st_size > 20_000


@pytest.mark.parametrize(
    ("flag", "value", "valid"),
    [
        ("--task", "digits_mlp,nope", "digits_mlp, digits_cnn, digits_badlr, charlm"),
        ("--conditions", "fixed,sgdr", "fixed, cosine, plateau, schedulefree, prodigy"),
    ],
)
def test_bad_names_list_the_valid_ones(
    cli: Any, tmp_path: Path, flag: str, value: str, valid: str
) -> None:
    args = {"--task": "digits_mlp", "--conditions": "fixed", flag: value}
    done = cli(None, "bench", "run", *(x for kv in args.items() for x in kv),
               "--out", os.fspath(tmp_path / "o"))  # fmt: skip
    assert done.returncode == 2
    bad = value.split(",")[1]
    assert f"'{bad}'" in done.stderr
    assert valid in done.stderr
    assert not (tmp_path / "o").exists()


def test_a_bad_task_and_a_bad_condition_are_both_named(cli: Any, tmp_path: Path) -> None:
    """Both wrong: the condition was named only once the task was fixed."""
    done = cli(None, "bench", "run", "--task", "nope", "--conditions", "fixed,bogus",
               "--out", os.fspath(tmp_path / "o"))  # fmt: skip
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "unknown task 'nope'" in done.stderr and "unknown condition 'bogus'" in done.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flag", ["--seeds", "--steps", "--threads"])
def test_counts_below_one_are_refused(cli: Any, tmp_path: Path, flag: str) -> None:
    done = cli(None, "bench", "run", "--task", "digits_mlp", "--conditions", "fixed", flag, "0",
               "--out", os.fspath(tmp_path / "o"))  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"{flag} must be at least 1" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "o").exists()


def test_replay_without_its_source_is_refused(cli: Any, tmp_path: Path) -> None:
    done = cli(None, "bench", "run", "--task", "digits_mlp", "--conditions", "fixed,replay",
               "--out", os.fspath(tmp_path / "o"))  # fmt: skip
    assert done.returncode == 2
    assert "add it to --conditions" in done.stderr


def test_a_bad_rules_file_is_refused_before_anything_runs(cli: Any, tmp_path: Path) -> None:
    """A rules file with a problem, missing, or given without an autopilot condition: it was
    read when the first autopilot run started, after the fixed runs had trained, leaving a
    half-written --out (and a missing file raised a bare "[Errno 2]")."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - id: x\n    when: {detector: plateau, metric: key}\n"
                   "    then: {action: lr_mult, params: {factor: 50}}\n")  # fmt: skip
    cases = [
        (["fixed,autopilot", "--rules", os.fspath(bad)], "line 4: rules[0].then: lr_mult"),
        (["fixed,autopilot", "--rules", os.fspath(tmp_path / "nofile.yaml")],
         f"--rules: cannot read {tmp_path / 'nofile.yaml'}: No such file or directory"),
        (["fixed", "--rules", os.fspath(bad)], "--rules is for the autopilot"),
    ]  # fmt: skip
    for args, said in cases:
        done = cli(None, "bench", "run", "--task", "digits_mlp", "--conditions", *args,
                   "--out", os.fspath(tmp_path / "o"))  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert said in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert not (tmp_path / "o").exists()


def test_report_of_a_folder_without_a_bench(cli: Any, tmp_path: Path) -> None:
    done = cli(None, "bench", "report", os.fspath(tmp_path))
    assert done.returncode == 2
    assert "bench.json is missing" in done.stderr
    for text, said in (('{"kind": "hotcb.bench"}', "has no tasks, seeds, conditions"),
                       ("{not json", "is not valid JSON")):  # fmt: skip
        (tmp_path / "bench.json").write_text(text)  # a KeyError traceback before
        done = cli(None, "bench", "report", os.fspath(tmp_path))
        assert done.returncode == 2 and said in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["--task", "digits_mlp", "--conditions", "ai"],
         "every condition was skipped\n  skipped ai: not configured (missing HOTCB_AI_KEY, "),
        (["--task", "cifar10_resnet20", "--data", "/nonexistent", "--conditions", "fixed"],
         "every task was skipped\n  skipped cifar10_resnet20: --data /nonexistent is not a "
         "folder"),
    ],
    ids=["ai-unconfigured", "cifar-missing"],
)  # fmt: skip
def test_a_bench_with_nothing_to_run_says_why_and_fails(
    tmp_path: Path, args: list[str], why: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("HOTCB_DIR", "HOTCB_AI_KEY")}
    done = subprocess.run(
        [sys.executable, "-m", "hotcb", "bench", "run", *args, "--out", os.fspath(tmp_path / "o"),
         "--no-progress"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"hotcb: error: nothing could run: {why}" in done.stderr
    assert "; skipped" not in done.stderr  # the word once, not "…; skipped" after "skipped …"
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert not (tmp_path / "o").exists()


# A user task whose second timed run (the third made: the warm-up makes one first) signals
# that it started, then trains until it is interrupted: Ctrl-C lands in the 2nd of 4 runs.
STOPS_IN_THE_SECOND_RUN = """
import os, time
import torch
from torch.nn import functional as F

made = []


class Run:
    def __init__(self, seed):
        made.append(seed)
        self.second = len(made) == 3
        torch.manual_seed(seed)
        self.model = torch.nn.Linear(2, 1)
        self.x = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
        self.y = self.x.sum(1, keepdim=True)

    def train_step(self, opt):
        if self.second:
            open("second-run-started", "w").close()
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

    def make(self, seed):
        return Run(seed)


def make_task():
    return Task()
"""


def _default_sigint() -> None:
    # a child of a shell that ignores SIGINT (a background job, CI) would ignore it too:
    # give it the default, as in a terminal, where Python turns it into KeyboardInterrupt
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_keeps_the_finished_runs_and_writes_the_partial_report(tmp_path: Path) -> None:
    from hotcb.testing import wait_for

    (tmp_path / "stopper.py").write_text(textwrap.dedent(STOPS_IN_THE_SECOND_RUN))
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "HOTCB_DIR"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hotcb", "bench", "run", "--task", "stopper:make_task",
         "--conditions", "fixed,cosine", "--seeds", "2", "--out", os.fspath(out)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, preexec_fn=_default_sigint,
    )  # fmt: skip
    try:
        wait_for(lambda: (tmp_path / "second-run-started").exists() or proc.poll() is not None,
                 120, what="the second run to start")  # fmt: skip
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr
    line = (f"hotcb bench: interrupted after 1 run; partial results in {out} "
            f"(report: {out / 'report.md'}, report.html); the same command with --resume "
            "(not --force) runs the rest")  # fmt: skip
    assert line in stderr.splitlines()
    meta = json.loads((out / "bench.json").read_text())
    assert meta["interrupted_after_runs"] == 1
    assert meta["interrupted_run"] == {"task": "stopper:make_task", "condition": "cosine",
                                       "seed": 0, "discarded": True}  # fmt: skip
    runs = out / "runs" / "stopper_make_task"
    assert (runs / "fixed" / "s0" / "curve.json").exists()
    assert not (runs / "cosine").exists()  # the half run is gone, not left looking like one
    assert [r["condition"] for r in _csv(out / "summary.csv")] == ["fixed"]
    md = (out / "report.md").read_text()
    assert "INTERRUPTED after 1 run: a partial bench" in md
    assert "Seeds 0, 1 planned, seed 0 ran;" in md
    assert (out / "report.html").exists() and (out / "img/bench_stopper_make_task.png").exists()


def test_the_tune_condition_with_a_start_bracket(tmp_path: Path, cli: Any) -> None:
    """`--tune-start bracket`: the tune condition's tuner begins with a bracket of the lr (the
    option the benchmark's bracket report is made with; the CLI had no way to ask for it)."""
    pytest.importorskip("optuna")
    out = tmp_path / "out"
    done = cli(None, "bench", "run", "--task", "digits_mlp", "--conditions", "tune", "--steps",
               "600", "--tune-start", "bracket", "--out", os.fspath(out), "--no-progress",
               "--no-report", timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    ledger = out / "runs" / "digits_mlp" / "tune" / "s0" / "run" / "hotcb.applied.jsonl"
    entries = [json.loads(line) for line in ledger.read_text().splitlines()]
    enable = next(e for e in entries if e["op"] == "enable")
    assert enable["params"]["start"] == "bracket"
    assert [e for e in entries if e["module"] == "tune" and e["op"] == "bracket"]

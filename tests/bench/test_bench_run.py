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


@pytest.fixture(scope="module")
def bench(tmp_path_factory: Any, cli: Any) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "out"
    done = cli(
        None, "bench", "run", "--task", ",".join(TASKS), "--conditions", ",".join(CONDITIONS),
        "--seeds", "1", "--steps", str(STEPS), "--out", os.fspath(out), "--no-report",
        timeout=600,
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


def test_report_of_a_folder_without_a_bench(cli: Any, tmp_path: Path) -> None:
    done = cli(None, "bench", "report", os.fspath(tmp_path))
    assert done.returncode == 2
    assert "bench.json is missing" in done.stderr

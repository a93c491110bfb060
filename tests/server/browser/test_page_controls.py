"""The page's controls in headless Chromium against a real trainer and a real ``hotcb serve``
(issue #11): the lr slider (a window around the value, one command per gesture, a confirmation
for a big change), the impact column (value changes only, once per step), a folder with no
runs, a run that is over, and a one-line header from 1280 px up.

Tests wait on conditions with generous deadlines (the machine may be loaded), never on sleeps.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from typing import Any

import pytest

from conftest import debug, wait_page
from hotcb.testing import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.browser]

LR = '.ctl[data-key="lr"]'
ENV = {k: v for k, v in os.environ.items() if not k.startswith("HOTCB_")}


def ctl(d: dict[str, Any], key: str) -> dict[str, Any]:
    return next(c for c in d["controls"] if c["key"] == key)


def last_seq(run: Any) -> int:
    return max((int(e.get("seq") or 0) for e in run.ledger()), default=0)


def dashboard_entries(run: Any, after: int, module: str) -> list[dict[str, Any]]:
    return [
        e
        for e in run.ledger()
        if int(e.get("seq") or 0) > after and e.get("source") == "dashboard"
        and e.get("module") == module
    ]  # fmt: skip


def lr_commands(run: Any, skip: int) -> list[dict[str, Any]]:
    return [c for c in run.commands()[skip:] if "lr" in (c.get("params") or {})]


def expected_window(value: float, decades: int = 2, lo0: float = 1e-10, hi0: float = 10.0):
    return max(lo0, value / 10**decades), min(hi0, value * 10**decades)


def open_live(page: Any, server: Any, live: Any) -> dict[str, Any]:
    page.goto(server.page_url("live"))
    wait_page(page, "d.connected && d.controls.some(c => c.key === 'lr' && c.window)")
    # past the demo's lr warm-up (200 steps): the scheduler then leaves a set lr alone
    wait_for(lambda: live.last_step() > 205, timeout=180, what="the end of the lr warm-up")
    return wait_page(page, "d.controls.find(c => c.key === 'lr').idle")


class Dialogs(list):
    """The messages of the page's dialogs (``confirm()``), answered with ``accept``."""

    accept = False


def record_dialogs(page: Any) -> Dialogs:
    seen = Dialogs()

    def on_dialog(dialog: Any) -> None:
        seen.append(dialog.message)
        if seen.accept:
            dialog.accept()
        else:
            dialog.dismiss()

    page.on("dialog", on_dialog)
    return seen


def settled(page: Any, cmd_id: str) -> dict[str, Any]:
    """The lr control sent ``cmd_id``, the run answered it, and no other send is waiting."""
    return wait_page(
        page,
        f"(c => c.lastSent && c.lastSent.cmd_id === '{cmd_id}' && c.sending === null && c.idle)"
        "(d.controls.find(c => c.key === 'lr'))",
    )


# ------------------------------------------------------------------------------ the lr slider
def test_lr_slider_window_and_one_command_per_drag(page: Any, server: Any, runs: Any) -> None:
    live = runs["live"]
    dialogs = record_dialogs(page)
    d = open_live(page, server, live)
    lr = ctl(d, "lr")
    value = lr["applied"]
    # the slider spans ÷100 … ×100 around the applied value, not the bounds 1e-10 … 10
    lo, hi = lr["window"]
    assert (lo, hi) == pytest.approx(expected_window(value), rel=1e-9), (value, lr["window"])
    assert lr["decades"] == 2
    assert lr["slider"] == pytest.approx(1000 * math.log10(value / lo) / math.log10(hi / lo), abs=2)
    assert page.locator(f"{LR} .win-lo").inner_text() and page.locator(f"{LR} .win-hi").inner_text()

    before, skip, sent = last_seq(live), len(live.commands()), lr["sent"]
    # drag the thumb 15 % of the track to the left, in many small moves (many input events)
    box = page.locator(f"{LR} input[type=range]").bounding_box()
    y = box["y"] + box["height"] / 2
    x0 = box["x"] + box["width"] * lr["slider"] / 1000
    page.mouse.move(x0, y)
    page.mouse.down()
    for i in range(1, 13):
        page.mouse.move(x0 - box["width"] * 0.15 * i / 12, y)
    # nothing is sent while the thumb is held
    assert ctl(debug(page), "lr")["sent"] == sent
    page.mouse.up()

    d = wait_page(page, f"d.controls.find(c => c.key === 'lr').sent > {sent}")
    cmd_id = ctl(d, "lr")["lastSent"]["cmd_id"]
    entry = wait_for(lambda: live.entry(cmd_id, "applied"), timeout=30, what="the lr entry")
    d = settled(page, cmd_id)
    # one gesture, one command, one ledger entry
    assert ctl(d, "lr")["sent"] == sent + 1
    assert [c["cmd_id"] for c in lr_commands(live, skip)] == [cmd_id]
    assert [e["cmd_id"] for e in dashboard_entries(live, before, "opt")] == [cmd_id]
    old, new = entry["changes"]["lr"]["old"], entry["changes"]["lr"]["new"]
    assert lo <= new < old <= hi  # within the window the slider showed
    assert 1 / 10 < new / old < 0.9  # a modest step down: less than ÷10, so nobody was asked
    assert dialogs == []
    # the window follows the new value
    assert ctl(d, "lr")["window"] == pytest.approx(expected_window(new), rel=1e-9)


def test_lr_slider_keyboard_presses_are_one_command(page: Any, server: Any, runs: Any) -> None:
    live = runs["live"]
    dialogs = record_dialogs(page)
    d = open_live(page, server, live)
    lr = ctl(d, "lr")
    before, skip, sent = last_seq(live), len(live.commands()), lr["sent"]
    slider = page.locator(f"{LR} input[type=range]")
    slider.focus()
    for _ in range(5):  # page.keyboard: no locator round trip between the presses
        page.keyboard.press("ArrowLeft")
    d = wait_page(page, f"d.controls.find(c => c.key === 'lr').sent > {sent}")
    cmd_id = ctl(d, "lr")["lastSent"]["cmd_id"]
    entry = wait_for(lambda: live.entry(cmd_id, "applied"), timeout=30, what="the lr entry")
    d = settled(page, cmd_id)
    assert ctl(d, "lr")["sent"] == sent + 1
    assert [c["cmd_id"] for c in lr_commands(live, skip)] == [cmd_id]
    assert [e["cmd_id"] for e in dashboard_entries(live, before, "opt")] == [cmd_id]
    old, new = entry["changes"]["lr"]["old"], entry["changes"]["lr"]["new"]
    # five steps of 1/1000 of four decades: about ×0.955, one change
    assert new / old == pytest.approx(10 ** (-5 * 4 / 1000), rel=0.02)
    assert dialogs == []


def test_big_change_asks_first_and_dismissed_sends_nothing(
    page: Any, server: Any, runs: Any
) -> None:
    live = runs["live"]
    dialogs = record_dialogs(page)
    d = open_live(page, server, live)
    lr = ctl(d, "lr")
    value, sent, skip = lr["applied"], lr["sent"], len(live.commands())

    # ×100 typed in the box: asked, dismissed, nothing sent
    page.fill(f"{LR} input.num", repr(value * 100))
    page.keyboard.press("Enter")
    status = page.locator(f"{LR} .ctl-status")
    status.filter(has_text="not sent").wait_for(timeout=15000)
    assert len(dialogs) == 1 and "×100" in dialogs[0], dialogs
    d = debug(page)
    assert ctl(d, "lr")["sent"] == sent and lr_commands(live, skip) == []
    assert ctl(d, "lr")["applied"] == value

    # a drag to the window's left end (÷100): asked, dismissed, the thumb goes back
    box = page.locator(f"{LR} input[type=range]").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * lr["slider"] / 1000, y)
    page.mouse.down()
    page.mouse.move(box["x"] - 20, y, steps=8)
    page.mouse.up()
    wait_for(lambda: len(dialogs) == 2, timeout=15, what="the confirmation of the drag")
    assert "÷" in dialogs[1], dialogs
    d = wait_page(
        page, f"(c => c.idle && c.slider === {lr['slider']})(d.controls.find(c => c.key === 'lr'))"
    )
    assert ctl(d, "lr")["sent"] == sent and lr_commands(live, skip) == []

    # accepted, the change is sent once and applied
    dialogs.accept = True
    target = float(f"{value / 100:.3g}")
    page.fill(f"{LR} input.num", repr(target))
    page.keyboard.press("Enter")
    d = wait_page(page, f"d.controls.find(c => c.key === 'lr').sent > {sent}")
    cmd_id = ctl(d, "lr")["lastSent"]["cmd_id"]
    entry = wait_for(lambda: live.entry(cmd_id, "applied"), timeout=30, what="the lr entry")
    assert entry["changes"]["lr"]["new"] == pytest.approx(target)
    assert len(dialogs) == 3 and "÷100" in dialogs[2], dialogs
    assert [c["cmd_id"] for c in lr_commands(live, skip)] == [cmd_id]

    # "wider": the window gains a decade each way; nothing is sent
    d = settled(page, cmd_id)
    page.click(f"{LR} .wider-btn")
    d = wait_page(page, "d.controls.find(c => c.key === 'lr').decades === 3")
    assert ctl(d, "lr")["window"] == pytest.approx(expected_window(target, 3), rel=1e-9)
    assert lr_commands(live, skip) == [c for c in lr_commands(live, skip) if c["cmd_id"] == cmd_id]


# ------------------------------------------------------------------------------ impact column
def test_impact_only_on_value_changes_once_per_step(page: Any, server: Any, runs: Any) -> None:
    live = runs["live"]
    page.goto(server.page_url("live"))
    d = wait_page(page, "d.connected && d.controls.length > 0 && d.step !== null")
    recon, cls = ctl(d, "recon")["applied"], ctl(d, "cls")["applied"]

    # pause and resume from the page: both change no trajectory
    page.click("#btn-pause")
    wait_page(page, "d.paused")
    page.click("#btn-pause")
    wait_page(page, "!d.paused")
    control = wait_for(
        lambda: [e for e in live.ledger() if e["module"] == "control" and e["op"] in
                 ("pause", "resume") and e["decision"] == "applied"][-2:],
        timeout=30,
        what="the pause and resume entries",
    )  # fmt: skip
    assert [e["op"] for e in control] == ["pause", "resume"]

    # two value changes at one step (scheduled for the same step, sent by the API)
    at = live.last_step() + 600  # ~6 s ahead: both are queued long before
    ids = page.evaluate(
        """async ([at, changes]) => {
            const out = [];
            for (const params of changes) {
                const r = await fetch('/api/runs/live/commands', {method: 'POST',
                    headers: {'content-type': 'application/json',
                              authorization: `Bearer ${localStorage.getItem('hotcb.token')}`},
                    body: JSON.stringify({module: 'loss', op: 'set_params', params, at_step: at})});
                if (!r.ok) throw new Error(`${r.status} ${await r.text()}`);
                out.push((await r.json()).cmd_id);
            }
            return out;
        }""",
        [at, [{"recon": round(recon * 1.1, 4)}, {"cls": round(cls * 1.1, 4)}]],
    )
    first, second = (
        # 600 steps: 6 s at full speed, minutes on a loaded machine (5 steps/s or less)
        wait_for(lambda i=i: live.entry(i, "applied"), timeout=300, what="a scheduled change")
        for i in ids
    )
    assert first["step"] == second["step"] == at and first["seq"] < second["seq"]

    # the impact is measured and shown on the last value change of that step only
    row = page.locator(f'#ledger-body tr[data-seq="{second["seq"]}"]')
    row.locator(".imp-mean").wait_for(timeout=90000)
    early = page.locator(f'#ledger-body tr[data-seq="{first["seq"]}"] .impact')
    assert early.locator(".imp-mean").count() == 0
    assert early.inner_text().strip() == f"see #{second['seq']}"
    # pause and resume: the server measured them too, the page shows nothing for them
    for e in control:
        page.wait_for_function(
            "seq => { const i = window.hotcb.app.impacts.get(seq);"
            " return !!(i && i.before.mean != null && i.after.mean != null); }",
            arg=e["seq"],
            timeout=90000,
        )
        cell = page.locator(f'#ledger-body tr[data-seq="{e["seq"]}"] .impact')
        assert cell.inner_text().strip() == "", e
        assert cell.locator(".imp-mean").count() == 0


# ------------------------------------------------------------------------------ run states
def test_folder_without_runs_says_so_and_disables_controls(
    page: Any, serve_dir: Any, tmp_path: Any
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    srv = serve_dir(os.fspath(empty))
    page.goto(srv.page_url())
    wait_page(page, "d.connected && d.run === null")
    banner = page.locator("#norun-banner")
    banner.wait_for(state="visible")
    expected = (
        f"no runs yet under {os.path.realpath(empty)}: "
        "start a script with HotKernel(run_dir=…) inside it"
    )
    assert banner.inner_text() == expected
    chip = page.locator("#state-chip")
    assert chip.inner_text() == "no runs"
    for sel in ("#btn-pause", "#btn-checkpoint", "#btn-stop", "#recipe-link", "#freeze-select"):
        assert page.locator(sel).is_disabled(), sel
    assert page.locator("#toasts .toast").count() == 0

    # a run started later shows up by itself, and the controls come back
    script = (
        "import sys, time\n"
        "from hotcb import HotKernel, loss_actuators, mutable_state\n"
        "k = HotKernel(sys.argv[1], mutable_state=mutable_state(loss_actuators({'ce': 1.0})))\n"
        "for s in range(100000):\n"
        "    k.apply({'step': s, 'metrics': {'loss': 1.0}})\n"
        "    time.sleep(0.05)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, os.fspath(empty / "r")], env=ENV)
    try:
        wait_page(page, "d.run === 'r'", timeout=60)
        page.locator("#btn-pause:not([disabled])").wait_for(timeout=30000)
        assert not banner.is_visible()
        assert page.locator("#state-chip").inner_text() != "no runs"
    finally:
        proc.kill()
        proc.wait(10)


def test_finished_run_says_so_and_cannot_be_steered(page: Any, server: Any, runs: Any) -> None:
    page.goto(server.page_url("baseline"))
    d = wait_page(page, "d.state && d.over")
    assert d["state"].startswith("finished at step "), d["state"]
    chip = page.locator("#state-chip")
    page.wait_for_function(
        "t => document.getElementById('state-chip').textContent === t", arg=d["state"]
    )
    assert "running" not in chip.inner_text() and "stale" not in chip.inner_text()
    # the freeze mode too: no kernel would read it any more
    for sel in ("#btn-pause", "#btn-checkpoint", "#btn-stop", "#freeze-select"):
        assert page.locator(sel).is_disabled(), sel
    assert "the run is over" in page.locator("#freeze-select").get_attribute("title")
    assert page.locator("#recipe-link").is_enabled()  # the recipe of a finished run is useful
    # nothing would act on a proposal of the tuner or the autopilot any more, nor on a knob
    wait_page(page, "d.tune.over && d.autopilot.over")
    wait_page(page, "d.controls.length > 0 && d.controls.every(c => !c.sendable)")
    assert page.locator("#sched-submit").is_disabled()
    lr = page.locator('#controls .ctl[data-key="lr"]')
    assert lr.locator("input[type=range]").is_disabled()
    before = len(runs["baseline"].commands())
    lr.locator("input.num").fill("0.0005")  # kept for the what-if of a value; never sent
    lr.locator("input.num").press("Enter")
    wait_page(page, "d.controls.some(c => c.key === 'lr' && c.status.includes('the run is over'))")
    assert len(runs["baseline"].commands()) == before

    # the live run beside it: running, steerable
    page.select_option("#run-select", "live")
    wait_page(page, "d.run === 'live' && d.state && !d.over")
    page.locator("#btn-pause:not([disabled])").wait_for()
    assert page.locator("#state-chip").inner_text() in ("running", "stale", "paused")
    wait_page(page, "!d.tune.over && !d.autopilot.over")
    wait_page(page, "d.controls.length > 0 && d.controls.every(c => c.sendable)")
    assert page.locator("#freeze-select").is_enabled()


def test_crashed_run_says_so(page: Any, serve_dir: Any, tmp_path: Any) -> None:
    """A script that died without closing its kernel (no ``ended``, its pid gone)."""
    run = tmp_path / "runs" / "dead"
    script = (
        "import os, sys\n"
        "from hotcb import HotKernel, loss_actuators, mutable_state\n"
        "k = HotKernel(sys.argv[1], mutable_state=mutable_state(loss_actuators({'ce': 1.0})))\n"
        "for s in range(5):\n"
        "    k.apply({'step': s, 'metrics': {'loss': 1.0}})\n"
        "k.flush()\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", script, os.fspath(run)], env=ENV, check=True, timeout=120)
    srv = serve_dir(os.fspath(run.parent))
    page.goto(srv.page_url("dead"))
    d = wait_page(page, "d.state && d.over")
    assert d["state"].startswith("crashed"), d["state"]
    page.wait_for_function(
        "() => document.getElementById('state-chip').textContent.startsWith('crashed')"
    )
    for sel in ("#btn-pause", "#btn-checkpoint", "#btn-stop", "#freeze-select"):
        assert page.locator(sel).is_disabled(), sel


def test_the_lr_shown_is_the_one_the_scheduler_left_not_the_last_change(
    page: Any, serve_dir: Any, tmp_path: Any
) -> None:
    """A change, then a scheduler moving the lr for 40 steps, all within the kernel's
    once-a-second refresh: the finished run's knob shows where the scheduler left the lr (the
    kernel refreshes at close; the page keeps the file's newer value over the ledger's change,
    whichever it loads first)."""
    run = tmp_path / "runs" / "sched"
    script = (
        "import sys, torch\n"
        "from hotcb import HotClient, HotKernel\n"
        "m = torch.nn.Linear(2, 1)\n"
        "opt = torch.optim.SGD(m.parameters(), lr=0.1)\n"
        "sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)\n"
        "k = HotKernel(sys.argv[1])\n"
        "env = lambda s: {'step': s, 'optimizer': opt, 'scheduler': sched, 'metrics': {'loss': 1.0}}\n"
        "k.apply(env(0))\n"
        "HotClient(sys.argv[1]).opt(lr=0.05)\n"
        "s = 1\n"
        "while opt.param_groups[0]['lr'] != 0.05:\n"
        "    k.apply(env(s)); s += 1\n"
        "for s in range(s, s + 40):\n"
        "    opt.step(); sched.step()\n"
        "    k.apply(env(s))\n"
        "k.close()\n"
        "print(opt.param_groups[0]['lr'])\n"
    )
    out = subprocess.run([sys.executable, "-c", script, os.fspath(run)], env=ENV, check=True,
                         timeout=120, capture_output=True, text=True)  # fmt: skip
    final = float(out.stdout.split()[-1])
    assert final < 0.05 * 0.9**30  # the schedule moved it well below the change
    srv = serve_dir(os.fspath(run.parent))
    page.goto(srv.page_url("sched"))
    d = wait_page(page, "d.over && d.ledger > 0 && d.controls.some(c => c.key === 'lr')")
    assert math.isclose(ctl(d, "lr")["applied"], final, rel_tol=1e-6), (ctl(d, "lr"), final)
    page.locator(f"#controls {LR} .ctl-applied").wait_for()
    assert page.locator(f"#controls {LR} .ctl-applied").inner_text() != "0.05"


# ------------------------------------------------------------------------------ header layout
HEADER = """() => {
  const box = (e) => e.getBoundingClientRect();
  const mid = (e) => box(e).top + box(e).height / 2;
  const bar = document.querySelector('.topbar');
  const items = [...bar.children].filter((c) => !c.classList.contains('spacer'));
  return {
    bar: box(bar).height,
    rowHeight: Math.max(...items.map((c) => box(c).height)),
    mids: Object.fromEntries(items.map((c) => [c.id || c.className, mid(c)])),
    title: box(document.querySelector('.brand')).top,
    live: box(document.getElementById('conn')).top,
    titleMid: mid(document.querySelector('.brand')),
    liveMid: mid(document.getElementById('conn')),
    liveRight: box(document.getElementById('conn')).right,
    width: window.innerWidth,
    scrollWidth: document.documentElement.scrollWidth,
  };
}"""

# the longest texts the header can hold, set and measured in one go (before the page's next
# render): a long run name, a long state chip, the offline label
WORST = """() => {
  const opt = document.querySelector('#run-select option:checked');
  opt.textContent = 'sweep/lr-3e-4-bs-512-warmup-2000 — a very long run name indeed';
  document.getElementById('state-chip').textContent =
    'crashed (its process is gone and did not close the run) · freeze replay_adjusted';
  document.getElementById('step').textContent = '12345678';
  document.querySelector('#conn span').textContent = 'offline · retry in 10.0s';
  return (HEADER)();
}""".replace("HEADER", HEADER)


def one_line(m: dict[str, Any]) -> None:
    """One row: the bar is one item high (plus its padding), every item sits on the title's
    line (same vertical centre, and the live indicator's top is the title's top), the live
    dot is on screen and nothing overflows sideways."""
    assert m["bar"] <= m["rowHeight"] + 24, m  # 10 px padding top and bottom, 1 px border
    assert m["liveMid"] == pytest.approx(m["titleMid"], abs=1), m
    assert all(y == pytest.approx(m["titleMid"], abs=1) for y in m["mids"].values()), m
    assert m["live"] == pytest.approx(m["title"], abs=0.5), m
    assert m["liveRight"] <= m["width"] and m["scrollWidth"] <= m["width"], m


@pytest.mark.parametrize("size", [(1280, 720), (1920, 1080)])
def test_header_is_one_line(browser: Any, server: Any, runs: Any, size: tuple[int, int]) -> None:
    ctx = browser.new_context(viewport={"width": size[0], "height": size[1]})
    try:
        page = ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server.page_url("live"))
        wait_page(page, "d.connected && d.step !== null")
        page.wait_for_function(
            "() => !['', '–'].includes(document.getElementById('state-chip').textContent)"
        )
        one_line(page.evaluate(HEADER))
        one_line(page.evaluate(WORST))
        assert errors == []
    finally:
        ctx.close()


def test_a_finished_runs_ledger_cannot_undo_and_replay_needs_the_cli(
    page: Any, serve_dir: Any, tmp_path: Any
) -> None:
    """Undo in the ledger of a finished run stayed clickable: its command waited in the
    commands file, and the next run started in the folder applied it at step 0 (its lr halved by
    an undo of the last run's change). And the freeze select offered replay, which the page
    cannot give a recipe: the trainer refused it in a ledger row."""
    import torch

    from hotcb import HotClient, HotKernel

    run = os.fspath(tmp_path / "runs" / "done")
    HotClient(run).send("opt", "set_params", params={"lr": 0.02})
    opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.01)
    with HotKernel(run, poll_interval_sec=0.0, checkpoint_on_signal=False) as kernel:
        for step in range(5):
            kernel.apply({"step": step, "optimizer": opt, "metrics": {"loss": 1.0}})
    assert opt.param_groups[0]["lr"] == 0.02
    srv = serve_dir(os.path.dirname(run))
    page.goto(srv.page_url("done"))
    wait_page(page, "d.over && d.state.startsWith('finished at step')")
    undo = page.locator("#ledger-body .undo-btn")
    undo.wait_for()
    page.wait_for_function("() => document.querySelector('#ledger-body .undo-btn').disabled")
    assert "the run is over (finished at step 4)" in undo.get_attribute("title")
    with open(os.path.join(run, "hotcb.commands.jsonl"), "rb") as f:
        assert len(f.read().splitlines()) == 1  # nothing was sent

    # replay needs a recipe file: the CLI's, said on the option
    for mode in ("replay", "replay_adjusted"):
        option = page.locator(f'#freeze-select option[value="{mode}"]')
        assert option.is_disabled() and "--recipe FILE" in option.get_attribute("title")


def page_of_a_restarted_run(page: Any, serve_dir: Any, tmp_path: Any, start_trainer: Any) -> None:
    """The page of run ``r``, whose trainer set lr, was killed, and started again without a
    checkpoint: the lr change's Undo is offered, and the run refuses it."""
    from hotcb import HotClient
    from hotcb.testing import read_ledger

    run = os.fspath(tmp_path / "runs" / "r")
    trace = os.fspath(tmp_path / "trace.jsonl")
    first = start_trainer(run, trace, steps=100_000, step_delay=0.02)
    first.wait_step(1)
    cmd = HotClient(run).opt(lr=0.02)
    wait_for(lambda: any(e.get("cmd_id") == cmd for e in read_ledger(run)), 60,
             what="the lr change's entry")  # fmt: skip
    first.kill()  # the process died
    again = start_trainer(run, trace, steps=100_000, step_delay=0.02)  # a new life, from step 0
    again.wait_step(1)
    srv = serve_dir(os.path.dirname(run))
    page.goto(srv.page_url("r"))
    wait_page(page, "d.state === 'running'")


def test_an_undo_the_run_refuses_says_why_on_the_page(
    page: Any, serve_dir: Any, tmp_path: Any, start_trainer: Any
) -> None:
    """The trainer was killed and started again without a checkpoint: Undo on the gone life's
    lr change said "sent…", the run refused it (that change is not in force), and the page
    said nothing. It shows the run's reason now."""
    page_of_a_restarted_run(page, serve_dir, tmp_path, start_trainer)
    page.locator("#ledger-body .undo-btn").first.click()
    page.locator("#toasts .toast.bad", has_text="undo: rejected: ").wait_for(timeout=60_000)
    shown = page.locator("#toasts .toast.bad").first.text_content()
    assert "the changes of the lives before it are not in force here" in shown, shown
    # and the row no longer offers it: each click was sent and refused again
    refused = page.locator("#ledger-body .undo-refused")
    refused.wait_for()
    assert "not in force here" in refused.get_attribute("title")
    assert page.locator("#ledger-body .undo-btn").count() == 0


def test_an_undo_a_freeze_ignores_says_so_on_the_page(
    page: Any, serve_dir: Any, tmp_path: Any, start_trainer: Any
) -> None:
    """An Undo sent while the run is frozen (prod) is ignored by the run: the page said
    nothing, and the row offered Undo again with no reason."""
    from hotcb import HotClient
    from hotcb.testing import read_ledger

    run = os.fspath(tmp_path / "runs" / "r")
    trainer = start_trainer(run, os.fspath(tmp_path / "trace.jsonl"), steps=100_000,
                            step_delay=0.02)  # fmt: skip
    trainer.wait_step(1)
    client = HotClient(run)
    cmds = [client.opt(lr=0.02), client.freeze("prod")]
    wait_for(lambda: {e.get("cmd_id") for e in read_ledger(run)} >= set(cmds), 60,
             what="the lr change's and the freeze's entries")  # fmt: skip
    srv = serve_dir(os.path.dirname(run))
    page.goto(srv.page_url("r"))
    wait_page(page, "d.state === 'running'")
    page.locator("#ledger-body .undo-btn").first.click()
    toast = page.locator("#toasts .toast.bad", has_text="undo: ignored_freeze: ")
    toast.wait_for(timeout=60_000)
    assert "freeze mode is prod" in toast.text_content(), toast.text_content()
    # the row still offers it: once the freeze is lifted, the run will take it
    page.locator("#ledger-body .undo-btn").first.wait_for(timeout=60_000)
    assert page.locator("#ledger-body .undo-refused").count() == 0


def test_a_refused_undo_answered_before_the_send_s_reply_is_still_said(
    page: Any, serve_dir: Any, tmp_path: Any, start_trainer: Any
) -> None:
    """On a loaded machine the run's answer (over the WebSocket) reached the page before the
    server's reply to the Undo's POST: the page matched answers only to commands whose reply
    it had, so the refusal was never said and the button stayed "sent…" (a CI run caught it)."""
    page_of_a_restarted_run(page, serve_dir, tmp_path, start_trainer)
    held: list[Any] = []
    posted = lambda url: url.endswith("/runs/r/commands")  # noqa: E731
    page.route(posted, lambda route: held.append(route))
    page.locator("#ledger-body .undo-btn").first.click()
    wait_for(lambda: bool(held), 60, what="the page's Undo request")
    reply = held[0].fetch()  # the server takes the command; the page does not hear back yet
    page.wait_for_function(
        "() => window.hotcb.app.ledger.some((e) => e.op === 'undo' && e.decision === 'rejected')",
        timeout=60_000,
    )
    held[0].fulfill(response=reply)
    page.unroute(posted)
    page.locator("#toasts .toast.bad", has_text="undo: rejected: ").wait_for(timeout=60_000)
    page.locator("#ledger-body .undo-refused").wait_for(timeout=60_000)

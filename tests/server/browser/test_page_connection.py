"""The page when its server goes away, comes back with another token, or its run goes back to
an earlier checkpoint, in headless Chromium against a real ``hotcb serve`` and small real
trainers (no torch); and two things the page must say before it sends anything: a change queued
for a step the run has passed, and the log axis of a flat lr chart.

Tests wait on conditions with generous deadlines (the machine may be loaded), never on sleeps.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import ENV, TOKEN, last_step, read_jsonl, trainers, wait_page
from hotcb.server.testing import ServeProcess
from hotcb.testing import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.browser]

STEER = ("#btn-pause", "#btn-checkpoint", "#btn-evaluate", "#btn-stop", "#sched-submit")
OTHER_TOKEN = TOKEN + "-after-restart"  # what the restarted server takes instead
AUTH_TEXT = "401: this server needs a token: open the URL it printed (…/?token=…)"
REFUSED_TEXT = ("401: the server refused this page's token (a mistyped one, or the server "
                "restarted with a new token): open the URL it printed (…/?token=…)")  # fmt: skip
DIMMED = "document.body.classList.contains('auth-failed')"

# a run that steps every 20 ms for ever: a loss weight to steer, a flat lr to chart
TRAIN = """\
import json, sys, time
from hotcb import HotKernel, loss_actuators, mutable_state
k = HotKernel(sys.argv[1], mutable_state=mutable_state(loss_actuators({'ce': 1.0})))
first = 0
if len(sys.argv) > 2:  # resume from a checkpoint: the kernel's state saved at its step
    with open(sys.argv[2]) as f:
        state = json.load(f)
    k.load_state_dict(state)
    first = state['step'] + 1
for s in range(first, 10**9):
    k.apply({'step': s, 'metrics': {'loss': 1.0 / (s + 1), 'lr': 1e-3}})
    time.sleep(0.02)
"""

# the run's first life: 400 steps, its checkpoint saved at step 100, a change at step 350,
# then closed
FIRST_LIFE = """\
import json, sys
from hotcb import HotClient, HotKernel, loss_actuators, mutable_state
k = HotKernel(sys.argv[1], mutable_state=mutable_state(loss_actuators({'ce': 1.0})),
              poll_interval_sec=0)
for s in range(400):
    if s == 350:
        HotClient(sys.argv[1]).loss(ce=0.5)
    k.apply({'step': s, 'metrics': {'loss': 1.0 / (s + 1), 'lr': 1e-3}})
    if s == 100:
        with open(sys.argv[2], 'w') as f:
            json.dump(k.state_dict(), f)
k.close()
"""


def chip(page: Any) -> str:
    return page.locator("#state-chip").inner_text()


def forget(page: Any, text: str) -> None:
    """Drop the page's console errors that contain ``text``: Chromium logs every refused
    request, and the test expects those."""
    page.errors[:] = [e for e in page.errors if text not in e]


@pytest.fixture
def trainer(tmp_path: Any) -> Iterator[Any]:
    """``trainer(name, *args)`` starts ``TRAIN`` on ``tmp_path/runs/name`` (see
    ``conftest.trainers``)."""
    yield from trainers(tmp_path, TRAIN)


def open_live(page: Any, srv: Any, run: str) -> dict[str, Any]:
    page.goto(srv.page_url(run))
    return wait_page(
        page, "d.connected && d.step > 20 && d.state === 'running' && d.controls.length", 60
    )


# ------------------------------------------------------------------------------ no server
def test_a_page_without_its_server_does_not_say_running(
    page: Any, serve_dir: Any, trainer: Any, tmp_path: Any
) -> None:
    """``hotcb launch --serve`` stops the dashboard when training ends: the page then says it
    lost its server, what it saw last, and sends nothing; once the server is back, all is live
    again without a reload."""
    trainer("live")
    srv = serve_dir(os.fspath(tmp_path / "runs"))
    open_live(page, srv, "live")
    assert chip(page) == "running"

    srv.stop()
    d = wait_page(page, "d.offline && d.chip.startsWith('disconnected')")
    assert d["chip"] == f"disconnected — last seen running at step {d['stepShown']}", d["chip"]
    assert "running" not in page.locator("#state-chip").get_attribute("class")
    for sel in (*STEER, "#freeze-select"):
        assert page.locator(sel).is_disabled(), sel
    assert "unreachable" in page.locator("#btn-stop").get_attribute("title")
    banner = page.locator("#stale-banner")
    banner.wait_for(state="visible")
    assert banner.inner_text().startswith("Disconnected from the dashboard's server: live was")
    assert "offline" in page.locator("#conn").inner_text()

    srv.start()
    wait_page(page, "d.connected && !d.offline && d.chip === 'running'", 60)
    for sel in (*STEER, "#freeze-select"):
        page.locator(f"{sel}:not([disabled])").wait_for()
    title = page.locator("#btn-stop").get_attribute("title")
    assert title == "stop training at the next safe point"  # its own again
    banner.wait_for(state="hidden")


def test_a_server_restarted_with_another_token_says_401(
    page: Any, serve_dir: Any, trainer: Any, tmp_path: Any
) -> None:
    """The page's cookie holds the old token: the reconnect is refused (401), and the page says
    what to do, as on a first load without the token; opening the new URL in the same browser
    brings the page back by itself."""
    trainer("live")
    root = os.fspath(tmp_path / "runs")
    srv = serve_dir(root)
    open_live(page, srv, "live")
    srv.stop()
    other = ServeProcess(root, srv.port, env={"HOTCB_TOKEN": OTHER_TOKEN,
                                              "HOTCB_UI__RECONNECT_MAX_DELAY_SEC": "1"})  # fmt: skip
    other.start()
    try:
        d = wait_page(page, "d.offline && d.authFailed", 60)
        assert d["chip"].startswith("disconnected — last seen running at step "), d["chip"]
        # a token was given and refused: said as such (it read as one never given)
        toast = page.locator("#toasts .toast", has_text=REFUSED_TEXT)
        toast.wait_for()
        assert page.evaluate(DIMMED)  # the panels hold nothing of the run: dimmed
        assert page.locator("#conn").inner_text().startswith("401")
        assert AUTH_TEXT in page.locator("#stale-banner").inner_text()
        assert wait_for(lambda: [e for e in page.errors if "status of 401" in e], timeout=15)

        # the person opens the URL the new server printed, in another tab
        tab = page.context.new_page()
        tab.goto(f"{other.url}/?token={OTHER_TOKEN}&run=live")
        wait_page(page, "d.connected && !d.offline && !d.authFailed && d.chip === 'running'", 60)
        assert not page.locator("#stale-banner").is_visible()
        assert not page.evaluate(DIMMED)
        # the sign-in message, which stays longer than others (a minute), goes once it is
        # followed: the page has a connection again
        toast.wait_for(state="detached", timeout=10000)
        tab.close()
    finally:
        other.stop()
    forget(page, "status of 401")


# ------------------------------------------------------------------------------ a new life
def test_the_step_follows_a_run_resumed_from_an_earlier_checkpoint(
    page: Any, serve_dir: Any, trainer: Any, tmp_path: Any
) -> None:
    """A trainer resumed from an earlier checkpoint in the same run directory (step 399 back to
    101): the open page's header and the scheduler's default step follow the run there, and
    its charts drop the marker of the change the gone life made after the checkpoint (the
    resume makes it again at its step: a marker of its own)."""
    path = tmp_path / "runs" / "r"
    ckpt = os.fspath(tmp_path / "ckpt.json")
    subprocess.run([sys.executable, "-c", FIRST_LIFE, os.fspath(path), ckpt], env=ENV,
                   check=True, timeout=120)  # fmt: skip
    srv = serve_dir(os.fspath(path.parent))
    page.goto(srv.page_url("r"))
    placeholder = "document.getElementById('sched-step').placeholder"
    wait_page(
        page, f"d.connected && d.over && d.stepShown === '399' && {placeholder} === '600'", 60
    )
    gone_life = "d.markers.some((m) => m.source === 'python')"
    wait_page(page, gone_life, 30)

    run = trainer("r", ckpt)  # the second life starts at step 101
    wait_for(lambda: 120 < last_step(run.path) < 399, timeout=60, what="the resumed run")
    d = wait_page(  # the header's step (drawn a frame after d.step) is what is read below
        page,
        f"!d.over && d.step > 110 && +d.stepShown > 110 && +d.stepShown < 399 "
        f"&& +{placeholder} < 600",
        60,
    )
    shown = int(d["stepShown"])
    assert 110 < shown < 399 and d["step"] < 399, d
    ahead = int(page.locator("#sched-step").get_attribute("placeholder"))
    assert shown + 200 <= ahead < 600, (ahead, shown)
    wait_page(page, f"!({gone_life})", 30)
    page.reload()  # a page opened now: its ledger table loads the gone life's entry too
    d = wait_page(page, "d.loaded && d.connected", 60)
    assert not [m for m in d["markers"] if m["source"] == "python"], d["markers"]


# ------------------------------------------------------------------------------ said first
def test_a_change_for_a_passed_step_is_refused_and_a_flat_lr_axis_has_no_dashes(
    page: Any, serve_dir: Any, trainer: Any, tmp_path: Any
) -> None:
    run = trainer("live")
    srv = serve_dir(os.fspath(tmp_path / "runs"))
    open_live(page, srv, "live")

    # at step 10 while the run is far past it: the kernel would apply it at once
    wait_for(lambda: last_step(run.path) > 60, timeout=60, what="step 60")
    before = len(read_jsonl(os.path.join(run.path, "hotcb.commands.jsonl")))
    page.select_option("#sched-key", "ce")
    page.fill("#sched-value", "0.5")
    page.fill("#sched-step", "10")
    page.click("#sched-submit")
    toast = page.locator("#toasts .toast", has_text="step 10 has passed")
    toast.wait_for()
    text = toast.inner_text()
    assert text.startswith("step 10 has passed (the run is at step "), text
    assert text.endswith("): change ce under Controls to set it now, or pick a later step"), text
    assert int(text.split("the run is at step ")[1].split(")")[0]) > 60
    assert page.locator("#toasts .toast", has_text="queued").count() == 0
    assert len(read_jsonl(os.path.join(run.path, "hotcb.commands.jsonl"))) == before

    # the lr chart: a flat 1e-3 on a log axis labels its decades, the other ticks nothing (not
    # a dash each)
    d = wait_page(page, "(c => c && c.yLabels.length)(d.charts.find(c => c.key === 'lr'))")
    lr = next(c for c in d["charts"] if c["key"] == "lr")
    assert lr["log"] is True
    labels = lr["yLabels"]
    assert "–" not in labels and "" in labels, labels
    assert "0.001" in labels, labels
    assert all(math.log10(float(t)).is_integer() for t in labels if t), labels


def test_a_page_without_the_token_says_so_not_that_there_are_no_runs(
    page: Any, serve_dir: Any, trainer: Any, tmp_path: Any
) -> None:
    """Opened without the token (a URL copied without it), the page's banner said "no runs yet
    under the served folder", its chip "no runs", its charts that run live had not started."""
    trainer("live")
    srv = serve_dir(os.fspath(tmp_path / "runs"))
    page.goto(f"{srv.url}/?run=live")
    d = wait_page(page, "d.authFailed", 60)
    assert d["chip"] == "401 · needs the token"
    banner = page.locator("#norun-banner")
    assert banner.is_visible() and banner.inner_text().startswith(AUTH_TEXT), banner.inner_text()
    assert "no runs" not in banner.inner_text()
    empty = page.locator("#charts-empty").inner_text()
    assert empty.startswith(AUTH_TEXT) and "Waiting for run" not in empty, empty
    page.locator("#toasts .toast", has_text=AUTH_TEXT).wait_for()  # none given: not "refused"
    # the panels say nothing of a run they could not read ("No actuators yet: they appear when
    # the run has started"): dimmed, and the toast says why
    assert page.evaluate(DIMMED)
    # the printed URL, in the same browser: the page finds the run by itself
    tab = page.context.new_page()
    tab.goto(srv.page_url("live"))
    wait_page(page, "d.run === 'live' && d.connected && !d.authFailed", 60)
    tab.close()
    forget(page, "status of 401")

"""Edges of the page, in headless Chromium against a real ``hotcb serve`` and small real
trainers (no torch): a number box sends on Enter only (Escape or leaving it sends nothing), a
run whose folder is deleted while the page shows it (and that comes back), NaN and inf values
drawn as gaps, one command per click of the header buttons, and a finished run without
actuators.

Tests wait on conditions with generous deadlines (the machine may be loaded), never on sleeps.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import ENV, Server, debug, read_jsonl, stop, trainers, wait_page
from hotcb.server.testing import free_port
from hotcb.testing import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.browser]

STEER = ("#btn-pause", "#btn-checkpoint", "#btn-evaluate", "#btn-stop", "#sched-submit")
GONE = "gone (no longer on disk)"

# a run that steps every 20 ms for ever: a loss weight and a tuple to steer
TRAIN = """\
import sys, time
from hotcb import HotcbActuator, HotKernel, loss_actuators, mutable_state
weights = {'ce': 0.123456789}
betas = {'v': (0.9, 0.999)}
acts = [*loss_actuators(weights), HotcbActuator(
    'betas', 'tuple', lambda v, env: betas.__setitem__('v', tuple(v)), lambda env: betas['v'],
    min_value=0.0, max_value=1.0, length=2)]
k = HotKernel(sys.argv[1], mutable_state=mutable_state(acts))
for s in range(10**9):
    k.apply({'step': s, 'metrics': {'loss': 1.0 / (s + 1)}})
    time.sleep(0.02)
"""

# a finished run without actuators: loss NaN at steps 10, 60, … and inf at 20, 70, …;
# val_loss NaN at every step; val/loss finite, every 25 steps only
NAN_RUN = """\
import sys
from hotcb import HotKernel
k = HotKernel(sys.argv[1])
for s in range(300):
    m = {'loss': 2 - s / 300, 'val_loss': float('nan')}
    if s % 50 == 10:
        m['loss'] = float('nan')
    if s % 50 == 20:
        m['loss'] = float('inf')
    if s % 25 == 0:
        m['val/loss'] = 2.5 - s / 300
    k.apply({'step': s, 'metrics': m})
k.close()
"""


def commands(path: str, op: str | None = None, key: str | None = None) -> list[dict[str, Any]]:
    return [
        c
        for c in read_jsonl(os.path.join(path, "hotcb.commands.jsonl"))
        if (op is None or c.get("op") == op) and (key is None or key in (c.get("params") or {}))
    ]


def entry(path: str, cmd_id: str) -> dict[str, Any] | None:
    ledger = read_jsonl(os.path.join(path, "hotcb.applied.jsonl"))
    return next((e for e in ledger if e.get("cmd_id") == cmd_id), None)


def forget(page: Any, text: str) -> None:
    """Drop the page's console errors that contain ``text``: Chromium logs every refused
    request, and the test expects those."""
    page.errors[:] = [e for e in page.errors if text not in e]


@pytest.fixture
def trainer(tmp_path: Any) -> Iterator[Any]:
    """``trainer(name)`` starts ``TRAIN`` on ``tmp_path/runs/name`` (see
    ``conftest.trainers``)."""
    yield from trainers(tmp_path, TRAIN)


def open_live(page: Any, srv: Any, run: str) -> dict[str, Any]:
    page.goto(srv.page_url(run))
    return wait_page(
        page, "d.connected && d.step > 5 && d.state === 'running' && d.controls.length > 1", 60
    )


def applied(d: dict[str, Any], key: str) -> Any:
    return next(c for c in d["controls"] if c["key"] == key)["applied"]


def typed_back(value: Any) -> str:
    """How the box shows an applied value: ``0.5``, ``[0.85, 0.995]``."""
    return f"[{', '.join(map(str, value))}]" if isinstance(value, list) else str(value)


# ------------------------------------------------------------------------------ number box
@pytest.mark.parametrize(
    ("key", "typed", "shown", "sent"),
    [("ce", "0.3", "0.1235", 0.5), ("betas", "0.8, 0.99", "[0.9, 0.999]", [0.85, 0.995])],
)
def test_a_number_box_sends_on_enter_only(
    page: Any, serve_dir: Any, trainer: Any, tmp_path: Any, key: str, typed: str, shown: str,
    sent: Any,
) -> None:  # fmt: skip
    """Escape put the applied value back on screen but sent the typed one (the box's
    ``change`` event, which a blur fires too, sent it); so did a click elsewhere."""
    run = trainer("r")
    srv = serve_dir(os.fspath(tmp_path / "runs"))
    open_live(page, srv, "r")
    box = page.locator(f'.ctl[data-key="{key}"] input.num')
    assert box.input_value() == shown

    # Escape: the applied value is back, nothing is sent
    box.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(typed)
    page.keyboard.press("Escape")
    assert box.input_value() == shown
    # a click elsewhere without Enter: the same
    box.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(typed)
    page.click("h2:has-text('Metrics')")
    assert box.input_value() == shown
    # Tab: the same
    box.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(typed)
    page.keyboard.press("Tab")
    assert box.input_value() == shown

    # Enter on the value shown, unedited: nothing is sent. The box rounds (ce 0.123456789
    # shows 0.1235): sending it moved the knob by the rounding; an equal value was a no-op
    # command ledgered "applied"
    box.click()
    page.keyboard.press("Enter")
    status = page.locator(f'.ctl[data-key="{key}"] .ctl-status')
    status.filter(has_text=f"unchanged: {key} is {shown}").wait_for(timeout=10000)
    assert box.input_value() == shown

    # Enter sends; once the run applied it, it is the only command for the key
    box.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(", ".join(map(str, sent)) if isinstance(sent, list) else str(sent))
    page.keyboard.press("Enter")
    (cmd,) = wait_for(lambda: commands(run.path, key=key), timeout=30, what="the command")
    done = wait_for(lambda: entry(run.path, cmd["cmd_id"]), timeout=60, what="its ledger entry")
    assert done["decision"] == "applied", done
    assert cmd["params"][key] == sent and cmd["source"] == "dashboard"
    want = json.dumps(sent, separators=(",", ":"))
    d = wait_page(
        page, f"d.controls.some(c => c.key === '{key}' && JSON.stringify(c.applied) === '{want}')"
    )
    assert applied(d, key) == sent and box.input_value() == typed_back(sent)
    assert [c["params"][key] for c in commands(run.path, key=key)] == [sent]


# ------------------------------------------------------------------------------ a gone run
def test_a_compared_run_deleted_can_be_taken_off_the_charts(
    page: Any, serve_dir: Any, trainer: Any, tmp_path: Any
) -> None:
    """``?run=a&compare=b``, then b's folder deleted: b left the compare list (its checkbox
    with it) while its curves stayed on every chart; only editing the URL took them off."""
    run_a, run_b = trainer("a"), trainer("b")
    srv = serve_dir(os.fspath(tmp_path / "runs"))
    page.goto(srv.page_url("a") + "&compare=b")
    wait_page(page, "d.connected && d.compare.includes('b')", 60)
    page.wait_for_function(  # b's curves are drawn (its history loaded, not still asked for)
        "() => { const b = window.hotcb.app.data.get('b'); return b && !b.loading && b.series.size; }",
        timeout=60000,
    )
    stop(run_b)
    shutil.rmtree(run_b.path)
    page.locator("#compare summary").click()  # the user opens the compare list
    gone = page.locator("#compare-list label.compare-gone", has_text="b (no longer on disk)")
    gone.wait_for(timeout=60000)  # the runs list is polled every 10 s
    box = gone.locator("input[type=checkbox]")
    assert box.is_checked()
    box.uncheck()
    wait_page(page, "!d.compare.includes('b')")
    assert "compare=" not in page.url, page.url
    stop(run_a)


def test_a_run_deleted_while_shown_says_gone_backs_off_and_comes_back(
    page: Any, serve_dir: Any, trainer: Any, tmp_path: Any
) -> None:
    """The run's folder deleted: the chip said "running" at its last step for ever, the page
    asked for its status twice a second and the picker went blank."""
    run = trainer("r")
    srv = serve_dir(os.fspath(tmp_path / "runs"))
    asked: list[tuple[float, int]] = []  # the page's status requests: (when, s; answer)

    def on_request(req: Any) -> None:
        if req.url.split("?")[0].endswith("/api/runs/r/status"):
            asked.append((req.timing["startTime"] / 1000, req.response().status))

    page.on("requestfinished", on_request)
    open_live(page, srv, "r")

    stop(run)
    shutil.rmtree(run.path)
    d = wait_page(page, f"d.gone && d.chip === '{GONE}'", 30)
    for sel in (*STEER, "#freeze-select", "#recipe-link"):
        assert page.locator(sel).is_disabled(), sel
    assert "no longer on disk" in page.locator("#btn-pause").get_attribute("title")
    wait_page(page, "d.controls.length && d.controls.every(c => !c.sendable)")
    banner = page.locator("#stale-banner")
    banner.wait_for(state="visible")
    assert banner.inner_text().startswith("The folder of r is no longer on disk"), (
        banner.inner_text()
    )
    # the picker still shows the run, marked
    picked = page.evaluate(
        "() => { const s = document.getElementById('run-select');"
        " return [s.value, s.selectedOptions[0] && s.selectedOptions[0].textContent]; }"
    )
    assert picked == ["r", "r (no longer on disk)"], picked
    # nothing to type a value into: every input of the controls is disabled, number boxes too
    # (the `ce value` box stayed enabled)
    page.locator('.ctl[data-key="ce"] input.num[disabled]').wait_for(timeout=10000)
    enabled = page.evaluate(
        "() => [...document.querySelectorAll('#controls .ctl input, #controls .ctl select,"
        " #controls .ctl button')].filter(e => !e.disabled).map(e => e.getAttribute('aria-label'))"
    )
    assert enabled == [], enabled

    # the page asks less and less often: twice the 2 s interval, then twice that …
    wait_page(page, "d.goneDelay >= 16000", 60)
    first = next(i for i, (_, status) in enumerate(asked) if status == 404)
    wait_for(lambda: len(asked) >= first + 3, timeout=10, what="the third 404")
    polls = [t for t, _ in asked[first:]]
    gaps = [b - a for a, b in itertools.pairwise(polls)]
    assert all(status == 404 for _, status in asked[first:]), asked
    assert gaps[0] > 3.5 and gaps[1] > 7.5, gaps  # 4 s, then 8 s (2 s while it was there)
    assert d["stepShown"] != "–"

    # a trainer started again in the same folder: the run is back, live and steerable
    trainer("r")
    wait_page(page, "!d.gone && d.state === 'running' && d.chip === 'running'", 60)
    for sel in (*STEER, "#freeze-select", "#recipe-link"):
        page.locator(f"{sel}:not([disabled])").wait_for(timeout=30000)
    wait_page(page, "d.controls.length > 1 && d.controls.every(c => c.sendable)")
    banner.wait_for(state="hidden")
    assert page.evaluate("() => document.getElementById('run-select').value") == "r"
    forget(page, "404")


# ------------------------------------------------------------------------------ header buttons
def test_header_buttons_send_one_command_per_click(
    page: Any, serve_dir: Any, trainer: Any, tmp_path: Any
) -> None:
    """A double click on Pause sent pause, then resume; on Checkpoint or Evaluate, two."""
    run = trainer("r")
    srv = serve_dir(os.fspath(tmp_path / "runs"))
    open_live(page, srv, "r")

    # two clicks in one go: the first disables the button until the run answers
    page.evaluate("() => { const b = document.getElementById('btn-pause'); b.click(); b.click(); }")
    wait_page(page, "d.paused", 60)
    page.locator("#btn-pause:not([disabled])", has_text="Resume").wait_for(timeout=30000)
    ops = [c["op"] for c in commands(run.path) if c["op"] in ("pause", "resume")]
    assert ops == ["pause"], ops
    # the second click of a double click that comes after the run answered (a fast trainer)
    # does not send either: only the click after it resumes
    page.evaluate(
        "() => document.getElementById('btn-pause')"
        ".dispatchEvent(new MouseEvent('click', {detail: 2, bubbles: true}))"
    )
    page.click("#btn-pause")
    wait_page(page, "!d.paused", 60)
    page.locator("#btn-pause:not([disabled])", has_text="Pause").wait_for(timeout=30000)

    for op in ("checkpoint", "evaluate"):
        btn = f"#btn-{op}"
        page.dblclick(btn)
        (cmd,) = wait_for(lambda op=op: commands(run.path, op), timeout=30, what=f"{op}")
        wait_for(lambda cmd=cmd: entry(run.path, cmd["cmd_id"]), timeout=60, what="its answer")
        page.locator(f"{btn}:not([disabled])").wait_for(timeout=30000)
        assert debug(page)["inflight"] == []
        assert len(commands(run.path, op)) == 1, commands(run.path, op)
    # and a later click sends again
    page.click("#btn-evaluate")
    wait_for(lambda: len(commands(run.path, "evaluate")) == 2, timeout=30, what="a second one")
    assert [c["op"] for c in commands(run.path) if c["op"] in ("pause", "resume")] == [
        "pause",
        "resume",
    ]


def test_pause_comes_back_as_resume_never_as_pause(
    page: Any, serve_dir: Any, trainer: Any, tmp_path: Any
) -> None:
    """The run's answer to Pause re-enabled the button before the page took in that the run
    had paused: for a moment it read "Pause" again, and a click then sent resume."""
    trainer("r")
    srv = serve_dir(os.fspath(tmp_path / "runs"))
    open_live(page, srv, "r")
    page.evaluate(
        """() => {
        const b = document.getElementById('btn-pause');
        window.pauseStates = [];
        new MutationObserver(() => window.pauseStates.push([b.textContent, b.disabled]))
            .observe(b, {attributes: true, childList: true, characterData: true, subtree: true});
    }"""
    )
    page.click("#btn-pause")
    wait_page(page, "d.paused", 60)
    page.locator("#btn-pause:not([disabled])", has_text="Resume").wait_for(timeout=30000)
    states = page.evaluate("window.pauseStates")
    clicked = states.index(["Pause", True])  # (before it, the page redraws it as it was)
    assert ["Pause", False] not in states[clicked:], states


def test_a_status_answer_asked_before_the_pause_does_not_undo_it_on_the_page(
    page: Any, serve_dir: Any, trainer: Any, tmp_path: Any
) -> None:
    """The page's periodic status request, sent before the run paused and answered after the
    ledger said it had, turned Resume back into "Pause" for a moment (a click then sent
    another pause, a noop)."""
    trainer("r")
    srv = serve_dir(os.fspath(tmp_path / "runs"))
    open_live(page, srv, "r")
    held: list[Any] = []
    status = lambda url: url.split("?")[0].endswith("/runs/r/status")  # noqa: E731
    page.route(status, lambda route: held.append((route, route.fetch())))  # as the server said
    deadline = time.monotonic() + 60
    while not held and time.monotonic() < deadline:
        page.wait_for_timeout(50)  # lets the page run and the route handler be called
    assert held, "the page never asked for the run's status"
    page.click("#btn-pause")
    wait_page(page, "d.paused", 60)
    page.locator("#btn-pause:not([disabled])", has_text="Resume").wait_for(timeout=30000)
    page.evaluate("() => { window.statusBefore = window.hotcb.app.status; }")
    for route, answer in list(held):  # the first was asked before the pause
        route.fulfill(response=answer)
    page.unroute(status)
    page.wait_for_function("() => window.hotcb.app.status !== window.statusBefore", timeout=60000)
    assert debug(page)["paused"]
    assert page.locator("#btn-pause").text_content() == "Resume"


# ------------------------------------------------------------------------------ a finished run
@pytest.fixture(scope="module")
def nan_server(tmp_path_factory: Any) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("nan")
    path = os.fspath(root / "nan")
    subprocess.run([sys.executable, "-c", NAN_RUN, path], env=ENV, check=True, timeout=120)
    srv = Server(os.fspath(root), free_port())
    srv.start()
    yield srv
    srv.stop()


LOSS = "d.charts.find(c => c.key === 'loss')"


def loss_series(d: dict[str, Any]) -> dict[str, dict[str, Any]]:
    card = next(c for c in d["charts"] if c["key"] == "loss")
    return {s["metric"]: s for s in card["series"]}


def test_nan_and_inf_are_gaps_and_a_series_without_a_finite_value_says_so(
    page: Any, nan_server: Any
) -> None:
    """The metrics file records NaN and inf as null; the chart bridged them (spanGaps), so a
    NaN was invisible, and an all-NaN val_loss was a legend entry over nothing."""
    page.goto(nan_server.page_url("nan"))
    drawn = f"{LOSS}.series.some(s => s.metric === 'loss' && s.gapsDrawn > 0)"
    d = wait_page(page, f"d.over && {LOSS} && {LOSS}.series.length === 3 && {drawn}", 60)
    s = loss_series(d)
    # loss: a gap at each of its 12 non-finite values, drawn as breaks in the line
    assert s["loss"]["gaps"] == 12 and s["loss"]["points"] == 288, s["loss"]
    assert s["loss"]["spanGaps"] is False and s["loss"]["gapsDrawn"] == 12, s["loss"]
    # val/loss (every 25 steps, drawn with a loss logged every step) is one line, no gaps
    assert s["val/loss"]["points"] == 12 and s["val/loss"]["gapsDrawn"] == 0, s["val/loss"]
    assert s["loss"]["dots"] == 0 and s["val/loss"]["dots"] == 0, s  # lines, no lone points
    # val_loss: no finite value; its legend and the chart's note say so
    assert s["val_loss"]["nonFinite"] is True and s["val_loss"]["points"] == 0, s["val_loss"]
    assert s["val_loss"]["label"] == "val_loss (every value NaN or inf)", s["val_loss"]
    card = page.locator('.chart-card[data-group="loss"]')
    assert "val_loss (every value NaN or inf)" in card.locator(".u-legend").inner_text()
    note = card.locator(".chart-note")
    assert note.is_visible() and "val_loss: every value NaN or inf, nothing to draw" in (
        note.inner_text()
    )

    # on a log axis the same: the steps without a record of val/loss do not break its line
    card.locator(".log-toggle").check()
    d = wait_page(page, f"{LOSS}.log && {drawn}")
    s = loss_series(d)
    assert s["loss"]["gapsDrawn"] == 12 and s["val/loss"]["gapsDrawn"] == 0, s

    # the forecast panel's chart: val_loss picked there says why nothing is drawn
    page.select_option("select[aria-label='forecast metric']", "val_loss")
    # what it says once its request is answered (it says other things while it asks: a read
    # of it right after the first of those found one of them)
    page.wait_for_function(
        "(said) => { const a = window.hotcbAnalytics && window.hotcbAnalytics.debug();"
        " return a && a.metric === 'val_loss' && a.empty === said; }",
        arg="val_loss: every value NaN or inf so far, nothing to draw",
        timeout=30000,
    )
    forget(page, "404")  # the forecast of a metric with no finite value: none


def test_a_finished_run_without_actuators_says_it_published_none(
    page: Any, nan_server: Any
) -> None:
    """It said "No actuators yet: they appear when the run has started." of a run that was
    over."""
    page.goto(nan_server.page_url("nan"))
    wait_page(page, "d.over && d.state.startsWith('finished at step')", 60)
    controls = page.locator("#controls")
    page.wait_for_function(
        "() => document.getElementById('controls').textContent"
        " === 'No actuators: this run published none, and it is over.'",
        timeout=30000,
    )
    assert controls.inner_text() == "No actuators: this run published none, and it is over."
    knobs = page.locator("#knobs-card .knobs")
    page.wait_for_function(
        "() => document.querySelector('#knobs-card .knobs').textContent"
        " === 'No knobs: this run published none, and it is over.'",
        timeout=30000,
    )
    assert knobs.inner_text() == "No knobs: this run published none, and it is over."

"""Small things of the page, in headless Chromium against a real ``hotcb serve`` and two small
real trainers (no torch) in ``runs/sweep/``: the state chip beside a long run name at 1280 px,
the compare list's step of a compared run, a run served as its own folder in the run picker,
and where error toasts appear.

Tests wait on conditions with generous deadlines (the machine may be loaded), never on sleeps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import ENV, Server, read_jsonl, stop, wait_page
from hotcb.server.testing import free_port
from hotcb.testing import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.browser]

# a run that steps every 20 ms for ever, with a loss weight to steer
TRAIN = """\
import sys, time
from hotcb import HotKernel, loss_actuators, mutable_state
k = HotKernel(sys.argv[1], mutable_state=mutable_state(loss_actuators({'ce': 1.0})))
for s in range(10**9):
    k.apply({'step': s, 'metrics': {'loss': 1.0 / (s + 1)}})
    time.sleep(0.02)
"""

LONG = "lr-3e-4-bs-512-warmup-2000-cosine-restarts-seed-1234"


def last_step(path: str) -> int:
    recs = read_jsonl(os.path.join(path, "hotcb.metrics.jsonl"))
    return recs[-1]["step"] if recs else -1


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: Any) -> Iterator[dict[str, str]]:
    """``runs/sweep/LONG`` and ``runs/sweep/a``, both stepping for the whole module."""
    root = os.fspath(tmp_path_factory.mktemp("polish"))
    paths = {"root": root, "long": os.path.join(root, "sweep", LONG),
             "a": os.path.join(root, "sweep", "a")}  # fmt: skip
    procs = [
        subprocess.Popen([sys.executable, "-c", TRAIN, paths[k]], env=ENV) for k in ("long", "a")
    ]
    try:
        for k in ("long", "a"):
            wait_for(lambda k=k: last_step(paths[k]) >= 0, timeout=60, what=f"the trainer of {k}")
        yield paths
    finally:
        for p in procs:
            stop(p)


@pytest.fixture(scope="module")
def srv(sweep: dict[str, str]) -> Iterator[Server]:
    s = Server(sweep["root"], free_port())
    s.start()
    yield s
    s.stop()


# ------------------------------------------------------------------------------ the header
CHIP = """() => { const c = document.getElementById('state-chip');
  return {text: c.textContent, scroll: c.scrollWidth, client: c.clientWidth}; }"""


def test_the_state_chip_is_not_cut_beside_a_long_run_name_at_1280(browser: Any, srv: Any) -> None:
    """The run select gives way first: "running" was cut to "r…" while the freeze select kept
    the width of its longest option and the live indicator had room to spare."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 720})
    try:
        page = ctx.new_page()
        page.goto(srv.page_url(f"sweep/{LONG}"))
        wait_page(page, "d.connected && d.chip === 'running'")
        chip = page.evaluate(CHIP)
        assert chip["text"] == "running", chip
        assert chip["scroll"] <= chip["client"], chip  # all of it, no "…"
        # the long name is what is cut (its title has all of it)
        assert page.locator("#run-select").evaluate("e => e.clientWidth") < 260
        # the freeze select is as wide as the mode it shows ("off"), not "replay_adjusted"
        assert page.locator("#freeze-select").evaluate("e => e.offsetWidth") < 100
    finally:
        ctx.close()


# ------------------------------------------------------------------------------ compare
COMPARED_STEP = """() => {
  const item = [...document.querySelectorAll('#compare-list .compare-item')]
    .find((l) => l.querySelector('input').value === 'sweep/a');
  const m = item && item.textContent.match(/step (\\d+)/);
  return m ? Number(m[1]) : null;
}"""


def test_the_compare_list_follows_a_compared_run_live(page: Any, srv: Any) -> None:
    """The list said "sweep/a step 967" while that run was past 1200: a compared run's step now
    follows what the server pushes for it, whatever the (polled) runs list says. Here the runs
    list is frozen at its first answer, so only the live stream can move the step."""
    frozen: dict[str, str] = {}

    def runs_once(route: Any) -> None:
        if "body" not in frozen:
            frozen["body"] = route.fetch().text()
        route.fulfill(status=200, content_type="application/json", body=frozen["body"])

    page.route("**/api/runs", runs_once)
    page.goto(srv.page_url(f"sweep/{LONG}") + "&compare=sweep/a")
    wait_page(page, "d.connected && d.compare.includes('sweep/a')")
    listed = {r["run_id"]: r for r in json.loads(frozen["body"])["runs"]}
    stuck = listed["sweep/a"]["last_step"]
    assert isinstance(stuck, int), listed
    page.wait_for_function(f"() => ({COMPARED_STEP})() > {stuck + 30}", timeout=60000)
    shown = page.evaluate(COMPARED_STEP)
    assert shown <= last_step(os.path.join(srv.root, "sweep", "a")), shown


# ------------------------------------------------------------------------------ the charts
LOSS_CARD = "(d.charts.find(c => c.series.some(s => s.metric === 'loss')) || {})"


def test_a_zoom_on_a_live_chart_holds_while_points_come(page: Any, srv: Any) -> None:
    """Every live tick rebuilt the chart (its series' signature was written two ways), so a
    drag-zoom snapped back to the whole run at once, and each marker was made again."""
    page.goto(srv.page_url("sweep/a"))
    d = wait_page(page, f"d.connected && {LOSS_CARD}.canvas && {LOSS_CARD}.series[0].points > 20")
    over = page.locator(".u-over").first
    box = over.bounding_box()
    assert box is not None
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.3, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, y, steps=5)
    page.mouse.up()
    d = wait_page(page, f"{LOSS_CARD}.zoomed")
    (card,) = [c for c in d["charts"] if any(s["metric"] == "loss" for s in c["series"])]
    zoomed, seen = card["xRange"], card["series"][0]["points"]
    assert zoomed[1] - zoomed[0] < card["series"][0]["points"]  # narrower than the run
    # points keep coming (the run steps every 20 ms): the range stays where the drag put it
    d = wait_page(page, f"{LOSS_CARD}.series[0].points > {seen + 50}")
    (card,) = [c for c in d["charts"] if any(s["metric"] == "loss" for s in c["series"])]
    assert card["zoomed"] and card["xRange"] == zoomed, (card["xRange"], zoomed)
    # a chart made again (here by its log toggle; under load a series that came or a run that
    # went stale) keeps the zoom too: it snapped back to the whole run once in CI
    page.locator(".chart-card").first.locator(".log-toggle").click()  # the card dragged on
    d = wait_page(page, f"{LOSS_CARD}.series[0].points > 0")
    (card,) = [c for c in d["charts"] if any(s["metric"] == "loss" for s in c["series"])]
    assert card["zoomed"] and card["xRange"] == zoomed, (card["xRange"], zoomed)


# ------------------------------------------------------------------------------ run picker
def test_a_run_served_as_its_own_folder_is_called_by_its_name(
    page: Any, serve_dir: Any, sweep: dict[str, str]
) -> None:
    """``hotcb serve --dir RUN``: the run's id is "."; the picker showed ". — a"."""
    own = serve_dir(sweep["a"])
    page.goto(own.page_url())
    wait_page(page, "d.connected && d.run === '.'")
    options = page.evaluate("() => [...document.querySelectorAll('#run-select option')]"
                            ".map((o) => [o.value, o.textContent])")  # fmt: skip
    assert options == [[".", "a"]], options
    assert page.title() == "a · hotcb"


# ------------------------------------------------------------------------------ toasts
BOXES = """() => {
  const box = (e) => { const r = e.getBoundingClientRect();
    return {left: r.left, right: r.right, top: r.top, bottom: r.bottom}; };
  const t = document.querySelector('#toasts .toast.bad');
  return {toast: box(t), side: box(document.querySelector('.side')),
          controls: box(document.getElementById('controls-card'))};
}"""


def test_an_error_toast_does_not_cover_the_controls_and_goes_on_a_click(
    page: Any, srv: Any, sweep: dict[str, str]
) -> None:
    """A refusal stays 8 s: it sat over the Controls column, over the control being fixed."""
    page.goto(srv.page_url(f"sweep/{LONG}"))
    wait_page(page, "d.connected && d.controls.length && d.step > 20")
    wait_for(lambda: last_step(sweep["long"]) > 20, timeout=60, what="step 20")
    page.select_option("#sched-key", "ce")
    page.fill("#sched-value", "0.5")
    page.fill("#sched-step", "10")  # passed: refused on the page, with an 8 s toast
    page.click("#sched-submit")
    toast = page.locator("#toasts .toast.bad", has_text="step 10 has passed")
    toast.wait_for()
    b = page.evaluate(BOXES)
    # not over the right-hand column (Controls, Schedule), wherever it is scrolled to
    assert b["toast"]["right"] <= b["side"]["left"] or b["toast"]["left"] >= b["side"]["right"], b
    assert b["toast"]["bottom"] <= page.viewport_size["height"], b
    toast.click()
    toast.wait_for(state="detached", timeout=3000)  # long before its 8 s are up

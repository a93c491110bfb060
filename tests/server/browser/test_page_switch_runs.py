"""The Forecast & what-if panel across a switch of runs and a run that comes back from gone, and
the page's connection after a server restart, in headless Chromium against a real ``hotcb
serve`` and small real trainers (no torch).

Tests wait on conditions with deadlines, never on sleeps. Where an answer must arrive late (the
old run's answers after a switch), the page's own ``fetch`` is slowed for those URLs.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import TOKEN, Server, stop, trainers, wait_page
from hotcb.server.testing import ServeProcess

pytestmark = [pytest.mark.slow, pytest.mark.browser]

# a run that steps every 20 ms: a loss weight KNOB, loss and val_loss (NaN from step NAN_AT
# on) and one more metric EXTRA, so that two runs have different knobs and trajectories
TRAIN = """\
import math, sys, time
from hotcb import HotKernel, loss_actuators, mutable_state
path, knob, extra, nan_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
k = HotKernel(path, mutable_state=mutable_state(loss_actuators({knob: 1.0})))
for s in range(10**9):
    bad = s >= nan_at
    m = {'loss': math.nan if bad else 1.0 / (s + 1), extra: math.sqrt(s)}
    if s % 5 == 4:
        m['val_loss'] = math.nan if bad else 1.2 / (s + 1) + 0.01 * math.sin(s)
    k.apply({'step': s, 'metrics': m})
    time.sleep(0.02)
"""

# the page's fetch, slowed by 2.5 s for run a's actuators and trajectory once __slow is set
SLOW_FETCH = """\
window.__slow = false;
window.__slowPending = 0;
window.__failed = [];
const realFetch = window.fetch.bind(window);
window.fetch = async (url, opts) => {
  const u = String(url);
  const slow = window.__slow && /\\/api\\/runs\\/a\\/(actuators|trajectory)/.test(u);
  if (slow) {
    window.__slowPending += 1;
    await new Promise((r) => setTimeout(r, 2500));
  }
  try {
    return await realFetch(url, opts);
  } catch (err) {
    window.__failed.push(u);
    throw err;
  } finally {
    if (slow) window.__slowPending -= 1;
  }
};
"""


@pytest.fixture
def trainer(tmp_path: Any) -> Iterator[Any]:
    """``trainer(name, knob, extra, nan_at)`` starts ``TRAIN`` on ``tmp_path/runs/name`` (see
    ``conftest.trainers``)."""
    gen = trainers(tmp_path, TRAIN)
    start = next(gen)

    def start_run(name: str, knob: str = "ce", extra: str = "acc", nan_at: int = 10**9) -> Any:
        return start(name, knob, extra, str(nan_at))

    yield start_run
    next(gen, None)  # stops them


def analytics(page: Any) -> dict[str, Any]:
    return page.evaluate("window.hotcbAnalytics.debug()")


def wait_analytics(page: Any, expr: str, timeout: float = 30) -> dict[str, Any]:
    """Wait until the JS expression over ``a`` (the Analytics panel's debug()) is truthy."""
    fn = f"() => {{ const a = window.hotcbAnalytics && window.hotcbAnalytics.debug(); return !!(a && ({expr})); }}"
    page.wait_for_function(fn, timeout=timeout * 1000)
    return analytics(page)


def test_a_switch_of_runs_drops_the_old_runs_late_answers(
    page: Any, serve_dir: Any, trainer: Any, tmp_path: Any
) -> None:
    """A refresh of the Forecast panel in flight for run a when the page switches to b wrote
    a's knobs and a's trajectory into b's panel (for up to 10 s, until the next refresh)."""
    trainer("a", "ce", "acc")
    trainer("b", "aux", "score")
    srv = serve_dir(os.fspath(tmp_path / "runs"))
    page.add_init_script(SLOW_FETCH)
    page.goto(srv.page_url("a"))
    wait_page(page, "d.run === 'a' && d.connected && d.step > 20")
    a_shown = "a.run === 'a' && a.trajectory > 0 && a.trajectoryNote.includes('acc') && a.knobs.join() === 'ce'"
    wait_analytics(page, a_shown)

    # a refresh for a, held at its actuators (then its trajectory), while the page goes to b
    page.evaluate("() => { window.__slow = true; window.__old = window.hotcbAnalytics.refresh(); }")
    page.wait_for_function("() => window.__slowPending > 0", timeout=10000)
    page.select_option("#run-select", "b")
    b_shown = "a.run === 'b' && a.trajectory > 0 && a.trajectoryNote.includes('score') && a.knobs.join() === 'aux'"
    wait_analytics(page, b_shown, 20)
    page.evaluate("() => window.__old")  # a's refresh has ended: whatever it would write, it has
    a = analytics(page)
    assert a["run"] == "b" and a["knobs"] == ["aux"], a
    assert "score" in a["trajectoryNote"] and "acc" not in a["trajectoryNote"], a["trajectoryNote"]


def test_a_run_back_from_gone_drops_its_old_forecast_note(
    page: Any, serve_dir: Any, trainer: Any, tmp_path: Any
) -> None:
    """A run whose val_loss went NaN, deleted, then started again in its folder: the panel (and
    the Loss chart) kept "val_loss is no longer finite …" until its next 10 s refresh."""
    run = trainer("n", nan_at=60)
    srv = serve_dir(os.fspath(tmp_path / "runs"))
    page.goto(srv.page_url("n"))
    wait_page(page, "d.run === 'n' && d.connected")
    wait_analytics(page, "a.note && a.note.includes('no longer finite')", 60)

    stop(run)
    shutil.rmtree(run.path)
    wait_page(page, "d.gone", 30)
    trainer("n")  # a new life in the same folder, finite this time
    wait_page(page, "!d.gone", 60)
    # at once, not at the panel's next periodic refresh (every 10 s)
    wait_analytics(page, "a.run === 'n' && !(a.note || '').includes('no longer finite')", 2)
    page.errors[:] = [e for e in page.errors if "404" not in e]  # the gone run's answers


class SlowReconnectServer(Server):
    """A server whose page waits 30 s before its first WebSocket reconnect."""

    def __init__(self, root: str, port: int) -> None:
        env = {
            "HOTCB_TOKEN": TOKEN,
            "HOTCB_UI__RECONNECT_DELAY_SEC": "30",
            "HOTCB_UI__RECONNECT_MAX_DELAY_SEC": "60",
        }
        ServeProcess.__init__(self, root, port, env=env)


def test_a_restarted_server_is_live_as_soon_as_http_answers(
    page: Any, trainer: Any, tmp_path: Any
) -> None:
    """After a restart with the same token the page said "disconnected" until its WebSocket
    back-off ran out although its status polls were answered; while the server was down it
    kept asking for knobs (and impact, features) and filled the console with refusals."""
    from hotcb.server.testing import free_port

    trainer("live")
    srv = SlowReconnectServer(os.fspath(tmp_path / "runs"), free_port())
    srv.start()
    try:
        page.add_init_script(SLOW_FETCH)
        page.goto(srv.page_url("live"))
        wait_page(page, "d.connected && d.chip === 'running' && d.step > 20", 60)

        srv.stop()
        wait_page(page, "d.offline", 30)
        count = "window.__failed.filter(u => u.includes('/status')).length"
        page.wait_for_function(f"() => {count} >= 1", timeout=10000)
        mark = page.evaluate("() => window.__failed.length")
        seen = page.evaluate(f"() => {count}")
        # four more status polls refused (about 8 s: the knobs' and impact's 5 s timers ran)
        page.wait_for_function(f"() => {count} >= {seen + 4}", timeout=30000)
        # only the status poll and the runs list (every 10 s) ask: they notice the return
        others = page.evaluate(
            f"() => window.__failed.slice({mark})"
            ".filter(u => !u.includes('/status') && u.split('?')[0] !== '/api/runs')"
        )
        assert others == [], others

        srv.start()
        # the status poll (every 2 s) is answered: live again, long before the 30 s back-off
        d = wait_page(page, "!d.offline && d.connected && d.chip === 'running'", 12)
        assert not page.locator("#btn-pause").is_disabled()
        assert d["stepShown"] != "–"
    finally:
        srv.stop()

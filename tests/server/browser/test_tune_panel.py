"""The Tune panel and the charts' repeated series, in headless Chromium against a real
``hotcb serve``.

The tuner's state file (``RUN/hotcb.tune.json``) is its contract with the page: most tests write
it themselves (``tune_state``) and read what the page sends from the run's commands file. The
last one runs the real tuner in a real trainer process, end to end.

Tests wait on conditions with generous deadlines (the machine may be loaded), never on sleeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hotcb import jsonl
from hotcb.metrics import MetricsCollector
from hotcb.server.testing import ServeProcess
from hotcb.testing import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.browser]

ENV = {k: v for k, v in os.environ.items() if not k.startswith("HOTCB_")}
TOKEN = "tune-panel-token"
CARD = "#tune-card"
OFF_TEXT = "tuner off — enable with hotcb --dir RUN tune enable --mode suggest"


def debug(page: Any) -> dict[str, Any]:
    return page.evaluate("window.hotcb.debug()")


def wait_page(page: Any, expr: str, timeout: float = 30) -> dict[str, Any]:
    """Wait until the JS expression over ``d`` (= ``window.hotcb.debug()``) is truthy."""
    fn = f"() => {{ const d = window.hotcb && window.hotcb.debug(); return !!(d && ({expr})); }}"
    try:
        page.wait_for_function(fn, timeout=timeout * 1000)
    except Exception as exc:  # say what the page held instead (a CI timeout once, under load)
        held = page.evaluate("window.hotcb && window.hotcb.debug().tune")
        raise AssertionError(f"{expr}: not true; tune: {held}; errors: {page.errors}") from exc
    return debug(page)


def chart(d: dict[str, Any], title: str) -> dict[str, Any]:
    return next(c for c in d["charts"] if c["title"] == title)


def read_jsonl(path: str) -> list[dict[str, Any]]:
    return list(jsonl.iter_records(path)) if os.path.exists(path) else []


class Site:
    """A folder of runs that the tests write (no trainer) and ``hotcb serve`` over it."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.server = ServeProcess(root, env={"HOTCB_TOKEN": TOKEN})

    def url(self, run: str) -> str:
        """The page of ``run``, by the printed URL (the server trades the token for a cookie)."""
        return f"{self.server.url}/?token={TOKEN}&run={run}"


@pytest.fixture(scope="module")
def site(tmp_path_factory: Any) -> Iterator[Site]:
    s = Site(os.fspath(tmp_path_factory.mktemp("tune-runs")))
    s.server.start()
    yield s
    s.server.stop()


def new_run(site: Site, name: str, steps: int = 20) -> str:
    """A run directory with a few steps of metrics."""
    path = os.path.join(site.root, name)
    with MetricsCollector(path) as m:
        for s in range(steps):
            m.log(s, {"loss": 1.0 / (s + 1), "lr": 0.003})
    return path


def open_run(page: Any, site: Site, name: str) -> dict[str, Any]:
    page.goto(site.url(name))
    return wait_page(page, f"d.connected && d.run === '{name}' && d.charts.length > 0")


def tune_commands(run: str) -> list[dict[str, Any]]:
    return [c for c in read_jsonl(os.path.join(run, "hotcb.commands.jsonl"))
            if c.get("module") == "tune"]  # fmt: skip


def texts(page: Any, selector: str) -> list[str]:
    return page.locator(selector).evaluate_all("els => els.map(e => e.textContent)")


# ------------------------------------------------------------------------------ the panel
def test_panel_shows_state_trials_and_pending_proposal(
    page: Any, site: Site, tune_state: Any
) -> None:
    run = new_run(site, "shown")
    tune_state(run, warnings=["objective 'val_loss' not logged; scoring 'loss'",
                              "<img src=x onerror=alert(1)>"])  # fmt: skip
    open_run(page, site, "shown")
    d = wait_page(page, "d.tune.mode === 'suggest' && d.tune.pending.length === 1")
    assert d["tune"]["pending"] == ["P3"]
    assert d["tune"]["trials"] == [7, 6, 5]  # newest first

    card = page.locator(CARD)
    assert card.locator(".tune-mode").inner_text() == "suggest"
    assert (
        card.locator(".tune-phase").inner_text()
        == "phase trial · trial 7 · next boundary step 1600"
    )
    # asked for val_loss, scoring loss: a warning badge says so
    assert card.locator(".tune-objective").inner_text() == "val_loss"
    badge = card.locator(".tune-fallback")
    assert badge.inner_text() == "scoring loss ↓ minimize"  # the direction it is scored in
    assert "val_loss" in badge.get_attribute("title")
    assert card.locator(".tune-counts").inner_text() == (
        "9 segments · 2 kept · 3 rolled back · 1 proposed · 0 failed"
    )
    assert card.locator(".tune-rate").inner_text() == "40%"
    assert card.locator(".tune-best").inner_text() == "trial 5 · score +0.12 · opt.lr = 0.003"
    # text from the file is text, never markup
    assert texts(page, f"{CARD} .tune-warnings li") == [
        "objective 'val_loss' not logged; scoring 'loss'",
        "<img src=x onerror=alert(1)>",
    ]
    assert card.locator("img").count() == 0

    # the trials, newest first: trial, steps, change, score, decision
    rows = page.locator(f"{CARD} #tune-trials tr")
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.trial)") == ["7", "6", "5"]
    cells = rows.evaluate_all("rs => rs.map(r => [...r.cells].map(c => c.textContent))")
    assert cells == [
        ["7", "1400…", "opt.lr 0.003 → 0.0045", "–", "open"],
        ["6", "1200–1400", "opt.lr 0.003 → 0.009", "-0.03", "rolled back"],
        ["5", "1000–1200", "opt.lr 0.001 → 0.003", "+0.12", "kept"],
    ]
    # the pending proposal (P2 was answered: not shown), with its buttons
    items = page.locator(f"{CARD} li.tune-proposal")
    assert items.count() == 1
    p3 = items.first
    assert p3.get_attribute("data-id") == "P3"
    assert "opt.lr 0.003 → 0.0045" in p3.inner_text()
    assert p3.locator(".tune-accept").inner_text() == "Accept"
    assert p3.locator(".tune-reject").inner_text() == "Reject"

    # a new boundary only: the proposal's buttons stay the same elements (no click lost)
    p3.locator(".tune-accept").evaluate("b => { b.dataset.kept = 'yes'; }")
    tune_state(run, segment_start=1600, next_boundary=1800)
    page.locator(f"{CARD} .tune-phase", has_text="next boundary step 1800").wait_for()
    assert p3.locator(".tune-accept").get_attribute("data-kept") == "yes"

    # the tuner moves on: the panel follows without a reload
    tune_state(
        run,
        trial=8,
        next_boundary=1800,
        proposals=[
            {"id": "P3", "trial": 8, "step": 1600, "changes": {"opt.lr": [0.003, 0.0045]},
             "state": "accepted"},
            {"id": "P4", "trial": 9, "step": 1800, "changes": {"loss.l2": [0, 0.1]},
             "state": "pending"},
        ],
    )  # fmt: skip
    wait_page(page, "d.tune.pending.join() === 'P4'")
    assert (
        page.locator(f"{CARD} .tune-phase")
        .inner_text()
        .endswith("trial 8 · next boundary step 1800")
    )
    p4 = page.locator(f'{CARD} li.tune-proposal[data-id="P4"]')
    assert "loss.l2 0 → 0.1" in p4.inner_text()


def test_accept_sends_one_tune_accept_command(page: Any, site: Site, tune_state: Any) -> None:
    run = new_run(site, "accept")
    tune_state(run)
    open_run(page, site, "accept")
    button = page.locator(f'{CARD} li.tune-proposal[data-id="P3"] .tune-accept')
    button.click()
    d = wait_page(page, "d.tune.sent.P3 && d.tune.sent.P3.cmdId")
    (cmd,) = tune_commands(run)
    assert cmd["op"] == "accept" and cmd["params"] == {"id": "P3"}
    assert cmd["source"] == "dashboard" and cmd["cmd_id"] == d["tune"]["sent"]["P3"]["cmdId"]
    # while the run has not answered, both buttons wait: a second click sends nothing
    assert button.is_disabled() and button.inner_text() == "sent…"
    assert page.locator(f'{CARD} li.tune-proposal[data-id="P3"] .tune-reject').is_disabled()
    button.click(force=True)
    assert len(tune_commands(run)) == 1

    # the tuner takes it: the proposal leaves the list
    accepted = {"id": "P3", "trial": 8, "step": 1600, "changes": {"opt.lr": [0.003, 0.0045]},
                "state": "accepted"}  # fmt: skip
    tune_state(run, proposals=[accepted])
    wait_page(page, "d.tune.pending.length === 0 && !d.tune.sent.P3")
    assert page.locator(f"{CARD} li.tune-proposal").count() == 0
    assert len(tune_commands(run)) == 1


def test_a_late_answer_to_the_pages_own_request_does_not_hide_a_pushed_proposal(
    page: Any, site: Site, tune_state: Any
) -> None:
    """The page asks for the tuner's state over HTTP while the WebSocket pushes it. An answer
    read before the tuner proposed, and delivered after the push, used to replace the newer
    document: the proposal vanished until the tuner's next change (a CI run caught it)."""
    run = new_run(site, "late")
    tune_state(run)
    held: list[Any] = []
    request = lambda url: "/runs/late/tune" in url  # noqa: E731
    page.route(request, lambda route: held.append(route))
    page.goto(site.url("late"))
    wait_page(page, "d.connected && d.tune.mode === 'suggest' && d.tune.pending.includes('P3')")
    deadline = time.monotonic() + 60
    while not held and time.monotonic() < deadline:
        page.wait_for_timeout(50)  # lets the page run and the route handler be called
    assert held, "the page never asked for the tuner's state"
    # the state as it was before the proposal: what a request read a moment earlier answers
    before = {"mode": "suggest", "objective": "val_loss", "proposals": [], "trials": []}
    for route in held:
        route.fulfill(status=200, content_type="application/json", body=json.dumps(before))
    page.unroute(request)
    d = wait_page(page, "d.loaded")
    assert d["tune"]["pending"] == ["P3"], d["tune"]
    assert page.locator(f'{CARD} li.tune-proposal[data-id="P3"] .tune-accept').is_enabled()


def test_reject_sends_one_tune_reject_command_and_shows_a_refusal(
    page: Any, site: Site, tune_state: Any
) -> None:
    run = new_run(site, "reject")
    tune_state(run)
    open_run(page, site, "reject")
    page.locator(f'{CARD} li.tune-proposal[data-id="P3"] .tune-reject').click()
    d = wait_page(page, "d.tune.sent.P3 && d.tune.sent.P3.cmdId")
    (cmd,) = tune_commands(run)
    assert cmd["op"] == "reject" and cmd["params"] == {"id": "P3"}
    assert cmd["source"] == "dashboard" and cmd["cmd_id"] == d["tune"]["sent"]["P3"]["cmdId"]

    # the run refuses it (say the proposal expired at its boundary): the reason is shown and
    # the buttons work again
    jsonl.append(
        os.path.join(run, "hotcb.applied.jsonl"),
        {"v": 1, "seq": 1, "step": 19, "wall_time": time.time(), "cmd_id": cmd["cmd_id"],
         "source": "dashboard", "module": "tune", "op": "reject", "params": {"id": "P3"},
         "decision": "rejected", "error": "proposal P3 expired at step 1600"},
    )  # fmt: skip
    page.locator(f"{CARD} .tune-error", has_text="proposal P3 expired").wait_for(timeout=30000)
    assert page.locator(f'{CARD} li.tune-proposal[data-id="P3"] .tune-reject').is_enabled()
    assert len(tune_commands(run)) == 1


def test_off_is_one_line(page: Any, site: Site) -> None:
    run = new_run(site, "off")
    open_run(page, site, "off")
    wait_page(page, "d.tune.mode === 'off'")
    line = page.locator(f"{CARD} .tune-off")
    assert line.inner_text() == OFF_TEXT
    assert line.get_attribute("title") == f"hotcb --dir {run} tune enable --mode suggest"
    assert page.locator(f"{CARD} button, {CARD} table").count() == 0
    card, head = page.locator(CARD).bounding_box(), line.bounding_box()
    assert head["height"] < 24, head  # one line of small text
    assert card["height"] < 50, card  # and a card not much taller

    # a state file that does not parse, on a server that never read a good one: it says so
    with open(os.path.join(run, "hotcb.tune.json"), "w") as f:
        f.write('{"mode": "sugg')
    page.reload()
    wait_page(page, "d.tune.error !== null")
    err = page.locator(f"{CARD} .tune-error").inner_text()
    assert err.startswith("hotcb.tune.json is unreadable"), err
    card_box = wait_for(page.locator(CARD).bounding_box, 60, what="the card laid out")
    assert card_box["height"] < 50


LAYOUT = """() => {
  const box = (sel) => document.querySelector(sel).getBoundingClientRect();
  const card = document.querySelector('#tune-card');
  const items = [...document.querySelector('.topbar').children]
    .filter((c) => !c.classList.contains('spacer'));
  return {
    width: window.innerWidth,
    scrollWidth: document.documentElement.scrollWidth,
    bar: box('.topbar').height,
    rowHeight: Math.max(...items.map((c) => c.getBoundingClientRect().height)),
    charts: box('.charts-area'), side: box('.side'), tune: box('#tune-card'),
    ledger: box('.ledger-card'), layout: box('.layout'),
    cardOverflow: card.scrollWidth - card.clientWidth,
  };
}"""


# what sticks out past the window's right edge, for a failure's message
TOO_WIDE = """() => [...document.querySelectorAll('body *')]
  .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1)
  .map((e) => `${e.tagName}.${e.className}#${e.id} ${Math.round(e.getBoundingClientRect().right)}`)
  .slice(0, 12)"""


@contextlib.contextmanager
def sized_page(browser: Any, width: int, height: int) -> Iterator[tuple[Any, list[str]]]:
    """A page in a window of ``width`` x ``height``, and the page errors it raised."""
    ctx = browser.new_context(viewport={"width": width, "height": height})
    try:
        page = ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        yield page, errors
    finally:
        ctx.close()


@pytest.mark.parametrize("mode", ["suggest", "off"])
def test_layout_at_1280x720(browser: Any, site: Site, tune_state: Any, mode: str) -> None:
    """The header stays one line and nothing overflows sideways; the panel spans the page
    between the charts (and side column) and the ledger."""
    run = new_run(site, f"layout-{mode}")
    if mode != "off":
        tune_state(run, warnings=["objective 'val_loss' not logged; scoring 'loss'" * 3])
    with sized_page(browser, 1280, 720) as (page, errors):
        open_run(page, site, f"layout-{mode}")
        wait_page(page, f"d.tune.mode === '{mode}'")
        m = page.evaluate(LAYOUT)
        assert m["bar"] <= m["rowHeight"] + 24, m  # one row (10 px padding each side, border)
        assert m["scrollWidth"] <= m["width"], m
        assert m["cardOverflow"] <= 0, m
        assert m["tune"]["top"] >= max(m["charts"]["bottom"], m["side"]["bottom"]), m
        assert m["tune"]["bottom"] <= m["ledger"]["top"], m
        assert m["tune"]["width"] == pytest.approx(m["ledger"]["width"], abs=1), m
        assert errors == []


def test_a_phone_wide_window_never_scrolls_sideways(
    browser: Any, site: Site, tune_state: Any
) -> None:
    """At 420 px the one-column layout took the width of its widest card (the autopilot's
    one-line summary, the ledger's table): the page scrolled sideways and the proposals' Accept
    and Reject were off screen."""
    run = new_run(site, "narrow")
    two_knobs = {"opt.lr": [0.00144, 0.000632], "opt.weight_decay": [0.01, 0.009334]}
    trials = [{"trial": 12, "step": 1400, "end_step": 1600, "changes": two_knobs,
               "score": -0.0123, "decision": "rolled_back"}]  # fmt: skip
    tune_state(run, warnings=["objective 'val_loss' not logged; scoring 'loss'" * 3],
               trials=trials)  # fmt: skip
    with sized_page(browser, 420, 900) as (page, errors):
        open_run(page, site, "narrow")
        wait_page(page, "d.tune.mode === 'suggest'")
        m = page.evaluate(LAYOUT)
        assert m["scrollWidth"] <= m["width"], page.evaluate(TOO_WIDE)
        assert m["tune"]["right"] <= m["width"] and m["ledger"]["right"] <= m["width"], m
        buttons = page.locator(f"{CARD} .tune-proposal button")
        assert buttons.count() >= 2
        for i in range(buttons.count()):
            box = buttons.nth(i).bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= m["width"], box
        # the trials table fits its box: every column, the decision's too, in view
        wrap = page.locator(f"{CARD} .tune-trials-wrap")
        fit = wrap.evaluate("w => [w.scrollWidth, w.clientWidth]")
        assert fit[0] <= fit[1], fit
        # the ledger keeps its columns and scrolls sideways in its frame (squeezed into the
        # card, a reason read one word fragment a line)
        ledger = page.evaluate(
            "document.getElementById('ledger-body').closest('table').offsetWidth"
        )
        assert ledger >= 680, ledger
        assert errors == []


# ------------------------------------------------------------------------------ repeated series
def test_repeated_series_are_drawn_once(page: Any, site: Site) -> None:
    """The demo without --golden while the l2 weight is 0: loss is loss_cls, at every step.
    No "Loss · cls" chart repeats "Loss"; the legend says what each line stands for. Once the
    two differ, the chart comes back."""
    path = os.path.join(site.root, "repeats")
    metrics = MetricsCollector(path)
    for s in range(30):
        cls, l2 = 2.3 / (s + 1), 0.04 + s * 1e-4
        rec = {"train/loss": cls, "train/loss_cls": cls, "train/loss_l2": l2, "lr": 0.01}
        if s % 10 == 9:
            rec.update({"val/loss": cls * 1.1, "val/loss_cls": cls * 1.1, "val/acc": 0.5})
        metrics.log(s, rec)
    try:
        d = open_run(page, site, "repeats")
        titles = [c["title"] for c in d["charts"]]
        assert "Loss · cls" not in titles and {"Loss", "Loss · l2"} <= set(titles), titles
        loss = chart(d, "Loss")
        assert [(s["metric"], s["same"], s["label"]) for s in loss["series"]] == [
            ("train/loss", ["train/loss_cls"], "train/loss (= train/loss_cls)"),
            ("val/loss", ["val/loss_cls"], "val/loss (= val/loss_cls)"),
        ]
        legend = page.locator('.chart-card[data-group="loss:total"] .u-legend')
        assert "train/loss (= train/loss_cls)" in legend.inner_text()

        # the l2 term gets a weight: the total loss is no longer the cls term
        for s in range(30, 40):
            cls = 2.3 / (s + 1)
            metrics.log(s, {"train/loss": cls + 0.1 * 0.04, "train/loss_cls": cls,
                            "train/loss_l2": 0.04, "lr": 0.01})  # fmt: skip
        d = wait_page(page, "d.charts.some(c => c.title === 'Loss · cls')")
        assert [s["metric"] for s in chart(d, "Loss · cls")["series"]] == ["train/loss_cls"]
        assert [(s["metric"], s["same"]) for s in chart(d, "Loss")["series"]] == [
            ("train/loss", []),
            ("val/loss", ["val/loss_cls"]),
        ]
    finally:
        metrics.close()


# ------------------------------------------------------------------------------ end to end
def watch_posts(page: Any) -> Any:
    """Records the page's POSTs from now on; the returned function says each one's URL and its
    answer (status and body), or how it failed."""
    seen: list[Any] = []
    page.on("requestfinished", lambda req: seen.append(req) if req.method == "POST" else None)
    page.on("requestfailed", lambda req: seen.append(req) if req.method == "POST" else None)

    def said() -> list[str]:
        out = []
        for req in seen:
            res = req.response()
            answer = f"{res.status} {res.text()[:300]}" if res else f"failed: {req.failure}"
            out.append(f"{req.url} {req.post_data} -> {answer}")
        return out

    return said


def test_real_tuner_proposal_accepted_from_the_page(
    page: Any, serve_dir: Any, tmp_path: Any
) -> None:
    """A real trainer with the real tuner in suggest mode: the page shows its proposal, Accept
    sends it, and the tuner applies it (a ``tune mutate`` entry, ``source: "tune"``)."""
    pytest.importorskip("optuna")
    run = os.fspath(tmp_path / "runs" / "tuned")
    argv = [sys.executable, "-m", "hotcb.testing.trainer", "--run-dir", run,
            "--steps", "1000000", "--step-delay", "0.02"]  # fmt: skip
    os.makedirs(run)
    with open(os.path.join(run, "trainer.log"), "wb") as log:
        trainer = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=ENV)
    try:
        wait_for(lambda: os.path.exists(os.path.join(run, "hotcb.actuators.json")),
                 timeout=120, what="the trainer's actuators")  # fmt: skip
        enable = [sys.executable, "-m", "hotcb", "--dir", run, "tune", "enable", "--mode",
                  "suggest", "--objective", "loss", "--segment-steps", "20"]  # fmt: skip
        subprocess.run(enable, env=ENV, check=True, timeout=120, capture_output=True)
        srv = serve_dir(os.path.dirname(run))
        page.goto(srv.page_url("tuned"))
        d = wait_page(page, "d.connected && d.tune.mode === 'suggest' && d.tune.pending.length",
                      timeout=240)  # fmt: skip
        pid = d["tune"]["pending"][0]
        state = jsonl.read_json(os.path.join(run, "hotcb.tune.json"))
        (proposal,) = [p for p in state["proposals"] if p["id"] == pid]
        posts = watch_posts(page)
        page.locator(f'{CARD} li.tune-proposal[data-id="{pid}"] .tune-accept').click()
        try:
            (accept,) = wait_for(
                lambda: [c for c in tune_commands(run) if c["op"] == "accept"],
                timeout=60,
                what="the accept command",
            )
        except TimeoutError as exc:  # what the page sent and heard, for a failure under load
            panel = page.locator(CARD).inner_text()  # (first: it lets the page's events in)
            raise AssertionError(f"{exc}; the page's POSTs: {posts()}; its tune panel says: "
                                 f"{panel!r}") from None  # fmt: skip
        assert accept["params"] == {"id": pid} and accept["source"] == "dashboard"

        def mutated() -> dict[str, Any] | None:
            ledger = read_jsonl(os.path.join(run, "hotcb.applied.jsonl"))
            return next((e for e in ledger if e.get("module") == "tune" and e.get("op") ==
                         "mutate" and e.get("source") == "tune" and e.get("decision") ==
                         "applied"), None)  # fmt: skip

        entry = wait_for(mutated, timeout=180, what="the tuner's mutate entry")
        # the proposal's change, applied after the page's accept was
        applied = {k: ch["new"] for k, ch in entry["changes"].items()}
        asked = {k.split(".")[-1]: v[1] for k, v in proposal["changes"].items()}
        assert applied == pytest.approx(asked), (entry, proposal)
        assert entry["params"]["trial"] == proposal["trial"]
        ledger = read_jsonl(os.path.join(run, "hotcb.applied.jsonl"))
        (took,) = [e for e in ledger if e.get("cmd_id") == accept["cmd_id"]]
        assert took["decision"] == "applied" and took["seq"] < entry["seq"]
        # the page marks it on the charts in the tuner's colour, and the proposal is gone
        d = wait_page(page, f"d.markers.some(m => m.seq === {entry['seq']} && m.source === 'tune')",
                      timeout=60)  # fmt: skip
        wait_page(page, f"!d.tune.pending.includes('{pid}')", timeout=60)
    finally:
        trainer.send_signal(signal.SIGINT)
        try:
            trainer.wait(30)
        except subprocess.TimeoutExpired:
            trainer.kill()
            trainer.wait(10)

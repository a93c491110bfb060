"""The Analytics panel in headless Chromium against a real ``hotcb serve``: the forecast band
where the model beats the baselines on the run's own history, in the panel and over the
metric's main chart (continuing the curve past the last step), the "not better" note where it
does not (in the panel and in that chart's head), the what-if of a change typed in the panel and in the controls, the trajectory.

Tests wait on conditions with generous deadlines (the machine may be loaded), never on sleeps.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np
import pytest

from hotcb import HotKernel
from hotcb.client import HotClient
from hotcb.metrics import MetricsCollector

pytestmark = [pytest.mark.slow, pytest.mark.browser]

DROP = 0.8
DEBUG = "() => window.hotcbAnalytics && window.hotcbAnalytics.debug()"
#: The main chart that shows ``metric`` (app.js's charts), or null.
CHART = """(metric) => (window.hotcb.debug().charts || []).find(
    (c) => c.series.some((s) => s.metric === metric))"""


class _Opt:
    def __init__(self, lr: float) -> None:
        self.param_groups = [{"lr": lr, "weight_decay": 0.0}]


def steered_run(
    path: str, steps: int, halve_at: tuple[int, ...], lr: float = 0.1, keep: list[Any] | None = None
) -> str:
    """A real kernel's run whose metrics fall 20 % below their trend at each lr halving;
    with ``keep``, its kernel is left open there (the run is still going)."""
    os.makedirs(path, exist_ok=True)
    client = HotClient(path, source="test")
    for i, s in enumerate(halve_at):
        client.set_params("opt", {"lr": lr / 2 ** (i + 1)}, at_step=s)
    opt = _Opt(lr)
    rng = np.random.default_rng(0)
    kernel = HotKernel(path, poll_interval_sec=0.0)
    try:
        for step in range(steps):
            trend = 2.0 * (step + 10.0) ** -0.5 * DROP ** math.log2(lr / opt.param_groups[0]["lr"])
            metrics = {"loss": trend * math.exp(rng.normal(0, 0.05))}
            if step % 10 == 9:
                metrics["val_loss"] = trend * 1.1
            kernel.apply({"step": step, "optimizer": opt, "metrics": metrics})
    finally:
        if keep is None:
            kernel.close()
        else:
            keep.append(kernel)
    return path


def wait(page: Any, expr: str) -> None:
    page.wait_for_function(f"() => {{ const d = ({DEBUG})(); return !!(d && ({expr})); }}",
                           timeout=60000)  # fmt: skip


def wait_chart(page: Any, metric: str, expr: str) -> dict[str, Any]:
    page.wait_for_function(f"(m) => {{ const c = ({CHART})(m); return !!(c && ({expr})); }}",
                           arg=metric, timeout=60000)  # fmt: skip
    return page.evaluate(CHART, metric)  # type: ignore[no-any-return]


def test_forecast_band_note_whatif_and_trajectory(
    page: Any, serve_dir: Any, tmp_path: Any, tune_state: Any
) -> None:
    root = os.fspath(tmp_path / "runs")
    going: list[Any] = []  # the run goes on: its tuner's proposal can still be applied
    steered_run(os.path.join(root, "decay"), 1200, halve_at=(300, 700), keep=going)
    # a pending tuner proposal: opt.lr 0.003 → 0.0045 (×1.5)
    tune_state(os.path.join(root, "decay"))
    with MetricsCollector(os.path.join(root, "linear")) as m:
        for s in range(600):
            m.log(s, {"acc": 0.1 + 0.001 * s, "loss": 2.0 - 0.002 * s})
    srv = serve_dir(root)
    page.goto(srv.page_url("decay"))

    # the band: the model beat both baselines on this run's history
    wait(
        page, "d.run === 'decay' && d.show && d.bandPoints > 0 && d.trajectory > 0 && !d.noteShown"
    )
    d = page.evaluate(DEBUG)
    assert d["metric"] == "val_loss" and d["backtest"]["better"] is True, d
    assert not page.is_visible("#forecast-note")
    assert "10–90 %" in page.text_content("#analytics-card .card-head")
    assert page.is_visible("#forecast-canvas") and page.is_visible("#trajectory-canvas")
    assert "PCA of loss, val_loss" in page.text_content("#trajectory-note")
    # the band is calibrated on the backtest's 12 past forecasts 200 steps ahead
    assert d["band"] == "calibrated" and d["calibratedOn"] == 12, d
    assert "band calibrated on their 12 errors" in page.text_content("#forecast-backtest")

    # ... and drawn over the main chart of val_loss: the curve continues to the right of the
    # last logged step (1199) to 1199 + 200, with the band filled between 10 % and 90 %
    card = wait_chart(page, "val_loss", "c.forecast && c.forecast.pointsAhead > 0")
    f = card["forecast"]
    assert f["label"] == "val_loss forecast" and f["lastLogged"] == 1199, card
    assert f["end"] == 1399 and f["xMax"] >= 1399 and f["bands"] == 1, card
    assert f["labels"] == ["val_loss forecast", "forecast 10 %", "forecast 90 %"], f
    assert card["note"] == "" and all("forecast" not in s["label"] for s in card["series"]), card
    legend = page.locator(f'.chart-card[data-group="{card["key"]}"] .u-legend').text_content()
    assert "val_loss forecast" in legend and "forecast 90 %" in legend, legend

    # the pending proposal is asked about by itself: nothing similar (the lr only went down)
    wait(page, "d.whatif && d.whatif.from === 'tuner P3' && d.whatif.note")
    assert page.evaluate(DEBUG)["proposals"][0]["knob"] == "opt.lr"
    assert "opt.lr ×1.5 (tuner P3): no similar change yet" in page.text_content("#whatif-result")
    assert page.locator(".whatif-proposals button").all_inner_texts() == ["tuner P3: opt.lr ×1.5"]

    # a what-if typed in the panel: two earlier halvings of the lr in this run
    page.select_option("#whatif-knob", "lr")
    page.fill("#whatif-factor", "0.5")
    page.click("#whatif-form button[type=submit]")
    wait(page, "d.whatif && d.whatif.band && d.whatif.similar === 2")
    text = page.text_content("#whatif-result")
    assert "from 2 similar changes" in text and "step 300" in text and "−20 %" in text, text
    # the other direction: nothing similar yet
    page.fill("#whatif-factor", "2")
    page.click("#whatif-form button[type=submit]")
    wait(page, "d.whatif && d.whatif.factor === 2 && d.whatif.note")
    assert "no similar change yet" in page.text_content("#whatif-result")

    # a value typed in the controls (not sent) asks the same question
    box = page.locator('#controls .ctl[data-key="lr"] input.num')
    box.wait_for(timeout=30000)
    box.fill("0.0125")  # the applied lr is 0.025: ×0.5
    wait(page, "d.whatif && d.whatif.from === 'typed in the controls' && d.whatif.band")
    assert page.evaluate(DEBUG)["whatif"]["factor"] == pytest.approx(0.5)
    page.screenshot(path=os.path.join(os.fspath(tmp_path), "analytics.png"), full_page=True)

    # the run ends: nothing will apply P3 any more, so it is no longer offered
    going.pop().close()
    wait(page, "d.proposals.length === 0")
    assert page.locator(".whatif-proposals button").count() == 0

    # a straight line: the linear baseline is exact, so no band and the note says so
    page.select_option("#run-select", "linear")
    wait(page, "d.run === 'linear' && d.noteShown && !d.show")
    assert page.input_value("#whatif-factor") == ""  # nothing of the last run's what-if
    assert page.is_visible("#forecast-note")
    assert "forecast not better" in page.text_content("#forecast-note")
    assert page.evaluate(DEBUG)["bandPoints"] == 0
    # the main chart of loss: no forecast drawn, the same note in its head
    card = wait_chart(page, "loss", "c.note && !c.forecast")
    assert "forecast not better" in card["note"], card
    head = page.locator(f'.chart-card[data-group="{card["key"]}"] .chart-note')
    assert head.is_visible() and "forecast not better" in head.text_content()


def test_one_evaluate_keeps_the_forecast_on_the_training_loss(
    page: Any, serve_dir: Any, tmp_path: Any
) -> None:
    """One Evaluate gives val_loss (the key metric) a single point: the forecast stays on the
    training loss, in the panel and over the Loss chart, until val_loss has enough points
    (it switched to val_loss, and the Loss chart said "not enough points … (1 of at least 8)")."""
    root = tmp_path / "runs"
    path = os.fspath(root / "r")
    rng = np.random.default_rng(1)
    loss = lambda s: 2.0 * (s + 10.0) ** -0.5 * math.exp(rng.normal(0, 0.05))  # noqa: E731
    with MetricsCollector(path) as m:
        for s in range(1199):
            m.log(s, {"loss": loss(s)})
        m.log(1199, {"loss": loss(1199), "val_loss": 0.07})  # one Evaluate
    srv = serve_dir(os.fspath(root))
    page.goto(srv.page_url("r"))
    wait(page, "d.run === 'r' && d.metric === 'loss' && d.waitingFor === 'val_loss'")
    metric = page.locator("#analytics-card select[aria-label='forecast metric']")
    assert metric.input_value() == "loss"
    summary = page.text_content("#analytics-card .card-head")
    assert "val_loss once it has enough points (1 so far)" in summary, summary
    card = wait_chart(page, "loss", "c.forecast || c.note")
    assert "not enough points" not in (card["note"] or ""), card
    assert card["forecast"] is None or card["forecast"]["label"] == "loss forecast", card

    # seven more evaluations: val_loss can be forecast now, and the forecast moves to it. The
    # panel's request for val_loss's history is held, so the switch is seen half done if the
    # panel shows the new forecast before its history and text (the summary lagged behind).
    held: list[Any] = []
    history = lambda url: "/metrics?names=val_loss&" in url  # noqa: E731
    page.route(history, lambda route: held.append(route))
    with MetricsCollector(path) as m:
        for s in range(1200, 1207):
            m.log(s, {"loss": loss(s), "val_loss": 0.07 - 0.001 * (s - 1199)})
    deadline = time.monotonic() + 60
    while not held and time.monotonic() < deadline:
        page.wait_for_timeout(50)  # lets the page run and the route handler be called
    assert held, "the panel never asked for val_loss's history"
    d = page.evaluate(DEBUG)
    assert (d["metric"], d["waitingFor"]) == ("loss", "val_loss"), d
    for route in held:
        route.continue_()
    page.unroute(history)
    wait(page, "d.metric === 'val_loss' && d.waitingFor === null")
    assert "once it has enough points" not in page.text_content("#analytics-card .card-head")

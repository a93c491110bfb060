"""The Activations panel: ``GET /api/runs/{run}/features`` over a run whose FeatureCapture was
loaded through the real command path, and the panel's heat strips in headless Chromium against
a real ``hotcb serve`` process.

Tests wait on conditions with generous deadlines (the machine may be loaded), never on sleeps.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from hotcb import HotKernel  # noqa: E402
from hotcb.client import HotClient  # noqa: E402
from hotcb.features import STATS, read_features  # noqa: E402
from hotcb.runfiles import FEATURES  # noqa: E402
from hotcb.server.testing import CHROMIUM, ServeProcess, chromium  # noqa: E402
from hotcb.testing import wait_for  # noqa: E402

TOKEN = "features-panel-token"
ARTIFACTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "artifacts")


def trained_run(path: str, steps: int = 30, every: int = 2, patterns: Any = None) -> list[str]:
    """A real training loop with a real kernel on ``path``; FeatureCapture is loaded with
    ``HotClient.cb_load`` (the command the CLI writes) after the first step. Returns the names
    of the layers it captured."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    kernel = HotKernel(path, poll_interval_sec=0.0)
    client = HotClient(path)
    init: dict[str, Any] = {"every": every}
    if patterns is not None:
        init["patterns"] = patterns
    try:
        for step in range(steps):
            x = torch.randn(32, 8)
            loss = model(x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            kernel.apply({"step": step, "model": model, "metrics": {"loss": loss.item()}})
            if step == 0:
                client.cb_load("feats", path="hotcb.features", symbol="FeatureCapture", init=init)
    finally:
        kernel.close()
    recs = read_features(path)[0]
    assert recs, "FeatureCapture wrote nothing"
    return list(recs[-1]["layers"])


def test_features_endpoint(tmp_path: Any, live_server: Any) -> None:
    layers = trained_run(os.fspath(tmp_path / "r"), steps=30, every=2)
    assert layers == ["0", "1", "2", "3", "4"]
    srv = live_server()
    with srv.client() as c:
        doc = c.get("/api/runs/r/features").json()
        assert doc["stat"] == "mean" and doc["stats"] == list(STATS)
        assert doc["layers"] == layers
        assert doc["steps"] == list(range(2, 30, 2)) and doc["captures"] == 14
        assert len(doc["values"]) == 5 and all(len(row) == 14 for row in doc["values"])
        dead = c.get("/api/runs/r/features", params={"stat": "dead"}).json()["values"]
        assert all(0.0 <= v <= 1.0 for row in dead for v in row)
        thin = c.get("/api/runs/r/features", params={"max_points": 4}).json()
        assert len(thin["steps"]) == 4 and thin["steps"][-1] == 28  # the newest is kept
        part = c.get("/api/runs/r/features", params={"step_min": 10, "step_max": 14}).json()
        assert part["steps"] == [10, 12, 14]
        r = c.get("/api/runs/r/features", params={"stat": "median"})
        assert r.status_code == 422 and "stat must be one of" in r.json()["detail"]
        assert c.get("/api/runs/nope/features").status_code == 404

        # appended records are picked up (incremental read), a new layer gets a row
        path = os.path.join(tmp_path, "r", FEATURES)
        with open(path, "a") as f:
            f.write('{"step": 30, "wall_time": 1.0, "layers": {"extra": {"mean": 0.5}}}\n')
            f.write('{"step": 32, "wall_time": 1.0, "layers": {"0"')  # torn: not yet
        doc = c.get("/api/runs/r/features").json()
        assert doc["steps"][-1] == 30 and doc["layers"][-1] == "extra"
        assert doc["values"][-1] == [None] * 14 + [0.5]
        assert doc["values"][0][-1] is None

    # a run with no capture answers empty lists
    (tmp_path / "plain").mkdir()
    HotKernel(os.fspath(tmp_path / "plain")).close()
    with srv.client() as c:
        doc = c.get("/api/runs/plain/features").json()
        assert doc["layers"] == [] and doc["steps"] == [] and doc["captures"] == 0


# ------------------------------------------------------------------------------ the page
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    with chromium() as b:
        yield b


@pytest.mark.slow
@pytest.mark.browser
def test_panel_shows_a_row_per_captured_layer(tmp_path: Any, browser: Any) -> None:
    root = os.fspath(tmp_path)
    layers = trained_run(os.path.join(root, "feat"), steps=60, every=3, patterns=["*"])
    HotKernel(os.path.join(root, "bare")).close()  # a second run, without capture
    server = ServeProcess(root, env={"HOTCB_TOKEN": TOKEN})
    server.start()
    ctx = browser.new_context(viewport={"width": 1440, "height": 1100})
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        page.goto(f"{server.url}/?token={TOKEN}&run=feat")

        def debug() -> dict[str, Any]:
            return page.evaluate("window.hotcbFeatures ? window.hotcbFeatures.debug() : null")

        d = wait_for(lambda: (d := debug()) and len(d["rows"]) == 5 and d, 60, what="the rows")
        assert d["rows"] == layers and d["run"] == "feat" and not d["off"]
        assert d["steps"] == 19  # steps 3, 6, …, 57
        card = page.locator("#features-card")
        assert card.locator(".feat-row canvas").count() == 5
        assert card.locator(".feat-name").all_inner_texts() == layers
        # the strips are drawn: a canvas pixel is not blank
        painted = page.evaluate(
            """() => [...document.querySelectorAll('#features-card canvas')].every(c => {
                 const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                 return c.width > 10 && d[3] === 255; })"""
        )
        assert painted
        # another statistic
        page.select_option("#features-stat", "dead")
        wait_for(lambda: debug()["stat"] == "dead" and "dead" in card.inner_text(), 30)
        card.scroll_into_view_if_needed()
        os.makedirs(ARTIFACTS, exist_ok=True)
        card.screenshot(path=os.path.join(ARTIFACTS, "features_panel.png"))

        # the run without capture: the panel says how to turn it on
        page.select_option("#run-select", "bare")
        wait_for(lambda: (d := debug())["run"] == "bare" and d["off"] and not d["rows"], 30)
        assert "cb load feats --path hotcb.features" in card.inner_text()
    finally:
        ctx.close()
        server.stop()
    assert not errors, errors

"""The Knobs panel in headless Chromium, on a real trainer (the README's loop) that logs its
loss every 50 steps and none of its knobs: the page shows the run running with a rising step
(the kernel's heartbeat, between the metrics), charts lr and weight_decay from the kernel's
own records, and after ``hotcb set lr=…`` shows the step change, marked.

(tests/server/test_liveness.py has the run that logs no metrics at all; here the loss is
logged only so that the analytics panel has a metric to forecast.)"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from hotcb.testing import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.browser]

_ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "..")
ENV = {k: v for k, v in os.environ.items() if not k.startswith("HOTCB_")}

TRAINER = """
import sys, time
import torch
from hotcb import HotKernel

torch.set_num_threads(1)
model = torch.nn.Linear(4, 2)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-4)
kernel = HotKernel(sys.argv[1])
step = 0
while True:
    loss = model(torch.randn(8, 4)).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    env = {"step": step, "model": model, "optimizer": optimizer}
    if step % 50 == 0:
        env["metrics"] = {"loss": loss.item()}
    kernel.apply(env)
    step += 1
    time.sleep(0.01)
"""


def wait_page(page: Any, expr: str, timeout: float = 30) -> Any:
    fn = f"() => {{ const d = window.hotcb && window.hotcb.debug(); return !!(d && ({expr})); }}"
    page.wait_for_function(fn, timeout=timeout * 1000)
    return page.evaluate("window.hotcb.debug()")


@pytest.fixture
def quiet_run(tmp_path: Any) -> Iterator[str]:
    root = tmp_path / "runs"
    run = root / "quiet"
    run.mkdir(parents=True)
    script = tmp_path / "trainer.py"
    script.write_text(TRAINER)
    with open(tmp_path / "trainer.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(run)], stdout=log, stderr=subprocess.STDOUT, env=ENV
        )
    try:
        wait_for(
            lambda: os.path.exists(run / "hotcb.actuators.json"), timeout=120, what="the trainer"
        )
        yield str(root)
    finally:
        proc.kill()
        proc.wait(10)


def test_knob_chart_shows_a_step_change(page: Any, quiet_run: str, serve_dir: Any) -> None:
    srv = serve_dir(quiet_run)
    page.goto(srv.page_url("quiet"))
    # running, with a step that rises (the heartbeat)
    d = wait_page(page, "d.connected && d.knobs.some(k => k.key === 'lr' && k.drawn)")
    chip = page.locator("#state-chip")
    wait_for(lambda: chip.inner_text().startswith("running"), timeout=30, what="running")
    first = int(page.locator("#step").inner_text())
    wait_for(
        lambda: int(page.locator("#step").inner_text()) > first, timeout=30, what="a rising step"
    )
    assert not page.locator("#stale-banner").is_visible()
    lr = next(k for k in d["knobs"] if k["key"] == "lr")
    assert lr["values"][0] == pytest.approx(0.1) and lr["changes"] == []
    assert any(k["key"] == "weight_decay" for k in d["knobs"])

    cli = [sys.executable, "-m", "hotcb", "--dir", os.path.join(quiet_run, "quiet")]
    subprocess.run([*cli, "set", "lr=0.02", "--wait"], check=True, env=ENV, timeout=60)
    d = wait_page(
        page,
        "d.knobs.some(k => k.key === 'lr' && k.changes.length === 1 && k.marks === 1"
        " && k.values.includes(0.02))",
    )
    lr = next(k for k in d["knobs"] if k["key"] == "lr")
    (change,) = lr["changes"]
    assert (change["old"], change["new"], change["source"]) == (pytest.approx(0.1), 0.02, "cli")
    i = lr["steps"].index(change["step"])
    assert lr["values"][i - 1] == pytest.approx(0.1) and lr["values"][i] == 0.02  # a step change
    card = page.locator("#knobs-card")
    assert "0.1 → 0.02 (cli)" in card.inner_text()
    os.makedirs(os.path.join(_ROOT, "tests", "artifacts"), exist_ok=True)
    card.screenshot(path=os.path.join(_ROOT, "tests", "artifacts", "knobs.png"))

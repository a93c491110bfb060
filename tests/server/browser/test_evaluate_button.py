"""The header's Evaluate button (issue #15) in headless Chromium against a real trainer and a
real ``hotcb serve``: it sends ``control evaluate`` with ``source: "dashboard"``, the run ledgers
it, and a run that is over cannot be asked. Waits are on conditions, never on sleeps.
"""

from __future__ import annotations

from typing import Any

import pytest

from hotcb.testing import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def _wait_page(page: Any, expr: str, timeout: float = 30) -> None:
    fn = f"() => {{ const d = window.hotcb && window.hotcb.debug(); return !!(d && ({expr})); }}"
    page.wait_for_function(fn, timeout=timeout * 1000)


def test_evaluate_button_sends_the_command_and_the_run_ledgers_it(
    page: Any, server: Any, runs: Any
) -> None:
    live = runs["live"]
    page.goto(server.page_url("live"))
    _wait_page(page, "d.connected && d.run === 'live' && d.state && !d.over")
    button = page.locator("#btn-evaluate:not([disabled])")
    button.wait_for(timeout=30000)
    assert button.get_attribute("class") == "btn"
    before = len(live.commands())
    button.click()

    def sent() -> list[dict[str, Any]]:
        return [c for c in live.commands()[before:] if c.get("op") == "evaluate"]

    (cmd,) = wait_for(sent, 30, what="the evaluate command")
    assert cmd["module"] == "control" and cmd["source"] == "dashboard"
    entry = wait_for(lambda: live.entry(cmd["cmd_id"]), 60, what="its ledger entry")
    # the demo's loop hands no request_evaluate: the kernel raises the flag for the loop
    assert entry["decision"] == "applied" and entry["evaluate"] == "requested"
    page.locator("#toasts .toast", has_text="evaluate sent").first.wait_for(timeout=10000)


def test_evaluate_button_is_off_for_a_run_that_is_over(page: Any, server: Any, runs: Any) -> None:
    page.goto(server.page_url("baseline"))
    _wait_page(page, "d.run === 'baseline' && d.state && d.over")
    page.wait_for_function("() => document.getElementById('btn-evaluate').disabled")

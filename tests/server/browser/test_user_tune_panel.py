"""The Tune panel used the way a person uses it, in headless Chromium against a real
``hotcb serve`` (bound to every address, so with its token) over a folder of runs, each a real
kernel driven step by step from the test (:class:`FlatRun`): what the run decides lands on the
page in a known order. The CLI is the real ``hotcb`` command.

- a ``tune enable`` the run refused (optuna missing there): the off line says why, instead of
  advising the command that was just refused;
- an Accept the run refused because the proposal was answered first from the CLI: the page says
  so, although the proposal has left the list (it used to vanish as if the Accept had worked);
- a trial that was only proposed or rejected shows, in the trials table, the change proposed.

Tests wait on conditions with generous deadlines (the machine may be loaded), never on sleeps.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import debug, wait_page
from hotcb import jsonl
from hotcb.server.testing import ServeProcess
from hotcb.testing import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.browser]

ENV = {k: v for k, v in os.environ.items() if not k.startswith("HOTCB_")}
TOKEN = "user-tune-token"
CARD = "#tune-card"
OFF_TEXT = "tuner off — enable with hotcb --dir RUN tune enable --mode suggest"


class Site:
    """A folder of runs and ``hotcb serve --host 0.0.0.0`` over it: an address other than
    loopback, so the token is required; the page trades the printed one for its cookie."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.server = ServeProcess(root, args=["--host", "0.0.0.0"], env={"HOTCB_TOKEN": TOKEN})

    def url(self, run: str) -> str:
        return f"{self.server.url}/?token={TOKEN}&run={run}"


@pytest.fixture(scope="module")
def site(tmp_path_factory: Any) -> Iterator[Site]:
    s = Site(os.fspath(tmp_path_factory.mktemp("user-tune-runs")))
    s.server.start()
    yield s
    s.server.stop()


def open_run(page: Any, site: Site, name: str) -> dict[str, Any]:
    page.goto(site.url(name))
    return wait_page(page, f"d.connected && d.run === '{name}'")


def hotcb(run: str, *args: str) -> str:
    """The real ``hotcb --dir RUN …`` command; its stdout."""
    argv = [sys.executable, "-m", "hotcb", "--dir", run, *args]
    done = subprocess.run(argv, env=ENV, check=True, timeout=120, capture_output=True, text=True)
    return done.stdout


def ledger(run: str) -> list[dict[str, Any]]:
    path = os.path.join(run, "hotcb.applied.jsonl")
    return list(jsonl.iter_records(path)) if os.path.exists(path) else []


def entry(run: str, cmd_id: str) -> dict[str, Any] | None:
    return next((e for e in ledger(run) if e.get("cmd_id") == cmd_id), None)


def suggesting(site: Site, flat_run: Any, name: str) -> tuple[str, Any, dict[str, Any]]:
    """A run whose real tuner (suggest mode, 5-step segments, Optuna on the training thread)
    has a proposal pending; the run is not stepped again until the test says so."""
    path = os.path.join(site.root, name)
    run = flat_run(path, steps=3)
    hotcb(path, "tune", "enable", "--mode", "suggest", "--objective", "loss",
          "--segment-steps", "5", "--sync")  # fmt: skip

    def proposal() -> dict[str, Any] | None:
        run.advance(1)
        doc = jsonl.read_json(os.path.join(path, "hotcb.tune.json"), None) or {}
        return next((p for p in doc.get("proposals", []) if p["state"] == "pending"), None)

    return path, run, wait_for(proposal, timeout=180, what="the tuner's first proposal")


# ------------------------------------------------------------------------------ tests
def test_a_refused_enable_says_why_instead_of_advising_it_again(
    page: Any, site: Site, flat_run: Any, monkeypatch: Any
) -> None:
    path = os.path.join(site.root, "no-optuna")
    run = flat_run(path, steps=5)
    monkeypatch.setitem(sys.modules, "optuna", None)  # the trainer's environment lacks optuna
    cmd_id = hotcb(path, "tune", "enable", "--mode", "active", "--segment-steps", "20").strip()
    run.advance(1)
    refusal = entry(path, cmd_id)
    assert refusal and refusal["decision"] == "rejected", refusal
    assert "optuna" in refusal["error"]

    open_run(page, site, "no-optuna")
    line = page.locator(f"{CARD} .tune-off")
    text = f"tuner off — tune enable rejected at step 5: {refusal['error']}"
    page.locator(f"{CARD} .tune-off", has_text=text).wait_for(timeout=60000)
    assert line.inner_text() == text
    assert debug(page)["tune"]["enableRefused"]["error"] == refusal["error"]
    assert line.get_attribute("title") == text  # the whole reason, when the line is cut
    assert page.locator(f"{CARD} button, {CARD} table").count() == 0

    # switched off from the CLI since: the plain off line again, live
    hotcb(path, "tune", "disable")
    run.advance(1)
    page.locator(f"{CARD} .tune-off", has_text="enable with").wait_for(timeout=60000)
    assert page.locator(f"{CARD} .tune-off").inner_text() == OFF_TEXT
    assert debug(page)["tune"]["enableRefused"] is None


def test_an_accept_refused_after_the_cli_answered_first_is_said(
    page: Any, site: Site, flat_run: Any
) -> None:
    path, run, proposal = suggesting(site, flat_run, "answered")
    pid = proposal["id"]
    open_run(page, site, "answered")
    wait_page(page, f"d.tune.pending.includes('{pid}')")
    change = page.locator(f'{CARD} li.tune-proposal[data-id="{pid}"] .what').inner_text()
    assert "opt.lr" in change

    # someone rejects it from the CLI; the page, not updated yet, accepts it
    hotcb(path, "tune", "reject", pid)
    page.locator(f'{CARD} li.tune-proposal[data-id="{pid}"] .tune-accept').click()
    d = wait_page(page, f"d.tune.sent['{pid}'] && d.tune.sent['{pid}'].cmdId")
    accept_id = d["tune"]["sent"][pid]["cmdId"]
    run.advance(1)  # the run takes the CLI's reject, then refuses the page's accept
    accepted = entry(path, accept_id)
    assert accepted and accepted["decision"] == "rejected", accepted
    assert accepted["source"] == "dashboard"
    assert accepted["error"] == f"proposal {pid} is rejected, not pending"

    # the proposal leaves the list, and the page says what became of the click
    said = f"proposal {pid} is rejected, not pending"
    page.wait_for_function(
        """([card, pid, said]) => !document.querySelector(`${card} li.tune-proposal[data-id="${pid}"]`)
             && document.querySelector(`${card} .tune-proposals`).textContent.includes(said)""",
        arg=[CARD, pid, said],
        timeout=60000,
    )
    d = debug(page)
    assert d["tune"]["refused"] == [
        f"{pid}: accept rejected: proposal {pid} is rejected, not pending"
    ]
    note = page.locator(f"{CARD} .tune-refused-answer")
    assert note.count() == 1 and note.is_visible()
    assert f"proposal {pid} is rejected, not pending" in note.inner_text()
    assert page.locator(f"{CARD} li.tune-proposal").count() == 0
    # the trials table says what was rejected
    row = page.locator(f'{CARD} #tune-trials tr[data-trial="{proposal["trial"]}"]')
    cells = row.evaluate("r => [...r.cells].map(c => c.textContent)")
    # never applied: the step it was proposed at stands for its segment
    assert cells[:2] + cells[3:] == [str(proposal["trial"]), str(proposal["step"]), "–",
                                     "rejected"], cells  # fmt: skip
    _same_change(cells[2], change, proposal)

    # a person who has read it dismisses it
    note.locator(".tune-dismiss").click()
    wait_page(page, "d.tune.refused.length === 0")
    assert page.locator(f"{CARD} .tune-refused-answer").count() == 0


def _same_change(row: str, offered: str, proposal: dict[str, Any]) -> None:
    """The trials table's change (``opt.lr 0.01 → 0.0082``) is the proposal's, which the
    proposal's line says as the move Accept applies (``opt.lr ×0.82 on accept (0.01 → 0.0082
    at step 13)``)."""
    for part in row.split(", "):
        key, values = part.split(" ", 1)
        assert f"{key} ×" in offered and f"({values} at step {proposal['step']})" in offered, (
            row, offered)  # fmt: skip


def test_a_proposed_trial_shows_the_change_proposed(page: Any, site: Site, flat_run: Any) -> None:
    _, _, proposal = suggesting(site, flat_run, "proposed")
    open_run(page, site, "proposed")
    d = wait_page(page, f"d.tune.pending.includes('{proposal['id']}')")
    assert d["tune"]["trials"] == [proposal["trial"]]
    row = page.locator(f'{CARD} #tune-trials tr[data-trial="{proposal["trial"]}"]')
    cells = row.evaluate("r => [...r.cells].map(c => c.textContent)")
    change = page.locator(f'{CARD} li.tune-proposal[data-id="{proposal["id"]}"] .what').inner_text()
    assert "opt.lr" in change
    # trial, the step it was proposed at (no segment yet), change, score, decision
    assert cells[:2] + cells[3:] == [str(proposal["trial"]), str(proposal["step"]), "–",
                                     "proposed"], cells  # fmt: skip
    _same_change(cells[2], change, proposal)
    at = row.locator("td").nth(1).get_attribute("title")
    assert at == f"proposed at step {proposal['step']}", at

"""Branches in the page, in headless Chromium against a real ``hotcb serve``: a run made by
``hotcb branch`` (``branch`` in its hotcb.run.json) is listed right under its parent, indented,
"branch of <parent> at step S", and is compared with its parent by default, the parent drawn
from the branch step on.

Tests wait on conditions with generous deadlines (the machine may be loaded), never on sleeps.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from hotcb import jsonl
from hotcb.metrics import MetricsCollector
from hotcb.runfiles import RunPaths

pytestmark = [pytest.mark.slow, pytest.mark.browser]

BRANCH_STEP = 50

OPTIONS = """() => [...document.querySelectorAll('#run-select option')].map((o) => ({
  value: o.value, text: o.textContent, depth: o.dataset.depth }))"""
COMPARE = """() => [...document.querySelectorAll('#compare-list .compare-item')].map((l) => ({
  text: l.textContent, depth: l.dataset.depth }))"""


def write_run(path: str, steps: range, branch: dict[str, Any] | None = None) -> str:
    with MetricsCollector(path) as m:
        for s in steps:
            m.log(s, {"loss": 1.0 / (s + 1)})
    meta: dict[str, Any] = {"run_dir": path}
    if branch is not None:
        meta["branch"] = branch
    jsonl.write_json_atomic(RunPaths(path).run_meta, meta)
    return path


@pytest.fixture
def tree(tmp_path: Any) -> str:
    """``root/parent`` (steps 0–99) and ``root/child``, its branch at step 50 (steps 50–99);
    ``root/another`` sorts between them, so the tree (not the name) puts the child in place."""
    root = tmp_path / "runs"
    parent = write_run(os.fspath(root / "parent"), range(100))
    write_run(os.fspath(root / "another"), range(20))
    info = {"parent": parent, "step": BRANCH_STEP, "checkpoint": "ckpt/50.pt", "seq": 1}
    write_run(os.fspath(root / "a-child"), range(BRANCH_STEP, 100), branch=info)
    return os.fspath(root)


def loss_points(d: dict[str, Any]) -> dict[str, int]:
    card = next(c for c in d["charts"] if any(s["metric"] == "loss" for s in c["series"]))
    return {s["run"]: s["points"] for s in card["series"] if s["metric"] == "loss"}


def test_branch_listed_under_parent_and_compared_from_branch_step(
    page: Any, serve_dir: Any, tree: str
) -> None:
    srv = serve_dir(tree)
    page.goto(srv.page_url("a-child"))
    fn = "() => { const d = window.hotcb && window.hotcb.debug(); return !!(d && {expr}); }"
    page.wait_for_function(fn.replace("{expr}", "d.run === 'a-child'"), timeout=30000)
    opts = page.evaluate(OPTIONS)
    assert [o["value"] for o in opts] == ["another", "parent", "a-child"], opts
    child = opts[2]
    assert child["depth"] == "1" and opts[1]["depth"] == "0"
    assert f"branch of parent at step {BRANCH_STEP}" in child["text"], child
    assert child["text"].startswith("\u00a0"), child  # indented under its parent

    # a branch is compared with its parent by default, the parent from the branch step on
    page.wait_for_function(
        fn.replace("{expr}", "d.compare.includes('parent') && d.charts.length > 0"),
        timeout=30000,
    )
    page.wait_for_function(
        fn.replace(
            "{expr}",
            "d.charts.some((c) => c.series.filter((s) => s.metric === 'loss').length === 2)",
        ),
        timeout=30000,
    )
    d = page.evaluate("window.hotcb.debug()")
    assert loss_points(d) == {"a-child": 100 - BRANCH_STEP, "parent": 100 - BRANCH_STEP}, d
    labels = [s["label"] for c in d["charts"] for s in c["series"] if s["run"] == "parent"]
    assert labels and all("(parent)" in lab for lab in labels), labels

    # the parent picked: the compare list shows the child indented, with its label
    page.select_option("#run-select", "parent")
    page.wait_for_function(fn.replace("{expr}", "d.run === 'parent'"), timeout=30000)
    items = page.evaluate(COMPARE)
    assert [i["depth"] for i in items] == ["0", "1"], items
    assert "a-child" in items[1]["text"]
    assert f"branch of parent at step {BRANCH_STEP}" in items[1]["text"], items
    assert page.evaluate("window.hotcb.debug().compare") == []  # a parent adds no default


def test_a_long_parent_is_drawn_with_as_many_points_after_the_branch_as_the_branch(
    page: Any, serve_dir: Any, tmp_path: Any
) -> None:
    """The parent's history was thinned to the page's point budget over its whole run, then
    cut at the branch step: a branch near the end of a long parent was compared with a
    parent curve of a handful of points. The page asks for the parent from the branch step."""
    root = tmp_path / "runs"
    parent = write_run(os.fspath(root / "parent"), range(400))
    info = {"parent": parent, "step": 300, "checkpoint": "ckpt/300.pt", "seq": 1}
    write_run(os.fspath(root / "child"), range(300, 400), branch=info)
    srv = serve_dir(os.fspath(root), env={"HOTCB_HISTORY_MAX_POINTS": "20"})
    page.goto(srv.page_url("child"))
    fn = "() => { const d = window.hotcb && window.hotcb.debug(); return !!(d && {expr}); }"
    both = "d.charts.some((c) => c.series.filter((s) => s.metric === 'loss').length === 2)"
    page.wait_for_function(fn.replace("{expr}", both), timeout=30000)
    points = loss_points(page.evaluate("window.hotcb.debug()"))
    assert points["child"] >= 15, points
    assert points["parent"] == points["child"], points


def test_a_branch_s_label_wraps_in_the_compare_list_of_a_phone(
    page: Any, serve_dir: Any, tree: str
) -> None:
    """At 390 px the compare list's "branch of parent at step 50" ran past its right edge,
    cut off (the list scrolled sideways inside a box the width of the screen)."""
    page.set_viewport_size({"width": 390, "height": 844})
    srv = serve_dir(tree)
    page.goto(srv.page_url("another"))
    fn = "() => { const d = window.hotcb && window.hotcb.debug(); return !!(d && {expr}); }"
    page.wait_for_function(fn.replace("{expr}", "d.run === 'another'"), timeout=30000)
    page.locator(".compare summary").click()
    label = page.locator("#compare-list .branch-label")
    label.wait_for()
    assert f"branch of parent at step {BRANCH_STEP}" in label.text_content()
    box = page.evaluate(
        "() => { const l = document.getElementById('compare-list');"
        " return [l.scrollWidth, l.clientWidth]; }"
    )
    assert box[0] <= box[1], box  # nothing runs past the list's edge

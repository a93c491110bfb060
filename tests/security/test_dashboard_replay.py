"""A freeze from the dashboard that replays a recipe (and an overlay): the server checks the
file for code loading, so the trainer must replay the bytes that were checked, not whatever the
file holds when the trainer gets to it. A file swapped right after the check (``os.replace``,
as an attacker who can write the file would) once made the trainer load code."""

from __future__ import annotations

import contextlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from hotcb import HotClient
from hotcb.testing import read_ledger, wait_for

pytestmark = pytest.mark.slow

HEADER = json.dumps({"v": 1, "kind": "hotcb.recipe", "run": {}})
BUNDLED = {"kind": "python_path", "path": "hotcb.modules.cb.callbacks",
           "symbol": "HeartbeatCallback"}  # fmt: skip


def _load(ident: str, target: dict[str, str], step: int = 2) -> dict[str, Any]:
    return {"v": 1, "at": {"step": step, "event": "train_step_end"}, "module": "cb",
            "op": "load", "id": ident, "params": {}, "target": target}  # fmt: skip


def _swap(path: str, text: str) -> None:
    """Replace ``path`` at once with a file holding ``text`` (the attacker's move)."""
    with open(path + ".new", "w") as f:
        f.write(text)
    os.replace(path + ".new", path)


def _evil(run: str, marker: str) -> tuple[dict[str, str], str]:
    """A callback file whose import leaves ``marker``, and a recipe that loads it."""
    code = os.path.join(run, "evil.py")
    with open(code, "w") as f:
        f.write(f"open({marker!r}, 'w').close()\nclass Cb:\n    pass\n")
    target = {"kind": "python_file", "path": code, "symbol": "Cb"}
    return target, HEADER + "\n" + json.dumps(_load("evil", target)) + "\n"


def test_a_recipe_swapped_after_the_check_is_not_what_the_trainer_replays(
    tmp_path: Any, live_server: Any, make_run: Any, read_commands: Any, start_trainer: Any
) -> None:
    """A benign recipe passes the check; the file is then replaced by one that loads code; the
    trainer (code loading on, as the test helper starts it) starts after the swap and still
    replays the benign bytes: the command names the run's own copy of what was checked."""
    run = make_run(tmp_path / "runs" / "r")
    marker = os.fspath(tmp_path / "pwned-by-a-swapped-recipe")
    plan = os.path.join(run, "plan.jsonl")
    benign = HEADER + "\n" + json.dumps(_load("beat", BUNDLED)) + "\n"
    with open(plan, "w") as f:
        f.write(benign)
    _, evil = _evil(run, marker)
    srv = live_server(root=tmp_path / "runs")  # code loading off: a cb load of a file is refused
    with srv.client() as c:
        r = c.post("/api/runs/r/freeze", json={"mode": "replay", "recipe_path": plan})
        assert r.status_code == 200, r.text
        cmd_id = r.json()["cmd_id"]
    _swap(plan, evil)  # after the check, before any trainer reads the file

    (cmd,) = read_commands(run)
    assert cmd["recipe_path"].startswith("hotcb.replay/"), cmd
    with open(os.path.join(run, cmd["recipe_path"])) as f:
        assert f.read() == benign

    trainer = start_trainer(run, os.fspath(tmp_path / "trace.jsonl"), no_code_load=False,
                            steps=100_000, step_delay=0.005)  # fmt: skip

    def entry(ident: str) -> Any:
        return next((e for e in read_ledger(run) if e.get("cmd_id") == ident), None)

    assert wait_for(lambda: entry(cmd_id), 60, what="the freeze")["decision"] == "applied"

    def replayed() -> Any:
        return next((e for e in read_ledger(run) if e.get("source") == "recipe"), None)

    loaded = wait_for(replayed, 60, what="the recipe's entry")
    assert (loaded["op"], loaded["id"], loaded["decision"]) == ("load", "beat", "applied")
    HotClient(run, source="cli").stop()
    code, _, err = trainer.finish()
    assert code == 0, err
    assert not os.path.exists(marker)
    assert [e["id"] for e in read_ledger(run) if e.get("source") == "recipe"] == ["beat"]


def test_an_overlay_swapped_after_the_check_is_not_what_the_trainer_reads(
    tmp_path: Any, live_server: Any, make_run: Any, read_commands: Any
) -> None:
    """``replay_adjusted``: the overlay is checked (it may insert a ``cb load``) and copied
    too; the recipe and overlay the command names are the bytes the server read, whatever the
    files hold later."""
    run = make_run(tmp_path / "runs" / "r")
    plan, adjust = os.path.join(run, "plan.jsonl"), os.path.join(run, "adjust.yaml")
    benign_recipe = HEADER + "\n" + json.dumps(_load("beat", BUNDLED)) + "\n"
    benign_overlay = "version: 1\npatches: []\n"
    target, evil_recipe = _evil(run, os.fspath(tmp_path / "pwned"))
    evil_overlay = "version: 1\npatches:\n  - insert: " + json.dumps(_load("evil", target)) + "\n"
    with open(plan, "w") as f:
        f.write(benign_recipe)
    with open(adjust, "w") as f:
        f.write(evil_overlay)
    srv = live_server(root=tmp_path / "runs")
    body = {"mode": "replay_adjusted", "recipe_path": plan, "adjust_path": adjust}
    with srv.client() as c:
        refused = c.post("/api/runs/r/freeze", json=body)  # what the overlay inserts is checked
        assert refused.status_code == 403, refused.text
        assert "an entry the overlay inserts: cb load evil" in refused.json()["detail"]
        _swap(adjust, benign_overlay)
        r = c.post("/api/runs/r/freeze", json=body)
        assert r.status_code == 200, r.text
        _swap(adjust, evil_overlay)
        _swap(plan, evil_recipe)
        # the same through the commands endpoint, paths in params
        sent = {"module": "freeze", "op": "set", "params": {**body, "recipe_path": "plan.jsonl"}}
        _swap(plan, benign_recipe)
        _swap(adjust, benign_overlay)
        r2 = c.post("/api/runs/r/commands", json=sent)
        assert r2.status_code == 200, r2.text
        _swap(adjust, evil_overlay)
        _swap(plan, evil_recipe)

    first, second = read_commands(run)
    for named in (first, second["params"]):
        assert named["recipe_path"].startswith("hotcb.replay/"), named
        assert named["adjust_path"].startswith("hotcb.replay/"), named
        with open(os.path.join(run, named["recipe_path"])) as f:
            assert f.read() == benign_recipe
        with open(os.path.join(run, named["adjust_path"])) as f:
            assert f.read() == benign_overlay


def test_a_recipe_that_cannot_be_read_is_refused_not_left_for_the_trainer(
    tmp_path: Any, live_server: Any, make_run: Any, read_commands: Any
) -> None:
    """A recipe missing at the check was sent as a path: a file made there afterwards (one
    that loads code) was what the trainer replayed. Now the request says it cannot be read."""
    run = make_run(tmp_path / "runs" / "r")
    srv = live_server(root=tmp_path / "runs")
    with srv.client() as c:
        r = c.post("/api/runs/r/freeze", json={"mode": "replay", "recipe_path": "later.jsonl"})
    assert r.status_code == 422, r.text
    assert "cannot read recipe_path" in r.json()["detail"]
    assert read_commands(run) == []


def test_the_same_recipe_frozen_at_once_from_several_requests_is_copied_once(
    tmp_path: Any, live_server: Any, make_run: Any, read_commands: Any
) -> None:
    """The server's worker threads store the same copy at once (a double click, two pages):
    each request is answered 200, and one copy holds the recipe whole."""
    run = make_run(tmp_path / "runs" / "r")
    plan = os.path.join(run, "plan.jsonl")
    benign = (
        HEADER + "\n" + "".join(json.dumps(_load(f"b{i}", BUNDLED, i)) + "\n" for i in range(200))
    )
    with open(plan, "w") as f:
        f.write(benign)
    srv = live_server(root=tmp_path / "runs")
    body = {"mode": "replay", "recipe_path": plan}

    def post(_: int) -> int:
        with srv.client() as c:
            return int(c.post("/api/runs/r/freeze", json=body).status_code)

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(post, range(40)))
    assert codes == [200] * 40
    commands = read_commands(run)
    assert len(commands) == 40 and len({c["recipe_path"] for c in commands}) == 1
    assert os.listdir(os.path.join(run, "hotcb.replay")) == [
        os.path.basename(commands[0]["recipe_path"])
    ]
    with open(os.path.join(run, commands[0]["recipe_path"])) as f:
        assert f.read() == benign


def test_a_replay_from_the_page_brings_the_captured_sources_as_the_cli_does(
    tmp_path: Any, live_server: Any, make_run: Any, cli: Any
) -> None:
    """A recipe exported from a run that loaded a callback from a file, the file edited since:
    ``hotcb freeze --mode replay`` copies the captured source into the run, so the replay loads
    what the run loaded; the page's freeze copied the recipe only, and the replay was rejected
    ('captured source … not found')."""
    from hotcb import HotKernel

    root = tmp_path / "runs"
    src = os.fspath(root / "src")
    code = root / "cbs" / "hello.py"
    code.parent.mkdir(parents=True)
    code.write_text("class Hello:\n    version = 1\n\n    def handle(self, event, env):\n"
                    "        pass\n")  # fmt: skip
    kernel = HotKernel(src, allow_code_load=True, metrics_collector=False)
    HotClient(src).cb_load("hello", file=os.fspath(code), symbol="Hello")
    for step in range(3):
        kernel.apply({"step": step})
    kernel.close()
    (load,) = [e for e in read_ledger(src) if e.get("op") == "load"]
    assert load["decision"] == "applied", load
    sha = load["source_capture"]["sha256"]
    recipe = os.fspath(root / "exported.jsonl")
    assert cli(src, "recipe", "export", "--out", recipe).returncode == 0
    code.write_text(code.read_text().replace("version = 1", "version = 2"))  # edited since

    dst = make_run(root / "dst")
    srv = live_server(root=root, allow_code_load=True, allowed_roots=[os.fspath(root)])
    with srv.client() as c:
        r = c.post("/api/runs/dst/freeze", json={"mode": "replay", "recipe_path": recipe})
        assert r.status_code == 200, r.text
    with open(os.path.join(dst, "hotcb.sources", f"{sha}.py")) as f:
        assert "version = 1" in f.read()  # the source the run loaded, not the edited file


def test_a_fifo_as_the_recipe_is_refused_not_waited_on(
    tmp_path: Any, live_server: Any, make_run: Any, read_commands: Any
) -> None:
    """The server reads the recipe a freeze replays to check it: a FIFO named as the recipe hung
    that request (its worker blocked in ``open()`` until some process wrote the FIFO)."""
    run = make_run(tmp_path / "runs" / "r")
    fifo = os.path.join(run, "plan.jsonl")
    os.mkfifo(fifo)
    srv = live_server(root=tmp_path / "runs")
    try:
        with srv.client() as c:
            r = c.post("/api/runs/r/freeze", json={"mode": "replay", "recipe_path": fifo})
        assert r.status_code == 422, r.text
        assert "recipe_path" in r.json()["detail"] and "regular file" in r.json()["detail"]
        assert read_commands(run) == []
    finally:  # a reader stuck in open() (the bug) gets an end of file, so the server can stop
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

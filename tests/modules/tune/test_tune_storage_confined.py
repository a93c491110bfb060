"""The tuner's study storage names a file: it stays inside the run directory or the allowed
roots, whichever way the URL came (docs/security.md, Paths; docs/tune.md, Studies).

A ``tune enable`` line in the commands file with ``storage: "journal:/anywhere"`` made the
trainer append Optuna's journal records to any file its user could write (code loading off),
and ``sqlite:////anywhere/evil.db`` created databases anywhere; the dashboard, which refuses a
``storage`` in its requests, had the trainer take one from the run's ``hotcb.tune.yaml``. A
password in the URL went in plain text to the commands file and the ledger without a word.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch

from hotcb import HotClient, HotKernel, jsonl
from hotcb.ops import make_command
from hotcb.runfiles import RunPaths
from hotcb.testing import read_ledger

VICTIM = "the victim's own bytes\n"


class Loop:
    """A real kernel (code loading off) around a real torch optimizer, stepped by hand."""

    def __init__(self, run_dir: str, **kw: Any) -> None:
        self.kernel = HotKernel(run_dir, poll_interval_sec=0, allow_code_load=False, **kw)
        self.run_dir = self.kernel.run_dir
        self.param = torch.nn.Parameter(torch.zeros(1))
        self.opt = torch.optim.SGD([self.param], lr=0.1)
        self.step = 0

    def until(self, done: Callable[[], Any], what: str, timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while not (got := done()):
            assert time.monotonic() < deadline, f"{what}: {read_ledger(self.run_dir)}"
            self.step += 1
            self.kernel.apply({"step": self.step, "optimizer": self.opt,
                               "metrics": {"loss": 1.0 / self.step}})  # fmt: skip
            time.sleep(0.002)  # the tuner's thread opens the study meanwhile
        return got

    def send(self, params: dict[str, Any], source: str = "cli") -> str:
        """A ``tune enable`` line appended to the commands file (no client checks it)."""
        cmd = make_command("tune", "enable", source=source, params=params)
        jsonl.append(RunPaths(self.run_dir).commands, cmd)
        return str(cmd["cmd_id"])

    def answer(self, cmd_id: str | None = None) -> dict[str, Any]:
        """The enable's final ledger entry: rejected, failed (the study not opened) or, once
        the study is open, applied."""

        def found() -> dict[str, Any] | None:
            entries = [e for e in read_ledger(self.run_dir) if e.get("module") == "tune"
                       and e.get("op") == "enable" and e.get("cmd_id") == cmd_id]  # fmt: skip
            bad = [e for e in entries if e["decision"] in ("rejected", "failed")]
            if bad:
                return bad[-1]
            # (not before the first step: a module looked up then is not started, on_start)
            if entries and self.step and self.kernel.module("tune").study is not None:  # type: ignore[attr-defined]
                return entries[-1]
            return None

        return self.until(found, f"the answer to tune enable {cmd_id}")  # type: ignore[no-any-return]


def _refused(entry: dict[str, Any], given: str, allowed: list[str]) -> None:
    assert entry["decision"] in ("rejected", "failed"), entry
    said = entry["error"]
    assert f"the study's file {given!r}" in said, said
    assert "outside the run directory and the allowed roots" in said, said
    assert all(place in said for place in allowed), said
    assert "allowed_roots" in said, said  # how to allow a folder


def test_a_storage_file_outside_the_run_is_refused_from_every_source(
    tmp_path: Any, monkeypatch: Any
) -> None:
    """A command line, a recipe it names, the run's hotcb.tune.yaml, a restart's
    hotcb.tune.json and a checkpoint: each names a journal or SQLite file outside the run, and
    the run writes nothing there; the ledger names the file and the allowed places. Inside the
    run, and relative to the training's working directory as before, a study opens."""
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "profile"
    victim.write_text(VICTIM)
    evil = outside / "evil.db"
    loop = Loop(os.fspath(tmp_path / "run"))
    run = loop.run_dir
    monkeypatch.chdir(tmp_path)  # the training's working directory, outside its run

    # (a) the commands file: a journal appended to any file, a database created anywhere
    for storage, given in ((f"journal:{victim}", os.fspath(victim)),
                           (f"sqlite:///{evil}", os.fspath(evil)),
                           ("sqlite:///outside/rel.db", "outside/rel.db")):  # fmt: skip
        cid = loop.send({"mode": "active", "objective": "loss", "storage": storage})
        _refused(loop.answer(cid), given, [run])
    cid = loop.send({"mode": "active", "objective": "loss", "storage": "sqlite:///x.db",
                     "sync": True})  # fmt: skip
    entry = loop.answer(cid)  # refused before any change: nothing was applied
    assert entry["decision"] == "rejected", entry
    assert f"(from the training's working directory: {tmp_path / 'x.db'})" in entry["error"]

    # (b) a recipe the command names; (c) the run's hotcb.tune.yaml
    with open(os.path.join(run, "space.yaml"), "w") as f:
        f.write(f'storage: "journal:{victim}"\nsegment_steps: 5\n')
    _refused(loop.answer(loop.send({"mode": "active", "recipe": "space.yaml"})),
             os.fspath(victim), [run])  # fmt: skip
    with open(os.path.join(run, "hotcb.tune.yaml"), "w") as f:
        f.write(f'storage: "sqlite:///{evil}"\nsegment_steps: 5\n')
    _refused(loop.answer(loop.send({"mode": "active"})), os.fspath(evil), [run])
    os.remove(os.path.join(run, "hotcb.tune.yaml"))

    # a SQLite URI filename (SQLite reads one even without uri=true), a link out of the run,
    # and the run's own files are refused too
    os.symlink(outside, os.path.join(run, "link"))
    for storage, said in ((f"sqlite:///file:{evil}", "SQLite URI filename"),
                          (f"sqlite:///file:{evil}?uri=true", "SQLite URI filename"),
                          (f"journal:{run}/link/profile", "outside the run directory"),
                          (f"journal:{run}/hotcb.applied.jsonl", "one of a run's own files"),
                          (f"journal:{run}/hotcb.commands.jsonl", "one of a run's own files")):  # fmt: skip
        entry = loop.answer(loop.send({"mode": "observe", "storage": storage}))
        assert entry["decision"] in ("rejected", "failed") and said in entry["error"], entry
    for name in (RunPaths(run).commands, RunPaths(run).ledger):  # nothing of Optuna's there
        with open(name) as f:
            assert "op_code" not in f.read()

    # inside the run a study opens; a relative path is the working directory's, as before
    monkeypatch.chdir(run)
    entry = loop.answer(loop.send({"mode": "observe", "storage": "journal:inside.journal"}))
    assert entry["decision"] == "applied" and os.path.isfile(os.path.join(run, "inside.journal"))
    state = loop.kernel.state_dict()
    loop.kernel.close()
    monkeypatch.chdir(tmp_path)

    # (d) a restart without a checkpoint turns the tuner on from hotcb.tune.json
    saved = jsonl.read_json(RunPaths(run).tune)  # as a kill -9 leaves it: the tuner on
    saved["settings"]["storage"] = f"journal:{victim}"
    jsonl.write_json_atomic(RunPaths(run).tune, {**saved, "mode": "observe"})
    again = Loop(run)
    try:
        _refused(again.answer(saved.get("enable_cmd")), os.fspath(victim), [run])
    finally:
        again.kernel.close()

    # (e) a checkpoint whose tuner names a file outside (here resumed in another directory)
    state["modules"]["tune"]["settings"]["storage"] = f"sqlite:///{evil}"
    other = Loop(os.fspath(tmp_path / "other"))
    try:
        other.kernel.load_state_dict(state)
        other.until(lambda: other.step >= 3, "three steps")
        assert other.kernel.module("tune").study is None  # type: ignore[attr-defined]
    finally:
        other.kernel.close()

    assert victim.read_text() == VICTIM
    assert sorted(os.listdir(outside)) == ["profile"]
    assert not (tmp_path / "x.db").exists()


def test_runs_share_a_study_in_an_allowed_root(tmp_path: Any) -> None:
    """Two runs share one SQLite study in a folder both trainers allow
    (``HotKernel(allowed_roots=[...])``); a trainer that does not allow it refuses it."""
    shared = tmp_path / "studies"
    shared.mkdir()
    storage = f"sqlite:///{shared / 'sweep.db'}"
    loops = [Loop(os.fspath(tmp_path / name), allowed_roots=[shared]) for name in ("a", "b")]
    try:
        for loop in loops:
            cid = loop.send({"mode": "observe", "storage": storage, "study": "sweep"})
            assert loop.answer(cid)["decision"] == "applied"
            assert HotClient(loop.run_dir).tune_status()["storage"] == storage
        lone = Loop(os.fspath(tmp_path / "c"))
        try:
            cid = lone.send({"mode": "observe", "storage": storage, "study": "sweep"})
            _refused(lone.answer(cid), os.fspath(shared / "sweep.db"), [lone.run_dir])
        finally:
            lone.kernel.close()
    finally:
        for loop in loops:
            loop.kernel.close()
    import optuna

    assert "sweep" in optuna.get_all_study_names(storage)


def test_hotcb_allowed_roots_in_the_trainers_environment_allows_a_shared_study(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A training whose code does not pass allowed_roots (`hotcb launch -- python train.py`)
    allows the shared study's folder through its environment."""
    shared = tmp_path / "studies"
    shared.mkdir()
    storage = f"sqlite:///{shared / 'sweep.db'}"
    monkeypatch.setenv("HOTCB_ALLOWED_ROOTS", os.pathsep.join([os.fspath(shared), "/elsewhere"]))
    loop = Loop(os.fspath(tmp_path / "a"))
    try:
        assert os.fspath(shared) in loop.kernel.allowed_roots
        cid = loop.send({"mode": "observe", "storage": storage, "study": "sweep"})
        assert loop.answer(cid)["decision"] == "applied"
    finally:
        loop.kernel.close()


def test_the_dashboard_takes_no_storage_from_a_recipe(tmp_path: Any) -> None:
    """The server refuses ``params.storage``; an enable from the dashboard without it read the
    storage from the run's hotcb.tune.yaml (or a recipe it named). The trainer now refuses a
    storage that reaches it that way, but the one in force; the CLI's enable takes it."""
    pytest.importorskip("fastapi")
    from hotcb.server.config import DashboardConfig
    from hotcb.server.testing import serve_in_thread

    loop = Loop(os.fspath(tmp_path / "r"))
    run = loop.run_dir
    storage = f"sqlite:///{run}/from-the-recipe.db"  # inside the run: the dashboard's rule
    with open(os.path.join(run, "hotcb.tune.yaml"), "w") as f:
        f.write(f'storage: "{storage}"\nsegment_steps: 5\n')
    loop.until(lambda: loop.step >= 1, "a first step")
    srv = serve_in_thread(DashboardConfig.load(None, dir=os.fspath(tmp_path),
                                               tail_interval_sec=0.02))  # fmt: skip
    try:
        with srv.client() as c:

            def post(params: dict[str, Any]) -> str:
                r = c.post("/api/runs/r/commands",
                           json={"module": "tune", "op": "enable", "params": params})  # fmt: skip
                assert r.status_code == 200, r.text
                return str(r.json()["cmd_id"])

            for params in ({"mode": "active"}, {"mode": "active", "recipe": "hotcb.tune.yaml"}):
                entry = loop.answer(post(params))
                assert entry["decision"] == "rejected" and entry["source"] == "dashboard", entry
                assert "comes from the recipe hotcb.tune.yaml" in entry["error"], entry
                assert "the dashboard sets no storage" in entry["error"], entry
            assert not os.path.exists(os.path.join(run, "from-the-recipe.db"))
            # the CLI's enable reads the same file
            assert loop.answer(HotClient(run).tune_enable("observe"))["decision"] == "applied"
            assert os.path.exists(os.path.join(run, "from-the-recipe.db"))
            # once it is in force, the dashboard's enable may name the recipe again
            entry = loop.answer(post({"mode": "suggest", "recipe": "hotcb.tune.yaml"}))
            assert entry["decision"] == "applied", entry
    finally:
        srv.stop()
        loop.kernel.close()


PASSWORD_URL = "postgresql://alice:S3cretPW@127.0.0.1:1/optuna"


def test_a_password_in_the_storage_url_is_warned_about(
    tmp_path: Any, cli: Any, capsys: Any
) -> None:
    """``HotClient.tune_enable``, ``hotcb tune enable --storage`` and ``hotcb launch
    --tune-storage`` write the URL, password and all, to the commands file (and the run's
    ledger repeats it): each says so on stderr, once, and what to do instead, without the
    password."""
    run = os.fspath(tmp_path / "run")
    HotClient(run).tune_enable("observe", storage=PASSWORD_URL)
    said = capsys.readouterr().err
    assert said.startswith("hotcb: warning: the storage URL postgresql://alice:***@127.0.0.1:1/"
                           "optuna holds a password"), said  # fmt: skip
    assert "plain text" in said and "hotcb.commands.jsonl" in said and "hotcb.applied.jsonl" in said
    assert "PGPASSWORD" in said and "~/.pgpass" in said and "read_default_file" in said
    assert "S3cretPW" not in said
    HotClient(run).tune_enable("observe", storage="postgresql://alice@127.0.0.1:1/optuna")
    assert capsys.readouterr().err == ""  # none for a URL without a password

    done = cli(run, "tune", "enable", "--storage", PASSWORD_URL)
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith(said), done.stderr
    assert done.stderr.count("holds a password") == 1 and "S3cretPW" not in done.stderr

    launched = os.fspath(tmp_path / "launched")
    done = cli(launched, "launch", "--tune", "observe", "--tune-storage", PASSWORD_URL, "--",
               sys.executable, "-c", "pass", timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert said in done.stderr, done.stderr
    assert done.stderr.count("holds a password") == 1, done.stderr
    assert "S3cretPW" not in done.stdout + done.stderr
    with open(RunPaths(launched).commands) as f:
        (sent,) = [json.loads(line) for line in f]
    assert sent["params"]["storage"] == PASSWORD_URL  # what the warning is about

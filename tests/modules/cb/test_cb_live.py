"""Callbacks hot-loaded into a real training process (``python -m hotcb.testing.trainer``)
from this test process, as a user would from a terminal."""

from __future__ import annotations

import os
from typing import Any

import pytest

from hotcb import HotClient
from hotcb.testing import read_ledger, wait_for

pytestmark = pytest.mark.slow

STEPLOG = """
class StepLog:
    def __init__(self, path, every=1, tag="v1"):
        self.path = path
        self.every = every
        self.tag = tag

    def handle(self, event, env):
        if event == "train_step_end" and env["step"] % self.every == 0:
            with open(self.path, "a") as f:
                f.write(f"{self.tag} {env['step']}\\n")
"""


def _lines(path: str) -> list[tuple[str, int]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [(t, int(s)) for t, s in (line.split() for line in f if line.endswith("\n"))]


def _seen_after(path: str, step: int) -> bool:
    return any(s > step for _, s in _lines(path))


def test_live_load_set_params_reload_unload(start_trainer, run_dir, tmp_path, write_cb):
    out = os.fspath(tmp_path / "steps.txt")
    path = write_cb(STEPLOG)
    trainer = start_trainer(
        run_dir,
        os.fspath(tmp_path / "trace.jsonl"),
        steps=100_000,
        step_delay=0.01,
        no_code_load=False,
    )
    trainer.wait_step(3)
    client = HotClient(run_dir, source="test")

    # load: from the next poll on, every step
    load = client.wait(client.cb_load("steplog", file=path, symbol="StepLog", init={"path": out}))
    assert load["decision"] == "applied", load
    wait_for(lambda: _seen_after(out, load["step"] + 5), 30, what="steps after the load")
    steps = [s for _, s in _lines(out)]
    assert steps[0] == load["step"]  # dispatched at the very safe point that applied it
    assert steps == list(range(steps[0], steps[0] + len(steps)))

    # set_params changes its behaviour at the step it is applied
    sp = client.wait(client.cb("set_params", "steplog", every=5))
    assert sp["decision"] == "applied" and sp["changes"] == {"every": {"old": 1, "new": 5}}
    wait_for(lambda: _seen_after(out, sp["step"] + 10), 30, what="steps after set_params")
    steps = [s for _, s in _lines(out)]
    before = [s for s in steps if s < sp["step"]]
    after = [s for s in steps if s >= sp["step"]]
    assert before == list(range(steps[0], sp["step"]))
    assert after and all(s % 5 == 0 for s in after)
    assert after == list(range(after[0], after[-1] + 1, 5))

    # edit the file and reload: the new code runs; both versions are captured
    write_cb(STEPLOG.replace('tag="v1"', 'tag="v2"'))
    rl = client.wait(client.cb_load("steplog", file=path, symbol="StepLog", init={"path": out}))
    assert rl["decision"] == "applied" and rl["replaced"] is True, rl
    old_sha, new_sha = load["source_capture"]["sha256"], rl["source_capture"]["sha256"]
    assert rl["changes"]["sha256"] == {"old": old_sha, "new": new_sha} and old_sha != new_sha
    sources = os.listdir(os.path.join(run_dir, "hotcb.sources"))
    assert sorted(sources) == sorted([f"{old_sha}.py", f"{new_sha}.py"])
    wait_for(lambda: _seen_after(out, rl["step"] + 5), 30, what="steps after the reload")
    lines = _lines(out)
    assert all(s < rl["step"] for t, s in lines if t == "v1")
    v2 = [s for t, s in lines if t == "v2"]
    assert v2 == list(range(rl["step"], rl["step"] + len(v2)))

    # unload stops it
    ul = client.wait(client.cb("unload", "steplog"))
    assert ul["decision"] == "applied"
    trainer.wait_step(ul["step"] + 10)
    assert max(s for _, s in _lines(out)) < ul["step"]

    stop = client.wait(client.stop())
    assert stop["decision"] == "applied"
    rc, _stdout, stderr = trainer.finish()
    assert rc == 0, stderr[-2000:]


def test_live_raising_callback_is_recorded_and_disabled(
    start_trainer, run_dir, tmp_path, write_cb, cli
):
    path = write_cb(
        "class Boom:\n"
        "    def handle(self, event, env):\n"
        "        raise ValueError(f'bad step {env[\"step\"]}')\n"
    )
    trainer = start_trainer(
        run_dir,
        os.fspath(tmp_path / "trace.jsonl"),
        steps=100_000,  # until stopped
        step_delay=0.01,
        no_code_load=False,
    )
    trainer.wait_step(2)
    client = HotClient(run_dir, source="test")
    load = client.wait(client.cb_load("boom", file=path, symbol="Boom"))
    assert load["decision"] == "applied"
    trainer.wait_step(load["step"] + 20)  # the loop goes on after the callback raised
    client.stop()
    rc, stdout, stderr = trainer.finish()
    assert rc == 0 and "stopped at step" in stdout, stderr[-2000:]
    errs = [e for e in read_ledger(run_dir) if e.get("op") == "callback_error"]
    assert len(errs) == 1
    e = errs[0]
    assert e["id"] == "boom" and e["step"] == load["step"] and e["auto_disabled"] is True
    assert e["error"] == f"ValueError: bad step {load['step']}"
    assert "Traceback (most recent call last)" in e["traceback"]
    assert "raise ValueError" in e["traceback"]  # the line, read from the captured source
    listing = cli(run_dir, "cb", "list")
    assert listing.returncode == 0
    assert "boom" in listing.stdout and "disabled" in listing.stdout
    assert "ValueError: bad step" in listing.stdout


def test_live_code_load_disabled(start_trainer, run_dir, tmp_path, write_cb):
    marker = tmp_path / "imported.marker"
    path = write_cb(
        f"open({os.fspath(marker)!r}, 'w').close()\n"
        "class Evil:\n    def handle(self, event, env):\n        pass\n"
    )
    trainer = start_trainer(
        run_dir,
        os.fspath(tmp_path / "trace.jsonl"),
        steps=100_000,
        step_delay=0.01,
        no_code_load=True,
    )
    trainer.wait_step(1)
    client = HotClient(run_dir, source="test")
    entry = client.wait(client.cb_load("evil", file=path, symbol="Evil"))
    assert entry["decision"] == "rejected"
    assert "code loading is disabled" in entry["error"] and "allow_code_load" in entry["error"]
    assert not marker.exists()
    assert not os.path.exists(os.path.join(run_dir, "hotcb.sources"))
    client.wait(client.stop())
    rc, _, stderr = trainer.finish()
    assert rc == 0, stderr[-2000:]


def test_cli_drives_callbacks_of_a_live_run(start_trainer, run_dir, tmp_path, write_cb, cli):
    out = os.fspath(tmp_path / "steps.txt")
    path = write_cb(STEPLOG)
    trainer = start_trainer(
        run_dir,
        os.fspath(tmp_path / "trace.jsonl"),
        steps=100_000,
        step_delay=0.01,
        no_code_load=False,
    )
    trainer.wait_step(1)

    def ok(*args: str) -> str:
        res = cli(run_dir, *args)
        assert res.returncode == 0, res.stderr
        return res.stdout

    loaded = ok(
        "cb",
        "load",
        "sl",
        "--file",
        path,
        "--symbol",
        "StepLog",
        "--init",
        f"path={out}",
        "tag=cli",
        "--wait",
    )
    assert "cb load sl -> applied" in loaded
    wait_for(lambda: _lines(out), 30, what="the callback's first step")
    assert _lines(out)[0][0] == "cli"
    assert "every: 1 -> 3" in ok("cb", "set_params", "sl", "every=3", "--wait")
    assert "enabled: true -> false" in ok("disable", "sl", "--wait")
    listing = ok("cb", "list")
    sha = next(e for e in read_ledger(run_dir) if e.get("op") == "load")["source_capture"]
    assert "sl" in listing and "disabled" in listing and sha["sha256"][:12] in listing
    assert '"every": 3' in listing
    assert "enabled: false -> true" in ok("enable", "sl", "--wait")
    import json

    rows = json.loads(ok("cb", "list", "--json"))
    assert rows[0]["id"] == "sl" and rows[0]["state"] == "enabled"
    assert rows[0]["sha256"] == sha["sha256"] and rows[0]["params"] == {"every": 3}
    # a refused command exits 1 and says why
    res = cli(run_dir, "cb", "enable", "nope", "--wait")
    assert res.returncode == 1 and "no callback 'nope' is loaded" in res.stdout
    ok("cb", "unload", "sl", "--wait")
    assert "no callbacks loaded" in ok("cb", "list")
    client: Any = HotClient(run_dir)
    client.wait(client.stop())
    rc, _, stderr = trainer.finish()
    assert rc == 0, stderr[-2000:]

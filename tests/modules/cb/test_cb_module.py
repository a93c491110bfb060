"""The cb module inside a real kernel: loading, capture, reload, replay, policy, isolation,
params, undo, state and hotcb.yaml. Commands go through the commands file like a user's."""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest

from hotcb import HotClient
from hotcb.testing import read_ledger

RECORDER = """
class Recorder:
    def __init__(self, tag="v1"):
        self.tag = tag
        self.seen = []
        self.unloaded = False

    def on_load(self, env):
        self.has_kernel = "kernel" in env
        self.ctx = env["hotcb"]

    def on_unload(self, env):
        self.unloaded = True

    def handle(self, event, env):
        self.seen.append((self.tag, event, env["step"]))
"""


def _do(kernel: Any, client: HotClient, cid: str, step: int) -> dict[str, Any]:
    """Run one safe point and return the ledger entry of ``cid``."""
    kernel.apply({"step": step})
    return client.wait(cid, timeout=5)


def test_load_from_file_captures_source_and_dispatches(kernel_factory, write_cb):
    path = write_cb(RECORDER)
    kernel = kernel_factory()
    client = HotClient(kernel.run_dir)
    cid = client.cb_load("rec", file=path, symbol="Recorder", init={"tag": "a"})
    entry = _do(kernel, client, cid, 0)
    assert entry["decision"] == "applied", entry
    cap = entry["source_capture"]
    assert cap["path"] == f"hotcb.sources/{cap['sha256']}.py"
    with open(os.path.join(kernel.run_dir, cap["path"])) as f, open(path) as g:
        assert f.read() == g.read()
    cb = kernel.module("cb").get("rec")
    # the context is the only handle a callback gets: no kernel in its env
    assert not cb.has_kernel and cb.ctx.id == "rec" and cb.ctx.run_dir == kernel.run_dir
    kernel.apply({"step": 1}, events=("train_step_end", "val_epoch_end"))
    assert cb.seen == [
        ("a", "train_step_end", 0),
        ("a", "train_step_end", 1),
        ("a", "val_epoch_end", 1),
    ]


def test_callbacks_run_in_load_order(kernel_factory, write_cb, tmp_path):
    out = tmp_path / "order.txt"
    path = write_cb(
        "class Named:\n"
        "    def __init__(self, name, out):\n"
        "        self.name, self.out = name, out\n"
        "    def handle(self, event, env):\n"
        "        with open(self.out, 'a') as f:\n"
        "            f.write(f\"{env['step']}:{self.name} \")\n"
    )
    kernel = kernel_factory()
    client = HotClient(kernel.run_dir)
    for name in ("b_first", "a_second", "c_third"):
        client.cb_load(name, file=path, symbol="Named", init={"name": name, "out": str(out)})
    kernel.apply({"step": 0})
    kernel.apply({"step": 1})
    assert out.read_text().split() == [
        f"{s}:{n}" for s in (0, 1) for n in ("b_first", "a_second", "c_third")
    ]


def test_reload_changed_file_replaces_instance(kernel_factory, write_cb):
    path = write_cb(RECORDER)
    kernel = kernel_factory()
    client = HotClient(kernel.run_dir)
    first = _do(kernel, client, client.cb_load("rec", file=path, symbol="Recorder"), 0)
    old = kernel.module("cb").get("rec")
    write_cb(RECORDER.replace('tag="v1"', 'tag="v2"'))
    second = _do(kernel, client, client.cb_load("rec", file=path, symbol="Recorder"), 1)
    assert second["decision"] == "applied" and second["replaced"] is True
    old_sha, new_sha = first["source_capture"]["sha256"], second["source_capture"]["sha256"]
    assert old_sha != new_sha
    assert second["changes"]["sha256"] == {"old": old_sha, "new": new_sha}
    assert sorted(os.listdir(kernel.paths.sources)) == sorted([f"{old_sha}.py", f"{new_sha}.py"])
    new = kernel.module("cb").get("rec")
    assert old.unloaded and new is not old
    kernel.apply({"step": 2})
    assert new.seen[-1] == ("v2", "train_step_end", 2)
    assert old.seen[-1][2] == 0  # the old instance stopped before the reload's step


def test_load_with_source_capture_uses_the_captured_version(kernel_factory, write_cb, tmp_path):
    """Replay/resume: a load op carrying source_capture runs the captured code even though
    the file changed since."""
    path = write_cb(RECORDER)
    kernel = kernel_factory()
    client = HotClient(kernel.run_dir)
    entry = _do(kernel, client, client.cb_load("rec", file=path, symbol="Recorder"), 0)
    capture = entry["source_capture"]
    write_cb(RECORDER.replace('tag="v1"', 'tag="edited"'))
    cid = client.send(
        "cb",
        "load",
        id="replayed",
        target={"kind": "python_file", "path": path, "symbol": "Recorder"},
        source_capture=capture,
    )
    replay = _do(kernel, client, cid, 1)
    assert replay["decision"] == "applied", replay
    assert replay["source_capture"]["sha256"] == capture["sha256"]
    kernel.apply({"step": 2})
    assert kernel.module("cb").get("replayed").seen[-1][0] == "v1"

    # a capture that exists nowhere, with the file changed: a clear rejection
    bogus = {"sha256": "0" * 64, "path": "hotcb.sources/" + "0" * 64 + ".py"}
    cid = client.send(
        "cb",
        "load",
        id="lost",
        target={"kind": "python_file", "path": path, "symbol": "Recorder"},
        source_capture=bogus,
    )
    lost = _do(kernel, client, cid, 3)
    assert lost["decision"] == "rejected" and "not found" in lost["error"]


def test_code_load_disabled_rejects_and_imports_nothing(kernel_factory, write_cb, tmp_path):
    marker = tmp_path / "imported.marker"
    path = write_cb(
        f"open({os.fspath(marker)!r}, 'w').close()\n"
        "class Evil:\n    def handle(self, event, env):\n        pass\n"
    )
    kernel = kernel_factory(allow_code_load=False)
    client = HotClient(kernel.run_dir)
    entry = _do(kernel, client, client.cb_load("evil", file=path, symbol="Evil"), 0)
    assert entry["decision"] == "rejected"
    assert "allow_code_load" in entry["error"]
    assert not marker.exists()
    # a module path is code too: refused, except hotcb's own bundled callbacks
    other = _do(kernel, client, client.cb_load("x", path="json", symbol="JSONDecoder"), 1)
    assert other["decision"] == "rejected"
    ok = _do(
        kernel,
        client,
        client.cb_load("hb", path="hotcb.modules.cb.callbacks", symbol="HeartbeatCallback"),
        2,
    )
    assert ok["decision"] == "applied", ok


def test_allowed_code_dirs(kernel_factory, write_cb, tmp_path):
    marker = tmp_path / "imported.marker"
    path = write_cb(
        f"open({os.fspath(marker)!r}, 'w').close()\nclass C:\n    def handle(self, e, env): pass\n"
    )
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    kernel = kernel_factory(allowed_code_dirs=[allowed])
    client = HotClient(kernel.run_dir)
    entry = _do(kernel, client, client.cb_load("c", file=path, symbol="C"), 0)
    assert entry["decision"] == "rejected" and "allowed code directories" in entry["error"]
    assert not marker.exists()
    inside = allowed / "c.py"
    inside.write_text("class C:\n    def handle(self, e, env): pass\n")
    entry = _do(kernel, client, client.cb_load("c", file=os.fspath(inside), symbol="C"), 1)
    assert entry["decision"] == "applied", entry


def test_allowed_code_dirs_check_every_part_of_a_module_path(kernel_factory, tmp_path, monkeypatch):
    """A package inside the allowed folders whose submodule is a link to a file outside them:
    only the package was located, and the file outside ran."""
    marker = tmp_path / "imported.marker"
    outside = tmp_path / "elsewhere.py"
    outside.write_text(f"open({os.fspath(marker)!r}, 'w').close()\n"
                       "class C:\n    def handle(self, e, env): pass\n")  # fmt: skip
    allowed = tmp_path / "allowed"
    pkg = allowed / "teampkg_linked"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "ext.py").symlink_to(outside)
    (pkg / "own.py").write_text("class C:\n    def handle(self, e, env): pass\n")
    monkeypatch.syspath_prepend(os.fspath(allowed))
    kernel = kernel_factory(allowed_code_dirs=[allowed])
    client = HotClient(kernel.run_dir)
    entry = _do(kernel, client, client.cb_load("c", path="teampkg_linked.ext", symbol="C"), 0)
    assert entry["decision"] == "rejected" and "allowed code directories" in entry["error"]
    assert not marker.exists()
    for i, (path, decision) in enumerate([("teampkg_linked.nope", "rejected"),
                                          ("teampkg_linked.own", "applied")], 1):  # fmt: skip
        entry = _do(kernel, client, client.cb_load("c", path=path, symbol="C"), i)
        assert entry["decision"] == decision, entry
    monkeypatch.delitem(sys.modules, "teampkg_linked", raising=False)
    monkeypatch.delitem(sys.modules, "teampkg_linked.own", raising=False)


def test_a_module_edited_since_its_import_is_said_to_run_old_code(
    kernel_factory, tmp_path, monkeypatch
):
    """A ``--path`` callback loaded again after its file was edited ran the old code (Python
    imports a module once per process), and the entry said nothing of it."""
    folder = tmp_path / "code"
    folder.mkdir()
    mod = folder / "edited_team_cbs.py"
    mod.write_text("class C:\n    version = 1\n    def handle(self, e, env): pass\n")
    monkeypatch.syspath_prepend(os.fspath(folder))
    monkeypatch.delitem(sys.modules, "edited_team_cbs", raising=False)
    kernel = kernel_factory()
    client = HotClient(kernel.run_dir)
    first = _do(kernel, client, client.cb_load("c", path="edited_team_cbs", symbol="C"), 0)
    assert first["decision"] == "applied" and not first.get("error"), first
    again = _do(kernel, client, client.cb_load("c", path="edited_team_cbs", symbol="C"), 1)
    assert again["decision"] == "applied" and not again.get("error"), again  # not edited
    mod.write_text("class C:\n    version = 2\n    def handle(self, e, env): pass\n")
    edited = _do(kernel, client, client.cb_load("c", path="edited_team_cbs", symbol="C"), 2)
    assert edited["decision"] == "applied" and edited["replaced"] is True
    assert edited["error"].startswith("module 'edited_team_cbs' changed on disk since it was "
                                      "imported; Python imports a module once per process")  # fmt: skip
    assert kernel.module("cb").get("c").version == 1  # what it says: the old code runs


def test_failed_loads_are_ledgered_with_reason(kernel_factory, write_cb):
    kernel = kernel_factory()
    client = HotClient(kernel.run_dir)
    broken = write_cb("class C:\n    def handle(self, e, env)\n", name="broken.py")
    e1 = _do(kernel, client, client.cb_load("a", file=broken, symbol="C"), 0)
    assert e1["decision"] == "failed" and "SyntaxError" in e1["error"] and e1["traceback"]
    e2 = _do(kernel, client, client.cb_load("b", path="hotcb.modules.cb", symbol="Nope"), 1)
    assert e2["decision"] == "failed" and "Nope" in e2["error"]
    nohandle = write_cb("class C:\n    pass\n", name="nohandle.py")
    e3 = _do(kernel, client, client.cb_load("c", file=nohandle, symbol="C"), 2)
    assert e3["decision"] == "failed" and "handle(event, env)" in e3["error"]
    e4 = _do(kernel, client, client.cb("enable", "ghost"), 3)
    assert e4["decision"] == "rejected" and "no callback 'ghost'" in e4["error"]
    assert kernel.module("cb").describe() == []


RAISER = """
class Raiser:
    def __init__(self, fail_at=2):
        self.fail_at = fail_at
        self.calls = 0
    def handle(self, event, env):
        self.calls += 1
        if env["step"] >= self.fail_at:
            raise RuntimeError(f"boom at {env['step']}")
"""


def test_raising_callback_is_isolated_and_auto_disabled(kernel_factory, write_cb, driver_for):
    path = write_cb(RAISER)
    kernel = kernel_factory()
    loop = driver_for(kernel)
    client = HotClient(kernel.run_dir)
    client.cb_load("bad", file=path, symbol="Raiser", init={"fail_at": 2})
    client.cb_load("good", path="hotcb.modules.cb.callbacks", symbol="TensorStatsCallback")
    loop.steps(6)  # the loop must not see the exception
    kernel.flush()
    errs = [e for e in read_ledger(kernel.run_dir) if e.get("op") == "callback_error"]
    assert len(errs) == 1
    err = errs[0]
    assert err["id"] == "bad" and err["decision"] == "failed" and err["step"] == 2
    assert "RuntimeError: boom at 2" in err["error"]
    assert "Traceback" in err["traceback"] and "boom" in err["traceback"]
    assert err["auto_disabled"] is True
    bad = kernel.module("cb").get("bad")
    assert bad.calls == 3  # steps 0, 1, 2, then disabled
    good = kernel.module("cb").get("good")
    assert good.last["loss/mean"] > 0  # the other callback kept running
    state = {c["id"]: c for c in kernel.module("cb").describe()}
    assert state["bad"]["enabled"] is False and state["good"]["enabled"] is True


def test_errors_rate_limited_without_auto_disable(kernel_factory, write_cb):
    path = write_cb(RAISER)
    kernel = kernel_factory(auto_disable_on_error=False)
    client = HotClient(kernel.run_dir)
    client.cb_load("bad", file=path, symbol="Raiser", init={"fail_at": 0})
    kernel.apply({"step": 0})
    mod = kernel.module("cb")
    mod.error_interval_sec = 3600.0
    for step in range(1, 10):
        kernel.apply({"step": step})
    mod.error_interval_sec = 0.0
    kernel.apply({"step": 10})
    kernel.flush()
    errs = [e for e in read_ledger(kernel.run_dir) if e.get("op") == "callback_error"]
    assert [e["step"] for e in errs] == [0, 10]
    assert errs[1]["suppressed"] == 9 and errs[1]["errors"] == 11
    assert mod.get("bad").calls == 11  # still enabled


def test_set_params_with_and_without_setter_and_undo(kernel_factory, write_cb):
    path = write_cb(RECORDER)
    kernel = kernel_factory()
    client = HotClient(kernel.run_dir)
    client.cb_load("rec", file=path, symbol="Recorder")
    client.cb_load("hb", path="hotcb.modules.cb.callbacks", symbol="HeartbeatCallback")
    kernel.apply({"step": 0})
    e = _do(kernel, client, client.cb("set_params", "rec", tag="v9"), 1)
    assert e["decision"] == "applied" and e["changes"] == {"tag": {"old": "v1", "new": "v9"}}
    kernel.apply({"step": 2})
    assert kernel.module("cb").get("rec").seen[-1] == ("v9", "train_step_end", 2)
    bad = _do(kernel, client, client.cb("set_params", "rec", nope=1), 3)
    assert bad["decision"] == "rejected" and "'nope'" in bad["error"]
    bad = _do(kernel, client, client.cb("set_params", "rec", handle=1), 3)  # never a method
    assert bad["decision"] == "rejected" and "'handle'" in bad["error"]
    bad = _do(kernel, client, client.cb("set_params", "hb", handle=1), 3)
    assert bad["decision"] == "rejected"
    e = _do(kernel, client, client.cb("set_params", "hb", every_steps=7), 4)
    assert e["changes"] == {"every_steps": {"old": 100, "new": 7}}
    bad = _do(kernel, client, client.cb("set_params", "hb", bogus=7), 5)
    assert bad["decision"] == "rejected" and "bogus" in bad["error"]
    # undo the set_params, then a disable
    u = _do(kernel, client, client.undo(e["cmd_id"]), 6)
    assert u["decision"] == "applied" and u["changes"] == {"every_steps": {"old": 7, "new": 100}}
    d = _do(kernel, client, client.cb("disable", "rec"), 7)
    assert d["changes"] == {"enabled": {"old": True, "new": False}}
    noop = _do(kernel, client, client.cb("disable", "rec"), 8)
    assert noop["decision"] == "noop"
    u = _do(kernel, client, client.undo(d["cmd_id"]), 9)
    assert u["decision"] == "applied" and kernel.module("cb").describe()[0]["enabled"] is True


def test_unload_calls_on_unload_and_stops_events(kernel_factory, write_cb):
    path = write_cb(RECORDER)
    kernel = kernel_factory()
    client = HotClient(kernel.run_dir)
    _do(kernel, client, client.cb_load("rec", file=path, symbol="Recorder"), 0)
    cb = kernel.module("cb").get("rec")
    e = _do(kernel, client, client.cb("unload", "rec"), 1)
    assert e["decision"] == "applied" and cb.unloaded
    kernel.apply({"step": 2})
    assert [s for _, _, s in cb.seen] == [0]
    assert kernel.module("cb").wants_events is False


def test_state_dict_recreates_callbacks_from_captured_source(kernel_factory, write_cb, tmp_path):
    path = write_cb(RECORDER)
    kernel = kernel_factory()
    client = HotClient(kernel.run_dir)
    client.cb_load("rec", file=path, symbol="Recorder", init={"tag": "x"})
    client.cb_load(
        "guard", path="hotcb.modules.cb.callbacks", symbol="AnomalyGuardCallback", enabled=False
    )
    kernel.apply({"step": 0})
    client.cb("set_params", "rec", tag="y")
    kernel.apply({"step": 1})
    kernel.module("cb").get("guard").count = 3
    state = kernel.state_dict()
    os.remove(path)  # the resumed run must not need the original file

    other = kernel_factory(os.fspath(tmp_path / "run"))
    other.load_state_dict(state)
    mod = other.module("cb")
    rows = {r["id"]: r for r in mod.describe()}
    assert list(rows) == ["rec", "guard"]
    assert rows["rec"]["enabled"] is True and rows["guard"]["enabled"] is False
    assert rows["rec"]["params"] == {"tag": "y"}
    assert mod.get("rec").tag == "y"
    assert mod.get("guard").count == 3
    other.apply({"step": 2})
    assert mod.get("rec").seen == [("y", "train_step_end", 2)]


def test_rank_zero_only_callbacks_skip_other_ranks(kernel_factory):
    kernel = kernel_factory()
    client = HotClient(kernel.run_dir)
    client.cb_load("log", path="hotcb.modules.cb.callbacks", symbol="JSONLLoggerCallback")
    client.cb_load("stats", path="hotcb.modules.cb.callbacks", symbol="TensorStatsCallback")
    kernel.apply({"step": 0, "loss": 1.0})
    mod = kernel.module("cb")
    assert mod.get("log").written == 1
    kernel.is_leader = False  # what the kernel sets on rank 1 under torch.distributed
    kernel.apply({"step": 1, "loss": 2.0})
    assert mod.get("log").written == 1  # rank_zero_only
    assert mod.get("stats").last["loss/mean"] == 2.0  # runs on every rank
    kernel.is_leader = True


def test_hotcb_yaml_loads_callbacks_at_start(kernel_factory, write_cb, tmp_path):
    path = write_cb(RECORDER)
    run = tmp_path / "run"
    run.mkdir()
    (run / "hotcb.yaml").write_text(
        "callbacks:\n"
        "  - id: hb\n"
        "    path: hotcb.modules.cb.callbacks\n"
        "    symbol: HeartbeatCallback\n"
        "    init: {every_steps: 1}\n"
        f"  - id: rec\n    file: {path}\n    symbol: Recorder\n    enabled: false\n"
    )
    kernel = kernel_factory(os.fspath(run))
    lines: list[str] = []
    kernel.apply({"step": 0, "log": lines.append})
    kernel.flush()
    loads = [e for e in read_ledger(kernel.run_dir) if e.get("op") == "load"]
    assert [(e["id"], e["decision"], e["source"]) for e in loads] == [
        ("hb", "applied", "config"),
        ("rec", "applied", "config"),
    ]
    assert loads[1]["source_capture"]["sha256"]
    assert lines and "step 0" in lines[0]
    assert kernel.module("cb").get("rec").seen == []  # declared disabled


@pytest.mark.parametrize("bad", ["- just a list\n", "callbacks:\n  - path: x\n"])
def test_bad_hotcb_yaml_is_a_ledger_error_not_a_crash(kernel_factory, tmp_path, bad):
    run = tmp_path / "run"
    run.mkdir()
    (run / "hotcb.yaml").write_text(bad)
    kernel = kernel_factory(os.fspath(run))
    kernel.apply({"step": 0})
    kernel.flush()
    errors = [e for e in read_ledger(kernel.run_dir) if e.get("decision") == "failed"]
    assert errors and "hotcb.yaml" in errors[0]["error"]


def test_a_hotcb_yaml_that_cannot_be_read_is_said_where_the_trainer_runs(
    kernel_factory, tmp_path, caplog
):
    """It was in `hotcb log` only: a run whose callbacks never loaded (a hotcb.yaml that is
    not a mapping; no PyYAML) trained on with nothing on its console."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "hotcb.yaml").write_text("- just a list\n")
    kernel = kernel_factory(os.fspath(run))
    with caplog.at_level("WARNING", logger="hotcb"):
        kernel.apply({"step": 0})
    said = [r.getMessage() for r in caplog.records if "failed to start" in r.getMessage()]
    assert len(said) == 1 and "module 'cb' failed to start (training goes on" in said[0]
    assert "hotcb.yaml" in said[0]


def test_cb_list_rebuilds_state_from_the_ledger(kernel_factory, write_cb, capsys):
    from hotcb.cli import main

    path = write_cb(RECORDER)
    kernel = kernel_factory()
    client = HotClient(kernel.run_dir)
    _do(kernel, client, client.cb_load("rec", file=path, symbol="Recorder"), 0)
    hb = _do(
        kernel,
        client,
        client.cb_load("hb", path="hotcb.modules.cb.callbacks", symbol="HeartbeatCallback"),
        1,
    )
    _do(kernel, client, client.cb_load("bad", path="no_such_module_x", symbol="C"), 2)
    _do(kernel, client, client.cb("set_params", "rec", tag="z"), 3)
    _do(kernel, client, client.undo(hb["cmd_id"]), 4)  # undoing a first load unloads it
    assert main(["--dir", kernel.run_dir, "cb", "list", "--json"]) == 0
    import json

    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"rec", "bad"}
    assert rows["rec"]["state"] == "enabled" and rows["rec"]["params"] == {"tag": "z"}
    assert rows["rec"]["sha256"] == kernel.module("cb").describe()[0]["sha256"]
    assert rows["bad"]["state"] == "load failed" and "no_such_module_x" in rows["bad"]["last_error"]
    assert [c["id"] for c in kernel.module("cb").describe()] == ["rec"]


def test_resume_reapplies_later_loads_from_their_captured_source(kernel_factory, write_cb):
    """A run resumed from a checkpoint gets the callbacks of the checkpoint from its state and
    those loaded after it from the ledger, each in the version that ran then."""
    path = write_cb(RECORDER)
    kernel = kernel_factory()
    client = HotClient(kernel.run_dir)
    _do(kernel, client, client.cb_load("early", file=path, symbol="Recorder"), 0)
    kernel.apply({"step": 1})
    state = kernel.state_dict()  # checkpoint after step 1
    late = _do(kernel, client, client.cb_load("late", file=path, symbol="Recorder"), 2)
    kernel.apply({"step": 3})
    kernel.close()
    write_cb(RECORDER.replace('tag="v1"', 'tag="edited"'))  # the file moved on since

    resumed = kernel_factory(kernel.run_dir)
    resumed.load_state_dict(state)
    mod = resumed.module("cb")
    assert [c["id"] for c in mod.describe()] == ["early"]
    resumed.apply({"step": 2})
    resumed.apply({"step": 3})
    resumed.flush()
    assert [c["id"] for c in mod.describe()] == ["early", "late"]
    assert mod.get("late").seen == [("v1", "train_step_end", 2), ("v1", "train_step_end", 3)]
    replays = [e for e in read_ledger(kernel.run_dir) if e.get("source") == "resume"]
    assert [(e["op"], e["id"], e["step"]) for e in replays] == [("load", "late", 2)]
    assert replays[0]["source_capture"] == late["source_capture"]


def test_undo_of_disabling_the_only_callback_resumes_dispatch(kernel_factory, write_cb):
    path = write_cb(RECORDER)
    kernel = kernel_factory()
    client = HotClient(kernel.run_dir)
    _do(kernel, client, client.cb_load("rec", file=path, symbol="Recorder"), 0)
    off = _do(kernel, client, client.cb("disable", "rec"), 1)
    assert kernel.module("cb").wants_events is False
    _do(kernel, client, client.undo(off["cmd_id"]), 2)
    kernel.apply({"step": 3})
    assert [s for _, _, s in kernel.module("cb").get("rec").seen] == [0, 2, 3]


def test_undo_of_an_unload_says_to_load_it_again(kernel_factory, write_cb):
    """It said "no callback 'rec' is loaded …; load it first": the slot was looked up before
    the op, and an unload's slot is gone by definition."""
    path = write_cb(RECORDER)
    kernel = kernel_factory()
    client = HotClient(kernel.run_dir)
    _do(kernel, client, client.cb_load("rec", file=path, symbol="Recorder"), 0)
    _do(kernel, client, client.cb("unload", "rec"), 1)
    undo = _do(kernel, client, client.undo(), 2)
    assert undo["decision"] == "rejected"
    assert undo["error"] == ("cb unload cannot be undone; send the opposite command (cb load it "
                             "again)"), undo  # fmt: skip


def test_lambda_callback_routes_events():
    from hotcb.modules.cb import LambdaCallback

    got: list[Any] = []
    cb = LambdaCallback(
        train_step_end=lambda env: got.append(env["step"]),
        on_any_event=lambda event, env: got.append(event),
    )
    cb.handle("train_step_end", {"step": 4})
    cb.handle("val_epoch_end", {"step": 4})
    assert got == [4, "train_step_end", "val_epoch_end"]


def test_hotcb_yaml_without_pyyaml_says_what_to_install(tmp_path, monkeypatch):
    import builtins

    from hotcb.modules.cb import read_config

    path = tmp_path / "hotcb.yaml"
    path.write_text("callbacks: []\n")
    real_import = builtins.__import__

    def no_yaml(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "yaml":
            raise ImportError("No module named 'yaml'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_yaml)
    with pytest.raises(ImportError, match=r'pip install "hotcb\[yaml\]"'):
        read_config(str(path))


def _cb_list(run_dir: str, capsys: Any) -> dict[str, dict[str, Any]]:
    """``hotcb cb list --json`` of ``run_dir``, by id."""
    import json

    from hotcb.cli import main

    capsys.readouterr()
    assert main(["--dir", run_dir, "cb", "list", "--json"]) == 0
    return {r["id"]: r for r in json.loads(capsys.readouterr().out)}


def test_hotcb_yaml_bad_entries_fail_alone_and_say_why(kernel_factory, write_cb, tmp_path, capsys):
    """One bad entry no longer stops the others: each bad one is its own failed load entry
    naming the entry, its id and the problem; unknown keys and a quoted 'false' are refused."""
    path = write_cb(RECORDER)
    run = tmp_path / "run"
    run.mkdir()
    (run / "hotcb.yaml").write_text(
        "callbacks:\n"
        "  - id: hb\n"
        "    path: hotcb.modules.cb.callbacks\n"
        "    symbol: HeartbeatCallback\n"
        f"  - id: rec\n    file: {path}\n    symbol: Recorder\n"
        f"  - id: typo\n    fiel: {path}\n    symbol: Recorder\n"
        f"  - id: quoted\n    file: {path}\n    symbol: Recorder\n    enabled: 'false'\n"
        f"  - id: extra\n    file: {path}\n    symbol: Recorder\n    enabeld: false\n"
    )
    kernel = kernel_factory(os.fspath(run))
    kernel.apply({"step": 0})
    kernel.flush()
    ledger = read_ledger(kernel.run_dir)
    assert not [e for e in ledger if e.get("module") == "kernel" and e.get("op") == "error"]
    loads = {e["id"]: e for e in ledger if e.get("op") == "load"}
    assert list(loads) == ["hb", "rec", "typo", "quoted", "extra"]
    assert loads["hb"]["decision"] == loads["rec"]["decision"] == "applied"
    assert [c["id"] for c in kernel.module("cb").describe()] == ["hb", "rec"]
    typo = loads["typo"]
    assert typo["decision"] == "failed" and typo["source"] == "config"
    assert "hotcb.yaml: callbacks[2] (id 'typo')" in typo["error"]
    assert "unknown key 'fiel' (did you mean 'file'?)" in typo["error"]
    quoted = loads["quoted"]
    assert quoted["decision"] == "failed" and "callbacks[3] (id 'quoted')" in quoted["error"]
    assert "'enabled' must be true or false" in quoted["error"] and "'false'" in quoted["error"]
    extra = loads["extra"]
    assert extra["decision"] == "failed" and "unknown key 'enabeld'" in extra["error"]
    assert "did you mean 'enabled'?" in extra["error"]
    assert extra["target"]["symbol"] == "Recorder"  # what it would have loaded

    rows = _cb_list(kernel.run_dir, capsys)
    assert {k: r["state"] for k, r in rows.items()} == {
        "hb": "enabled",
        "rec": "enabled",
        "typo": "load failed",
        "quoted": "load failed",
        "extra": "load failed",
    }
    assert "'fiel'" in rows["typo"]["last_error"]

    from hotcb.modules.cb import read_config

    with pytest.raises(ValueError, match=r"callbacks\[2\] \(id 'typo'\)") as info:
        read_config(os.fspath(run / "hotcb.yaml"))
    assert "callbacks[4] (id 'extra')" in str(info.value)  # every bad entry, not the first


def test_cb_list_shows_the_last_failed_load_whole(kernel_factory, write_cb, capsys):
    path = write_cb("class PrintLoss:\n    def handle(self, event, env):\n        pass\n")
    kernel = kernel_factory()
    client = HotClient(kernel.run_dir)
    _do(kernel, client, client.cb_load("x", path="hotcb.modules.cb", symbol="Nope"), 0)
    _do(kernel, client, client.cb_load("x", path="os", symbol="system"), 1)
    last = _do(
        kernel, client, client.cb_load("x", file=path, symbol="PrintLoss", init={"bogus": 1}), 2
    )
    assert last["decision"] == "failed"
    row = _cb_list(kernel.run_dir, capsys)["x"]
    assert row["state"] == "load failed"
    assert row["target"] == {"kind": "python_file", "path": path, "symbol": "PrintLoss"}
    assert row["step"] == 2 and "takes no arguments" in row["last_error"]


def test_cb_list_drops_problems_made_moot(kernel_factory, write_cb, tmp_path, capsys):
    """A refused set_params is no problem once a later one applied; what a resume superseded
    (a refused command of the abandoned life) is no problem at all."""
    path = write_cb(RECORDER)
    kernel = kernel_factory()
    client = HotClient(kernel.run_dir)
    _do(kernel, client, client.cb_load("rec", file=path, symbol="Recorder"), 0)
    bad = _do(kernel, client, client.cb("set_params", "rec", nope=1), 1)
    assert bad["decision"] == "rejected"
    assert "'nope'" in _cb_list(kernel.run_dir, capsys)["rec"]["last_error"]
    _do(kernel, client, client.cb("set_params", "rec", tag="v2"), 2)
    row = _cb_list(kernel.run_dir, capsys)["rec"]
    assert row["last_error"] is None and row["params"] == {"tag": "v2"}

    state = kernel.state_dict()  # checkpoint at step 2
    _do(kernel, client, client.cb("set_params", "rec", nope=2), 3)  # the life a resume drops
    _do(kernel, client, client.cb("disable", "rec"), 4)
    kernel.close()
    assert _cb_list(kernel.run_dir, capsys)["rec"]["state"] == "disabled"

    resumed = kernel_factory(kernel.run_dir)
    resumed.load_state_dict(state)
    resumed.apply({"step": 3})
    resumed.apply({"step": 4})  # the disable applies again (source: resume)
    resumed.flush()
    row = _cb_list(kernel.run_dir, capsys)["rec"]
    assert row["last_error"] is None and row["state"] == "disabled"
    assert row["params"] == {"tag": "v2"}


FLAKY = """
class Flaky:
    def __init__(self, fail_from=0):
        self.fail_from = fail_from
    def handle(self, event, env):
        if env["step"] >= self.fail_from:
            raise RuntimeError(f"boom at {env['step']}")
"""


@pytest.mark.parametrize("how", ["unload", "disable", "close"])
def test_suppressed_error_counts_are_ledgered_when_reports_end(kernel_factory, write_cb, how):
    """With auto-disable off, errors between two reports are counted in the next one; an
    unload, a disable or the run's end leaves no next one, so the count is ledgered then."""
    path = write_cb(FLAKY)
    kernel = kernel_factory(auto_disable_on_error=False)
    client = HotClient(kernel.run_dir)
    client.cb_load("bad", file=path, symbol="Flaky", init={"fail_from": 3})
    mod = kernel.module("cb")
    mod.error_interval_sec = 3600.0  # one report, then counts only
    for step in range(8):
        kernel.apply({"step": step})
    if how == "close":
        kernel.close()  # the run's end: no next report will carry the count
    else:
        _do(kernel, client, client.cb(how, "bad"), 8)
    errs = [e for e in read_ledger(kernel.run_dir) if e.get("op") == "callback_error"]
    at = 7 if how == "close" else 8  # the last safe point, or the one the command landed at
    assert [(e["step"], e["suppressed"]) for e in errs] == [(3, 0), (at, 4)]
    flushed = errs[1]
    assert flushed["flushed_on"] == how and flushed["errors"] == 5
    assert "4 more error(s)" in flushed["error"] and "boom at 7" in flushed["error"]
    from hotcb.ledger import LedgerView

    view = LedgerView.read(kernel.paths.ledger)
    if how == "disable":  # still listed: the count is whole, nothing counted twice
        assert view.callback_list()[0]["errors"] == 5


UNLOADER = """
class Hooked:
    def __init__(self, out, tag="old", fail_load=False, fail_unload=False):
        self.out, self.tag = out, tag
        self.fail_load, self.fail_unload = fail_load, fail_unload

    def _note(self, hook):
        with open(self.out, "a") as f:
            f.write(f"{hook}:{self.tag} ")

    def on_load(self, env):
        self._note("on_load")
        if self.fail_load:
            raise RuntimeError(f"{self.tag} cannot load")

    def on_unload(self, env):
        self._note("on_unload")
        if self.fail_unload:
            raise RuntimeError(f"{self.tag} cannot unload")

    def handle(self, event, env):
        pass
"""


def test_on_unload_error_is_ledgered_and_the_unload_happens(kernel_factory, write_cb, tmp_path):
    path = write_cb(UNLOADER)
    kernel = kernel_factory()
    client = HotClient(kernel.run_dir)
    init = {"out": os.fspath(tmp_path / "hooks.txt"), "fail_unload": True}
    _do(kernel, client, client.cb_load("h", file=path, symbol="Hooked", init=init), 0)
    e = _do(kernel, client, client.cb("unload", "h"), 1)
    assert e["decision"] == "applied" and e["changes"] == {"loaded": {"old": True, "new": False}}
    assert e["error"] == "h: on_unload raised RuntimeError: old cannot unload; unloaded anyway"
    assert e["on_unload_error"] == "RuntimeError: old cannot unload"
    assert "cannot unload" in e["traceback"]
    assert kernel.module("cb").describe() == []


def test_reload_whose_on_load_raises_puts_the_old_one_back_and_says_so(
    kernel_factory, write_cb, tmp_path
):
    path = write_cb(UNLOADER)
    hooks = tmp_path / "hooks.txt"
    kernel = kernel_factory()
    client = HotClient(kernel.run_dir)
    init = {"out": os.fspath(hooks)}
    _do(kernel, client, client.cb_load("h", file=path, symbol="Hooked", init=init), 0)
    mod = kernel.module("cb")
    old = mod.get("h")
    hooks.unlink()
    new = {**init, "tag": "new", "fail_load": True}
    e = _do(kernel, client, client.cb_load("h", file=path, symbol="Hooked", init=new), 1)
    # the old one's on_unload, the new one's on_load (raises), the old one's on_load again
    assert hooks.read_text().split() == ["on_unload:old", "on_load:new", "on_load:old"]
    assert mod.get("h") is old
    assert e["decision"] == "failed" and e["restored"] is True
    assert e["error"] == (
        "h: the new version's on_load raised RuntimeError: new cannot load; the previous "
        "version stays loaded (its on_unload ran, then its on_load again)"
    )
    assert "new cannot load" in e["traceback"] and e["source_capture"]["sha256"]

    # putting it back fails too: said, not hidden
    old.fail_load = True
    hooks.unlink()
    e = _do(kernel, client, client.cb_load("h", file=path, symbol="Hooked", init=new), 2)
    assert hooks.read_text().split() == ["on_unload:old", "on_load:new", "on_load:old"]
    assert e["decision"] == "failed" and e["restored"] is False
    assert e["restore_error"] == "RuntimeError: old cannot load"
    assert "which raised RuntimeError: old cannot load: it may not work" in e["error"]
    assert mod.get("h") is old


PRINT_LOSS = """
class PrintLoss:
    def __init__(self, every=100):
        self.every = every

    def handle(self, event, env):
        loss = env.get("metrics", {}).get("loss")
        if event == "train_step_end" and loss is not None and env["step"] % self.every == 0:
            print(f"step {env['step']}: loss {float(loss):.4f}")
"""


def test_set_params_refuses_a_value_of_another_kind(kernel_factory, write_cb):
    """docs/callbacks.md's PrintLoss: ``cb set_params loss_print every=abc`` was applied, and
    the callback failed at its next step and was disabled (a recipe kept the bad set, so every
    replay did the same). A number stays a number."""
    kernel = kernel_factory()
    client = HotClient(kernel.run_dir)
    client.cb_load("loss_print", file=write_cb(PRINT_LOSS), symbol="PrintLoss", init={"every": 50})
    client.cb_load("hb", path="hotcb.modules.cb.callbacks", symbol="HeartbeatCallback")
    kernel.apply({"step": 0})
    bad = _do(kernel, client, client.cb("set_params", "loss_print", every="abc"), 1)
    assert bad["decision"] == "rejected", bad
    assert bad["error"] == "loss_print: every must be a number, got 'abc' (it is 50 now)"
    flag = _do(kernel, client, client.cb("set_params", "loss_print", every=True), 2)
    assert flag["decision"] == "rejected", flag
    good = _do(kernel, client, client.cb("set_params", "loss_print", every=2.5), 3)
    assert good["decision"] == "applied" and good["changes"]["every"]["new"] == 2.5
    kernel.apply({"step": 4, "metrics": {"loss": 1.0}})
    assert kernel.module("cb").get("loss_print") is not None
    assert [c["id"] for c in kernel.module("cb").describe() if c["enabled"]] == ["loss_print", "hb"]
    # the bundled callbacks' base: a parameter with no check of its own is checked the same
    refused = _do(kernel, client, client.cb("set_params", "hb", rank_zero_only=1), 5)
    assert refused["decision"] == "rejected", refused
    assert "rank_zero_only must be true or false, got 1" in refused["error"]


def test_undo_of_a_set_params_leaves_a_parameter_set_again_since(kernel_factory, write_cb):
    """``cb set_params feats every=20``, then ``every=30``, then an undo of the first: it put
    100 back, and the later change was gone (a knob's undo says "set again since")."""
    kernel = kernel_factory()
    client = HotClient(kernel.run_dir)
    client.cb_load("loss_print", file=write_cb(PRINT_LOSS), symbol="PrintLoss",
                   init={"every": 100})  # fmt: skip
    kernel.apply({"step": 0})
    first = client.cb("set_params", "loss_print", every=20)
    kernel.apply({"step": 1})
    _do(kernel, client, client.cb("set_params", "loss_print", every=30), 2)
    undo = _do(kernel, client, client.undo(cmd_id=first), 3)
    assert undo["decision"] == "noop", undo
    assert "every was set again since (it is 30 now)" in undo["error"], undo["error"]
    assert kernel.module("cb").get("loss_print").every == 30

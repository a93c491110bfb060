"""The autopilot's REST routes against a real uvicorn server, in the three situations the page
meets: the autopilot never ran on the run, it runs headless (``hotcb autopilot``, its own
process), it runs inside this server (``--autopilot``). And ``hotcb serve --autopilot auto`` as
a real process acting on a run whose metrics plateau.

The runs are real kernels (``flat_run``: ``loss`` and ``val_loss`` stay 1.0), the proposals
and records are the real engine's. Tests wait on conditions with deadlines, never on sleeps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hotcb import jsonl
from hotcb.autopilot.engine import RECORDS, STATE, Autopilot, proposals
from hotcb.autopilot.rules import load_rules
from hotcb.metrics import MetricsCollector
from hotcb.runfiles import RunPaths
from hotcb.server.autopilot import NOT_HERE
from hotcb.server.testing import ServeProcess
from hotcb.testing import read_ledger, wait_for

pytestmark = pytest.mark.slow

ENV = {k: v for k, v in os.environ.items() if not k.startswith("HOTCB_")}

#: Two rules on the same plateau: one changes a knob (medium), one only checkpoints (low), so
#: suggest mode makes two proposals at once: A1 (lr) and A2 (checkpoint).
RULES = """\
rules:
  - id: plateau_cut_lr
    when: {detector: plateau, metric: key}
    then: {action: lr_mult, params: {factor: 0.5}}
    cooldown_steps: 100000
    confidence: medium
  - id: plateau_checkpoint
    when: {detector: plateau, metric: key}
    then: {action: checkpoint}
    cooldown_steps: 100000
    confidence: low
  - id: spike_checkpoint
    when: {detector: spike, metric: train}
    then: {action: checkpoint}
    cooldown_steps: 500
    confidence: low
    enabled: false
"""


def rules_file(tmp_path: Path) -> str:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return os.fspath(path)


def headless_once(run: str, rules: str, mode: str = "suggest") -> None:
    """One round of ``hotcb autopilot`` in its own process, as a user runs it; it must not
    import FastAPI (the headless autopilot needs hotcb alone)."""
    code = (
        "import sys\n"
        "from hotcb.cli import main\n"
        f"rc = main(['--dir', {run!r}, 'autopilot', '--mode', {mode!r}, '--rules', {rules!r},"
        " '--key-metric', 'loss', '--once'])\n"
        "assert 'fastapi' not in sys.modules and 'starlette' not in sys.modules\n"
        "sys.exit(rc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def get(c: Any, run: str) -> dict[str, Any]:
    r = c.get(f"/api/runs/{run}/autopilot")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def commands(run: str) -> list[dict[str, Any]]:
    return list(jsonl.iter_records(RunPaths(run).commands))


# ------------------------------------------------------------------------------ never ran
def test_never_ran_is_off_with_the_shipped_rules(tmp_path: Path, live_server: Any, flat_run: Any):
    flat_run(tmp_path / "r")
    srv = live_server()
    with srv.client() as c:
        doc = get(c, "r")
        assert doc["mode"] == "off" and doc["ran"] is False and doc["in_server"] is False
        assert (doc["key_metric"], doc["direction"]) == ("val_loss", "minimize")
        shipped = [r.to_dict() for r in load_rules().rules]
        assert [r["id"] for r in doc["rules"]] == [r["id"] for r in shipped]
        (plateau,) = [r for r in doc["rules"] if r["id"] == "plateau_cut_lr"]
        want = next(r for r in shipped if r["id"] == "plateau_cut_lr")
        assert plateau["when"] == {"detector": "plateau", "metric": "key", "params": {}}
        assert plateau["then"] == want["then"] and plateau["then"]["action"] == "lr_mult"
        assert (plateau["cooldown_steps"], plateau["confidence"]) == (150, "medium")
        assert plateau["enabled"] is True
        assert doc["recent"] == [] and doc["pending"] == []
        # the route for a run at the served root, and an unknown run
        assert c.get("/api/runs/nope/autopilot").status_code == 404
        # nothing to decide, nothing to switch
        r = c.post("/api/runs/r/autopilot/proposals/A1", json={"decision": "accept"})
        assert r.status_code == 404 and "A1" in r.json()["detail"]
        r = c.post("/api/runs/r/autopilot/rules/plateau_cut_lr", json={"enabled": False})
        assert (r.status_code, r.json()["detail"]) == (409, NOT_HERE)
    assert not os.path.exists(os.path.join(tmp_path, "r", STATE))  # reading wrote nothing


# ------------------------------------------------------------------------------ headless
def test_headless_state_accept_reject_and_conflicts(
    tmp_path: Path, live_server: Any, flat_run: Any
) -> None:
    run = flat_run(tmp_path / "r")
    rules = rules_file(tmp_path)
    headless_once(run.path, rules)
    srv = live_server()
    with srv.client() as c:
        doc = get(c, "r")
        assert (doc["mode"], doc["key_metric"], doc["direction"]) == ("suggest", "loss", "minimize")
        assert doc["ran"] is True and doc["in_server"] is False
        assert doc["rules_path"] == rules
        assert {r["id"]: r["enabled"] for r in doc["rules"]} == {
            "plateau_cut_lr": True, "plateau_checkpoint": True, "spike_checkpoint": False,
        }  # fmt: skip
        # the detections, with their evidence and the line that describes it
        det = [r for r in doc["recent"] if r["kind"] == "detection"]
        assert {d["rule"] for d in det} == {"plateau_cut_lr", "plateau_checkpoint"}
        for d in det:
            assert d["describe"].startswith("plateau on loss")
            assert d["evidence"]["n"] >= 3 and d["evidence"]["last"] == 1.0
        assert [(p["id"], p["rule"]) for p in doc["pending"]] == [
            ("A1", "plateau_cut_lr"), ("A2", "plateau_checkpoint"),
        ]  # fmt: skip
        assert doc["pending"][0]["action"] == {"name": "lr_mult", "params": {"factor": 0.5}}

        # rules are switched in the autopilot that runs them; this one has its own process
        r = c.post("/api/runs/r/autopilot/rules/plateau_cut_lr", json={"enabled": False})
        assert (r.status_code, r.json()["detail"]) == (409, NOT_HERE)

        # accept A1: its command, with source autopilot and a reason naming the rule
        r = c.post("/api/runs/r/autopilot/proposals/A1", json={"decision": "accept"})
        assert r.status_code == 200, r.text
        rec = r.json()
        assert (rec["kind"], rec["id"], rec["state"], rec["by"]) == (
            "decision", "A1", "accepted", "dashboard",
        )  # fmt: skip
        (cmd,) = commands(run.path)
        assert rec["cmd_ids"] == [cmd["cmd_id"]]
        assert cmd["source"] == "autopilot" and cmd["module"] == "opt"
        assert cmd["params"] == {"lr": pytest.approx(0.005)}
        assert cmd["reason"].startswith("autopilot rule plateau_cut_lr (A1, accepted by dashboard)")
        # the run applies it: the ledger says who and why
        wait_for(lambda: run.advance(1) or run.lr == pytest.approx(0.005), 20, what="lr cut")
        (entry,) = [e for e in read_ledger(run.path) if e.get("cmd_id") == cmd["cmd_id"]]
        assert entry["decision"] == "applied" and entry["source"] == "autopilot"
        assert entry["reason"] == cmd["reason"]

        # reject A2: a decision, no command
        r = c.post("/api/runs/r/autopilot/proposals/A2", json={"decision": "reject"})
        assert r.status_code == 200 and r.json()["state"] == "rejected"
        assert len(commands(run.path)) == 1
        assert {p["id"]: p["state"] for p in proposals(run.path)} == {
            "A1": "accepted", "A2": "rejected",
        }  # fmt: skip
        assert wait_for(lambda: get(c, "r")["pending"] == [], 10, what="no pending left")

        # decided already: 409 with its state; unknown: 404; a bad body: 422 with the reason
        r = c.post("/api/runs/r/autopilot/proposals/A1", json={"decision": "reject"})
        assert (r.status_code, r.json()["detail"]) == (409, "proposal A1 is accepted, not pending")
        r = c.post("/api/runs/r/autopilot/proposals/A9", json={"decision": "accept"})
        assert r.status_code == 404 and "A9" in r.json()["detail"]
        r = c.post("/api/runs/r/autopilot/proposals/A1", json={"decision": "maybe"})
        assert r.status_code == 422 and "decision" in r.json()["detail"]
        r = c.post("/api/runs/r/autopilot/proposals/A1", json={"decision": "accept", "x": 1})
        assert r.status_code == 422
        assert len(commands(run.path)) == 1
        # same rules as every write: the token, and JSON only
        with srv.client(auth=False) as anon:
            r = anon.post("/api/runs/r/autopilot/proposals/A1", json={"decision": "accept"})
        assert r.status_code == 401
        r = c.post("/api/runs/r/autopilot/proposals/A1", content=b"decision=accept",
                   headers={"content-type": "application/x-www-form-urlencoded"})  # fmt: skip
        assert r.status_code == 415


def test_accepting_an_action_the_run_cannot_take_says_why(tmp_path: Path, live_server: Any) -> None:
    """A proposal whose knob the run does not publish (a metrics file, no kernel): 409 with the
    reason, and the proposal stays pending."""
    run = os.fspath(tmp_path / "r")
    with MetricsCollector(run) as m:
        for s in range(20):
            m.log(s, {"loss": 1.0})
    Autopilot(run, mode="suggest", rules=rules_file(tmp_path), key_metric="loss").step()
    srv = live_server()
    with srv.client() as c:
        r = c.post("/api/runs/r/autopilot/proposals/A1", json={"decision": "accept"})
        assert r.status_code == 409
        assert r.json()["detail"] == "the run publishes no numeric opt.lr to change"
        assert [p["id"] for p in get(c, "r")["pending"]] == ["A1", "A2"]
        assert commands(run) == []


# ------------------------------------------------------------------------------ in this server
def test_in_server_rules_toggle_and_live_push(
    tmp_path: Path, live_server: Any, flat_run: Any
) -> None:
    run = flat_run(tmp_path / "r")
    rules = rules_file(tmp_path)
    srv = live_server(autopilot={"mode": "suggest", "rules": rules, "key_metric": "loss",
                                 "interval_sec": 0.1})  # fmt: skip
    with srv.client() as c, srv.ws() as ws:
        ws.send(json.dumps({"subscribe": ["r"]}))
        doc = wait_for(lambda: (d := get(c, "r"))["in_server"] and len(d["pending"]) == 2 and d,
                       30, what="the server's autopilot to propose")  # fmt: skip
        assert doc["mode"] == "suggest" and doc["ran"] is True
        assert [p["rule"] for p in doc["pending"]] == ["plateau_cut_lr", "plateau_checkpoint"]

        # the page hears of it over the WebSocket: an "autopilot" message with the same doc
        def pushed(cond: Any) -> dict[str, Any]:
            while True:
                msg = json.loads(ws.recv(timeout=30))
                if msg.get("type") == "autopilot" and msg["run"] == "r" and cond(msg["doc"]):
                    return msg["doc"]  # type: ignore[no-any-return]

        assert len(pushed(lambda d: d["in_server"] and d["pending"])["pending"]) == 2

        r = c.post("/api/runs/r/autopilot/rules/plateau_cut_lr", json={"enabled": False})
        assert r.status_code == 200 and r.json() == {"rule": "plateau_cut_lr", "enabled": False}
        doc = pushed(lambda d: not _enabled(d, "plateau_cut_lr"))
        assert _enabled(doc, "plateau_checkpoint") is True
        state = jsonl.read_json(os.path.join(run.path, STATE))
        assert state["disabled"] == ["plateau_cut_lr"]  # kept across restarts
        r = c.post("/api/runs/r/autopilot/rules/plateau_cut_lr", json={"enabled": True})
        assert r.status_code == 200
        pushed(lambda d: _enabled(d, "plateau_cut_lr"))

        # unknown rule: 404; a rule its file keeps off: 409; a body that is not a bool: 422
        r = c.post("/api/runs/r/autopilot/rules/nope", json={"enabled": True})
        assert r.status_code == 404 and "plateau_cut_lr" in r.json()["detail"]
        r = c.post("/api/runs/r/autopilot/rules/spike_checkpoint", json={"enabled": True})
        assert r.status_code == 409 and "enabled: false" in r.json()["detail"]
        r = c.post("/api/runs/r/autopilot/rules/plateau_cut_lr", json={"enabled": "no"})
        assert r.status_code == 422

        # a decision from the page, with the autopilot running here
        r = c.post("/api/runs/r/autopilot/proposals/A2", json={"decision": "accept"})
        assert r.status_code == 200
        (cmd,) = commands(run.path)
        assert (cmd["module"], cmd["op"], cmd["source"]) == ("control", "checkpoint", "autopilot")
        assert "plateau_checkpoint" in cmd["reason"]
        pushed(lambda d: [p["id"] for p in d["pending"]] == ["A1"])


def _enabled(doc: dict[str, Any], rule: str) -> bool:
    return next(r["enabled"] for r in doc["rules"] if r["id"] == rule)  # type: ignore[no-any-return]


def test_in_server_autopilot_leaves_a_run_to_a_live_headless_one(
    tmp_path: Path, live_server: Any, flat_run: Any
) -> None:
    """Two autopilots on one run would act twice: while a headless ``hotcb autopilot`` drives a
    run, the server's leaves it alone (its rules cannot be switched here); once that one
    stops, the server's takes the run over."""
    run = flat_run(tmp_path / "r")
    argv = [sys.executable, "-m", "hotcb", "--dir", run.path, "autopilot", "--mode", "suggest",
            "--rules", rules_file(tmp_path), "--key-metric", "loss", "--interval", "0.2"]  # fmt: skip
    headless = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: os.path.exists(os.path.join(run.path, STATE)), 60,
                 what="the headless autopilot's first round")  # fmt: skip
        srv = live_server(autopilot={"mode": "auto", "interval_sec": 0.1})
        flat_run(tmp_path / "other")  # a run nobody drives: picked up
        with srv.client() as c:
            wait_for(lambda: get(c, "other")["in_server"], 30, what="the other run picked up")
            doc = get(c, "r")
            assert doc["in_server"] is False and doc["mode"] == "suggest"
            r = c.post("/api/runs/r/autopilot/rules/plateau_cut_lr", json={"enabled": False})
            assert r.status_code == 409
            headless.send_signal(signal.SIGINT)
            assert headless.wait(30) == 0
            wait_for(lambda: (d := get(c, "r"))["in_server"] and d["mode"] == "auto", 60,
                     what="the server's autopilot to take the run over")  # fmt: skip
    finally:
        if headless.poll() is None:
            headless.kill()
        headless.communicate(timeout=30)


def test_in_server_autopilot_leaves_finished_runs_alone(
    tmp_path: Path, live_server: Any, flat_run: Any
) -> None:
    """A run whose kernel has closed (``ended`` in ``hotcb.run.json``) and a folder no kernel
    started get no autopilot: no state file, no late action on old data."""
    done = flat_run(tmp_path / "done")
    done.close()
    with MetricsCollector(os.fspath(tmp_path / "bare")) as m:
        for s in range(20):
            m.log(s, {"val_loss": 1.0})
    srv = live_server(autopilot={"mode": "auto", "interval_sec": 0.1})
    live = flat_run(tmp_path / "live")
    with srv.client() as c:
        # a round that picked up "live" has looked at the others too
        wait_for(lambda: get(c, "live")["ran"], 30, what="the live run's first round")
        for name in ("done", "bare"):
            doc = get(c, name)
            assert (doc["in_server"], doc["ran"], doc["mode"]) == (False, False, "off"), name
            assert not os.path.exists(tmp_path / name / STATE)
            assert not os.path.exists(tmp_path / name / RECORDS)
        # the live run ends: its autopilot takes a last round, then stays as it was
        live.close()
        wait_for(lambda: jsonl.read_json(os.path.join(live.path, STATE))["step"] == live.step - 1,
                 30, what="the last round")  # fmt: skip


# ------------------------------------------------------------------------------ serve --autopilot
def test_serve_autopilot_auto_cuts_lr_on_a_plateau(tmp_path: Path, flat_run: Any) -> None:
    """``hotcb serve --autopilot auto`` as a real process, the shipped rules, a run that starts
    after the server: the autopilot picks it up and cuts lr (the shipped plateau rule) when the loss plateaus; the
    ledger says it was the autopilot and which rule; shutdown is clean."""
    root = os.fspath(tmp_path / "runs")
    os.makedirs(root)
    srv = ServeProcess(root, args=["--autopilot", "auto", "--key-metric", "loss"],
                       env={"HOTCB_TOKEN": "t", "HOTCB_AUTOPILOT__INTERVAL_SEC": "0.2"})  # fmt: skip
    srv.start(timeout=60)
    try:
        assert "hotcb autopilot (auto) on every run served; key metric loss" in srv.stdout()
        run = flat_run(os.path.join(root, "late"), steps=1).start(delay=0.02)

        def cut() -> dict[str, Any] | None:
            return next((e for e in read_ledger(run.path) if e.get("source") == "autopilot"
                         and e.get("module") == "opt"), None)  # fmt: skip

        entry = wait_for(cut, 120, what="the autopilot's lr cut in the ledger")
        assert entry["decision"] == "applied"
        factor = next(r for r in load_rules().rules if r.id == "plateau_cut_lr").action.params
        assert entry["changes"]["lr"] == {
            "old": 0.01,
            "new": pytest.approx(0.01 * factor["factor"]),
        }
        assert entry["reason"].startswith("autopilot rule plateau_cut_lr: plateau on loss")
        recs = list(jsonl.iter_records(os.path.join(run.path, RECORDS)))
        (action,) = [r for r in recs if r["kind"] == "action" and r["rule"] == "plateau_cut_lr"]
        assert action["state"] == "applied" and action["cmd_ids"] == [entry["cmd_id"]]
        assert any(r["kind"] == "detection" and r["rule"] == "plateau_cut_lr" for r in recs)
        # Ctrl-C: the server stops with its autopilot, at once and cleanly (130: as any
        # `hotcb serve` stopped by Ctrl-C; uvicorn passes the signal on once it has shut down)
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGINT)
        assert srv.proc.wait(30) == 130
    finally:
        srv.stop()
    err = srv.stderr()
    assert "Traceback" not in err and "failed" not in err, err
    # the state file is whole after shutdown (a round is never cut in the middle)
    state = jsonl.read_json(os.path.join(root, "late", STATE))
    assert state["mode"] == "auto" and state["fired"]["plateau_cut_lr"] >= 0


def test_serve_refuses_a_broken_rules_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - id: a\n    when: {detector: plato}\n    then: {action: lr_mult}\n")
    argv = [sys.executable, "-m", "hotcb", "--dir", os.fspath(tmp_path), "serve", "--port", "0",
            "--autopilot", "suggest", "--autopilot-rules", os.fspath(bad)]  # fmt: skip
    out = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "line 3: rules[0].when.detector: 'plato' is not one of" in out.stderr
    assert "hotcb dashboard for" not in out.stdout

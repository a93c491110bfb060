"""WebSocket pushes against a real uvicorn server with a real ``websockets`` client."""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from hotcb import HotKernel, loss_actuators, mutable_state
from hotcb.metrics import MetricsCollector
from hotcb.testing import trainer_command, wait_for

pytestmark = pytest.mark.slow


class Inbox:
    """Messages from one connection, read until a condition holds (with a deadline)."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []

    def until(self, pred: Any, timeout: float = 10.0, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            found = pred(self.messages)
            if found:
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                types = [m.get("type") for m in self.messages]
                raise TimeoutError(f"no {what or pred} after {timeout:g}s; got {types}")
            try:
                self.messages.append(json.loads(self.ws.recv(timeout=left)))
            except TimeoutError:
                continue

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == kind]


def test_appended_metrics_reach_the_client(tmp_path, live_server):
    run = os.fspath(tmp_path / "r")
    collector = MetricsCollector(run)
    collector.log(0, {"loss": 2.0})
    srv = live_server()
    with srv.ws() as ws:
        inbox = Inbox(ws)
        hello = inbox.until(lambda ms: [m for m in ms if m["type"] == "hello"], what="hello")[0]
        assert hello["version"] and hello["config"]["stale_after_sec"] == 30.0
        ws.send(json.dumps({"subscribe": ["r"]}))
        inbox.until(lambda ms: [m for m in ms if m["type"] == "status"], what="status snapshot")
        # history (step 0) is served over REST; only new records are pushed
        for s in range(1, 31):
            collector.log(s, {"loss": 2.0 / (s + 1), "acc": s / 30})
        collector.close()

        def steps(ms: list[dict[str, Any]]) -> list[int]:
            return [r["step"] for m in ms if m["type"] == "metrics" for r in m["records"]]

        inbox.until(lambda ms: steps(ms)[-1:] == [30], what="step 30")
        assert steps(inbox.messages) == list(range(1, 31))  # each once, in order
        assert all(m["run"] == "r" for m in inbox.of("metrics"))
        last = inbox.of("metrics")[-1]["records"][-1]
        assert last["metrics"] == {"loss": 2.0 / 31, "acc": 1.0}


def test_ledger_actuators_and_commands_are_pushed(tmp_path, live_server):
    run = os.fspath(tmp_path / "r")
    weights = {"ce": 1.0, "l2": 0.0}
    kernel = HotKernel(run, mutable_state=mutable_state(loss_actuators(weights)))
    kernel.apply({"step": 0, "metrics": {"loss": 1.0}})
    srv = live_server()
    with srv.ws() as ws, srv.client() as c:
        inbox = Inbox(ws)
        ws.send(json.dumps({"subscribe": ["r"]}))
        inbox.until(lambda ms: [m for m in ms if m["type"] == "status"], what="snapshot")
        # the run's state once (the first page on a run got it twice: the refresh's, then the
        # snapshot's)
        assert [len(inbox.of(kind)) for kind in ("actuators", "tune", "autopilot")] == [1, 1, 1]
        snap = inbox.of("actuators")
        assert {a["param_key"] for a in snap[0]["doc"]["actuators"]} >= {"ce", "l2"}
        body = {"module": "loss", "op": "set_params", "params": {"ce": 0.25}}
        cmd_id = c.post("/api/runs/r/commands", json=body).json()["cmd_id"]
        cmds = inbox.until(
            lambda ms: [r for m in ms if m["type"] == "commands" for r in m["records"]],
            what="commands message",
        )
        assert [r["cmd_id"] for r in cmds] == [cmd_id] and cmds[0]["source"] == "dashboard"
        step = 1
        deadline = time.monotonic() + 10
        while weights["ce"] != 0.25 and time.monotonic() < deadline:
            kernel.apply({"step": step, "metrics": {"loss": weights["ce"]}})
            step += 1
        kernel.flush()
        entries = inbox.until(
            lambda ms: [
                e
                for m in ms
                if m["type"] == "ledger"
                for e in m["entries"]
                if e["cmd_id"] == cmd_id
            ],
            what="ledger entry",
        )
        assert entries[0]["decision"] == "applied" and entries[0]["source"] == "dashboard"
        # the actuators file is rewritten with the new value and pushed again
        inbox.until(
            lambda ms: [
                a
                for m in ms
                if m["type"] == "actuators"
                for a in m["doc"]["actuators"]
                if a["param_key"] == "ce" and a["current"] == 0.25
            ],
            what="actuators doc with ce=0.25",
        )
    kernel.close()


def test_periodic_status_and_unknown_run(tmp_path, live_server):
    with MetricsCollector(os.fspath(tmp_path)) as m:
        m.log(7, {"loss": 1.0})
    srv = live_server(status_interval_sec=0.1)
    with srv.ws() as ws:
        inbox = Inbox(ws)
        ws.send(json.dumps({"subscribe": [".", "missing"]}))
        err = inbox.until(lambda ms: [m for m in ms if m["type"] == "error"], what="error")
        assert err[0]["run"] == "missing"
        inbox.until(lambda ms: len([m for m in ms if m["type"] == "status"]) >= 3, what="3 status")
        st = inbox.of("status")[-1]
        assert st["run"] == "." and st["stale"] is False and st["last_step"] == 7
        ws.send(json.dumps({"type": "ping"}))
        inbox.until(lambda ms: [m for m in ms if m["type"] == "pong"], what="pong")


def test_a_message_it_cannot_read_is_answered_and_the_socket_stays(tmp_path, live_server):
    """A binary frame raised KeyError in the server and dropped the socket without a close
    frame; ``{"type": "bogus"}`` or a JSON list went unanswered."""
    with MetricsCollector(os.fspath(tmp_path)) as m:
        m.log(7, {"loss": 1.0})
    srv = live_server()
    with srv.ws() as ws:
        inbox = Inbox(ws)
        for frame in (b"\x00\x01binary", json.dumps({"type": "bogus"}), "[1, 2]"):
            ws.send(frame)
            n = len(inbox.of("error")) + 1
            inbox.until(lambda ms, n=n: len([m for m in ms if m["type"] == "error"]) >= n,
                        what="an error")  # fmt: skip
        details = [e["detail"] for e in inbox.of("error")]
        assert details == ["messages must be JSON text, not binary frames",
                           'expected {"subscribe": [run ids]} or {"type": "ping"}',
                           'expected {"subscribe": [run ids]} or {"type": "ping"}']  # fmt: skip
        ws.send(json.dumps({"type": "ping"}))  # the socket still works
        inbox.until(lambda ms: [m for m in ms if m["type"] == "pong"], what="pong")


def test_ws_needs_token_when_set(tmp_path, live_server):
    with MetricsCollector(os.fspath(tmp_path / "r")) as m:
        m.log(0, {"loss": 1.0})
    srv = live_server(token="tok")
    with pytest.raises(InvalidStatus) as info, connect(srv.ws_url):  # no token at all
        pass
    assert info.value.response.status_code == 401
    with pytest.raises(InvalidStatus), connect(srv.ws_url + "?token=nope"):
        pass
    with connect(srv.ws_url + "?token=tok") as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "hello"
    with connect(srv.ws_url, additional_headers={"Authorization": "Bearer tok"}) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "hello"


def test_ws_from_another_site_is_refused(tmp_path, live_server):
    with MetricsCollector(os.fspath(tmp_path / "r")) as m:
        m.log(0, {"loss": 1.0})
    srv = live_server()
    with pytest.raises(InvalidStatus) as info, srv.ws(origin="https://evil.example"):
        pass
    assert info.value.response.status_code == 403
    with srv.ws(origin=srv.url) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "hello"


def test_real_trainer_steered_from_the_dashboard(tmp_path, live_server):
    """A real training process (torch, digits) watched over the WebSocket and steered by POSTs:
    the lr change is applied with source "dashboard" and shows up in the pushed metrics, and a
    stop command ends the process."""
    pytest.importorskip("torch")
    run = tmp_path / "run"
    run.mkdir()
    (run / "hotcb.commands.jsonl").touch()  # the run exists for the server before training
    proc = subprocess.Popen(
        trainer_command(run, steps=100_000, step_delay=0.005, no_code_load=True),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        srv = live_server()
        with srv.ws() as ws, srv.client() as c:
            inbox = Inbox(ws)
            ws.send(json.dumps({"subscribe": ["run"]}))
            inbox.until(lambda ms: [m for m in ms if m["type"] == "metrics"], 60, "metrics")
            wait_for(
                lambda: any(
                    a["param_key"] == "lr"
                    for a in c.get("/api/runs/run/actuators").json()["actuators"]
                ),
                30,
                what="the lr actuator",
            )
            body = {"module": "opt", "op": "set_params", "params": {"lr": 0.00123}}
            cmd_id = c.post("/api/runs/run/commands", json=body).json()["cmd_id"]
            (entry,) = inbox.until(
                lambda ms: [
                    e
                    for m in ms
                    if m["type"] == "ledger"
                    for e in m["entries"]
                    if e["cmd_id"] == cmd_id
                ],
                30,
                "the lr ledger entry",
            )
            assert entry["decision"] == "applied" and entry["source"] == "dashboard"
            assert entry["changes"]["lr"]["new"] == 0.00123
            inbox.until(
                lambda ms: [
                    r
                    for m in ms
                    if m["type"] == "metrics"
                    for r in m["records"]
                    if r["step"] > entry["step"] and r["metrics"]["lr"] == 0.00123
                ],
                30,
                "metrics with the new lr",
            )
            c.post("/api/runs/run/commands", json={"module": "control", "op": "stop"})
            assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def test_tune_state_is_pushed_redacted(tmp_path, live_server, tune_state):
    """A ``tune`` snapshot on subscribe, then the tuner's state document each time it changes."""
    run = os.fspath(tmp_path / "r")
    with MetricsCollector(run) as m:
        m.log(0, {"loss": 1.0})
    srv = live_server()
    with srv.ws() as ws:
        inbox = Inbox(ws)
        ws.send(json.dumps({"subscribe": ["r"]}))
        snap = inbox.until(lambda ms: [m for m in ms if m["type"] == "tune"], what="tune snapshot")
        assert snap[0] == {"type": "tune", "run": "r", "doc": {"mode": "off"}}
        tune_state(run, storage="postgresql://bob:s3cr3t@db/optuna", trial=8)
        pushed = inbox.until(
            lambda ms: [m for m in ms if m["type"] == "tune" and m["doc"]["mode"] == "suggest"],
            what="the tuner's state",
        )
        assert pushed[0]["run"] == "r" and pushed[0]["doc"]["trial"] == 8
        assert pushed[0]["doc"]["storage"] == "postgresql://bob:***@db/optuna"
        assert "s3cr3t" not in json.dumps(inbox.messages)


def test_a_storage_password_in_a_tune_enable_never_reaches_the_page(tmp_path, live_server):
    """``tune enable --storage postgresql://user:password@host/db`` carries the password to the
    run in the command's params, and the ledger entry repeats them: the dashboard served both,
    over the WebSocket and the ledger endpoint. It now shows ``user:***@``."""
    from hotcb import HotClient

    run = os.fspath(tmp_path / "r")
    kernel = HotKernel(run, poll_interval_sec=0)
    kernel.apply({"step": 0, "metrics": {"loss": 1.0}})
    url = "postgresql://ann:s3cr3t@127.0.0.1:1/optuna"
    srv = live_server()
    try:
        with srv.ws() as ws, srv.client() as c:
            inbox = Inbox(ws)
            ws.send(json.dumps({"subscribe": ["r"]}))
            inbox.until(lambda ms: [m for m in ms if m["type"] == "status"], what="status")
            cmd_id = HotClient(run).tune_enable("active", objective="loss", storage=url)
            step = 1

            def answered() -> bool:  # applied, then the run fails to open the study
                nonlocal step
                kernel.apply({"step": step, "metrics": {"loss": 1.0}})
                step += 1
                kernel.flush()
                return HotClient(run).tune_status().get("mode") == "off" and step > 2

            wait_for(answered, timeout=60, what="the run to try the storage")
            ledger = inbox.until(
                lambda ms: [e for m in ms if m["type"] == "ledger" for e in m["entries"]
                            if e.get("cmd_id") == cmd_id and e["decision"] == "failed"],
                timeout=30, what="the failed enable",
            )  # fmt: skip
            # the command's own push may come in the same batch as, after, its entries
            cmds = inbox.until(
                lambda ms: [r for m in ms if m["type"] == "commands" for r in m["records"]],
                timeout=30, what="the command",
            )  # fmt: skip
            assert [r["cmd_id"] for r in cmds] == [cmd_id]
            assert cmds[0]["params"]["storage"] == "postgresql://ann:***@127.0.0.1:1/optuna"
            assert "ann:***@127.0.0.1" in ledger[0]["error"]
            applied = c.get("/api/runs/r/ledger").json()
            assert "s3cr3t" not in json.dumps(applied) and "ann:***@" in json.dumps(applied)
            assert not [m for m in inbox.messages if "s3cr3t" in json.dumps(m)]
    finally:
        kernel.close()
    # the run itself still has the URL it needs to open the study
    with open(os.path.join(run, "hotcb.commands.jsonl")) as f:
        assert "s3cr3t" in f.read()


def test_a_quiet_run_is_polled_less_and_its_news_still_comes(
    tmp_path: Any, live_server: Any, monkeypatch: Any
) -> None:
    """A watched run quiet for a while is polled every half second (60 idle runs held the
    server at 9 % of a core): its next line still reaches the page, and the server then
    polls it at full speed again."""
    from hotcb.server import tailer

    monkeypatch.setattr(tailer, "QUIET_AFTER_SEC", 0.3)
    run = os.fspath(tmp_path / "r")
    collector = MetricsCollector(run)
    collector.log(0, {"loss": 2.0})
    srv = live_server()
    with srv.ws() as ws:
        inbox = Inbox(ws)
        ws.send(json.dumps({"subscribe": ["r"]}))
        inbox.until(lambda ms: [m for m in ms if m["type"] == "status"], what="status snapshot")
        watcher = srv.server.config.app.state.tailer
        wait_for(lambda: watcher._due.get("r", 0.0) > 0, 30, what="the run to be quiet")
        collector.log(1, {"loss": 1.0})
        collector.flush()
        inbox.until(lambda ms: [r for m in ms if m["type"] == "metrics"
                                for r in m["records"] if r["step"] == 1], what="the new line")  # fmt: skip
        wait_for(lambda: watcher._due.get("r") == 0.0, 30, what="full speed again")
    collector.close()

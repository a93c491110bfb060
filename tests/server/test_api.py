"""REST API against a real uvicorn server on 127.0.0.1 (random port)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from typing import Any

import pytest

from hotcb import HotClient, HotKernel, jsonl, loss_actuators, mutable_state
from hotcb.metrics import MetricsCollector
from hotcb.runfiles import RunPaths
from hotcb.testing import read_ledger, wait_for

pytestmark = pytest.mark.slow


JSON = {"content-type": "application/json"}


def make_run(path: Any, steps: int = 50, **extra: float) -> str:
    run = os.fspath(path)
    with MetricsCollector(run) as m:
        for s in range(steps):
            m.log(s, {"loss": 1.0 / (s + 1), **extra})
    return run


def drive_until(kernel: HotKernel, weights: dict[str, float], cond: Any, start: int = 0) -> int:
    """Call ``kernel.apply`` step after step until ``cond()`` holds; return the last step."""
    step = [start]

    def tick() -> Any:
        kernel.apply({"step": step[0], "metrics": {"loss": weights["ce"]}})
        step[0] += 1
        return cond()

    wait_for(tick, timeout=20, what="the kernel to apply the command")
    return step[0] - 1


def test_health_config_and_runs_discovery(tmp_path, live_server):
    make_run(tmp_path / "a")
    make_run(tmp_path / "group" / "b")
    make_run(tmp_path / "x" / "y" / "too_deep")
    srv = live_server(scan_depth=2)
    with srv.client() as c:
        assert c.get("/api/health").json()["ok"] is True
        cfg = c.get("/api/config").json()
        assert cfg["history_max_points"] == 2000 and "token" not in cfg
        runs = {r["run_id"]: r for r in c.get("/api/runs").json()["runs"]}
        assert set(runs) == {"a", "group/b"}
        assert runs["a"]["last_step"] == 49 and runs["a"]["stale"] is False
        assert runs["a"]["freeze_mode"] == "off"
        # a run appearing later shows up on the next call (re-scan)
        make_run(tmp_path / "c", steps=3)
        assert "c" in {r["run_id"] for r in c.get("/api/runs").json()["runs"]}
        # nested ids, URL-encoded
        assert c.get("/api/runs/group%2Fb/metrics/names").json() == {"names": ["loss"]}
        assert c.get("/api/runs/nope/status").status_code == 404
        assert c.get("/api/runs/..%2F..%2Fetc/status").status_code == 404
        assert c.get("/openapi.json").json()["info"]["title"] == "hotcb dashboard"


def test_a_folders_own_hotcb_yaml_makes_no_run_and_a_run_may_be_named_hotcb_x(
    tmp_path, live_server
):
    """The served folder with a ``hotcb.yaml`` (or a tuner recipe) was listed as a run ".",
    which every command then refused; a run folder named ``hotcb.exp`` was never listed."""
    (tmp_path / "hotcb.yaml").write_text("port: 8765\n")
    (tmp_path / "hotcb.tune.yaml").write_text("space: []\n")
    make_run(tmp_path / "a", steps=3)
    make_run(tmp_path / "hotcb.exp", steps=3)
    (tmp_path / "a" / "hotcb.sources").mkdir()  # a run's own hotcb.* folder: not a run
    (tmp_path / "a" / "hotcb.sources" / "hotcb.run.json").write_text("{}")
    srv = live_server()
    with srv.client() as c:
        assert [r["run_id"] for r in c.get("/api/runs").json()["runs"]] == ["a", "hotcb.exp"]
        assert c.get("/api/runs/hotcb.exp/status").json()["last_metrics"]["step"] == 2


def test_root_run_is_dot(tmp_path, live_server):
    make_run(tmp_path, steps=5)
    srv = live_server()
    with srv.client() as c:
        assert [r["run_id"] for r in c.get("/api/runs").json()["runs"]] == ["."]
        # browsers drop "/./" from URLs: the route without the id segment is the root run
        assert c.get("/api/runs/metrics/names").json() == {"names": ["loss"]}
        assert c.get("/api/runs/status").json()["last_metrics"]["step"] == 4


def test_a_fifo_in_a_runs_file_costs_neither_the_list_nor_the_server(tmp_path, live_server):
    """A FIFO in place of a run's metrics file hung the server in open() (reading a run's
    last record, and tailing it), and with it every page; now that run reads as empty."""
    make_run(tmp_path / "ok", steps=5)
    bad = make_run(tmp_path / "odd", steps=5)
    os.unlink(RunPaths(bad).metrics)
    os.mkfifo(RunPaths(bad).metrics)
    srv = live_server()
    with srv.client() as c:
        runs = {r["run_id"]: r for r in c.get("/api/runs").json()["runs"]}
        assert runs["ok"]["last_step"] == 4 and "odd" in runs
        assert c.get("/api/runs/odd/metrics").json()["total_points"] == 0
        assert c.get("/api/runs/ok/status").json()["last_metrics"]["step"] == 4


def test_a_run_folder_whose_name_is_not_utf8_leaves_the_others_listed(
    tmp_path, live_server, caplog
):
    """One run folder named in Latin-1 (``caf\\xe9``) beside the others: the list of runs
    failed whole (500), and the page said "no runs yet". The others are listed; that one is
    named in the server's log, to rename."""
    make_run(tmp_path / "ok", steps=5)
    make_run(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"caf\xe9")), steps=5)
    srv = live_server()
    with caplog.at_level("WARNING", logger="hotcb.server"), srv.client() as c:
        listed = c.get("/api/runs")
        assert listed.status_code == 200, listed.text
        assert [r["run_id"] for r in listed.json()["runs"]] == ["ok"]
    said = [r.getMessage() for r in caplog.records if "is not shown" in r.getMessage()]
    assert said == [f"hotcb serve: {tmp_path}/caf\ufffd is not shown: its folder name is not "
                    "UTF-8 text; rename it"]  # fmt: skip


def test_the_status_serves_a_launched_command_without_its_secrets(tmp_path, live_server):
    """A run launched by an older hotcb has its command, secrets and all, in
    ``hotcb.run.json``: the status the dashboard serves leaves them out."""
    run = make_run(tmp_path / "old", steps=3)
    meta = jsonl.read_json(RunPaths(run).run_meta, {})
    meta["launch"] = {"argv": ["python", "train.py", "--api-key", "sk-0ld", "--lr", "0.1"]}
    jsonl.write_json_atomic(RunPaths(run).run_meta, meta)
    srv = live_server()
    with srv.client() as c:
        served = c.get("/api/runs/old/status").json()["run"]
    assert served["launch"]["argv"] == ["python", "train.py", "--api-key", "***", "--lr", "0.1"]


def test_the_status_serves_a_run_meta_without_its_secrets(tmp_path, live_server, cli):
    """A training config passed whole as ``run_meta`` (``HotKernel(run_meta=cfg)``) is in
    ``hotcb.run.json``, which the dashboard serves: its tokens were served as written."""
    run = os.fspath(tmp_path / "cfg")
    config = {"api_key": "sk-live", "hf_token": "hf_live", "max_tokens": 512, "lr": 0.1,
              "use_auth_token": True, "db": "postgresql://me:pw1@db/x", "cmd": "x --api-key k9",
              "headers": {"Authorization": "Bearer sk-auth"}, "api_keys": ["sk-many"],
              "wandb": {"key": "wb-key", "project": "p"}, "token": "123456789",
              "as_text": '{"api_key": "sk-text", "lr": 0.1}', "pad_token": "<pad>",
              "tokenizer": "t5", "key_metric": "val_loss", "access_tokens": ["sk-plural"],
              "auth_header": "Bearer sk-hdr", "trackers": {"wandb": [{"key": "wb-list"}]},
              "files": ["a.txt", "b.txt"]}  # fmt: skip
    argv = ["train.py", "--hf-token", "hf_argv", "--lr", "0.1"]  # sys.argv, kept by the user
    client = HotClient(run)
    kernel = HotKernel(run, run_meta={"config": config, "argv": argv})
    client.loss(a=0.5)
    kernel.apply({"step": 0, "metrics": {"loss": 1.0}})
    kernel.close()
    srv = live_server()
    with srv.client() as c:
        served = c.get("/api/runs/cfg/status")
        recipe = c.get("/api/runs/cfg/recipe")  # its header carries the run's meta
    assert served.status_code == 200 and recipe.status_code == 200
    assert served.json()["run"]["config"] == {
        "api_key": "***", "hf_token": "***", "max_tokens": 512, "lr": 0.1,
        "use_auth_token": True, "db": "postgresql://me:***@db/x", "cmd": "x --api-key ***",
        "headers": {"Authorization": "***"}, "api_keys": "***",
        "wandb": {"key": "***", "project": "p"}, "token": "***",
        "as_text": '{"api_key": "***", "lr": 0.1}', "pad_token": "<pad>", "tokenizer": "t5",
        "key_metric": "val_loss", "access_tokens": "***", "auth_header": "Bearer ***",
        "trackers": {"wandb": [{"key": "***"}]}, "files": ["a.txt", "b.txt"],
    }  # fmt: skip
    assert served.json()["run"]["argv"] == ["train.py", "--hf-token", "***", "--lr", "0.1"]
    header = json.loads(recipe.text.splitlines()[0])
    assert header["run"]["config"] == served.json()["run"]["config"]
    said = cli(run, "status", "--json").stdout  # (pasted into issues and CI logs)
    assert json.loads(said)["run"]["config"] == served.json()["run"]["config"]
    for secret in ("sk-live", "hf_live", "pw1", "k9", "sk-auth", "sk-many", "wb-key",
                   "123456789", "sk-text", "hf_argv", "sk-plural", "sk-hdr", "wb-list"):  # fmt: skip
        assert secret not in served.text + recipe.text + said, secret


@pytest.mark.parametrize("bad", ['{"mode": "weird"}', '"junk"', '{"mode": "prod", "step_offset": "x"}',
                                 '{"mode": "prod", "step_offset": 1e400}'])  # fmt: skip
def test_a_run_s_unreadable_freeze_file_leaves_the_runs_listed(tmp_path, live_server, bad):
    """One run's ``hotcb.freeze.json`` holding what hotcb does not know (a shared folder,
    anyone may write it) made ``/api/runs`` a 500 for every run: the page showed none. That
    run is listed with the mode its ledger last set (the kernel's reading too), and its status
    says why."""
    make_run(tmp_path / "good", steps=3)
    frozen = make_run(tmp_path / "bad", steps=3)
    client = HotClient(frozen)
    client.freeze("prod")
    kernel = HotKernel(frozen)
    kernel.apply({"step": 3})
    kernel.close()
    with open(RunPaths(frozen).freeze, "w") as f:
        f.write(bad)
    srv = live_server()
    with srv.client() as c:
        listed = c.get("/api/runs")
        assert listed.status_code == 200, listed.text
        modes = {r["run_id"]: r["freeze_mode"] for r in listed.json()["runs"]}
        assert modes == {"good": "off", "bad": "prod"}
        status = c.get("/api/runs/bad/status")
    assert status.status_code == 200, status.text
    freeze = status.json()["freeze"]
    assert freeze["mode"] == "prod"
    assert freeze["warning"].endswith("is unreadable; the freeze mode is prod, from the "
                                      "ledger's last freeze set (#1, step 3)"), freeze  # fmt: skip


def test_a_branch_whose_parent_holds_a_nul_leaves_the_runs_listed(tmp_path, live_server):
    """A ``hotcb.run.json`` whose branch parent holds a NUL byte made ``/api/runs`` a 500
    (realpath raises on it): the parent is not found, the list is served."""
    make_run(tmp_path / "ok", steps=3)
    odd = make_run(tmp_path / "odd", steps=3)
    jsonl.write_json_atomic(RunPaths(odd).run_meta, {"branch": {"parent": "a\x00b", "step": 1}})
    srv = live_server()
    with srv.client() as c:
        listed = c.get("/api/runs")
    assert listed.status_code == 200, listed.text
    runs = {r["run_id"]: r for r in listed.json()["runs"]}
    assert runs["odd"]["branch"] == {"parent": None, "parent_path": "a\x00b", "step": None}
    assert runs["ok"]["branch"] is None


def test_runs_list_step_follows_a_loaded_run_nobody_watches(tmp_path, live_server):
    """A run the server loaded once (a page looked at it or compared it, then left it) is no
    longer tailed: the list's step still follows its files (it stuck at the step of that
    load: "sweep/a step 967" while the run was past 1200)."""
    run = make_run(tmp_path / "sweep" / "a", steps=968)
    make_run(tmp_path / "sweep" / "b", steps=5)
    srv = live_server()
    with srv.client() as c:
        assert c.get("/api/runs/sweep/a/status").json()["last_step"] == 967  # loaded now
        with MetricsCollector(run) as m:
            for s in range(968, 1201):
                m.log(s, {"loss": 1.0 / (s + 1)})
        runs = {r["run_id"]: r for r in c.get("/api/runs").json()["runs"]}
        assert runs["sweep/a"]["last_step"] == 1200, runs["sweep/a"]
        assert runs["sweep/b"]["last_step"] == 4


def test_posted_command_lands_once_and_kernel_applies_it_as_dashboard(tmp_path, live_server):
    run = make_run(tmp_path / "r")
    weights = {"ce": 1.0, "l2": 0.0}
    kernel = HotKernel(run, mutable_state=mutable_state(loss_actuators(weights)))
    kernel.apply({"step": 0})  # writes the actuators file
    srv = live_server()
    with srv.client() as c:
        acts = c.get("/api/runs/r/actuators").json()["actuators"]
        assert {a["param_key"] for a in acts} >= {"ce", "l2"}
        # the client may claim any source: the server records "dashboard"
        body = {"module": "loss", "op": "set_params", "params": {"ce": 0.5}, "source": "cli"}
        r = c.post("/api/runs/r/commands", json=body)
        assert r.status_code == 200, r.text
        cmd_id = r.json()["cmd_id"]
        lines = list(jsonl.iter_records(RunPaths(run).commands))
        assert [rec["cmd_id"] for rec in lines] == [cmd_id]
        assert lines[0]["source"] == "dashboard" and lines[0]["params"] == {"ce": 0.5}

        drive_until(kernel, weights, lambda: weights["ce"] == 0.5, start=1)
        (entry,) = [e for e in read_ledger(run) if e["cmd_id"] == cmd_id]
        assert entry["decision"] == "applied" and entry["source"] == "dashboard"
        assert entry["changes"]["ce"] == {"old": 1.0, "new": 0.5}

        led = c.get("/api/runs/r/ledger", params={"source": "dashboard"}).json()["entries"]
        assert [e["cmd_id"] for e in led] == [cmd_id]
        assert c.get("/api/runs/r/ledger", params={"decision": "rejected"}).json() == {
            "entries": []
        }
    kernel.close()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"module": "opt", "op": "set_params", "params": {}}, "needs at least one parameter"),
        ({"module": "nope", "op": "x"}, "unknown module 'nope'"),
        ({"module": "opt", "op": "explode"}, "unknown op 'explode'"),
        ({"module": "opt", "op": "set_params", "params": {"lr": 1}, "at_step": -3}, "at_step"),
        ({"op": "set_params"}, "'module' and 'op'"),
        ([1, 2], "JSON object"),
        ({"module": "control", "op": "cancel"}, "params.cmd_id"),
    ],
)
def test_malformed_command_is_422_with_reason(tmp_path, live_server, body, reason):
    run = make_run(tmp_path / "r", steps=2)
    srv = live_server()
    with srv.client() as c:
        r = c.post("/api/runs/r/commands", json=body)
    assert r.status_code == 422
    assert reason in r.json()["detail"]
    assert not os.path.exists(RunPaths(run).commands)


def test_a_posted_cmd_id_that_is_taken_or_unprintable_is_422(tmp_path, live_server):
    """The run would skip a second command with an id it has (a duplicate), and a newline in
    an id breaks `hotcb log`: both refused, nothing written."""
    run = make_run(tmp_path / "r", steps=2)
    srv = live_server()
    body = {"module": "opt", "op": "set_params", "params": {"lr": 0.002}, "cmd_id": "mine1"}
    with srv.client() as c:
        assert c.post("/api/runs/r/commands", json=body).json()["cmd_id"] == "mine1"
        r = c.post("/api/runs/r/commands", json={**body, "params": {"lr": 0.0021}})
        assert r.status_code == 422 and "cmd_id 'mine1' is taken" in r.json()["detail"]
        r = c.post("/api/runs/r/commands", json={**body, "cmd_id": "a\nb"})
        assert r.status_code == 422 and "printable" in r.json()["detail"]
        for taken in ("#1", "@weird"):  # the CLI's ledger numbers, hotcb's own ids
            r = c.post("/api/runs/r/commands", json={**body, "cmd_id": taken})
            assert r.status_code == 422, r.text
            assert f"'cmd_id' must not start with '{taken[0]}'" in r.json()["detail"]
    assert [rec["cmd_id"] for rec in jsonl.iter_records(RunPaths(run).commands)] == ["mine1"]


def test_non_finite_and_non_json_bodies_are_422(tmp_path, live_server):
    make_run(tmp_path / "r", steps=2)
    srv = live_server()
    with srv.client() as c:
        r = c.post(
            "/api/runs/r/commands",
            content=b'{"module":"opt","op":"set_params","params":{"lr":1e400}}',
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 422 and "finite" in r.json()["detail"]
        r = c.post("/api/runs/r/commands", content=b"not json", headers=JSON)
        assert r.status_code == 422
        # a non-JSON content type is what a cross-site form/fetch can send without preflight
        for ctype in ("text/plain", "application/x-www-form-urlencoded"):
            body = b'{"module":"control","op":"stop"}'
            r = c.post("/api/runs/r/commands", content=body, headers={"content-type": ctype})
            assert r.status_code == 415 and "application/json" in r.json()["detail"]
        r = c.get("/api/runs/r/metrics", params={"step_min": "abc"})
        assert r.status_code == 422 and "step_min" in r.json()["detail"]
        for bound in ("nan", "inf", "-inf", "1e400"):  # math.ceil(nan): a 500
            r = c.get("/api/runs/r/metrics", params={"step_max": bound})
            assert r.status_code == 422 and "step_max must be a finite number" in r.text, r.text


def test_code_load_refused_unless_allowed(tmp_path, live_server):
    make_run(tmp_path / "r", steps=2)
    body = {
        "module": "cb",
        "op": "load",
        "id": "x",
        "target": {"kind": "python_path", "path": "json", "symbol": "dumps"},
    }
    with live_server().client() as c:
        r = c.post("/api/runs/r/commands", json=body)
        assert r.status_code == 403 and "allow_code_load" in r.json()["detail"]
    with live_server(allow_code_load=True).client() as c:
        assert c.post("/api/runs/r/commands", json=body).status_code == 200


def test_freeze_endpoint(tmp_path, live_server):
    run = make_run(tmp_path / "r", steps=2)
    with live_server().client() as c:
        r = c.post("/api/runs/r/freeze", json={"mode": "prod"})
        assert r.status_code == 200
        (rec,) = jsonl.iter_records(RunPaths(run).commands)
        assert rec["module"] == "freeze" and rec["mode"] == "prod" and rec["source"] == "dashboard"
        r = c.post("/api/runs/r/freeze", json={"mode": "sideways"})
        assert r.status_code == 422 and "freeze mode must be one of" in r.json()["detail"]
        # a replay without its recipe: refused here, not by the trainer in a ledger row
        r = c.post("/api/runs/r/freeze", json={"mode": "replay"})
        assert r.status_code == 422, r.text
        assert r.json()["detail"] == ("freeze mode replay replays a recipe: send recipe_path "
                                      "(from the CLI: hotcb --dir RUN freeze --mode replay "
                                      "--recipe FILE)")  # fmt: skip
        r = c.post("/api/runs/r/freeze", json={"mode": "replay_adjusted",
                                               "recipe_path": "hotcb.recipe.jsonl"})  # fmt: skip
        assert r.status_code == 422 and "send adjust_path" in r.json()["detail"], r.text
        assert len(list(jsonl.iter_records(RunPaths(run).commands))) == 1  # nothing written


def test_token_required_for_rest_when_set(tmp_path, live_server):
    make_run(tmp_path / "r", steps=2)
    llm = "https://bob:PW0RD@llm.internal/v1?api-key=K3Y"  # where the AI autopilot asks
    srv = live_server(token="s3cret", autopilot={"ai_base_url": llm})
    with srv.client(auth=False) as c:
        assert c.get("/api/health").status_code == 200  # public
        assert c.get("/").status_code == 200  # the page itself holds no data
        assert c.get("/openapi.json").status_code == 200  # the API's description, no data
        for path in ("/api/runs", "/api/config", "/api/runs/r/status"):
            assert c.get(path).status_code == 401, path
        r = c.post("/api/runs/r/commands", json={"module": "control", "op": "pause"})
        assert r.status_code == 401
        assert c.get("/api/runs", params={"token": "wrong"}).status_code == 401
        ok = c.get("/api/runs", params={"token": "s3cret"})
        assert ok.status_code == 200 and "set-cookie" not in ok.headers
    with srv.client(token="s3cret") as c:
        assert c.get("/api/runs").status_code == 200
        cfg = c.get("/api/config")
        assert cfg.status_code == 200 and "s3cret" not in cfg.text
        assert "PW0RD" not in cfg.text and "K3Y" not in cfg.text, cfg.text
        shown = cfg.json()["autopilot"]["ai_base_url"]
        assert shown == "https://bob:***@llm.internal/v1?api-key=***"


def test_history_downsampling_keeps_spike(tmp_path, live_server):
    run = os.fspath(tmp_path / "r")
    os.makedirs(run)
    n, spike_at = 50_000, 31_337
    lines = []
    for s in range(n):
        loss = 1.0 + 0.001 * (s % 7)
        if s == spike_at:
            loss = 99.0
        lines.append({"step": s, "wall_time": 1.0, "metrics": {"loss": loss, "acc": s / n}})
    jsonl.append_many(RunPaths(run).metrics, lines)
    with live_server().client() as c:
        r = c.get("/api/runs/r/metrics", params={"names": "loss", "max_points": 300}).json()
        assert r["total_points"] == n and r["downsampled"] is True
        series = r["series"]["loss"]
        assert len(series["step"]) <= 300 and len(series["step"]) == len(series["value"])
        assert max(series["value"]) == 99.0
        assert series["step"][series["value"].index(99.0)] == spike_at
        assert series["step"][0] == 0 and series["step"][-1] == n - 1
        assert series["step"] == sorted(series["step"])
        # the cap: no more than the configured maximum whatever is asked
        r = c.get("/api/runs/r/metrics", params={"names": "acc", "max_points": 10**6}).json()
        assert len(r["series"]["acc"]["step"]) <= 2000
        # a step window, with empty bounds meaning "no bound"
        r = c.get(
            "/api/runs/r/metrics",
            params={"names": "loss", "step_min": 100, "step_max": 199, "max_points": 500},
        ).json()
        assert r["series"]["loss"]["step"] == list(range(100, 200))
        assert r["downsampled"] is False
        r = c.get("/api/runs/r/metrics", params={"step_min": "", "step_max": ""}).json()
        assert set(r["series"]) == {"acc", "loss"}


def test_status_pending_paused_and_impact(tmp_path, live_server):
    run = os.fspath(tmp_path / "r")
    os.makedirs(run)
    open(RunPaths(run).commands, "w").close()
    weights = {"ce": 1.0, "l2": 0.0}
    kernel = HotKernel(run, mutable_state=mutable_state(loss_actuators(weights)))
    srv = live_server()
    with srv.client() as c:
        sched = c.post(
            "/api/runs/r/commands",
            json={"module": "loss", "op": "set_params", "params": {"l2": 0.1}, "at_step": 10**6},
        ).json()["cmd_id"]
        change = c.post(
            "/api/runs/r/commands",
            json={"module": "loss", "op": "set_params", "params": {"ce": 3.0}, "at_step": 20},
        ).json()["cmd_id"]
        # the metric "loss" is the ce weight: 1.0 up to step 20 (applied at its end), 3.0 after
        last = drive_until(kernel, weights, lambda: kernel.step >= 40)
        st = c.get("/api/runs/r/status").json()
        assert [p["cmd_id"] for p in st["pending"]] == [sched]
        assert st["paused"] is False and st["last_metrics"]["step"] == last
        assert {a["param_key"] for a in st["actuators"]} >= {"ce", "l2"}
        imp = c.get("/api/runs/r/impact", params={"metric": "loss", "window": 10}).json()
        (row,) = [i for i in imp["impacts"] if i["cmd_id"] == change]
        assert row["step"] == 20
        assert row["before"] == {"mean": 1.0, "slope": 0.0, "n": 10}
        assert row["after"] == {"mean": 3.0, "slope": 0.0, "n": 10}
        # `limit`: the newest changes only: all of a long run's took seconds under the run's
        # lock and held up its live updates
        more = [c.post("/api/runs/r/commands", json={"module": "loss", "op": "set_params",
                                                     "params": {"l2": 0.01 * i}}).json()["cmd_id"]
                for i in range(1, 4)]  # fmt: skip
        applied = lambda: {e.get("cmd_id") for e in read_ledger(run)} >= set(more)  # noqa: E731
        last = drive_until(kernel, weights, applied, start=last + 1)
        imp = c.get("/api/runs/r/impact", params={"metric": "loss", "limit": 2}).json()
        assert [i["cmd_id"] for i in imp["impacts"]] == more[1:]
        everything = c.get("/api/runs/r/impact", params={"metric": "loss"}).json()["impacts"]
        assert [i["cmd_id"] for i in everything] == [change, *more]
        # `since`: the changes from a seq on (the page's oldest entry)
        since = everything[2]["seq"]
        imp = c.get("/api/runs/r/impact", params={"metric": "loss", "since": since}).json()
        assert [i["cmd_id"] for i in imp["impacts"]] == more[1:]

        # pause / resume through the API while a training thread runs the kernel
        stop = threading.Event()

        def train() -> None:
            step = last + 1
            while not stop.is_set() and not kernel.stop_requested:
                kernel.apply({"step": step, "metrics": {"loss": weights["ce"]}})
                step += 1
                time.sleep(0.001)

        t = threading.Thread(target=train, daemon=True)
        t.start()
        try:
            c.post("/api/runs/r/commands", json={"module": "control", "op": "pause"})
            wait_for(lambda: c.get("/api/runs/r/status").json()["paused"], 10, what="paused")
            c.post("/api/runs/r/commands", json={"module": "control", "op": "resume"})
            wait_for(lambda: not c.get("/api/runs/r/status").json()["paused"], 10, what="resumed")
        finally:
            stop.set()
            t.join(timeout=10)
    kernel.close()


def test_status_state_says_a_closed_run_finished(tmp_path, live_server):
    """``state`` in a run's status: ``running`` while its kernel is open, ``finished at step
    N`` once the loop closed it (``ended`` in ``hotcb.run.json``), whatever the metrics say."""
    run = os.fspath(tmp_path / "r")
    weights = {"ce": 1.0, "l2": 0.0}
    kernel = HotKernel(run, mutable_state=mutable_state(loss_actuators(weights)))
    for step in range(6):
        kernel.apply({"step": step, "metrics": {"loss": weights["ce"]}})
    srv = live_server()
    with srv.client() as c:
        st = c.get("/api/runs/r/status").json()
        assert st["state"] == "running", st["state"]
        kernel.close()
        ended = jsonl.read_json(RunPaths(run).run_meta, {})["ended"]
        assert isinstance(ended["step"], int) and ended["stopped"] is False
        finished = f"finished at step {ended['step']}"
        wait_for(
            lambda: c.get("/api/runs/r/status").json()["state"] == finished,
            timeout=10,
            what="the status to say the run finished",
        )
        assert c.get("/api/runs/r/status").json()["run"]["ended"] == ended
        # a command sent to it now waits for the next run in the directory: the answer says so
        sent = c.post("/api/runs/r/commands", json={"module": "loss", "op": "set_params",
                                                    "params": {"ce": 2.0}})  # fmt: skip
        assert sent.status_code == 200 and sent.json()["warning"] == (
            f"the run {finished}; the command waits in the commands file for the next run "
            "started in this directory (or the next loop of the same process, a second fit)"
        )


def test_a_run_started_again_in_its_directory_runs_at_its_own_step(tmp_path, live_server):
    """A run stopped, then started afresh in its directory (a new kernel, steps from 0): its
    status said ``stopped`` (the last life's ``control stop`` stayed in force) and its step,
    in the status and the runs list, was the last life's (the largest of the newest metric,
    ledger entry and heartbeat, and that ledger entry was the old stop)."""
    run = os.fspath(tmp_path / "r")
    first = HotKernel(run)
    for step in range(60):
        first.apply({"step": step, "metrics": {"loss": 1.0}})
    srv = live_server()
    with srv.client() as c:
        c.post("/api/runs/r/commands", json={"module": "control", "op": "stop"})
        wait_for(lambda: first.apply({"step": 60}) or first.stop_requested, 10, what="the stop")
        assert c.get("/api/runs/r/status").json()["state"] == "stopped"
        # the loop was killed (its kernel never closed); a new one starts in the directory
        second = HotKernel(run)
        st = c.get("/api/runs/r/status").json()
        # (the earlier life's steps are not this one's)
        opened = f"not started (its kernel is open in pid {os.getpid()}: no step yet)"
        assert (st["state"], st["last_step"], st["paused"]) == (opened, None, False), st
        for step in range(5):
            second.apply({"step": step, "metrics": {"loss": 2.0}})
        st = c.get("/api/runs/r/status").json()
        assert (st["state"], st["last_step"], st["paused"]) == ("running", 4, False), st
        (listed,) = [r for r in c.get("/api/runs").json()["runs"] if r["run_id"] == "r"]
        assert listed["last_step"] == 4, listed
    second.close()
    first.close()


def test_markers_are_every_applied_change_compact_and_bounded(tmp_path, live_server):
    """``GET …/markers``: what the charts mark, whatever the ledger page loaded: the entries
    that applied a change at a step, with only the fields a marker shows, the newest
    ``MARKERS_MAX`` of the whole ledger; the status counts the ledger's entries."""
    from hotcb.server.tailer import MARKERS_MAX

    run = os.fspath(tmp_path / "r")
    os.makedirs(run)
    rows, seq = [], 0
    for step in range(MARKERS_MAX + 100):
        seq += 1
        rows.append({"seq": seq, "step": step, "source": "cli", "module": "loss",
                     "op": "set_params", "params": {"ce": step}, "decision": "applied",
                     "changes": {"ce": {"old": step - 1, "new": step}}, "cursor": seq})  # fmt: skip
        if step % 1000 == 0:  # entries that change nothing are no markers
            seq += 1
            rows.append({"seq": seq, "step": step, "module": "control", "op": "resume",
                         "decision": "noop", "changes": {}, "cursor": seq})  # fmt: skip
    jsonl.append_many(RunPaths(run).ledger, rows)
    srv = live_server()
    with srv.client() as c:
        marks = c.get("/api/runs/r/markers").json()["markers"]
        changed = [r for r in rows if r["decision"] == "applied"]
        assert len(marks) == MARKERS_MAX
        assert [m["seq"] for m in marks] == [r["seq"] for r in changed[-MARKERS_MAX:]]
        assert marks[-1] == {k: changed[-1][k] for k in ("seq", "step", "source", "module", "op",
                                                          "decision", "changes")}  # fmt: skip
        assert len(c.get("/api/runs/r/markers", params={"limit": 7}).json()["markers"]) == 7
        assert c.get("/api/runs/r/status").json()["ledger_entries"] == len(rows)


def test_recipe_download(tmp_path, live_server):
    run = os.fspath(tmp_path / "r")
    weights = {"ce": 1.0, "l2": 0.0}
    kernel = HotKernel(run, mutable_state=mutable_state(loss_actuators(weights)))
    with live_server(root=tmp_path).client() as c:
        make_run(run, steps=1)
        r = c.get("/api/runs/r/recipe")
        assert r.status_code == 409 and "ledger" in r.json()["detail"]  # nothing applied yet
        kernel.apply({"step": 0})
        c.post(
            "/api/runs/r/commands",
            json={"module": "loss", "op": "set_params", "params": {"ce": 2.0}},
        )
        drive_until(kernel, weights, lambda: weights["ce"] == 2.0, start=1)
        kernel.flush()
        r = c.get("/api/runs/r/recipe")
        assert r.status_code == 200, r.text
        assert "attachment" in r.headers["content-disposition"]
        records = [json.loads(line) for line in r.text.splitlines()]
        assert any(rec.get("params") == {"ce": 2.0} for rec in records)
        assert not os.path.exists(RunPaths(run).recipe)  # the download writes nothing there
    kernel.close()


def test_recipe_download_of_a_run_named_outside_latin_1(tmp_path, live_server):
    """A run named ``exp λ "1"`` made the download a 500 (UnicodeEncodeError: a header must be
    latin-1); the browser now gets the name back, and a safe ASCII one for older clients."""
    from urllib.parse import quote, unquote

    name = 'exp λ "1"'
    run = os.fspath(tmp_path / name)
    kernel = HotKernel(run, mutable_state=mutable_state(loss_actuators({"ce": 1.0})))
    HotClient(run).set({"ce": 2.0})
    kernel.apply({"step": 1})
    kernel.close()
    with live_server(root=tmp_path).client() as c:
        r = c.get(f"/api/runs/{quote(name)}/recipe")
    assert r.status_code == 200, r.text
    header = r.headers["content-disposition"]
    assert 'filename="exp _ _1_.recipe.jsonl"' in header, header
    assert unquote(header.split("filename*=UTF-8''")[1]) == f"{name}.recipe.jsonl"


def test_page_and_static_files(tmp_path, live_server):
    static = tmp_path / "static"
    (static / "vendor").mkdir(parents=True)
    (static / "index.html").write_text("<!doctype html><title>hotcb</title>")
    (static / "vendor" / "lib.js").write_text("export const x = 1;")
    (tmp_path / "secret.txt").write_text("no")
    srv = live_server(root=tmp_path / "runs", static_dir=str(static), token="t")
    with srv.client(auth=False) as c:  # the page and its files are public
        page = c.get("/")
        assert page.status_code == 200 and "<title>hotcb</title>" in page.text
        js = c.get("/static/vendor/lib.js")
        assert js.status_code == 200 and "javascript" in js.headers["content-type"]
        assert c.get("/static/..%2Fsecret.txt").status_code == 404
        assert c.get("/static/missing.js").status_code == 404
    with live_server(root=tmp_path / "runs", static_dir=str(tmp_path / "none")).client() as c:
        r = c.get("/")
        assert r.status_code == 200 and "page is not installed" in r.text


def test_cross_site_requests_and_foreign_hosts_are_refused(tmp_path, live_server):
    run = make_run(tmp_path / "r", steps=2)
    srv = live_server()
    port = srv.url.rsplit(":", 1)[1]
    body = {"module": "control", "op": "stop"}
    with srv.client() as c:
        r = c.post("/api/runs/r/commands", json=body, headers={"Origin": "https://evil.example"})
        assert r.status_code == 403 and "cross-origin" in r.json()["detail"]
        # DNS rebinding: evil.example resolving to 127.0.0.1 still sends its own Host
        r = c.get("/api/runs", headers={"Host": f"evil.example:{port}"})
        assert r.status_code == 403 and "not allowed" in r.json()["detail"]
        # a loopback name with more after it is not that name
        for host in (f"127.0.0.1:{port}@evil.example", f"localhost:{port}/x", "[::1]x"):
            r = c.get("/api/runs", headers={"Host": host})
            assert r.status_code == 403 and "not allowed" in r.json()["detail"], host
        assert not os.path.exists(RunPaths(run).commands)
        # the page's own origin (and clients that send no Origin) pass
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
            r = c.post(
                "/api/runs/r/commands",
                json=body,
                headers={"Origin": f"http://{host}", "Host": host},
            )
            assert r.status_code == 200, r.text
    with live_server(allowed_hosts=["dash.internal"]).client() as c:
        assert c.get("/api/runs", headers={"Host": "dash.internal"}).status_code == 200


def test_unwatched_run_indexes_are_evicted_lru(tmp_path, live_server):
    for i in range(4):
        make_run(tmp_path / f"r{i}", steps=3)
    srv = live_server(max_loaded_runs=2)
    with srv.client() as c:
        for i in range(4):
            assert c.get(f"/api/runs/r{i}/metrics/names").json() == {"names": ["loss"]}
        # only the two most recently used runs keep their in-memory state
        registry = srv.deps.registry
        assert [rid for rid in ("r0", "r1", "r2", "r3") if registry.cached(rid)] == ["r2", "r3"]
        # an evicted run is simply loaded again
        assert c.get("/api/runs/r0/status").json()["last_metrics"]["step"] == 2


# ------------------------------------------------------------------------------ online tuner
def test_tune_state_off_then_the_file_redacted(tmp_path, live_server, tune_state):
    """``GET …/tune``: ``{"mode": "off"}`` until the tuner writes its state file, then that
    file, with every URL's password replaced by ``***`` (the server's own guard); the run at
    the served root answers at ``/api/runs/tune``."""
    make_run(tmp_path / "r", steps=2)
    make_run(tmp_path / "r" / "nested", steps=2)
    srv = live_server()
    with srv.client() as c:
        assert c.get("/api/runs/r/tune").json() == {"mode": "off"}
        url = "postgresql+psycopg2://bob:s3cr3t@db.internal:5432/optuna"
        doc = tune_state(
            os.fspath(tmp_path / "r"),
            storage=url,
            warnings=[f"storage '{url}' is slow", "plain warning"],
        )
        r = c.get("/api/runs/r/tune")
        assert r.status_code == 200
        assert "s3cr3t" not in r.text
        got = r.json()
        assert got["storage"] == "postgresql+psycopg2://bob:***@db.internal:5432/optuna"
        assert got["warnings"] == [
            "storage 'postgresql+psycopg2://bob:***@db.internal:5432/optuna' is slow",
            "plain warning",
        ]
        assert {k: v for k, v in got.items() if k not in ("storage", "warnings")} == {
            k: v for k, v in doc.items() if k not in ("storage", "warnings")
        }
        # a password with "@" or "/" in it does not leak its tail; a password-less URL stays
        tune_state(os.fspath(tmp_path / "r"), storage="mysql://u:p@ss/w@rd@h/db")
        assert c.get("/api/runs/r/tune").json()["storage"] == "mysql://u:***@h/db"
        plain = "sqlite:////data/x@y/hotcb.tune.db"
        tune_state(os.fspath(tmp_path / "r"), storage=plain)
        assert c.get("/api/runs/r/tune").json()["storage"] == plain
        # a nested run has its own (none)
        assert c.get("/api/runs/r%2Fnested/tune").json() == {"mode": "off"}
        assert c.get("/api/runs/nope/tune").status_code == 404

    make_run(tmp_path / "root", steps=2)
    tune_state(os.fspath(tmp_path / "root"), mode="active")
    with live_server(root=tmp_path / "root").client() as c:
        assert c.get("/api/runs/tune").json()["mode"] == "active"


def test_tune_state_corrupt_file_answers_last_good_or_an_error(tmp_path, live_server, tune_state):
    run = make_run(tmp_path / "r", steps=2)
    path = os.path.join(run, "hotcb.tune.json")
    good = tune_state(run, storage="redis://:pw0rd@cache:6379/0")
    srv = live_server()
    with srv.client() as c:
        first = c.get("/api/runs/r/tune").json()
        assert first["trials"] == good["trials"] and first["storage"] == "redis://:***@cache:6379/0"
        # a writer that is not atomic, caught half-way: the last good document
        text = json.dumps({**good, "phase": "backoff"})
        with open(path, "w") as f:
            f.write(text[: len(text) // 2])
        assert c.get("/api/runs/r/tune").json() == first
        with open(path, "w") as f:
            f.write("[1, 2]")  # JSON, but not a state document
        assert c.get("/api/runs/r/tune").json() == first
        # the write completes: the new document
        with open(path, "w") as f:
            f.write(text)
        assert c.get("/api/runs/r/tune").json()["phase"] == "backoff"
        # the file goes away: off again
        os.remove(path)
        assert c.get("/api/runs/r/tune").json() == {"mode": "off"}

    # a server that never saw a good document says the tuner is off, and why
    with open(path, "w") as f:
        f.write('{"mode": "sugg')
    with live_server().client() as c:
        got = c.get("/api/runs/r/tune").json()
        assert got["mode"] == "off" and "hotcb.tune.json is unreadable" in got["error"]
        assert set(got) == {"mode", "error"}
        tune_state(run, mode="observe")
        assert c.get("/api/runs/r/tune").json()["mode"] == "observe"


def test_tune_commands_from_the_dashboard(tmp_path, live_server, tune_state):
    """Accept and reject go through the commands endpoint like any other command; a tuner
    recipe must lie inside the run (or an allowed root), and a study storage URL (which may name
    any file or database) is never taken from a request. Bad settings and proposal ids get a
    422 with the reason, as in the CLI (they were taken, and the run rejected them)."""
    run = make_run(tmp_path / "r", steps=2)
    tune_state(run)  # P3 waits
    outside = tmp_path / "elsewhere.yaml"
    outside.write_text("mode: active\n")
    with live_server().client() as c:
        for op in ("accept", "reject"):
            r = c.post(
                "/api/runs/r/commands", json={"module": "tune", "op": op, "params": {"id": "P3"}}
            )
            assert r.status_code == 200, r.text
        for op, params, says in (
            ("enable", {"mode": "bogus"}, "mode"),
            ("enable", {"mode": "active", "segment_steps": -5}, "segment_steps"),
            ("enable", {"mode": "active", "segment_steps": "ten"}, "segment_steps"),
            ("accept", {}, "a proposal id looks like P3"),
            ("accept", {"id": 7}, "no proposal 'P7'"),
            ("reject", {"id": "P9"}, "no proposal 'P9'"),
            ("explode", {}, "tune has no op 'explode'"),
        ):
            r = c.post("/api/runs/r/commands",
                       json={"module": "tune", "op": op, "params": params})  # fmt: skip
            assert r.status_code == 422 and says in r.json()["detail"], (op, params, r.text)
        r = c.post(
            "/api/runs/r/commands",
            json={"module": "tune", "op": "enable", "params": {"recipe": os.fspath(outside)}},
        )
        assert r.status_code == 403 and "params.recipe" in r.json()["detail"]
        r = c.post(
            "/api/runs/r/commands",
            json={"module": "tune", "op": "enable",
                  "params": {"mode": "suggest", "storage": "sqlite:////tmp/x.db"}},
        )  # fmt: skip
        assert r.status_code == 403 and "hotcb tune enable --storage" in r.json()["detail"]
    recs = list(jsonl.iter_records(RunPaths(run).commands))
    assert [(rec["module"], rec["op"], rec["params"], rec["source"]) for rec in recs] == [
        ("tune", "accept", {"id": "P3"}, "dashboard"),
        ("tune", "reject", {"id": "P3"}, "dashboard"),
    ]


def test_runs_list_carries_branch_info(tmp_path, live_server):
    """``hotcb branch``'s ``branch`` in hotcb.run.json reaches ``/api/runs``: the parent as the
    served run id (null when it is outside the served folder) and the branch step."""
    parent = make_run(tmp_path / "parent", steps=10)
    child = make_run(tmp_path / "child", steps=5)
    orphan = make_run(tmp_path / "orphan", steps=5)
    elsewhere = os.fspath(tmp_path.parent / "not-served")
    for run, src in ((child, parent), (orphan, elsewhere)):
        info = {"parent": src, "step": 6, "checkpoint": "ckpt/6.pt", "seq": 3}
        jsonl.write_json_atomic(RunPaths(run).run_meta, {"run_dir": run, "branch": info})
    srv = live_server()
    with srv.client() as c:
        runs = {r["run_id"]: r for r in c.get("/api/runs").json()["runs"]}
    assert runs["parent"]["branch"] is None
    assert runs["child"]["branch"] == {"parent": "parent", "parent_path": parent, "step": 6}
    assert runs["orphan"]["branch"] == {"parent": None, "parent_path": elsewhere, "step": 6}


def test_a_branch_finds_its_parent_moved_and_not_a_run_that_took_its_place(tmp_path, live_server):
    """The parent was matched by its recorded path only: after `mv runs/parent runs/p2` the
    branch was a root (the whole tree flat in a copied archive), and a new run started at the
    old path became its parent, "(parent)" in the page's comparison."""
    parent = make_run(tmp_path / "parent", steps=10)
    jsonl.write_json_atomic(RunPaths(parent).run_meta, {"created": 100.0, "run_dir": parent})
    child, old_style = make_run(tmp_path / "child", steps=5), make_run(tmp_path / "old", steps=5)
    for run, born in ((child, 100.0), (old_style, None)):
        info = {"parent": parent, "step": 6, "checkpoint": "ckpt/6.pt", "seq": 3}
        if born is not None:
            info["parent_created"] = born  # what `hotcb branch` writes now
        jsonl.write_json_atomic(RunPaths(run).run_meta, {"run_dir": run, "branch": info})
    os.rename(parent, tmp_path / "p2")  # its run.json still names the folder it left
    impostor = make_run(tmp_path / "parent", steps=3)
    jsonl.write_json_atomic(RunPaths(impostor).run_meta, {"created": 200.0, "run_dir": impostor})
    srv = live_server()
    with srv.client() as c:
        runs = {r["run_id"]: r for r in c.get("/api/runs").json()["runs"]}
    assert runs["child"]["branch"]["parent"] == "p2"
    # an older branch (no parent_created) cannot tell the new run at its parent's path from
    # its parent: there, the path still decides
    assert runs["old"]["branch"]["parent"] == "parent"
    shutil.rmtree(impostor)
    with srv.client() as c:
        runs = {r["run_id"]: r for r in c.get("/api/runs").json()["runs"]}
    assert runs["old"]["branch"]["parent"] == "p2"  # found by the folder its run.json names


def test_a_finished_runs_tuner_reads_as_over_and_its_proposals_cannot_be_decided(
    tmp_path, live_server, tune_state
):
    """A run whose kernel closed with P3 pending: the API answered `tune accept P3` with 200
    (the command waited for the next run, whose tuner then rejected it), and `GET …/tune`
    showed P3 pending and a next boundary past the run's end. `tune status` refused and said it."""
    run = os.fspath(tmp_path / "r")
    with HotKernel(run, checkpoint_on_signal=False) as kernel:
        for step in range(5):
            kernel.apply({"step": step, "metrics": {"loss": 1.0}})
    tune_state(run)  # P3 waits
    with live_server().client() as c:
        got = c.get("/api/runs/r/tune").json()
        assert got["run_over"] == "finished at step 4" and got["next_boundary"] is None
        assert [(p["id"], p["state"]) for p in got["proposals"]] == [
            ("P2", "rejected"),
            ("P3", "ended"),
        ]
        for op in ("accept", "reject"):
            r = c.post("/api/runs/r/commands",
                       json={"module": "tune", "op": op, "params": {"id": "p3"}})  # fmt: skip
            assert r.status_code == 409, r.text
            assert r.json()["detail"] == ("the run finished at step 4: proposal P3 ended with it "
                                          "(a run started again in this directory proposes "
                                          "afresh)")  # fmt: skip
        r = c.post("/api/runs/r/commands",
                   json={"module": "tune", "op": "accept", "params": {"id": "P9"}})  # fmt: skip
        assert r.status_code == 422
        assert r.json()["detail"] == "no proposal 'P9'; pending: none; the run finished at step 4"
    assert not os.path.exists(RunPaths(run).commands) or not list(
        jsonl.iter_records(RunPaths(run).commands)
    )


def test_markers_and_knob_changes_are_of_the_life_that_goes_on(tmp_path, live_server):
    """A trainer killed and started again (from a checkpoint, or from step 0): the charts plot
    the new life's steps, yet kept the markers of the changes the gone life made after its
    checkpoint (or at all), at steps where the new curve had no such change; the Knobs panel
    listed them too."""
    run = os.fspath(tmp_path / "r")

    def life(start: int, steps: int, changes: dict[int, float], state: Any = None) -> Any:
        weights = {"ce": 1.0, "aux": 0.0}
        kernel = HotKernel(run, poll_interval_sec=0,
                           mutable_state=mutable_state(loss_actuators(weights)))  # fmt: skip
        if state is not None:
            kernel.load_state_dict(state)
        saved = None
        for step in range(start, start + steps):
            if step in changes:
                HotClient(run).loss(aux=changes[step])
            kernel.apply({"step": step})
            if step == start + 15:
                saved = kernel.state_dict()
        return saved  # left unclosed: the process died

    def marked(c: Any) -> list[tuple[int, float, str]]:
        marks = c.get("/api/runs/r/markers").json()["markers"]
        return [(m["step"], m["changes"]["aux"]["new"], m["source"]) for m in marks
                if "aux" in m["changes"]]  # fmt: skip

    def knob_changes(c: Any) -> list[tuple[int, float, str]]:
        (aux,) = [k for k in c.get("/api/runs/r/knobs").json()["knobs"] if k["key"] == "aux"]
        return [(ch["step"], ch["new"], ch["source"]) for ch in aux["changes"]]

    checkpoint = life(0, 40, {10: 0.1, 25: 0.2})
    with live_server(root=tmp_path).client() as c:
        assert marked(c) == [(10, 0.1, "python"), (25, 0.2, "python")]
        # resumed from step 15: the command of step 25 is applied again (by the resume), once
        life(15, 20, {30: 0.3}, state=checkpoint)
        assert (
            marked(c)
            == knob_changes(c)
            == [(10, 0.1, "python"), (25, 0.2, "resume"), (30, 0.3, "python")]
        )
        life(0, 10, {5: 0.5})  # from step 0 again, no checkpoint: none of the above is
        assert marked(c) == knob_changes(c) == [(5, 0.5, "python")]
        life(0, 3, {})  # again, and no entry yet in this life
        assert marked(c) == knob_changes(c) == []
        # a checkpoint with nothing after it: the resume writes no `kernel resume` entry, and
        # the change it holds is this life's
        checkpoint = life(0, 30, {4: 0.4})
        life(15, 5, {}, state=checkpoint)
        assert marked(c) == knob_changes(c) == [(4, 0.4, "python")]

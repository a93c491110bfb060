"""The dashboard wants a token on every address by default (Jupyter's model), loopback too:
another local user, or anything else that can reach 127.0.0.1, cannot read or steer the runs.
Each test attacks a real server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus

pytestmark = pytest.mark.slow

PAUSE = {"module": "control", "op": "pause"}


def test_loopback_server_wants_a_token_by_default(
    tmp_path: Any, live_server: Any, make_run: Any, read_commands: Any
) -> None:
    """Default settings on 127.0.0.1: without the token nothing is read and nothing is sent."""
    run = make_run(tmp_path / "r")
    srv = live_server()  # no token given: one is generated
    assert srv.token and len(srv.token) >= 20
    with srv.client(auth=False) as anon:
        assert anon.get("/api/health").status_code == 200  # public, holds nothing
        for path in ("/api/runs", "/api/runs/r/status", "/api/runs/r/metrics", "/api/config"):
            assert anon.get(path).status_code == 401, path
        r = anon.post("/api/runs/r/commands", json=PAUSE)
        assert r.status_code == 401 and "token" in r.json()["detail"]
        r = anon.post("/api/runs/r/freeze", json={"mode": "prod"})
        assert r.status_code == 401
        for wrong in ("Bearer nope", "Basic " + srv.token, "Bearer"):
            r = anon.post("/api/runs/r/commands", json=PAUSE, headers={"Authorization": wrong})
            assert r.status_code == 401, wrong
    with pytest.raises(InvalidStatus) as info, srv.ws(auth=False):
        pass
    assert info.value.response.status_code == 401
    assert read_commands(run) == []
    with srv.client() as c:  # the token holder is served
        assert c.post("/api/runs/r/commands", json=PAUSE).status_code == 200
    assert [c["op"] for c in read_commands(run)] == ["pause"]


_ATTACKER = r"""
import json, sys, urllib.error, urllib.request
url = sys.argv[1]
out = {}
with urllib.request.urlopen(url + "/api/health", timeout=10) as r:
    out["health"] = r.status
req = urllib.request.Request(
    url + "/api/runs/r/commands",
    data=json.dumps({"module": "control", "op": "pause"}).encode(),
    headers={"Content-Type": "application/json"},
    method="POST",
)
try:
    with urllib.request.urlopen(req, timeout=10) as r:
        out["pause"] = r.status
except urllib.error.HTTPError as e:
    out["pause"] = e.code
    e.close()
print(json.dumps(out))
"""


def _as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd="/")


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root to run the attacker as the OS user 'nobody' (with setpriv)",
)
def test_other_os_user_cannot_pause_a_run(
    tmp_path: Any, serve: Any, make_run: Any, read_commands: Any
) -> None:
    """``hotcb serve`` started by root with the default settings; user ``nobody`` reaches the
    port (health answers) but its ``control pause`` gets 401 and nothing is appended."""
    run = make_run(tmp_path / "runs" / "r")
    srv = serve(tmp_path / "runs")
    probe = _as_nobody(sys.executable, "-I", "-c", "import os; print(os.geteuid())")
    if probe.returncode != 0:
        pytest.skip(
            "needs root to run the attacker as the OS user 'nobody', who cannot run "
            f"{sys.executable} here: {probe.stderr.strip()}"
        )
    assert probe.stdout.strip() == "65534"
    before = os.path.getsize(os.path.join(run, "hotcb.metrics.jsonl"))
    done = _as_nobody(sys.executable, "-I", "-c", _ATTACKER, srv.url)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"health": 200, "pause": 401}
    assert read_commands(run) == []
    assert not os.path.exists(os.path.join(run, "hotcb.commands.jsonl"))
    assert os.path.getsize(os.path.join(run, "hotcb.metrics.jsonl")) == before


def test_serving_on_every_address_prints_urls_that_open(
    tmp_path: Any, serve: Any, make_run: Any
) -> None:
    """``--host 0.0.0.0``: the URL printed for this machine is a loopback one that opens (a
    browser cannot open ``http://0.0.0.0:P``), and the one for other machines names this host."""
    make_run(tmp_path / "runs" / "r")
    srv = serve(tmp_path / "runs", "--host", "0.0.0.0", env={"HOTCB_TOKEN": "t0ken-in-env"})
    printed = srv.stdout()
    local = re.search(r"hotcb dashboard for .*: (http://\S+)", printed)
    assert local is not None and local.group(1).startswith("http://127.0.0.1:"), printed
    assert "0.0.0.0" not in printed
    assert f"from another machine, http://{socket.gethostname()}:" in printed
    r = httpx.get(local.group(1), follow_redirects=True)
    assert r.status_code == 200 and "hotcb" in r.text


def test_no_token_is_an_explicit_warned_loopback_only_opt_out(
    tmp_path: Any, serve: Any, make_run: Any, read_commands: Any
) -> None:
    run = make_run(tmp_path / "runs" / "r")
    srv = serve(tmp_path / "runs", "--no-token")
    assert "?token=" not in srv.stdout()
    (warning,) = [line for line in srv.stderr().splitlines() if "warning" in line]
    assert "--no-token" in warning and "any local user" in warning
    r = httpx.post(srv.url + "/api/runs/r/commands", json=PAUSE)
    assert r.status_code == 200  # what the warning says: anyone on this host
    assert [c["op"] for c in read_commands(run)] == ["pause"]

    # never on an address others can reach; never together with a token
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOTCB_")}
    argv = [sys.executable, "-m", "hotcb", "--dir", str(tmp_path), "serve", "--port", "0"]
    done = subprocess.run(
        [*argv, "--host", "0.0.0.0", "--no-token"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 2 and done.stdout == ""
    assert "--no-token (no_token) is refused when binding 0.0.0.0" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    done = subprocess.run(
        [*argv, "--no-token"],
        capture_output=True,
        text=True,
        env={**env, "HOTCB_TOKEN": "t0ken-in-env"},
    )
    assert done.returncode == 2 and "pick one" in done.stderr
    assert "t0ken-in-env" not in done.stderr


def test_token_file_must_be_private(tmp_path: Any, serve: Any, make_run: Any) -> None:
    """``--token-file`` (the token never on a command line): refused when group or others can
    read it; used as the token when it is 0600."""
    make_run(tmp_path / "runs" / "r")
    secret = tmp_path / "token"
    secret.write_text("file-t0ken-value\n")
    secret.chmod(0o644)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOTCB_")}
    done = subprocess.run(
        [sys.executable, "-m", "hotcb", "--dir", str(tmp_path / "runs"), "serve",
         "--port", "0", "--token-file", str(secret)],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "open to group/others" in done.stderr and "chmod 600" in done.stderr
    assert "file-t0ken-value" not in done.stderr + done.stdout
    secret.chmod(0o600)
    srv = serve(tmp_path / "runs", "--token-file", str(secret))
    assert srv.stdout().count("?token=file-t0ken-value") == 1
    assert httpx.get(srv.url + "/api/runs").status_code == 401
    r = httpx.get(srv.url + "/api/runs", headers={"Authorization": "Bearer file-t0ken-value"})
    assert r.status_code == 200


def test_code_load_switch_warns_who_can_run_code(tmp_path: Any, serve: Any, make_run: Any) -> None:
    make_run(tmp_path / "runs" / "r")
    srv = serve(tmp_path / "runs", "--allow-code-load")
    lines = [line for line in srv.stderr().splitlines() if "code loading is ON" in line]
    assert len(lines) == 1 and "anyone holding the token" in lines[0]
    assert "run code in the trainer" in lines[0]
    srv.stop()
    srv = serve(tmp_path / "runs", "--allow-code-load", "--no-token")
    lines = [line for line in srv.stderr().splitlines() if "code loading is ON" in line]
    assert len(lines) == 1 and "any local user" in lines[0]
    # without the switch: no such warning
    srv.stop()
    assert "code loading" not in serve(tmp_path / "runs").stderr()

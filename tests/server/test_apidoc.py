"""The API reference at ``/docs``, used as a user would: paste its ``curl`` lines into bash."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from typing import Any

import torch

from hotcb import HotClient, HotKernel, loss_actuators, mutable_state
from hotcb.metrics import MetricsCollector
from hotcb.testing import read_ledger


def _live_run(path: Any) -> tuple[str, HotKernel]:
    """A run with metrics, actuators and one applied change (so its recipe has a line), and
    its kernel, still open."""
    run = os.fspath(path)
    opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    kernel = HotKernel(
        run, mutable_state=mutable_state(loss_actuators({"ce": 1.0})), poll_interval_sec=0.0
    )
    kernel.apply({"step": 0, "optimizer": opt})
    HotClient(run).loss(ce=0.5)
    kernel.apply({"step": 1, "optimizer": opt})
    kernel.flush()
    with MetricsCollector(run) as m:
        for s in range(20):
            m.log(s, {"loss": 1.0 / (s + 1)})
    kernel.env_optimizer = opt  # type: ignore[attr-defined]  # for the next safe point
    return run, kernel


def test_every_curl_line_on_the_docs_page_works_when_pasted(
    tmp_path: Any, live_server: Any
) -> None:
    """Each route's line, pasted into bash with ``HOTCB_URL`` (as printed, trailing slash and
    all), ``HOTCB_TOKEN`` and ``RUN`` set and the ``<name>`` placeholders filled in, gets past
    the token and the validation: the GETs answer 200, the command it shows reaches the run."""
    assert shutil.which("curl"), "curl is missing (scripts/test installs it)"
    run, kernel = _live_run(tmp_path / "exp1")
    srv = live_server(token="d0cs-t0ken")
    with srv.client(auth=False) as c:
        page = c.get("/docs")
    assert page.status_code == 200
    lines = [html.unescape(x) for x in re.findall(r"<pre>(.*?)</pre>", page.text, re.S)]
    setup, routes = lines[0], lines[1:]
    assert setup.startswith(f"export HOTCB_URL={srv.url} ")
    assert len(routes) == len(re.findall(r"<section ", page.text)) >= 20
    env = {**os.environ, "HOTCB_URL": srv.url + "/", "HOTCB_TOKEN": srv.token, "RUN": "exp1"}
    fill = {"<knob>": "ce", "<factor>": "2", "<proposal_id>": "p-none", "<rule_id>": "plateau"}
    answers = {}
    for line in routes:
        for name, value in fill.items():
            line = line.replace(name, value)
        assert "<" not in line, f"a placeholder this test does not fill: {line}"
        out = subprocess.run(
            ["bash", "-c", line + " -s -w '\\n%{http_code}'"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        body, _, code = out.stdout.rpartition("\n")
        answers[line] = (int(code), body)
    refused = {k: v for k, v in answers.items() if v[0] in (401, 405, 415, 422)}
    assert refused == {}, refused
    gets = {k: v for k, v in answers.items() if not k.startswith("curl -X")}
    assert {k: v for k, v in gets.items() if v[0] != 200} == {}
    (sent,) = [v for k, v in answers.items() if k.endswith('/commands"')]
    assert sent[0] == 200, sent
    cmd_id = json.loads(sent[1])["cmd_id"]
    kernel.apply({"step": 2, "optimizer": kernel.env_optimizer})  # the next safe point
    kernel.close()
    (entry,) = [e for e in read_ledger(run) if e.get("cmd_id") == cmd_id]
    assert entry["source"] == "dashboard" and entry["op"] == "set_params", entry

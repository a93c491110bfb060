"""DashboardConfig precedence: defaults < YAML < HOTCB_* env < CLI flags, one test per pair."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import httpx
import pytest

from hotcb.cli import build_parser
from hotcb.cli._serve import build_config
from hotcb.metrics import MetricsCollector
from hotcb.server.config import DashboardConfig, is_loopback
from hotcb.testing import wait_for


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("HOTCB_"):
            monkeypatch.delenv(key)


@pytest.fixture
def yaml_file(tmp_path):
    path = tmp_path / "dash.yaml"
    path.write_text("port: 9001\ntail_interval_sec: 0.2\nui:\n  stale_after_sec: 5\n")
    return str(path)


def cli(*argv: str) -> DashboardConfig:
    return build_config(build_parser().parse_args(["serve", *argv]))


def test_defaults():
    c = DashboardConfig.load()
    assert (c.host, c.port, c.token, c.allow_code_load) == ("127.0.0.1", 8421, None, False)
    assert c.tail_interval_sec == 0.05 and c.history_max_points == 2000
    assert c.ui.stale_after_sec == 30.0


def test_yaml_over_defaults(yaml_file):
    c = DashboardConfig.load(yaml_file)
    assert c.port == 9001 and c.tail_interval_sec == 0.2 and c.ui.stale_after_sec == 5
    assert c.ui.reconnect_delay_sec == 1.0  # untouched nested field keeps its default
    assert c.host == "127.0.0.1"


def test_env_over_defaults(monkeypatch):
    monkeypatch.setenv("HOTCB_PORT", "9100")
    monkeypatch.setenv("HOTCB_UI__STALE_AFTER_SEC", "7")
    c = DashboardConfig.load()
    assert c.port == 9100 and c.ui.stale_after_sec == 7


def test_cli_over_defaults():
    c = cli("--port", "9200", "--token", "t")
    assert c.port == 9200 and c.token == "t" and c.host == "127.0.0.1"


def test_env_over_yaml(monkeypatch, yaml_file):
    monkeypatch.setenv("HOTCB_PORT", "9100")
    monkeypatch.setenv("HOTCB_UI__RECONNECT_DELAY_SEC", "3")
    c = DashboardConfig.load(yaml_file)
    assert c.port == 9100  # env wins
    assert c.tail_interval_sec == 0.2  # YAML still counts where env is silent
    assert c.ui.stale_after_sec == 5 and c.ui.reconnect_delay_sec == 3  # nested merge


def test_cli_over_yaml(yaml_file):
    c = cli("--config", yaml_file, "--port", "9300")
    assert c.port == 9300 and c.tail_interval_sec == 0.2


def test_cli_over_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HOTCB_PORT", "9100")
    monkeypatch.setenv("HOTCB_TOKEN", "from-env")
    c = cli("--port", "9400")
    assert c.port == 9400 and c.token == "from-env"  # flag wins, env fills the rest
    assert cli("--token", "from-flag").token == "from-flag"


def test_yaml_path_from_env_and_missing_file(monkeypatch, yaml_file, tmp_path):
    monkeypatch.setenv("HOTCB_CONFIG", yaml_file)
    assert DashboardConfig.load().port == 9001
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        DashboardConfig.load(str(tmp_path / "nope.yaml"))


def test_invalid_values_are_refused(monkeypatch):
    monkeypatch.setenv("HOTCB_HISTORY_MAX_POINTS", "5000")
    with pytest.raises(ValueError, match="history_max_points"):
        DashboardConfig.load()


def test_token_rules():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    local = DashboardConfig.load()
    assert local.ensure_token() is False and local.token is None
    public = DashboardConfig.load(host="0.0.0.0")
    assert public.ensure_token() is True and len(public.token) >= 20
    assert "token" not in public.public() and public.token not in str(public.public())
    assert public.token not in repr(public)
    given = DashboardConfig.load(host="0.0.0.0", token="mine")
    assert given.ensure_token() is False and given.token == "mine"


@pytest.mark.slow
def test_hotcb_serve_prints_url_with_token(tmp_path):
    with MetricsCollector(str(tmp_path / "r")) as m:
        m.log(0, {"loss": 1.0})
    proc = subprocess.Popen(
        [sys.executable, "-m", "hotcb", "--dir", str(tmp_path), "serve", "--port", "0"]
        + ["--token", "abc"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("HOTCB_")},
    )
    try:
        line = proc.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+/)\?token=abc", line)
        assert match, line
        url = match.group(1)

        def up() -> bool:
            try:
                return httpx.get(url + "api/health").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 20, what="the server to answer")
        assert httpx.get(url + "api/runs").status_code == 401
        runs = httpx.get(url + "api/runs", headers={"Authorization": "Bearer abc"}).json()
        assert [r["run_id"] for r in runs["runs"]] == ["r"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()

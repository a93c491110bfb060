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
from hotcb.server.config import DashboardConfig, is_loopback, read_token_file
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


def token_file(tmp_path, token: str, mode: int = 0o600, name: str = "token") -> str:
    path = tmp_path / name
    path.write_text(token + "\n")
    path.chmod(mode)
    return str(path)


def test_defaults():
    c = DashboardConfig.load()
    assert (c.host, c.port, c.token, c.allow_code_load) == ("127.0.0.1", 8421, None, False)
    assert c.tail_interval_sec == 0.05 and c.history_max_points == 2000
    assert c.ui.stale_after_sec == 30.0
    assert c.no_token is False and c.allowed_roots == [] and c.max_body_bytes == 1_048_576


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


def test_cli_over_defaults(tmp_path):
    c = cli("--port", "9200", "--token-file", token_file(tmp_path, "t"))
    assert c.port == 9200 and c.token == "t" and c.host == "127.0.0.1"
    c = cli("--allowed-root", "a", "--allowed-root", "/b", "--max-body-bytes", "4096")
    assert c.allowed_roots == [os.path.abspath("a"), "/b"] and c.max_body_bytes == 4096
    assert cli("--no-token").no_token is True


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
    monkeypatch.setenv("HOTCB_MAX_BODY_BYTES", "2048")
    c = cli("--port", "9400")
    assert c.port == 9400 and c.token == "from-env"  # flag wins, env fills the rest
    assert c.max_body_bytes == 2048
    assert cli("--token-file", token_file(tmp_path, "from-flag")).token == "from-flag"
    assert cli("--max-body-bytes", "8192").max_body_bytes == 8192


def test_yaml_env_and_flag_for_security_fields(monkeypatch, tmp_path):
    path = tmp_path / "sec.yaml"
    path.write_text("max_body_bytes: 5000\nallowed_roots: [/data/recipes]\n")
    c = DashboardConfig.load(str(path))
    assert c.max_body_bytes == 5000 and c.allowed_roots == ["/data/recipes"]
    monkeypatch.setenv("HOTCB_ALLOWED_ROOTS", '["/from/env"]')
    assert DashboardConfig.load(str(path)).allowed_roots == ["/from/env"]
    assert cli("--config", str(path), "--allowed-root", "/flag").allowed_roots == ["/flag"]
    monkeypatch.setenv("HOTCB_NO_TOKEN", "1")
    assert DashboardConfig.load().no_token is True


def test_token_file_rules(tmp_path):
    assert read_token_file(token_file(tmp_path, "ok")) == "ok"  # surrounding blanks dropped
    for mode in (0o640, 0o604, 0o644, 0o660):
        with pytest.raises(ValueError, match="chmod 600") as info:
            read_token_file(token_file(tmp_path, "s3cret-value", mode, name=f"t{mode:o}"))
        assert "s3cret-value" not in str(info.value)  # the refusal does not echo the token
    with pytest.raises(ValueError, match="empty"):
        read_token_file(token_file(tmp_path, ""))
    with pytest.raises(ValueError, match="cannot read"):
        read_token_file(str(tmp_path / "missing"))


def test_token_flag_is_gone(capsys):
    """A token on the command line shows in ``ps``: the flag does not exist."""
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["serve", "--token", "s3cret-zz"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "HOTCB_TOKEN" in err and "s3cret-zz" not in err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    help_text = capsys.readouterr().out
    assert "HOTCB_TOKEN" in help_text and "--token-file" in help_text


def test_yaml_path_from_env_and_missing_file(monkeypatch, yaml_file, tmp_path):
    monkeypatch.setenv("HOTCB_CONFIG", yaml_file)
    assert DashboardConfig.load().port == 9001
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        DashboardConfig.load(str(tmp_path / "nope.yaml"))


@pytest.mark.parametrize(
    ("text", "said"),
    [("x: [\n", "is not valid YAML (line 2, column 1): expected the node content, but found '<stream end>'"),
     ("- 1\n", "must be a mapping of settings ('port: 8421', …)"),
     ("bogus_key: 1\nui:\n  stale_after_secs: 3\n", "has unknown settings: bogus_key, "
      "ui.stale_after_secs (did you mean ui.stale_after_sec?)")],
    ids=["not-yaml", "a-list", "misspelt-keys"],
)  # fmt: skip
def test_a_config_file_it_cannot_use_is_one_line_and_exit_2(tmp_path, text, said):
    """Bad YAML and a list were tracebacks (exit 1); misspelt settings were ignored, and the
    server started with their defaults."""
    path = tmp_path / "dash.yaml"
    path.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOTCB_")}
    done = subprocess.run([sys.executable, "-m", "hotcb", "--dir", str(tmp_path), "serve",
                           "--port", "0", "--config", str(path)],
                          capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"hotcb: error: the dashboard config file {path} {said}" + (
        " (docs/dashboard.md lists them)\n" if "unknown" in said else "\n"
    ), done.stderr


def test_a_bad_value_is_named_where_it_came_from(tmp_path):
    """A value from the file was named as a flag that does not exist (``--ui.stale-after-sec``),
    and one from the environment as ``--port``."""
    path = tmp_path / "dash.yaml"
    path.write_text("ui:\n  stale_after_sec: -5\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOTCB_")}
    argv = [sys.executable, "-m", "hotcb", "--dir", str(tmp_path), "serve"]
    done = subprocess.run([*argv, "--config", str(path)], capture_output=True, text=True,
                          timeout=60, env=env)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == (f"hotcb: error: ui.stale_after_sec in {path}: greater than 0, "
                           "got -5\n"), done.stderr  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                          env={**env, "HOTCB_PORT": "99999"})  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == ("hotcb: error: HOTCB_PORT: less than or equal to 65535, got "
                           "'99999'\n"), done.stderr  # fmt: skip


def test_a_host_that_is_not_this_machines_is_said_so(tmp_path):
    """It said "is another server running there? pick another --port" for an address the
    machine does not have."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOTCB_")}
    done = subprocess.run([sys.executable, "-m", "hotcb", "--dir", str(tmp_path), "serve",
                           "--host", "192.0.2.1"],  # TEST-NET-1: no machine has it
                          capture_output=True, text=True, timeout=60,
                          env={**env, "HOTCB_TOKEN": "t0ken-abcdefghijklmnopqrst"})  # fmt: skip
    assert done.returncode == 2
    assert "is --host 192.0.2.1 an address of this machine?" in done.stderr, done.stderr
    assert "pick another --port" not in done.stderr


def test_invalid_values_are_refused(monkeypatch):
    monkeypatch.setenv("HOTCB_HISTORY_MAX_POINTS", "5000")
    with pytest.raises(ValueError, match="history_max_points"):
        DashboardConfig.load()


def test_token_rules():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    # a token on every address by default, loopback included (Jupyter's model)
    for host in ("127.0.0.1", "0.0.0.0"):
        c = DashboardConfig.load(host=host)
        assert c.ensure_token() is True and len(c.token) >= 20
        assert "token" not in c.public() and c.token not in str(c.public())
        assert c.token not in repr(c)
    given = DashboardConfig.load(host="0.0.0.0", token="mine")
    assert given.ensure_token() is False and given.token == "mine"
    # the opt-out: loopback only, and not together with a token
    off = DashboardConfig.load(no_token=True)
    assert off.ensure_token() is False and off.token is None
    with pytest.raises(ValueError, match=r"refused when binding 0\.0\.0\.0"):
        DashboardConfig.load(host="0.0.0.0", no_token=True).ensure_token()
    with pytest.raises(ValueError, match="pick one"):
        DashboardConfig.load(no_token=True, token="t").ensure_token()


@pytest.mark.slow
def test_hotcb_serve_prints_url_with_token(tmp_path):
    with MetricsCollector(str(tmp_path / "r")) as m:
        m.log(0, {"loss": 1.0})
    proc = subprocess.Popen(
        [sys.executable, "-m", "hotcb", "--dir", str(tmp_path), "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("HOTCB_")},
            "HOTCB_TOKEN": "abc-a-long-enough-t0ken",
        },
    )
    try:
        line = proc.stdout.readline()
        match = re.search(r"(http://127\.0\.0\.1:\d+/)\?token=abc-a-long-enough-t0ken", line)
        assert match, line
        url = match.group(1)

        def up() -> bool:
            try:
                return httpx.get(url + "api/health").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 20, what="the server to answer")
        assert httpx.get(url + "api/runs").status_code == 401
        runs = httpx.get(
            url + "api/runs", headers={"Authorization": "Bearer abc-a-long-enough-t0ken"}
        ).json()
        assert [r["run_id"] for r in runs["runs"]] == ["r"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()


def test_autopilot_settings_from_yaml_env_and_flags(monkeypatch, tmp_path):
    """``--autopilot``, ``--autopilot-rules``, ``--key-metric``, ``--direction`` set the nested
    ``autopilot`` settings field by field: a flag wins over the env, the env over the YAML, and
    a field no source gives keeps its default."""
    c = cli()  # direction None: from the key metric's name
    assert c.autopilot.model_dump() == {"mode": "off", "rules": None, "key_metric": "val_loss",
                                        "direction": None, "interval_sec": 1.0,
                                        "ai_config": None, "ai_base_url": None, "ai_model": None,
                                        "ai_budget_usd": None}  # fmt: skip
    y = tmp_path / "dash.yaml"
    y.write_text("autopilot:\n  mode: suggest\n  key_metric: acc\n  interval_sec: 0.5\n")
    monkeypatch.setenv("HOTCB_AUTOPILOT__KEY_METRIC", "val_acc")
    monkeypatch.setenv("HOTCB_AUTOPILOT__DIRECTION", "maximize")
    c = cli("--config", str(y))
    assert (c.autopilot.mode, c.autopilot.key_metric, c.autopilot.direction) == (
        "suggest", "val_acc", "maximize",
    )  # fmt: skip
    assert c.autopilot.interval_sec == 0.5
    c = cli("--config", str(y), "--autopilot", "auto", "--key-metric", "loss",
            "--autopilot-rules", "rules.yaml")  # fmt: skip
    assert (c.autopilot.mode, c.autopilot.key_metric, c.autopilot.direction) == (
        "auto", "loss", "maximize",
    )  # fmt: skip
    assert c.autopilot.rules == os.path.abspath("rules.yaml")
    c = cli("--autopilot", "ai_auto", "--ai-base-url", "http://127.0.0.1:9/v1", "--ai-model",
            "m", "--ai-budget", "0.5", "--ai-config", "ai.yaml")  # fmt: skip
    assert (c.autopilot.mode, c.autopilot.ai_base_url, c.autopilot.ai_model) == (
        "ai_auto", "http://127.0.0.1:9/v1", "m",
    )  # fmt: skip
    assert (c.autopilot.ai_budget_usd, c.autopilot.ai_config) == (0.5, os.path.abspath("ai.yaml"))
    with pytest.raises(SystemExit):
        cli("--autopilot", "active")  # not a mode of the rule autopilot
    monkeypatch.setenv("HOTCB_AUTOPILOT__MODE", "active")
    with pytest.raises(ValueError, match=r"autopilot\.mode"):
        cli()

"""The CI skip guard (``_skip_guard.py``): in CI a skip fails the session unless allowed.

Each case runs pytest in a subprocess on a small test project whose conftest installs the
guard, and checks the exit status and the report, as CI would see them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

CONFTEST = f"""
import sys
sys.path.insert(0, {TESTS_DIR!r})
from _skip_guard import install

ALLOWED = ((r"^needs root to", "only root can be another OS user"),)


def pytest_configure(config):
    install(config, ALLOWED)
"""

NOT_ALLOWED = """
import pytest


def test_passes():
    pass


def test_needs_the_server():
    pytest.skip("fastapi is not installed")
"""

MODULE_SKIP = """
import pytest

pytest.importorskip("no_such_module_for_hotcb_tests")


def test_never_collected():
    pass
"""

ALLOWED_ONLY = """
import pytest


def test_passes():
    pass


@pytest.mark.skipif(True, reason="needs root to run the attacker as another user")
def test_allowed_by_pattern():
    pass


@pytest.mark.allow_skip(reason="the data set is optional here")
def test_allowed_by_marker():
    pytest.skip("data set not present")


@pytest.mark.xfail(reason="an xfail is not a skip", strict=True)
def test_expected_failure():
    assert False
"""

MARKER_WITHOUT_REASON = """
import pytest


@pytest.mark.allow_skip
def test_marker_says_nothing():
    pytest.skip("data set not present")
"""


def run_pytest(
    tmp_path: Any, test_code: str, ci: str | None, **files: str
) -> subprocess.CompletedProcess:
    """pytest on ``test_it.py`` (and ``files``, by path relative to the project, ``__`` for
    ``/``) in a fresh project whose conftest installs the guard."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\n")
    (project / "conftest.py").write_text(CONFTEST)
    (project / "test_it.py").write_text(textwrap.dedent(test_code))
    for name, code in files.items():
        path = project.joinpath(*name.split("__"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(code))
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # only pytest and the guard: fast, isolated
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", "."],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("ci", ["1", "true", "yes"])
def test_in_ci_a_skip_fails_the_session_and_is_listed_with_its_reason(
    tmp_path: Any, ci: str
) -> None:
    done = run_pytest(tmp_path, NOT_ALLOWED, ci)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 skip(s) not allowed in CI" in done.stdout
    assert "test_it.py::test_needs_the_server: fastapi is not installed" in done.stdout
    assert "1 passed, 1 skipped" in done.stdout


def test_in_ci_a_module_level_importorskip_fails_the_session(tmp_path: Any) -> None:
    done = run_pytest(tmp_path, MODULE_SKIP, "1")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "test_it.py: could not import 'no_such_module_for_hotcb_tests'" in done.stdout


def test_in_ci_a_folder_skipped_by_its_conftest_fails_the_session(tmp_path: Any) -> None:
    server = {
        "server__conftest.py": 'import pytest\npytest.importorskip("no_such_server_lib")\n',
        "server__test_api.py": "def test_health():\n    pass\n",
    }
    done = run_pytest(tmp_path, "def test_passes():\n    pass\n", "1", **server)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "server: could not import 'no_such_server_lib'" in done.stdout


def test_in_ci_allowed_skips_and_xfails_pass(tmp_path: Any) -> None:
    done = run_pytest(tmp_path, ALLOWED_ONLY, "1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "not allowed in CI" not in done.stdout
    assert "1 passed, 2 skipped, 1 xfailed" in done.stdout


def test_an_allow_skip_marker_needs_a_reason(tmp_path: Any) -> None:
    done = run_pytest(tmp_path, MARKER_WITHOUT_REASON, "1")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "data set not present (its allow_skip marker has no reason=...)" in done.stdout


@pytest.mark.parametrize("ci", [None, "", "0", "false", "False"])
def test_outside_ci_a_skip_is_only_a_skip(tmp_path: Any, ci: str | None) -> None:
    done = run_pytest(tmp_path, NOT_ALLOWED, ci)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "not allowed in CI" not in done.stdout
    assert "1 passed, 1 skipped" in done.stdout and ": fastapi is not installed" in done.stdout


@pytest.mark.parametrize(
    "reason",
    [
        "needs root to run the attacker as the OS user 'nobody' (setpriv)",
        "mounting a tmpfs needs root on Linux (RLIMIT_FSIZE tests cover the rest)",
    ],
)
def test_this_suites_allow_list_lets_root_only_tests_skip(
    pytestconfig: pytest.Config, reason: str
) -> None:
    guard = pytestconfig.pluginmanager.get_plugin("hotcb-skip-guard")
    assert guard.allows(reason)
    assert all(why.strip() for _pattern, why in guard.allowed)


@pytest.mark.parametrize(
    "reason",
    [
        "could not import 'fastapi': No module named 'fastapi'",
        "could not import 'lightning.pytorch': No module named 'lightning'",
        "could not import 'transformers': No module named 'transformers'",
        "could not import 'playwright.sync_api': No module named 'playwright'",
        "/usr/bin/chromium is missing (apt-get install chromium)",
        "could not import 'torch': No module named 'torch'",
        "user nobody cannot run /usr/bin/python3: Permission denied",
    ],
)
def test_this_suites_allow_list_never_lets_a_missing_component_skip(
    pytestconfig: pytest.Config, reason: str
) -> None:
    guard = pytestconfig.pluginmanager.get_plugin("hotcb-skip-guard")
    assert not guard.allows(reason)

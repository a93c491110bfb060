"""In CI a skip is a failure, unless it is explicitly allowed.

Components hotcb promises (Lightning, transformers, torch.distributed, the server, the browser)
are guarded by ``pytest.importorskip`` / ``pytest.skip`` / ``skipif`` so that a developer
without them can still run the rest. In CI those skips would pass as green while testing
nothing, so when the ``CI`` environment variable is set (non-empty, not ``0`` / ``false``)
every skipped test, and every skipped module or folder (a module-level ``importorskip``), fails
the session (exit status 1), listed with its reason at the end of the report, unless

- its reason matches a pattern of the allow-list (``ALLOWED_SKIPS`` in ``tests/conftest.py``),
- or the test carries ``@pytest.mark.allow_skip(reason="why this skip is fine in CI")``.

An xfail is not a skip. Installed by ``tests/conftest.py``::

    def pytest_configure(config):
        install(config, ALLOWED_SKIPS)
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

PLUGIN_NAME = "hotcb-skip-guard"

#: ``(pattern, why)``: a skip whose reason matches ``pattern`` (:func:`re.search`) is allowed.
Allowed = Sequence[tuple[str, str]]


def ci_enabled(environ: Mapping[str, str] = os.environ) -> bool:
    """True when ``CI`` is set to something other than empty, ``0`` or ``false``."""
    return environ.get("CI", "").strip().lower() not in ("", "0", "false")


def skip_reason(longrepr: Any) -> str:
    """The reason of a skipped report (its ``longrepr`` is ``(path, lineno, "Skipped: ...")``)."""
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text.removeprefix("Skipped: ")


class SkipGuard:
    """The plugin: records skips, reports the ones not allowed, fails the session in CI."""

    def __init__(self, allowed: Allowed, enabled: bool) -> None:
        self.allowed = tuple(allowed)
        self._patterns = [re.compile(pattern) for pattern, _why in self.allowed]
        self.enabled = enabled
        self.marked: dict[str, str | None] = {}  # nodeid -> allow_skip's reason
        self.offenders: dict[str, str] = {}  # nodeid -> skip reason

    def allows(self, reason: str) -> bool:
        """Whether the allow-list lets a skip with this reason pass in CI."""
        return any(p.search(reason) for p in self._patterns)

    def _record(self, nodeid: str, reason: str) -> None:
        if self.allows(reason):
            return
        if nodeid in self.marked:
            why = self.marked[nodeid]
            if why:
                return
            reason += " (its allow_skip marker has no reason=...)"
        self.offenders.setdefault(nodeid, reason)

    # -- hooks -------------------------------------------------------------------------------
    def pytest_itemcollected(self, item: pytest.Item) -> None:
        mark = item.get_closest_marker("allow_skip")
        if mark is not None:
            why = mark.kwargs.get("reason", mark.args[0] if mark.args else None)
            self.marked[item.nodeid] = str(why).strip() if why else None

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.skipped:  # a module-level importorskip / skip(allow_module_level=True)
            self._record(report.nodeid or ".", skip_reason(report.longrepr))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            self._record(report.nodeid, skip_reason(report.longrepr))

    def _lines(self) -> list[str]:
        lines = [f"{nodeid}: {reason}" for nodeid, reason in self.offenders.items()]
        lines.append(
            "CI is set: install what these tests need, or allow the skip with a pattern in "
            "ALLOWED_SKIPS (tests/conftest.py) or @pytest.mark.allow_skip(reason=...)"
        )
        return lines

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not (self.enabled and self.offenders):
            return
        n = len(self.offenders)
        terminalreporter.write_sep("=", f"{n} skip(s) not allowed in CI", red=True, bold=True)
        for line in self._lines():
            terminalreporter.write_line(line)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not (self.enabled and self.offenders):
            return
        if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if session.config.pluginmanager.get_plugin("terminalreporter") is None:
            sys.stderr.write("skips not allowed in CI:\n" + "\n".join(self._lines()) + "\n")


def install(config: pytest.Config, allowed: Allowed, enabled: bool | None = None) -> SkipGuard:
    """Register the guard with ``allowed`` (on in CI unless ``enabled`` says otherwise)."""
    config.addinivalue_line(
        "markers", "allow_skip(reason): this test's skip is fine in CI (say why in reason=)"
    )
    guard = SkipGuard(allowed, ci_enabled() if enabled is None else enabled)
    config.pluginmanager.register(guard, PLUGIN_NAME)
    return guard

"""Kernel modules: the ``cb`` callback module, the ``tune`` module, and the plug-in registry."""

import contextlib
import os

from .. import jsonl
from ..runfiles import RunPaths
from ._base import (
    HotModule,
    ModuleHost,
    ModuleSpec,
    OpResult,
    create_module,
    module_ops,
    module_specs,
    register_module,
)

register_module(
    "cb",
    "hotcb.modules.cb:CallbackModule",
    ("load", "unload", "enable", "disable", "set_params"),
    start_when=lambda paths: os.path.exists(paths.config_yaml),
)


def _tuning(paths: RunPaths) -> bool:
    """``hotcb.tune.json`` is there, or the ledger says the tuner was on when the run stopped
    (the file deleted since: the tuner says it stays off, rather than nothing)."""
    if os.path.exists(paths.tune):
        return True
    mode: object = "off"
    with contextlib.suppress(OSError):
        for e in jsonl.iter_records(paths.ledger, keep=lambda line: b'"tune"' in line):
            change = (e.get("changes") or {}).get("mode") if e.get("module") == "tune" else None
            if isinstance(change, dict) and e.get("decision") == "applied":
                mode = change.get("new")
    return mode not in (None, "off")


register_module(
    "tune",
    "hotcb.modules.tune:TuneModule",
    ("enable", "disable", "accept", "reject", "mutate", "rollback", "bracket"),
    start_when=_tuning,
)

__all__ = [
    "HotModule",
    "ModuleHost",
    "ModuleSpec",
    "OpResult",
    "create_module",
    "module_ops",
    "module_specs",
    "register_module",
]

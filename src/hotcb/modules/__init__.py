"""Kernel modules: the ``cb`` callback module, the ``tune`` module, and the plug-in registry."""

import os

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

register_module(
    "tune",
    "hotcb.modules.tune:TuneModule",
    ("enable", "disable", "accept", "reject", "mutate", "rollback", "bracket"),
    start_when=lambda paths: os.path.exists(paths.tune),
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

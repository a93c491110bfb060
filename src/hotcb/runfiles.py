"""Names of the files that make up a run directory (shared/DESIGN.md §3)."""

from __future__ import annotations

import os
from dataclasses import dataclass

COMMANDS = "hotcb.commands.jsonl"
LEDGER = "hotcb.applied.jsonl"
ACTUATORS = "hotcb.actuators.json"
METRICS = "hotcb.metrics.jsonl"
FEATURES = "hotcb.features.jsonl"
FREEZE = "hotcb.freeze.json"
RECIPE = "hotcb.recipe.jsonl"
ADJUST = "hotcb.adjust.yaml"
SOURCES = "hotcb.sources"
RUN_META = "hotcb.run.json"
CONFIG_YAML = "hotcb.yaml"

#: Version of the record formats written to the run directory.
FORMAT_VERSION = 1


@dataclass(frozen=True)
class RunPaths:
    """Absolute paths of one run directory's files."""

    root: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", os.path.abspath(self.root))

    def _p(self, name: str) -> str:
        return os.path.join(self.root, name)

    @property
    def commands(self) -> str:
        return self._p(COMMANDS)

    @property
    def ledger(self) -> str:
        return self._p(LEDGER)

    @property
    def actuators(self) -> str:
        return self._p(ACTUATORS)

    @property
    def metrics(self) -> str:
        return self._p(METRICS)

    @property
    def features(self) -> str:
        return self._p(FEATURES)

    @property
    def freeze(self) -> str:
        return self._p(FREEZE)

    @property
    def recipe(self) -> str:
        return self._p(RECIPE)

    @property
    def adjust(self) -> str:
        return self._p(ADJUST)

    @property
    def sources(self) -> str:
        return self._p(SOURCES)

    @property
    def run_meta(self) -> str:
        return self._p(RUN_META)

    @property
    def config_yaml(self) -> str:
        return self._p(CONFIG_YAML)


#: Filesystems on which flock does not serialise appends from several hosts.
NETWORK_FS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "9p", "lustre", "gpfs", "ceph"}
)


def filesystem_type(path: str, mounts: str = "/proc/mounts") -> str | None:
    """The type of the filesystem holding ``path`` (``ext4``, ``nfs4``…), or None when it cannot
    be told cheaply (not Linux)."""
    try:
        with open(mounts) as f:
            table = [line.split() for line in f]
    except OSError:
        return None
    path = os.path.realpath(path)
    best, fstype = "", None
    for fields in table:
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, fstype = point, fields[2]
    return fstype


def is_network_fs(fstype: str | None) -> bool:
    return fstype is not None and (fstype in NETWORK_FS or fstype.startswith("nfs"))


def is_run_dir(path: str) -> bool:
    """True when ``path`` holds any hotcb file (commands, ledger, metrics or run metadata)."""
    return any(
        os.path.exists(os.path.join(path, name)) for name in (COMMANDS, LEDGER, METRICS, RUN_META)
    )

"""HotClient: the Python writer that the CLI, the dashboard, autopilots and notebooks use.

Every method validates the command (same rules as the kernel), appends it to the run's
``hotcb.commands.jsonl`` and returns its ``cmd_id``; :meth:`HotClient.wait` returns the ledger
entry once the training process has handled it.
"""

from __future__ import annotations

import os
import re
import socket
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from . import jsonl
from .errors import CommandError, JournalWriteError
from .ledger import iter_entries
from .ops import make_command
from .runfiles import RunPaths, is_network_fs

__all__ = ["HotClient", "route_keys"]

_OPT_PATTERN = re.compile(
    r"^(opt\d*\.)?(lr|learning_rate|weight_decay|momentum|betas|beta1|beta2|eps|dampening|nesterov)(@.+)?$"
)
_LOSS_PATTERN = re.compile(r"^(loss|weight|w|lambda|terms?)[._]|(_weight|_loss|_w)$")


def route_keys(keys: Sequence[str], actuators: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Which module (opt / loss / custom) each key belongs to: by the run's registered
    actuators first, then by name patterns (``lr`` → opt, ``*_weight`` → loss, else custom)."""
    groups = {a["param_key"]: a.get("group", "custom") for a in actuators}
    out: dict[str, list[str]] = {}
    for key in keys:
        module = groups.get(key)
        if module is None:
            if _OPT_PATTERN.match(key):
                module = "opt"
            elif _LOSS_PATTERN.search(key):
                module = "loss"
            else:
                module = "custom"
        out.setdefault(module, []).append(key)
    return out


class HotClient:
    """Send commands to a run directory."""

    def __init__(self, run_dir: str | os.PathLike[str], *, source: str = "python") -> None:
        self.paths = RunPaths(os.fspath(run_dir))
        self.run_dir = self.paths.root
        self.source = source
        self._checked_host = False

    # -- raw -------------------------------------------------------------------------------
    def send(self, module: str, op: str, **fields: Any) -> str:
        """Validate and append one command; return its ``cmd_id``.

        Raises :class:`~hotcb.errors.JournalWriteError` (an ``OSError``) when the command could
        not be written (disk full): nothing of it is in the file, and no ``cmd_id`` exists."""
        fields.setdefault("source", self.source)
        record = make_command(module, op, **fields)
        os.makedirs(self.run_dir, exist_ok=True)
        if not self._checked_host:
            self._checked_host = True
            self._warn_if_remote_writer()
        try:
            jsonl.append(self.paths.commands, record)
        except JournalWriteError as exc:  # nothing was written: no cmd_id to wait on
            raise JournalWriteError(
                f"the command ({module} {op}) was not written: {exc}",
                errno=exc.errno,
                path=exc.path,
            ) from exc
        return str(record["cmd_id"])

    def _warn_if_remote_writer(self) -> None:
        """Appending from another host to a run on a network filesystem can tear lines:
        say so once (the trainer's host is in ``hotcb.run.json``)."""
        meta = jsonl.read_json(self.paths.run_meta, {}) or {}
        host, fstype = meta.get("host"), meta.get("filesystem")
        if host and host != socket.gethostname() and is_network_fs(fstype):
            warnings.warn(
                f"this run trains on {host} and its directory is on {fstype}: appends from "
                f"{socket.gethostname()} are not serialised with the trainer's host. Send "
                f"commands through 'hotcb serve' on {host} instead (docs/core.md).",
                RuntimeWarning,
                stacklevel=3,
            )

    def send_record(self, record: Mapping[str, Any]) -> str:
        """Append a prepared record (missing cmd_id/ts/source are filled in)."""
        fields = dict(record)
        module, op = fields.pop("module", None), fields.pop("op", None)
        if not isinstance(module, str) or not isinstance(op, str):
            raise CommandError("a command needs 'module' and 'op' strings")
        fields.pop("ts", None)
        return self.send(module, op, **fields)

    # -- actuators -------------------------------------------------------------------------
    def set_params(self, module: str, params: Mapping[str, Any], **fields: Any) -> str:
        return self.send(module, "set_params", params=dict(params), **fields)

    def opt(self, **params: Any) -> str:
        return self.set_params("opt", params)

    def loss(self, **params: Any) -> str:
        return self.set_params("loss", params)

    def custom(self, **params: Any) -> str:
        return self.set_params("custom", params)

    def actuators(self) -> list[dict[str, Any]]:
        doc = jsonl.read_json(self.paths.actuators, {}) or {}
        return list(doc.get("actuators") or [])

    def set(self, params: Mapping[str, Any], **fields: Any) -> list[str]:
        """Route each key to opt / loss / custom by the run's actuators; one command per module."""
        routed = route_keys(list(params), self.actuators())
        return [
            self.set_params(module, {k: params[k] for k in keys}, **fields)
            for module, keys in routed.items()
        ]

    # -- control ---------------------------------------------------------------------------
    def pause(self) -> str:
        return self.send("control", "pause")

    def resume(self) -> str:
        return self.send("control", "resume")

    def stop(self) -> str:
        return self.send("control", "stop")

    def checkpoint(self, path: str | None = None) -> str:
        return self.send("control", "checkpoint", params={"path": path} if path else {})

    def undo(self, cmd_id: str | None = None) -> str:
        return self.send("control", "undo", params={"cmd_id": cmd_id} if cmd_id else {})

    def cancel(self, cmd_id: str) -> str:
        return self.send("control", "cancel", params={"cmd_id": cmd_id})

    def freeze(
        self,
        mode: str,
        *,
        recipe_path: str | None = None,
        adjust_path: str | None = None,
        step_offset: int | None = None,
    ) -> str:
        """Set the freeze mode. A recipe or overlay outside the run directory is copied into
        it first (``hotcb.replay/``), with the callback sources it captured: the trainer reads
        only inside its run directory and allowed roots."""
        if recipe_path is not None:
            from .recipe import import_for_replay

            recipe_path, adjust_path = import_for_replay(self.run_dir, recipe_path, adjust_path)
        return self.send(
            "freeze",
            "set",
            mode=mode,
            recipe_path=recipe_path,
            adjust_path=adjust_path,
            step_offset=step_offset,
        )

    # -- callbacks -------------------------------------------------------------------------
    def cb_load(
        self,
        id: str,
        *,
        symbol: str,
        file: str | None = None,
        path: str | None = None,
        init: Mapping[str, Any] | None = None,
        enabled: bool = True,
    ) -> str:
        if (file is None) == (path is None):
            raise CommandError(
                "cb load needs exactly one of file= (a .py file) or path= (a module)"
            )
        target = (
            {"kind": "python_file", "path": os.path.abspath(file), "symbol": symbol}
            if file is not None
            else {"kind": "python_path", "path": path, "symbol": symbol}
        )
        return self.send("cb", "load", id=id, target=target, init=dict(init or {}), enabled=enabled)

    def cb(self, op: str, id: str, **params: Any) -> str:
        return self.send("cb", op, id=id, params=params)

    # -- reading back ----------------------------------------------------------------------
    def entries(self, cmd_id: str) -> list[dict[str, Any]]:
        return [e for e in iter_entries(self.paths.ledger) if e.get("cmd_id") == cmd_id]

    def wait(
        self, cmd_id: str, timeout: float = 30.0, *, final: bool = True, interval: float = 0.02
    ) -> dict[str, Any]:
        """The ledger entry for ``cmd_id`` once the kernel handled it.

        With ``final`` a ``scheduled`` entry is not enough: wait for the entry that applied,
        rejected or cancelled it. Raises ``TimeoutError`` after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        tail = jsonl.JsonlTail(self.paths.ledger)
        while True:
            for entry in tail.read_records():
                if entry.get("cmd_id") != cmd_id:
                    continue
                if final and entry.get("decision") == "scheduled":
                    continue
                return entry
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"no ledger entry for {cmd_id} after {timeout:g}s: is the run alive?"
                )
            time.sleep(interval)

    def wait_ramp(self, cmd_id: str, timeout: float = 30.0) -> dict[str, Any]:
        """The entry that ends the ramp ``cmd_id`` started: ``ramp: complete`` (the target is
        reached), ``superseded`` (another command took over) or a ``failed`` one."""
        deadline = time.monotonic() + timeout
        tail = jsonl.JsonlTail(self.paths.ledger)
        while True:
            for entry in tail.read_records():
                if entry.get("cmd_id") == cmd_id and (
                    entry.get("ramp") or entry.get("decision") == "failed"
                ):
                    return entry
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the ramp of {cmd_id} has not ended after {timeout:g}s; it goes on in the "
                    "run (see 'hotcb log')"
                )
            time.sleep(0.02)

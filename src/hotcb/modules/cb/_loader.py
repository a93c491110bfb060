"""Finding a callback's code: the code-load policy, imports by path, files with source capture.

A callback loaded from a file is read once, hashed, copied to ``hotcb.sources/<sha256>.py`` and
executed from those exact bytes. The ledger records the sha256 and the captured path, so a replay
or a resume loads the version that ran, even after the original file was edited.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import os
import sys
import types
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...errors import CodeLoadError
from ...runfiles import SOURCES

if TYPE_CHECKING:
    from ...ops import CallbackTarget
    from .._base import ModuleHost

__all__ = ["Resolved", "capture_source", "check_allowed", "resolve"]

#: The one import path that stays loadable when ``allow_code_load=False``: hotcb's bundled
#: callbacks, by the names the package exports. Nothing else under ``hotcb.`` is a callback.
BUNDLED_PATH = "hotcb.modules.cb.callbacks"


def _bundled_names() -> frozenset[str]:
    from . import callbacks

    return frozenset(callbacks.__all__)


@dataclass(frozen=True)
class Resolved:
    """The object named by a target (a class or a factory) and, for files, its capture."""

    factory: Any
    sha256: str | None = None
    capture_path: str | None = None  # relative to the run directory

    @property
    def source_capture(self) -> dict[str, str] | None:
        if self.sha256 is None or self.capture_path is None:
            return None
        return {"sha256": self.sha256, "path": self.capture_path}


def _inside(path: str, dirs: list[str]) -> bool:
    real = os.path.realpath(path)
    for d in dirs:
        root = os.path.realpath(d)
        if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
            return True
    return False


def _module_location(path: str) -> str | None:
    """Where the top-level package of import path ``path`` lives, found without importing
    anything (``find_spec`` of a dotted name would import its parents)."""
    top = path.split(".", 1)[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return next(iter(spec.submodule_search_locations), None)
    return spec.origin


def check_allowed(host: ModuleHost, target: CallbackTarget) -> None:
    """Raise :class:`CodeLoadError` saying why and how to allow it, before anything is imported.

    The allow-list, in order:

    - hotcb's bundled callbacks, by name (``--path hotcb.modules.cb.callbacks --symbol
      HeartbeatCallback``): always, also with ``allow_code_load=False``;
    - with ``allow_code_load=False``, nothing else: no import, no file;
    - with code loading on and ``allowed_code_dirs`` given, files and modules whose code lies
      inside those folders; with no ``allowed_code_dirs``, any file or module the command names.
    """
    if target.kind == "python_path" and target.path == BUNDLED_PATH:
        if target.symbol in _bundled_names():
            return
        raise CodeLoadError(
            f"{BUNDLED_PATH} has no bundled callback {target.symbol!r}; bundled: "
            f"{', '.join(sorted(_bundled_names()))}"
        )
    if not host.allow_code_load:
        raise CodeLoadError(
            f"code loading is disabled in this run (HotKernel(allow_code_load=False)); "
            f"refused to load {target.kind} {target.path!r}. Start the run with "
            f"allow_code_load=True to load callbacks, or use hotcb's bundled callbacks "
            f"(--path {BUNDLED_PATH})"
        )
    dirs = list(host.allowed_code_dirs or ())
    if not dirs:
        return
    where = target.path if target.kind == "python_file" else _module_location(target.path)
    if where is None or not _inside(where, dirs):
        raise CodeLoadError(
            f"{target.kind} {target.path!r} is outside the allowed code directories "
            f"({', '.join(dirs)}); move the code there or add its folder to "
            f"HotKernel(allowed_code_dirs=[...])"
        )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def capture_source(host: ModuleHost, data: bytes) -> tuple[str, str]:
    """Store ``data`` as ``hotcb.sources/<sha256>.py`` (once); return (sha256, relative path)."""
    sha = _sha256(data)
    rel = f"{SOURCES}/{sha}.py"
    dest = os.path.join(host.paths.sources, f"{sha}.py")
    if host.is_leader and not os.path.exists(dest):
        os.makedirs(host.paths.sources, exist_ok=True)
        tmp = f"{dest}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, dest)
    return sha, rel


def _read_captured(host: ModuleHost, capture: Any, target: CallbackTarget) -> bytes:
    """The bytes of a recorded capture (replay/resume): from its path, this run's sources, or
    the original file if it still has the recorded sha256."""
    if not isinstance(capture, dict) or not isinstance(capture.get("sha256"), str):
        raise ValueError(f"source_capture must be {{sha256, path}}, got {capture!r}")
    sha = capture["sha256"]
    candidates = []
    path = capture.get("path")
    if isinstance(path, str) and path:
        candidates.append(path if os.path.isabs(path) else os.path.join(host.run_dir, path))
    candidates.append(os.path.join(host.paths.sources, f"{sha}.py"))
    candidates.append(target.path)
    # a capture path comes from a ledger, a recipe or a checkpoint: read it only where code may
    # come from (the run directory, its allowed roots, the allowed code directories)
    roots = [host.run_dir, *host.allowed_roots, *host.allowed_code_dirs]
    candidates = [c for c in candidates if c == target.path or _inside(c, roots)]
    for cand in candidates:
        try:
            with open(cand, "rb") as f:
                data = f.read()
        except OSError:
            continue
        if _sha256(data) == sha:
            return data
    raise FileNotFoundError(
        f"captured source {sha[:12]}… not found (looked in {', '.join(candidates)}) and "
        f"{target.path!r} no longer has that content; copy hotcb.sources/{sha}.py into this "
        f"run's hotcb.sources/"
    )


def _symbol(obj: Any, symbol: str, where: str) -> Any:
    """One attribute of the module, never a dotted walk (``os.system`` is not a callback)."""
    if not symbol.isidentifier():
        raise AttributeError(f"symbol must be one attribute name, got {symbol!r}")
    try:
        return getattr(obj, symbol)
    except AttributeError:
        raise AttributeError(f"{where} has no attribute {symbol!r}") from None


def _exec_file(data: bytes, capture_abs: str, original: str, sha: str) -> types.ModuleType:
    name = f"hotcb_src_{sha[:16]}"
    mod = types.ModuleType(name)
    # __file__ is the user's file (for sibling resources); the code object's filename is the
    # captured copy, so tracebacks show the lines that actually ran even after an edit
    mod.__file__ = original
    code = compile(data, capture_abs, "exec")
    folder = os.path.dirname(os.path.abspath(original))
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)  # sibling imports at module import time
    sys.modules[name] = mod  # dataclasses, pickling and typing look the module up by name
    try:
        exec(code, mod.__dict__)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(folder)
    return mod


def resolve(host: ModuleHost, target: CallbackTarget, source_capture: Any = None) -> Resolved:
    """Import the target and return its symbol. Call :func:`check_allowed` first."""
    if target.kind == "python_path":
        module = importlib.import_module(target.path)
        return Resolved(_symbol(module, target.symbol, f"module {target.path!r}"))
    if source_capture is not None:
        data = _read_captured(host, source_capture, target)
    else:
        with open(target.path, "rb") as f:
            data = f.read()
    sha, rel = capture_source(host, data)
    capture_abs = os.path.join(host.run_dir, rel)
    if not os.path.exists(capture_abs):  # non-leader ranks do not write: fall back
        capture_abs = target.path
    mod = _exec_file(data, capture_abs, target.path, sha)
    return Resolved(_symbol(mod, target.symbol, f"file {target.path!r}"), sha, rel)

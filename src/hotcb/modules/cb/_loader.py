"""Finding a callback's code: the code-load policy, imports by path, files with source capture.

A callback loaded from a file is read once, hashed, copied to ``hotcb.sources/<sha256>.py`` and
executed from those exact bytes. The ledger records the sha256 and the captured path, so a replay
or a resume loads the version that ran, even after the original file was edited.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.machinery
import importlib.util
import os
import signal
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, cast

from ... import jsonl
from ...errors import CodeLoadError
from ...runfiles import SOURCES

if TYPE_CHECKING:
    from ...ops import CallbackTarget
    from .._base import ModuleHost

__all__ = [
    "CallbackExit",
    "Resolved",
    "as_callback_exit",
    "capture_source",
    "caught_exit",
    "check_allowed",
    "resolve",
]

#: The one import path that stays loadable when ``allow_code_load=False``: hotcb's bundled
#: callbacks, by the names the package exports. Nothing else under ``hotcb.`` is a callback.
BUNDLED_PATH = "hotcb.modules.cb.callbacks"


def _bundled_names() -> frozenset[str]:
    from . import callbacks

    return frozenset(callbacks.__all__)


class CallbackExit(RuntimeError):
    """A callback's code raised ``SystemExit`` (``sys.exit()``, argparse's ``parse_args()``
    on a command line it does not know): hotcb turned it into this error, which takes the path
    any exception of the callback takes (a ``failed`` load, a ``callback_error``), so the
    training goes on and the ledger says what happened. The message begins ``SystemExit:``."""


def _signal_handler_codes() -> set[types.CodeType]:
    codes = set()
    for sig in signal.valid_signals():
        try:
            handler = signal.getsignal(sig)
        except (ValueError, OSError):
            continue
        code = getattr(getattr(handler, "__func__", handler), "__code__", None)
        if isinstance(code, types.CodeType):
            codes.add(code)
    return codes


def _from_signal_handler(exc: BaseException) -> bool:
    """Whether ``exc`` was raised inside an installed signal handler (a SIGTERM handler that
    calls ``sys.exit``, run while a callback happened to be running): that exit is the
    process's, not the callback's, and must go on up."""
    codes = _signal_handler_codes()
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code in codes:
            return True
        tb = tb.tb_next
    return False


def _exit_message(exc: SystemExit, who: str, when: str, stderr: str) -> str:
    call = "sys.exit()" if exc.code is None else f"sys.exit({exc.code!r})"
    msg = f"SystemExit: {who} called {call} {when}".rstrip()
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    if any(ln.startswith("usage:") for ln in lines) and lines:
        msg += (
            f"; it printed {lines[-1]!r}: argparse's parse_args() parsed the trainer's own "
            f'command line. Put script code under `if __name__ == "__main__":`, or call '
            f"parse_args([]) / parse_known_args()"
        )
    elif when.startswith("while it was imported"):
        msg += (
            " (argparse's parse_args(), or script code at module level? put it under "
            '`if __name__ == "__main__":`)'
        )
    return msg + ". hotcb caught it; training goes on"


def as_callback_exit(exc: SystemExit, who: str, when: str = "", stderr: str = "") -> CallbackExit:
    """``exc`` as a :class:`CallbackExit` saying who called ``sys.exit`` and when (its ledger
    entry is logged too, so the trainer's output names hotcb right after what the code
    printed). A ``SystemExit`` raised inside a signal handler is re-raised instead."""
    if _from_signal_handler(exc):
        raise exc
    return CallbackExit(_exit_message(exc, who, when, stderr))


class _StderrTail:
    """``sys.stderr`` while a callback's code runs outside the hot path: everything still goes
    to the real stream; the tail is kept for the message of a ``SystemExit``."""

    def __init__(self, out: Any) -> None:
        self._out = out
        self.tail = ""

    def write(self, text: str) -> int:
        self.tail = (self.tail + text)[-4000:]
        return int(self._out.write(text) or 0) if self._out is not None else len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._out, name)


@contextlib.contextmanager
def caught_exit(who: str, when: str = "") -> Iterator[None]:
    """Run a callback's code (an import, a constructor, a hook): a ``SystemExit`` it raises
    becomes a :class:`CallbackExit` (see :func:`as_callback_exit`); ``KeyboardInterrupt``
    goes on up (a Ctrl-C still stops the run)."""
    tail = _StderrTail(sys.stderr)
    try:
        with contextlib.redirect_stderr(cast(IO[str], tail)):
            yield
    except SystemExit as exc:
        raise as_callback_exit(exc, who, when, tail.tail) from exc


@dataclass(frozen=True)
class Resolved:
    """The object named by a target (a class or a factory) and, for files, its capture."""

    factory: Any
    sha256: str | None = None
    capture_path: str | None = None  # relative to the run directory
    stale: str | None = None  # a module whose file changed since it was imported: why it says

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


def _module_locations(path: str) -> list[str]:
    """Where the code of import path ``path`` lives, found without importing anything
    (``find_spec`` of a dotted name would import its parents): the file of each package on
    the way and of the module itself, and every folder of a package (a namespace package may
    have several). Empty when it is not found, or has no file (a built-in module). Each part
    counts: a package inside the allowed folders whose submodule is a link to a file outside
    them ran that file."""
    parts = path.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])
    except (ImportError, ValueError):
        return []
    found: list[str] = []
    for i in range(len(parts)):
        if i and spec is not None:
            where = list(spec.submodule_search_locations or ())
            if not where:  # not a package: the rest names nothing importable
                return []
            spec = importlib.machinery.PathFinder.find_spec(".".join(parts[: i + 1]), where)
        if spec is None or (spec.origin is None and not spec.submodule_search_locations):
            return []
        if spec.origin is not None:
            if not spec.has_location:  # built-in, frozen
                return []
            found.append(spec.origin)
        found.extend(spec.submodule_search_locations or ())
    return found


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
    where = [target.path] if target.kind == "python_file" else _module_locations(target.path)
    if not where or not all(_inside(w, dirs) for w in where):
        raise CodeLoadError(
            f"{target.kind} {target.path!r} is outside the allowed code directories "
            f"({', '.join(dirs)}); move the code there or add its folder to "
            f"HotKernel(allowed_code_dirs=[...])"
        )


#: The sha256 of each module's file when a load first named it: Python imports a module once
#: per process, so a load after the file was edited runs the code imported before.
_FIRST_SEEN: dict[str, str] = {}


def _changed_since_import(module: types.ModuleType) -> str | None:
    """Why a load of ``module`` runs old code (its file changed since a load first named it),
    or None. Said in the load's entry: a reload after an edit ran the old code silently."""
    path = getattr(module, "__file__", None)
    if not isinstance(path, str) or not path.endswith(".py"):
        return None
    try:
        with open(path, "rb") as f:
            sha = _sha256(f.read())
    except OSError:
        return None
    first = _FIRST_SEEN.setdefault(module.__name__, sha)
    if first == sha:
        return None
    return (f"module {module.__name__!r} changed on disk since it was imported; Python imports "
            "a module once per process, so this load runs the code imported before (load it "
            "with --file to run the edited code, or start the trainer again)")  # fmt: skip


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def capture_source(host: ModuleHost, data: bytes) -> tuple[str, str]:
    """Store ``data`` as ``hotcb.sources/<sha256>.py`` (once); return (sha256, relative path)."""
    sha = _sha256(data)
    rel = f"{SOURCES}/{sha}.py"
    dest = os.path.join(host.paths.sources, f"{sha}.py")
    if host.is_leader and not os.path.exists(dest):
        os.makedirs(host.paths.sources, exist_ok=True)
        jsonl.write_atomic(dest, data)  # (a new temporary file: none a writer of the run planted)
    return sha, rel


def _read_captured(host: ModuleHost, capture: Any, target: CallbackTarget) -> bytes:
    """The bytes of a recorded capture (replay/resume): from its path, this run's sources, or
    the original file if it still has the recorded sha256.

    With ``allowed_code_dirs`` the bytes that run must come from a file inside one of them (the
    capture's real path, symlinks and ``..`` resolved): a capture anywhere else is refused
    with :class:`CodeLoadError`, whatever its sha256, since whoever can write the run directory
    (or send a ``source_capture``) could otherwise run code that no allowed folder holds."""
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
    code_dirs = list(host.allowed_code_dirs or ())
    roots = [host.run_dir, *host.allowed_roots, *code_dirs]
    candidates = [c for c in candidates if c == target.path or _inside(c, roots)]
    outside = [c for c in candidates if code_dirs and not _inside(c, code_dirs)]
    for cand in candidates:
        if cand in outside:
            continue
        data = _read_if(cand, sha)
        if data is not None:
            return data
    found = [c for c in outside if _read_if(c, sha) is not None]
    if found:
        raise CodeLoadError(
            f"captured source {sha[:12]}… of {target.path!r} is at {', '.join(found)}, outside "
            f"the allowed code directories ({', '.join(code_dirs)}), and no allowed folder "
            f"holds that content: refused to run it. Put that content back at "
            f"{target.path!r}, or, to run this run's captured sources, add "
            f"{host.paths.sources} to HotKernel(allowed_code_dirs=[...]) (whoever can write "
            f"there can then run code in the trainer)"
        )
    raise FileNotFoundError(
        f"captured source {sha[:12]}… not found (looked in {', '.join(candidates)}) and "
        f"{target.path!r} no longer has that content; copy hotcb.sources/{sha}.py into this "
        f"run's hotcb.sources/"
    )


def _read_if(path: str, sha: str) -> bytes | None:
    """The bytes of ``path`` when they have sha256 ``sha``; None otherwise or unreadable."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data if _sha256(data) == sha else None


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
        with caught_exit(f"the callback's file {original!r}", "while it was imported"):
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
        with caught_exit(f"module {target.path!r}", "while it was imported"):
            module = importlib.import_module(target.path)
        return Resolved(_symbol(module, target.symbol, f"module {target.path!r}"),
                        stale=_changed_since_import(module))  # fmt: skip
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

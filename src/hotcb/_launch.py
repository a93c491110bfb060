"""Start a training command with hotcb around it: ``hotcb launch`` and :func:`launch`.

    hotcb launch --serve -- python train.py --epochs 10
    hotcb launch --serve --autopilot suggest -- torchrun --nproc-per-node 2 train.py

    run = hotcb.launch("train.py", epochs=10)        # a script: kwargs become --flags
    run = hotcb.launch("my_pkg.train:main", lr=1e-3)  # an importable function: its kwargs
    run.set(lr=3e-4); run.metrics(); run.stop(); run.wait()

The training runs as a child process in its own process group with ``HOTCB_RUN_DIR`` set to
the run directory, so ``HotKernel()`` without arguments finds it, and ``HOTCB_LAUNCH_ID`` set to
the launch's tag. The dashboard (``hotcb serve``) and the autopilot (``hotcb autopilot``) run as
child processes beside it, clients of the run directory like any other. SIGINT and SIGTERM sent
to the launcher go to the training's process group (a third Ctrl-C kills it); when the training
ends, what it left running (its group, the processes carrying its tag, such as torchrun's
workers, which live in sessions of their own), the dashboard and the autopilot are stopped and
waited for, so nothing is left running.
See docs/launch.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import importlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from . import jsonl
from .branch import branch as make_branch
from .branch import retarget
from .client import HotClient
from .errors import CommandError, HotcbError
from .kernel import RUN_DIR_ENV
from .ledger import current_step, iter_entries
from .runfiles import RunPaths, redact_argv, shell_path
from .runfiles import proc_stat as _stat

__all__ = [
    "LAUNCH_ENV",
    "RESUME_ENV",
    "Launch",
    "LaunchError",
    "LaunchOptions",
    "check_program",
    "launch",
    "new_run_dir",
    "training_argv",
]

#: A checkpoint for the training to resume from (``--resume-from``): the launch only passes it.
RESUME_ENV = "HOTCB_RESUME_FROM"
#: The launch's tag in the training's environment: when the training ends, the processes still
#: carrying it are ended too, even those outside its process group (torchrun starts each worker
#: in a session of its own). Comma-separated: a launch inside a launched training adds its own.
LAUNCH_ENV = "HOTCB_LAUNCH_ID"
#: Where a launch from Python writes the output of its children (in the run directory).
LOG_NAME = "hotcb.launch.log"
#: Seconds a helper (dashboard, autopilot) or leftover process gets after a signal, before
#: SIGKILL.
STOP_TIMEOUT = 10.0
#: The notifier's last deliveries (``hotcb notify`` waits up to 30 s for them) before SIGKILL.
NOTIFIER_STOP_TIMEOUT = 40.0
#: A file ``hotcb notify`` creates once SIGTERM makes it take a last round: a notifier still
#: starting when a quick training crashed was ended by the signal before it saw the crash.
NOTIFY_READY_ENV = "HOTCB_NOTIFY_READY"
#: Seconds the dashboard gets to print its URL and answer (imports are slow on a busy machine).
SERVE_TIMEOUT = 120.0
#: Secrets only a helper reads: the LLM autopilot's key (``hotcb.autopilot.ai.KEY_ENV``) and
#: the SMTP password of the notifications' e-mail (``hotcb.notify``'s default
#: ``password_env``). Never in the training's environment (its code, its logs, its crash
#: dumps, the libraries it imports); the autopilot and the notifier get them.
SECRET_ENV = ("HOTCB_AI_KEY", "HOTCB_SMTP_PASSWORD", "HOTCB_TOKEN")  # (the dashboard's token)

_URL_LINE = re.compile(r"^hotcb dashboard for .*: (https?://\S+)\s*$")
_FUNCTION_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")

# The first program of every child: SIGINT back to its default (a shell's `cmd &` starts
# programs with it ignored, and a Python trainer would then never see KeyboardInterrupt), a
# SIGTERM when the launcher dies without cleaning up (Linux: PR_SET_PDEATHSIG), then exec the
# real command in the same process. A separate program, not a preexec_fn: forking a process
# with threads (a Jupyter kernel) must not run Python code between fork and exec.
_EXEC = """import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
if sys.argv[1] != "0":
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except Exception:
        pass
    if os.getppid() != int(sys.argv[1]):
        os._exit(143)
os.execvp(sys.argv[2], sys.argv[2:])
"""

# A function target's child: import module:qualname, call it with the JSON arguments.
_CALL = """import importlib, json, sys
spec, args, kwargs, path = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
sys.path.extend(p for p in path if p not in sys.path)
module, _, qualname = spec.partition(":")
fn = importlib.import_module(module)
for part in qualname.split("."):
    fn = getattr(fn, part)
sys.argv = [spec]
fn(*args, **kwargs)
"""


class LaunchError(HotcbError, RuntimeError):
    """The launch could not start what it was asked to (a missing script or command, a
    function a child process cannot import, a dashboard that did not come up)."""


# ------------------------------------------------------------------------------ the command
def _flags(kwargs: Mapping[str, Any]) -> list[str]:
    """``steps=100, step_delay=0.01, fast=True, tags=[a, b]`` as ``--steps 100 --step-delay
    0.01 --fast --tags a b`` (``False`` and ``None`` leave the flag out)."""
    out: list[str] = []
    for key, value in kwargs.items():
        if value is None or value is False:
            continue
        out.append("--" + key.replace("_", "-"))
        if isinstance(value, (list, tuple)):
            out += [str(v) for v in value]
        elif value is not True:
            out.append(str(value))
    return out


def _function_spec(fn: Callable[..., Any]) -> str:
    """``module:qualname`` of a function a child process can import; LaunchError if none."""
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    how = (
        "put it in a module (my_train.py beside the notebook) and pass my_train.main or "
        "'my_train:main', or pass a script path"
    )
    if not module or not qualname or "<" in qualname:
        raise LaunchError(
            f"{fn!r} cannot be imported by the training process (a lambda or a function "
            f"defined inside another); {how}"
        )
    if module == "__main__":
        raise LaunchError(
            f"{qualname} is defined in __main__ (a notebook or the script that calls launch), "
            f"which the training process cannot import; {how}"
        )
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if found is not fn:
        raise LaunchError(f"{module}:{qualname} does not name {fn!r}; {how}")
    return f"{module}:{qualname}"


def _json_args(value: Any, what: str) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise LaunchError(
            f"the {what} of a function target go to another process as JSON: {exc}; pass "
            "plain values (numbers, strings, lists, dicts) and build the rest inside the function"
        ) from None


def training_argv(
    target: str | os.PathLike[str] | Sequence[str] | Callable[..., Any],
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
) -> list[str]:
    """The child's argv for a launch target.

    - a script path (``"train.py"``): ``python train.py ARGS --key value …``, run by this
      interpreter;
    - ``"module:function"`` or an importable function: a Python child that imports it and calls
      ``function(*args, **kwargs)`` (JSON values);
    - a list (``["torchrun", "--nproc-per-node", "2", "train.py"]``): that command, then
      ``ARGS --key value …``.
    """
    kwargs = dict(kwargs or {})
    if callable(target):
        spec = _function_spec(target)
    elif isinstance(target, (str, os.PathLike)):
        path = os.fspath(target)
        if os.path.isfile(path):
            return [sys.executable, path, *[str(a) for a in args], *_flags(kwargs)]
        if not _FUNCTION_SPEC.match(path):
            raise LaunchError(
                f"no script at {os.path.abspath(path)}; a target is a script path, "
                "'module:function', an importable function or a command list"
            )
        spec = path
        module = spec.partition(":")[0]
        try:
            found = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            found = None
        if found is None:
            raise LaunchError(f"cannot import {module!r} (for {spec!r}) from here")
    else:
        argv = [str(a) for a in target]
        if not argv:
            raise LaunchError("the training command is empty")
        return [*argv, *[str(a) for a in args], *_flags(kwargs)]
    path_json = json.dumps([p for p in sys.path if p and os.path.isdir(p)])
    return [
        sys.executable,
        "-c",
        _CALL,
        spec,
        _json_args(list(args), "positional arguments"),
        _json_args(kwargs, "keyword arguments"),
        path_json,
    ]


def new_run_dir(root: str | os.PathLike[str] = "runs") -> str:
    """A fresh ``root/<YYYYmmdd-HHMMSS>`` folder (``-2``, ``-3``… within the same second),
    created; its absolute path."""
    base = os.path.abspath(os.path.join(os.fspath(root), time.strftime("%Y%m%d-%H%M%S")))
    os.makedirs(os.path.dirname(base), exist_ok=True)
    path, n = base, 1
    while True:
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            n += 1
            path = f"{base}-{n}"


def free_port(port: int | None, default: int = 8421) -> int:
    """``port`` as given; for ``None``, ``default`` when it is free on 127.0.0.1, else 0 (the
    server picks a free one and says which)."""
    if port is not None:
        return port
    return default if port_free(default) else 0


def port_free(port: int) -> bool:
    """Whether a server could listen on ``port`` on 127.0.0.1 now. ``SO_REUSEADDR``, as the
    server binds: the connections a dashboard stopped a minute ago left in TIME_WAIT do not
    count (they made 8421 "in use" with nothing listening there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# ------------------------------------------------------------------------------ processes
def _spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    stdin: int | IO[Any] | None = None,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session (its own process group: a signal to the group reaches
    whatever it starts, and a terminal's Ctrl-C reaches only the launcher, which forwards it).
    From the main thread, the child also gets SIGTERM when this process dies (a thread's
    children get it when the thread ends, so only the main thread asks for it)."""
    check_program(argv, env)
    parent = os.getpid() if threading.current_thread() is threading.main_thread() else 0
    return subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", _EXEC, str(parent), *argv],
        env=dict(env),
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,
    )


def missing_extra(
    argv: Sequence[str], *, autopilot: str, rules: str | None, tune: str
) -> str | None:
    """What this launch needs that is not installed, with the ``pip install`` line; None when
    nothing. Asked before anything starts: the autopilot (its YAML rules; the LLM modes' SDK)
    runs in this Python, and the tuner in the training's, which is this one when the command
    starts it (an autopilot that could not start, a tuner the run refused, left a training
    that went on without them, and the launch exited 0)."""
    if autopilot != "off":
        if not (rules or "").endswith(".json") and importlib.util.find_spec("yaml") is None:
            return ('the autopilot reads its rules with PyYAML: pip install "hotcb[yaml]" (or '
                    "give --rules a .json file)")  # fmt: skip
        if autopilot.startswith("ai_") and importlib.util.find_spec("openai") is None:
            return 'the LLM autopilot needs the openai SDK: pip install "hotcb[ai]"'
    if tune != "off" and _this_python(argv) and importlib.util.find_spec("optuna") is None:
        return (f"--tune {tune}: the tuner needs optuna in the training's environment: pip "
                'install "hotcb[tune]"')  # fmt: skip
    return None


def _this_python(argv: Sequence[str]) -> bool:
    """Whether ``argv`` starts this Python (a script or function target, ``python train.py``
    with this environment's python first on PATH)."""
    prog = shutil.which(argv[0]) if argv else None
    return prog is not None and os.path.realpath(prog) == os.path.realpath(sys.executable)


def check_program(argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
    """LaunchError unless ``argv[0]`` names a program that can be run."""
    path = (env if env is not None else os.environ).get("PATH")
    if not argv or shutil.which(argv[0], path=path) is None:
        raise LaunchError(f"cannot start {argv[0] if argv else ''!r}: no such program")


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """``sig`` to the process group ``proc`` leads (nothing if it is gone)."""
    if proc.poll() is not None and not _group_alive(proc.pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# A process as (pid, start time in clock ticks since boot): a pid alone may be reused.
_Proc = tuple[int, int]


def _pids() -> list[int]:
    """The pids in /proc (none without it: not Linux)."""
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []


def _alive(proc: _Proc) -> bool:
    """``proc`` still runs: same pid and start time, not a zombie."""
    st = _stat(proc[0])
    return st is not None and st[2] == proc[1] and st[0] not in ("Z", "X", "x")


def _send(proc: _Proc, sig: int) -> None:
    """``sig`` to ``proc`` if it still runs (through a pidfd on Linux: the pid cannot be
    reused between the check and the signal)."""
    pidfd_open: Any = getattr(os, "pidfd_open", None)
    send: Any = getattr(signal, "pidfd_send_signal", None)
    pidfd: int | None = None
    if pidfd_open is not None and send is not None:
        with contextlib.suppress(OSError):
            pidfd = pidfd_open(proc[0])
    try:
        if not _alive(proc):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if pidfd is not None:
                send(pidfd, sig)
            else:
                os.kill(proc[0], sig)
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _descendants(pid: int) -> set[_Proc]:
    """The processes below ``pid`` now (Linux; none elsewhere): what killing it would orphan."""
    stats = {p: st for p in _pids() if (st := _stat(p)) is not None}
    children: dict[int, list[int]] = {}
    for p, st in stats.items():
        children.setdefault(st[1], []).append(p)
    out: set[_Proc] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            out.add((child, stats[child][2]))
            todo.append(child)
    return out


def _tagged(tag: str) -> set[_Proc]:
    """This user's running processes whose environment carries the launch tag ``tag`` in
    ``$HOTCB_LAUNCH_ID`` (Linux; none elsewhere), this process aside."""
    me, uid = os.getpid(), os.getuid()
    name, needle = f"{LAUNCH_ENV}=".encode(), tag.encode()
    out: set[_Proc] = set()
    for pid in _pids():
        if pid == me:
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if needle not in env:
            continue
        for entry in env.split(b"\0"):
            if entry.startswith(name) and needle in entry[len(name) :].split(b","):
                st = _stat(pid)
                if st is not None and _alive((pid, st[2])):
                    out.add((pid, st[2]))
                break
    return out


def _end(
    proc: subprocess.Popen[bytes],
    sig: int,
    timeout: float = STOP_TIMEOUT,
    tag: str | None = None,
) -> int:
    """Stop ``proc`` and everything left of it (:func:`_end_leftovers`): ``sig`` to its
    process group, then SIGKILL after ``timeout`` seconds; its exit code."""
    known: set[_Proc] = set()
    if proc.poll() is None:
        _signal_group(proc, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            known = _descendants(proc.pid)  # before the kill orphans them
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
    _end_leftovers(proc.pid, timeout, tag=tag, known=known)
    return int(proc.returncode)


def _end_leftovers(
    pgid: int, timeout: float, *, tag: str | None = None, known: Iterable[_Proc] = ()
) -> None:
    """What a finished child left running: the processes still in its process group, those
    that carry its launch tag in their environment (``tag``: torchrun starts each worker in
    a session of its own, outside the group) and those ``known`` to descend from it (found
    before it was killed): SIGTERM, then SIGKILL after ``timeout / 2`` seconds each. Returns
    at once when there are none. A zombie nobody reaps stays until its parent does."""

    def found() -> set[_Proc]:
        procs = {p for p in known if _alive(p)}
        return procs | _tagged(tag) if tag else procs

    procs = found()
    if not procs and not _group_alive(pgid):
        return
    ended = set(procs)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        for p in procs:
            _send(p, sig)
        deadline = time.monotonic() + timeout / 2
        while True:
            procs = {p for p in procs if _alive(p)}
            if not procs and not _group_alive(pgid):
                _reaped(ended, 1.0)
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        procs |= found()  # and any they started meanwhile
        ended |= procs


def _reaped(procs: Iterable[_Proc], timeout: float) -> None:
    """Wait up to ``timeout`` seconds for ended processes to be reaped (an orphan's zombie
    lasts until init reaps it; until then its pid answers, so the run would look alive)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(
        (st := _stat(pid)) is not None and st[2] == start for pid, start in procs
    ):
        time.sleep(0.02)


def _open_log(path: str) -> IO[bytes]:
    """A log readable by its owner only, appended to: this user's own regular file, never one
    that a writer of the run directory planted (a symbolic link, another user's file they
    could read): :class:`~hotcb.jsonl.RunFileRefusedError` names it."""
    fd, st = jsonl.open_own(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600, mine=True)
    if st.st_mode & 0o077:  # an older log, written before it was made private
        os.fchmod(fd, 0o600)
    return os.fdopen(fd, "ab", buffering=0)


def _answers(url: str, timeout: float, alive: Callable[[], bool]) -> bool:
    """``url`` answers 200 within ``timeout`` seconds (no proxy: it is a local server)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            with opener.open(url, timeout=2.0) as resp:
                if resp.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    return False


def exit_status(returncode: int, signal_sent: int | None = None) -> int:
    """A process's exit code as a shell reports it: ``128 + N`` when signal ``N`` ended it.
    ``128 + N`` also for exit code 1 after the launcher sent SIGINT or SIGTERM (``N``,
    ``signal_sent``): torchrun's answer to either, and a Python trainer's when an exception
    replaced the ``KeyboardInterrupt``."""
    if returncode == 1 and signal_sent in (signal.SIGINT, signal.SIGTERM):
        return 128 + int(signal_sent)
    return returncode if returncode >= 0 else 128 - returncode


@dataclass
class LaunchOptions:
    """What a launch starts besides the training. ``serve_dir``/``run_id``: the folder the
    dashboard serves and the run's id in it (``"."`` when it serves the run itself).
    ``log_path``: where the children's output goes (``None``: this process's stdout/stderr).
    ``out``: where the launch's own notices go. ``prepare``: called with the run directory
    just before the training starts (the tuner's command of ``hotcb launch --tune``).
    ``env``: more environment for the training, on top of this process's less the helpers'
    secrets (:data:`SECRET_ENV`, ``secret_env``)."""

    serve: bool = False
    serve_dir: str | None = None
    run_id: str = "."
    port: int = 0
    host: str | None = None
    autopilot: str = "off"
    autopilot_args: Sequence[str] = ()
    notify_args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    #: More environment variables that hold a helper's secret (the ``password_env`` of a
    #: notify file's e-mail), kept out of the training's environment like :data:`SECRET_ENV`.
    secret_env: Sequence[str] = ()
    resume_from: str | None = None
    log_path: str | None = None
    out: Callable[[str], None] = lambda line: None
    #: What the training must find at its first step, written into the run directory (its
    #: argument) once the dashboard answers: a dashboard that fails leaves nothing queued.
    prepare: Callable[[str], None] | None = None


def _how_it_exited(code: int) -> str:
    """``exited (2)``; ``was killed by SIGKILL (-9)`` for a process a signal ended."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name} ({code})"
    return f"exited ({code})"


class _Children:
    """The launch's three processes: training, dashboard, autopilot; how each starts and stops."""

    def __init__(self, run_dir: str, opts: LaunchOptions) -> None:
        self.run_dir = run_dir
        self.opts = opts
        self.trainer: subprocess.Popen[bytes] | None = None
        self.server: subprocess.Popen[bytes] | None = None
        self.pilot: subprocess.Popen[bytes] | None = None
        self.notifier: subprocess.Popen[bytes] | None = None
        self._notify_ready: str | None = None  # the file the notifier creates once it runs
        self.url: str | None = None
        self.tag = secrets.token_hex(8)  # in the training's environment: LAUNCH_ENV
        self.known: set[_Proc] = set()  # the training's descendants, seen before a SIGKILL
        self.finishing = False  # the training ended: the helpers are being stopped
        self._stopping: set[str] = set()  # the helpers sent SIGTERM (by name)
        self._said: set[str] = set()  # the helpers whose failed exit was said
        self.failed: set[str] = set()  # the helpers that exited with an error (by name)
        self._lock = threading.Lock()
        self._log: IO[bytes] | None = None
        self._url_seen = threading.Event()

    def open_log(self) -> None:
        if self.opts.log_path and self._log is None:
            self._log = _open_log(self.opts.log_path)

    # -- starting --------------------------------------------------------------------------
    def start_server(self) -> str:
        """Start ``hotcb serve``, relay its URL line once it answers; the URL."""
        opts = self.opts
        argv = [sys.executable, "-m", "hotcb", "--dir", opts.serve_dir or self.run_dir, "serve"]
        argv += ["--port", str(opts.port)]
        if opts.host:
            argv += ["--host", opts.host]
        env = {k: v for k, v in os.environ.items() if k != RUN_DIR_ENV}
        self.server = server = _spawn(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log
        )
        threading.Thread(target=self._read_server, daemon=True, name="hotcb-serve-out").start()
        self._url_seen.wait(SERVE_TIMEOUT)
        url = self.url
        if url is None or not _answers(
            urllib.parse.urljoin(url, "/api/health"), SERVE_TIMEOUT, lambda: server.poll() is None
        ):
            code = _end(server, signal.SIGINT)
            where = f"; its output is in {opts.log_path}" if opts.log_path else ""
            raise LaunchError(
                f"the dashboard did not start (exit {code}){where}; is the dashboard extra "
                'installed (pip install "hotcb[dashboard]")? is the port free?'
            )
        if opts.run_id != ".":
            url += ("&" if "?" in url else "?") + urllib.parse.urlencode({"run": opts.run_id})
        self.url = url
        return url

    def _read_server(self) -> None:
        """The server's stdout: its URL line (kept, never logged: it holds the token), the rest
        relayed; then say so if it exits while the training runs."""
        server = self.server
        assert server is not None and server.stdout is not None
        for raw in server.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            m = _URL_LINE.match(line)
            if m and self.url is None:
                self.url = m.group(1)
                self._url_seen.set()
            elif self._log is not None:
                self._log.write(raw)
            else:
                self.opts.out(f"dashboard: {line}")
        server.stdout.close()
        self._url_seen.set()
        code = server.wait()
        if not self.finishing and self.url is not None:
            self.failed.add("dashboard")
            self.opts.out(f"the dashboard exited ({code}); the training goes on")

    def start_trainer(self, argv: Sequence[str]) -> None:
        secret = {*SECRET_ENV, *self.opts.secret_env}  # a helper's, never the training's
        env = {k: v for k, v in os.environ.items() if k not in secret}
        env.update({**self.opts.env, RUN_DIR_ENV: self.run_dir})
        outer = env.get(LAUNCH_ENV)  # a launch inside a launched training keeps both tags
        env[LAUNCH_ENV] = f"{outer},{self.tag}" if outer else self.tag
        if self.opts.resume_from:
            env[RESUME_ENV] = os.path.abspath(self.opts.resume_from)
        if self._log is not None:
            env.setdefault("PYTHONUNBUFFERED", "1")  # the log shows the output as it comes
        stdin = subprocess.DEVNULL if self._log is not None else None
        self.trainer = _spawn(argv, env=env, stdin=stdin, stdout=self._log, stderr=self._log)

    def start_notifier(self) -> None:
        """Start ``hotcb notify`` on the run (``--notify`` flags given)."""
        argv = [sys.executable, "-m", "hotcb", "--dir", self.run_dir, "notify"]
        env = {k: v for k, v in os.environ.items() if k != RUN_DIR_ENV}
        fd, self._notify_ready = tempfile.mkstemp(prefix="hotcb-notify-ready-")
        os.close(fd)
        os.unlink(self._notify_ready)  # the notifier creates it
        env[NOTIFY_READY_ENV] = self._notify_ready
        self.notifier = _spawn([*argv, *self.opts.notify_args], env=env,
                               stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log)  # fmt: skip
        self._watch_helper("notifier", self.notifier)

    def start_pilot(self) -> None:
        argv = [sys.executable, "-m", "hotcb", "--dir", self.run_dir, "autopilot"]
        argv += ["--mode", self.opts.autopilot, *self.opts.autopilot_args]
        env = {k: v for k, v in os.environ.items() if k != RUN_DIR_ENV}
        self.pilot = _spawn(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log
        )
        self._watch_helper("autopilot", self.pilot)

    def _watch_helper(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        """Say when ``proc`` exits with an error while the training runs (0: the autopilot
        saw the run end and left)."""

        def watch() -> None:
            self.helper_exited(name, proc.wait())

        threading.Thread(target=watch, daemon=True, name=f"hotcb-{name}-watch").start()

    def helper_exited(self, name: str, code: int) -> None:
        """Say once that the helper ``name`` exited with an error of its own: any code but 0,
        or, once :meth:`end_helpers` sent it SIGTERM, any but a stop's (0, 130 from its
        KeyboardInterrupt, killed by SIGTERM or, after the timeout, SIGKILL). Also when the
        training has ended meanwhile: a helper that failed as a short training ended was
        never mentioned. Its own error went to the launch's stderr, or to the log."""
        stop_codes = (0, 128 + signal.SIGINT, -signal.SIGTERM, -signal.SIGKILL)
        where = f"; its output is in {self.opts.log_path}" if self.opts.log_path else ""
        with self._lock:  # said before end_helpers returns, whichever thread says it
            if code == 0 or name in self._said:
                return
            if name in self._stopping and code in stop_codes:
                return
            self._said.add(name)
            self.failed.add(name)
            self.opts.out(f"the {name} {_how_it_exited(code)}{where}"
                          + ("" if self.finishing else "; the training goes on"))  # fmt: skip

    # -- stopping --------------------------------------------------------------------------
    def signal_trainer(self, sig: int) -> None:
        """``sig`` to the training's process group; before a SIGKILL, which orphans what the
        training started outside its group (torchrun's workers), note its descendants so
        :meth:`end_helpers` ends them too."""
        if self.trainer is None:
            return
        if sig == signal.SIGKILL and self.trainer.poll() is None:
            # a new set, not |=: the watching thread may be reading the old one
            self.known = self.known | _descendants(self.trainer.pid)
        _signal_group(self.trainer, sig)

    def end_helpers(self) -> None:
        """End what the training left running (its process group, the processes carrying the
        launch's tag, its descendants seen before a SIGKILL), then stop the autopilot, the
        dashboard and the notifier with SIGTERM (each shuts down cleanly on it; one still
        starting ends quietly, where SIGINT made Python print a crash dump); close the log.
        The notifier goes last and is given time: on SIGTERM it makes a last round (the
        training's crash, the autopilot's last action) and delivers what is queued."""
        self.finishing = True
        if self.trainer is not None:
            _end_leftovers(self.trainer.pid, STOP_TIMEOUT, tag=self.tag, known=self.known)
        if self.pilot is not None:
            self._stop_helper("autopilot", self.pilot, STOP_TIMEOUT)
        if self.server is not None:
            _end(self.server, signal.SIGTERM)
        if self.notifier is not None:
            self._notifier_running(NOTIFIER_STOP_TIMEOUT)
            self._stop_helper("notifier", self.notifier, NOTIFIER_STOP_TIMEOUT)
        if self._log is not None:
            self._log.close()

    def _stop_helper(self, name: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
        """SIGTERM to a helper, then SIGKILL after ``timeout``; an error it exited with, said
        here before the launch ends (its watching thread may not get to say it)."""
        with self._lock:
            self._stopping.add(name)
        self.helper_exited(name, _end(proc, signal.SIGTERM, timeout))

    def _notifier_running(self, timeout: float) -> None:
        """Until the notifier has started its rounds (its ready file), or has exited: a
        SIGTERM before it would end it without a last round, unseen the crash it is for."""
        ready, proc = self._notify_ready, self.notifier
        if ready is None or proc is None:
            return
        deadline = time.monotonic() + timeout
        while proc.poll() is None and not os.path.exists(ready) and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(OSError):
            os.unlink(ready)


# ------------------------------------------------------------------------------ the handle
_LIVE: set[Launch] = set()
_ATEXIT = threading.Lock()
_atexit_registered = False


def busy(run_dir: str) -> str | None:
    """Why ``run_dir`` takes no launch now, or None: its trainer, or a launch (of this process,
    or one whose trainer has not opened the run yet), still runs on this host. A second launch
    there took the first trainer's pid out of ``hotcb.run.json`` (so neither kernel warned of
    the other), interleaved two trainers' metrics, and its end marked the run stopped while
    the first still trained."""
    from .runfiles import other_live_trainer

    real = os.path.realpath(run_dir)
    mine = next((r for r in _LIVE if os.path.realpath(r.run_dir) == real and r.running), None)
    what = f"a launch of this process (its training, pid {mine.pid})" if mine else None
    meta = jsonl.read_json(RunPaths(run_dir).run_meta, {}) or {}
    meta = meta if isinstance(meta, dict) else {}
    if what is None:
        pid = other_live_trainer(meta, run_dir)
        what = f"its trainer (pid {pid})" if pid is not None else None
    launched = meta.get("launch")
    if what is None and isinstance(launched, dict) and "exit_code" not in launched:
        # the launch's own entry (its trainer may not have opened the run yet)
        pid = other_live_trainer({k: launched.get(k) for k in ("pid", "host", "started")}, run_dir)
        what = f"the hotcb launch (pid {pid}) that started it" if pid is not None else None
    if what is None:
        return None
    return (f"{run_dir} is in use: {what} still runs. Stop it first ('hotcb --dir {shell_path(run_dir)} "
            "stop --wait'), or launch into another --dir")  # fmt: skip


def _stop_live_launches() -> None:
    """At interpreter exit, a launch still running is interrupted (its training gets SIGINT,
    then SIGKILL), so a script or notebook that ends leaves nothing running."""
    for run in list(_LIVE):
        run.kill(signal.SIGINT)


class Launch:
    """A launched training run: steer it, read it, wait for it.

    Created by :func:`launch` (or ``hotcb launch``). Commands go through :class:`HotClient`
    (``source: "launch"``), so they are validated and ledgered like any other.
    """

    def __init__(
        self, argv: Sequence[str], run_dir: str | os.PathLike[str], opts: LaunchOptions
    ) -> None:
        self.argv = list(argv)
        self.run_dir = os.path.abspath(os.fspath(run_dir))
        self.opts = opts
        self.client = HotClient(self.run_dir, source="launch")
        self._children = _Children(self.run_dir, opts)
        self._done = threading.Event()
        self._exit_code: int | None = None
        self._interrupts = 0
        self._signal_sent: signal.Signals | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def url(self) -> str | None:
        """The dashboard's address, with its access token (``None`` without a dashboard)."""
        return self._children.url

    @property
    def log_path(self) -> str | None:
        """Where the children's output goes (``None``: the launcher's own terminal)."""
        return self.opts.log_path

    @property
    def pid(self) -> int | None:
        """The training process (with torchrun: the torchrun agent)."""
        trainer = self._children.trainer
        return trainer.pid if trainer is not None else None

    @property
    def exit_code(self) -> int | None:
        """The training's exit code once it ended (negative: the signal that ended it)."""
        return self._exit_code

    @property
    def signal_sent(self) -> signal.Signals | None:
        """The last signal this launch sent the training (a forwarded Ctrl-C or SIGTERM,
        :meth:`kill`), None if none."""
        return self._signal_sent

    @property
    def helpers_failed(self) -> frozenset[str]:
        """The helpers (``"dashboard"``, ``"autopilot"``, ``"notifier"``) that exited with an
        error of their own: said when it happened, and not stopped by the launch's end."""
        return frozenset(self._children.failed)

    @property
    def running(self) -> bool:
        return self._children.trainer is not None and not self._done.is_set()

    def start(self) -> Launch:
        """Start the dashboard (first: a dashboard that cannot start fails the launch before
        any training, and before the launch is recorded in ``hotcb.run.json``), write what
        ``opts.prepare`` writes, then start the training, the autopilot and the notifier."""
        global _atexit_registered
        why = busy(self.run_dir)
        if why is not None:
            raise LaunchError(why)
        os.makedirs(self.run_dir, exist_ok=True)
        kids = self._children
        kids.open_log()
        try:
            if self.opts.serve:
                kids.start_server()
            if self.opts.prepare is not None:
                self.opts.prepare(self.run_dir)
            self._record_start()
            kids.start_trainer(self.argv)
            if self.opts.autopilot != "off":
                kids.start_pilot()
            if self.opts.notify_args:
                kids.start_notifier()
        except BaseException:
            if kids.trainer is not None:
                _end(kids.trainer, signal.SIGINT, tag=kids.tag)
            kids.end_helpers()
            raise
        with _ATEXIT:
            if not _atexit_registered:
                import atexit

                atexit.register(_stop_live_launches)
                _atexit_registered = True
            _LIVE.add(self)
        threading.Thread(target=self._watch, daemon=True, name="hotcb-launch").start()
        return self

    def _watch(self) -> None:
        trainer = self._children.trainer
        assert trainer is not None
        code = trainer.wait()
        try:
            self._record_end(code)  # first: a notifier still watching reads Ctrl-C as such
            self._children.end_helpers()
        finally:
            self._exit_code = code
            _LIVE.discard(self)
            self._done.set()

    def _meta(self) -> dict[str, Any]:
        meta = jsonl.read_json(RunPaths(self.run_dir).run_meta, {}) or {}
        return meta if isinstance(meta, dict) else {}

    def _record_start(self) -> None:
        """``launch`` in ``hotcb.run.json``: the command, who launched it and what it started.
        A previous run's end and process are cleared: a run starts (again) here, and a reader
        (the autopilot, ``hotcb status``) must not take the old end for this run's."""
        meta = self._meta()
        meta.pop("ended", None)
        meta.pop("pid", None)
        meta["launch"] = {
            "argv": redact_argv(self.argv),  # the dashboard serves this file: no secrets
            "cwd": os.getcwd(),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "serve": self.opts.serve,
            "autopilot": self.opts.autopilot,
        }
        jsonl.write_json_atomic(RunPaths(self.run_dir).run_meta, meta)

    def _record_end(self, code: int) -> None:
        meta = self._meta()
        before = meta.get("launch")
        launch_meta: dict[str, Any] = before if isinstance(before, dict) else {}
        meta["launch"] = {**launch_meta, "exit_code": code, "ended": time.time()}
        if self._signal_sent is not None:  # the state reads "interrupted by SIGINT" (torchrun: 1)
            meta["launch"]["signal_sent"] = self._signal_sent.name
        try:
            jsonl.write_json_atomic(RunPaths(self.run_dir).run_meta, meta)
        except OSError as exc:
            self.opts.out(
                f"could not record the exit code in {RunPaths(self.run_dir).run_meta}: {exc}"
            )

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the training to end (the dashboard and autopilot are then stopped); its
        exit code (negative: the signal that ended it). ``TimeoutError`` after ``timeout``."""
        if not self._done.wait(timeout):
            raise TimeoutError(
                f"the training is still running after {timeout:g}s (run.stop() asks it to stop)"
            )
        assert self._exit_code is not None
        return self._exit_code

    def forward(self, sig: int) -> signal.Signals | None:
        """A signal the launcher got, for the training's process group. The third SIGINT (or
        SIGTERM) in a row becomes SIGKILL. The signal sent (None: no training to send it to)."""
        trainer = self._children.trainer
        if trainer is None or self._done.is_set():
            return None
        self._interrupts += 1
        sent = signal.SIGKILL if self._interrupts >= 3 else signal.Signals(sig)
        self._signal_sent = sent
        self._children.signal_trainer(sent)
        return sent

    def kill(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """End the training now: ``sig`` to its process group, SIGKILL if it is still there
        after ``timeout`` seconds; then what it left running (torchrun's workers included:
        SIGTERM, then SIGKILL), the dashboard and the autopilot stop. Its exit code.
        (:meth:`stop` asks it to stop at its next safe point instead.)"""
        trainer = self._children.trainer
        if trainer is not None and not self._done.is_set():
            self._signal_sent = signal.Signals(sig)
            self._children.signal_trainer(sig)
            if not self._done.wait(timeout):
                self._signal_sent = signal.SIGKILL
                self._children.signal_trainer(signal.SIGKILL)
        return self.wait()

    def __enter__(self) -> Launch:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        """Leaving the block waits for the training to end; leaving it by an exception
        (Ctrl-C included) interrupts the training first."""
        if exc_type is not None:
            self.kill(signal.SIGINT)
        else:
            self.wait()

    # -- steering ----------------------------------------------------------------------------
    def _steerable(self) -> None:
        """A command for a training that has ended would wait unanswered in the commands file
        (until some later run in this directory): refuse it, saying how the training ended."""
        if not self._done.is_set():
            return
        raise LaunchError(
            f"the training has ended (exit code {self._exit_code}): nothing would apply the "
            "command"
            + (f"; its output is in {self.log_path}" if self.log_path else "")
            + " (run.client sends commands for a later run in this directory)"
        )

    def set(self, **params: Any) -> list[str]:
        """Set values by name, routed to opt / loss / custom like ``hotcb set`` (by the run's
        published actuators, then by name: ``lr`` → opt, ``*_weight`` → loss, else custom);
        the ``cmd_id`` of each command (:meth:`applied` waits for its ledger entry).
        The steering methods raise :class:`LaunchError` once the training has ended."""
        self._steerable()
        return self.client.set(params)

    def send(
        self, command: str | Mapping[str, Any], op: str | None = None, /, **params: Any
    ) -> str:
        """One command: ``send("opt", "set_params", lr=1e-4)`` (keyword arguments are its
        params) or ``send({"module": "cb", "op": "set_params", "id": "hb", "params": {…}})``
        (a whole record, for fields such as ``id``, ``at_step``, ``transition``)."""
        self._steerable()
        if isinstance(command, Mapping):
            if op is not None or params:
                raise TypeError("send(record) takes the record alone")
            return self.client.send_record(command)
        if op is None:
            raise TypeError("send(module, op, **params) needs the op")
        return self.client.send(command, op, params=params)

    def pause(self) -> str:
        self._steerable()
        return self.client.pause()

    def resume(self) -> str:
        self._steerable()
        return self.client.resume()

    def stop(self) -> str | None:
        """Ask the training to stop at its next safe point (:meth:`wait` then returns its exit
        code); :meth:`kill` ends it at once. None when it has already ended (a stop queued
        then would stop the next run in this directory at its first step)."""
        if self._done.is_set():
            return None
        try:
            return self.client.stop()
        except CommandError:  # it ended just now (the client refuses a stop then)
            return None

    def applied(self, cmd_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """The ledger entry of ``cmd_id`` once the run handled it (``decision``, ``step``,
        ``changes``); ``TimeoutError`` after ``timeout`` seconds."""
        return self.client.wait(cmd_id, timeout=timeout)

    # -- reading -----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """``state`` (starting, running, paused, stopping, finished, stopped, crashed, killed),
        ``detail`` (what ``hotcb status`` says), ``step``, ``metrics`` (the last values),
        ``actuators`` (name → value), ``exit_code``, ``url``, ``run_dir``."""
        from .cli._core import _status

        st = _status(RunPaths(self.run_dir), 5)
        last = st.get("last_metrics") or {}
        newest = [last, *(st.get("ledger") or [])[-1:], st.get("heartbeat") or {}]
        # of the newest record of this life, not an earlier life's (a restart in the directory)
        step = current_step([(r.get("step"), r.get("wall_time")) for r in newest], st["run"])
        return {
            "state": self._state(str(st["state"])),
            "detail": st["state"],
            "step": step,
            "metrics": dict(last.get("metrics") or {}),
            "actuators": {a["param_key"]: a.get("current") for a in st["actuators"]},
            "exit_code": self._exit_code,
            "url": self.url,
            "run_dir": self.run_dir,
        }

    def _state(self, detail: str) -> str:
        code = self._exit_code
        if code is not None:
            if code != 0:
                return "killed" if self._signal_sent is not None or code < 0 else "crashed"
            return "stopped" if detail.startswith("stopped") else "finished"
        if detail.startswith("not started"):
            return "starting"
        if detail in ("paused", "stopped"):
            return "paused" if detail == "paused" else "stopping"
        return "running"

    def wait_step(self, step: int, timeout: float = 120.0) -> dict[str, Any]:
        """Wait until the run has recorded metrics at ``step`` or later; its last metrics
        record. ``LaunchError`` when the training ends first, ``TimeoutError`` after
        ``timeout`` seconds. Records of an earlier life of the run (a launch again into its
        directory) do not count."""
        deadline = time.monotonic() + timeout
        path = RunPaths(self.run_dir).metrics
        while True:
            last = (jsonl.read_last(path, 1) or [{}])[0]
            at = current_step([(last.get("step"), last.get("wall_time"))], self._meta())
            if at is not None and at >= step:
                return last
            if self._done.is_set():
                raise LaunchError(
                    f"the training ended (exit {self._exit_code}) before step {step}"
                    + (f"; its output is in {self.log_path}" if self.log_path else "")
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"the run has not reached step {step} after {timeout:g}s")
            time.sleep(0.05)

    def metrics(self, *, last: int | None = None, as_frame: bool | None = None) -> Any:
        """The metrics so far (the last ``last`` records), one row per record: ``step``,
        ``epoch``, ``wall_time`` and one column per metric. A pandas DataFrame when pandas is
        installed (``as_frame=False``: a list of dicts either way)."""
        path = RunPaths(self.run_dir).metrics
        records = jsonl.read_last(path, last) if last else list(jsonl.iter_records(path))
        rows = []
        for r in records:
            row: dict[str, Any] = {k: r[k] for k in ("step", "epoch", "wall_time") if k in r}
            row.update(r.get("metrics") or {})
            rows.append(row)
        return _frame(rows, as_frame)

    def ledger(self, *, as_frame: bool | None = None) -> Any:
        """The ledger: what happened to each command (``seq``, ``step``, ``source``, ``module``,
        ``op``, ``decision``, ``changes``, ``error``…). A DataFrame when pandas is installed
        (``as_frame=False``: the entries as dicts)."""
        return _frame(list(iter_entries(RunPaths(self.run_dir).ledger)), as_frame)

    def output(self, lines: int = 40) -> str:
        """The last ``lines`` lines the children wrote (a launch from Python logs them to
        ``hotcb.launch.log`` in the run directory); empty when they write to a terminal."""
        if not self.log_path or not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(max(0, os.path.getsize(self.log_path) - 64 * 1024))
            text = f.read().decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def __repr__(self) -> str:
        st = self.status()
        return (
            f"<hotcb.Launch {st['state']} step={st['step']} run_dir={self.run_dir!r}"
            f" url={'yes' if self.url else 'none'}>"
        )

    def _repr_html_(self) -> str:
        """Jupyter: the run's state, its last metrics and a link to the dashboard."""
        st = self.status()
        esc = html.escape
        shown = ", ".join(
            f"{esc(str(k))}={v:.4g}" if isinstance(v, float) else f"{esc(str(k))}={esc(str(v))}"
            for k, v in list(st["metrics"].items())[:6]
        )
        parts = [
            f"<b>hotcb run</b> <code>{esc(self.run_dir)}</code>: <b>{esc(st['state'])}</b>",
            f" at step {esc(str(st['step']))}" if st["step"] is not None else "",
            f" (exit {st['exit_code']})" if st["exit_code"] is not None else "",
        ]
        if shown:
            parts.append(f"<br>{shown}")
        if self.url and self.running:
            parts.append(f'<br><a href="{esc(self.url)}" target="_blank">open the dashboard</a>')
        if st["state"] in ("crashed", "killed") and self.output(15):
            parts.append(f"<pre>{esc(self.output(15))}</pre>")
        return '<div class="hotcb-launch">' + "".join(parts) + "</div>"

    def branch(
        self,
        to: str | os.PathLike[str],
        *,
        from_: int | str | os.PathLike[str],
        set: Mapping[str, Any] | None = None,
        start: bool = True,
        **launch_kwargs: Any,
    ) -> Launch:
        """Branch this run at a checkpoint (``from_``: its step or its file) into the new run
        directory ``to`` with the changes ``set`` (:func:`hotcb.branch.branch`), and launch the
        same training command there, resuming from that checkpoint (``$HOTCB_RESUME_FROM``).
        ``launch_kwargs`` change the launch's options (``serve``, ``port``, ``autopilot``,
        ``env``, ...); ``start=False`` returns the handle unstarted."""
        made = make_branch(self.run_dir, to, source=from_, set_params=set)
        child: str = made["child"]
        serve_dir, run_id = child, "."
        root = self.opts.serve_dir
        if root and self.opts.run_id != "." and os.path.dirname(child) == os.path.abspath(root):
            serve_dir, run_id = root, os.path.basename(child)  # served beside its parent
        opts = dataclasses.replace(
            self.opts,
            serve_dir=serve_dir,
            run_id=run_id,
            resume_from=made["checkpoint"],
            log_path=os.path.join(child, LOG_NAME),
            **launch_kwargs,
        )
        run = Launch(retarget(self.argv, self.run_dir, child), child, opts)
        return run.start() if start else run


def _frame(rows: list[dict[str, Any]], as_frame: bool | None) -> Any:
    if as_frame is False:
        return rows
    try:
        import pandas
    except ImportError:
        if as_frame:
            raise ImportError("as_frame=True needs pandas: pip install pandas") from None
        return rows
    return pandas.DataFrame(rows)


def _run_dirs(run_dir: str | os.PathLike[str] | None) -> tuple[str, str, str]:
    """``(run_dir, serve_dir, run_id)``: a given run directory is served alone; a new
    ``./runs/<time>`` is served from ``./runs``, beside the earlier runs."""
    if run_dir is not None:
        path = os.path.abspath(os.fspath(run_dir))
        return path, path, "."
    path = new_run_dir("runs")
    return path, os.path.dirname(path), os.path.basename(path)


def launch(
    target: str | os.PathLike[str] | Sequence[str] | Callable[..., Any],
    *,
    run_dir: str | os.PathLike[str] | None = None,
    serve: bool = True,
    autopilot: str = "off",
    block: bool = False,
    port: int = 0,
    host: str | None = None,
    args: Sequence[Any] = (),
    env: Mapping[str, str] | None = None,
    resume_from: str | os.PathLike[str] | None = None,
    key_metric: str | None = None,
    tune: str = "off",
    tune_settings: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Launch:
    """Train ``target`` in a child process, with the dashboard and the autopilot beside it.

    Args:
        target: a script path (``"train.py"``; ``args`` and ``kwargs`` become its command line:
            ``steps=100`` → ``--steps 100``, ``True`` → a bare flag), a ``"module:function"``
            string or an importable function (called with ``*args, **kwargs``, JSON values), or
            a command list (``["torchrun", "--nproc-per-node", "2", "train.py"]``). A function
            defined in a notebook cannot be imported by another process: put it in a module.
        run_dir: the run directory (default: a new ``./runs/<time>``). The training finds it in
            ``$HOTCB_RUN_DIR`` (``HotKernel()`` reads it).
        serve: start the dashboard (``hotcb serve``) on ``host:port`` (port 0: any free one).
        autopilot: ``off``, ``suggest``, ``auto``, ``ai_suggest`` or ``ai_auto`` (``hotcb
            autopilot``, with ``key_metric`` when given).
        block: wait for the training to end before returning (Ctrl-C interrupts it).
        env: extra environment for the training.
        resume_from: a checkpoint the training may resume from (``$HOTCB_RESUME_FROM``).
        tune: the online tuner from the first step: ``observe``, ``suggest`` or ``active``
            (``hotcb launch --tune``; optuna in the training's environment), with
            ``tune_settings`` those of :meth:`HotClient.tune_enable` (``objective``,
            ``segment_steps``, ``recipe``, ``restore`` …). A bad setting raises before
            anything starts.

    Returns the :class:`Launch` handle. The training's output goes to ``hotcb.launch.log`` in
    the run directory (:meth:`Launch.output`). The dashboard and the autopilot stop when the
    training ends; a training still running when this interpreter exits is interrupted.
    """
    if serve and importlib.util.find_spec("uvicorn") is None:
        raise ImportError(
            'the dashboard needs the dashboard extra: pip install "hotcb[dashboard]" '
            "(or launch(..., serve=False))"
        )
    argv = training_argv(target, args, kwargs)
    check_program(argv)
    if tune != "off" and tune not in ("observe", "suggest", "active"):
        raise ValueError(f"tune must be off, observe, suggest or active, got {tune!r}")
    missing = missing_extra(argv, autopilot=autopilot, rules=None, tune=tune)
    if missing is not None:
        raise ImportError(missing)
    if tune == "off" and tune_settings:
        raise ValueError("tune_settings without tune: the tuner stays off (tune='active' …)")
    path, serve_dir, run_id = _run_dirs(run_dir)
    if tune != "off":  # written before the training starts: applied at its first step
        HotClient(path, source="launch").tune_enable(tune, **dict(tune_settings or {}))
    pilot_args = ["--key-metric", key_metric] if key_metric else []
    opts = LaunchOptions(
        serve=serve,
        serve_dir=serve_dir,
        run_id=run_id,
        port=port,
        host=host,
        autopilot=autopilot,
        autopilot_args=pilot_args,
        env=dict(env or {}),
        resume_from=os.fspath(resume_from) if resume_from is not None else None,
        log_path=os.path.join(path, LOG_NAME),
    )
    run = Launch(argv, path, opts).start()
    if block:
        if run.url:
            print(f"hotcb: training in {run.run_dir}; dashboard: {run.url}", flush=True)
        try:
            run.wait()
        except KeyboardInterrupt:
            run.kill(signal.SIGINT)
            raise
    return run

"""hotcb's exceptions: one root, builtin mix-ins so callers can catch what they expect."""

from __future__ import annotations


class HotcbError(Exception):
    """Root of every error hotcb raises on purpose."""


class CommandError(HotcbError, ValueError):
    """A command record is malformed or names something that does not exist."""


class ActuatorError(HotcbError, ValueError):
    """A value was refused by an actuator (type, bounds, NaN/inf, disabled)."""


class ActuatorApplyError(HotcbError, RuntimeError):
    """An actuator's ``apply_fn`` raised; the value was rolled back."""


class RecipeError(HotcbError, ValueError):
    """A recipe or overlay is malformed."""


class CodeLoadError(HotcbError, PermissionError):
    """Loading code was refused (``allow_code_load=False`` or a directory not allowed)."""


class PathNotAllowedError(HotcbError, PermissionError):
    """A path in a command, recipe or request resolves outside the run directory and the
    allowed roots. The message never says whether the path exists, nor what it holds."""


class JournalWriteError(HotcbError, OSError):
    """A record could not be appended to one of the run directory's JSON-lines files (disk
    full, file size limit, I/O error). The message names the file, the size and the OS reason.

    ``written=False``: nothing of the record was kept (a partial line is cut off again), so
    writing the whole record again is safe. ``written=True``: every byte was written and only
    ``fsync`` failed; the record is in the file and must not be written again. ``errno`` is the
    OS's, ``path`` the file's."""

    def __init__(
        self, message: str, *, errno: int | None = None, path: str = "", written: bool = False
    ) -> None:
        super().__init__(message)
        self.errno = errno
        self.path = path
        self.written = written

    def __str__(self) -> str:
        return str(self.args[0])


class PeerLostError(HotcbError, RuntimeError):
    """Under torch.distributed, hotcb's exchange with the other ranks failed: a rank died or
    the process group broke. Raised into the training loop (the run cannot go on with the
    others, and every later collective fails too); not a hotcb bug to keep training through,
    which left a pause on the surviving ranks."""

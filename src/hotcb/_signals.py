"""Checkpoint and stop on SIGTERM / SIGINT instead of dying mid-step.

A preempted job gets SIGTERM and, usually, a grace period before SIGKILL; a person presses
Ctrl-C. Either way the run should end with a checkpoint, not lose everything since the last one.
:class:`SignalCatcher` installs a handler that does nothing but note the signal and tell the
kernel (which then makes its next safe point due); the checkpoint and the stop happen there, at a
step boundary, with their ledger entries (``source: "signal"``).

The rules it keeps:

- **Main thread only** (Python delivers signals there; ``signal.signal`` refuses other threads).
- **A handler you installed is chained, never replaced**: on the first signal hotcb notes it and
  then calls yours. A signal that is ignored (``SIG_IGN``: e.g. SIGINT of a background job) stays
  ignored: hotcb does not install for it.
- **A second signal does what the first would have done without hotcb**: Ctrl-C twice raises
  ``KeyboardInterrupt`` at once; a second SIGTERM terminates the process (the previous handler,
  or the default action). So does any signal once the kernel is closed. A SIGTERM repeated
  within :data:`REPEAT_WINDOW` seconds of the first is the same request, not a second one: a
  ``hotcb launch`` that dies (kill -9, a closed terminal) sends its training one SIGTERM per
  thread of its own (Linux's ``PR_SET_PDEATHSIG`` fires as each parent thread exits), and the
  second of them killed the run before its checkpoint. On a rank that left the first signal to
  rank 0 (:meth:`leave`), only the same signal again counts as a second one: a SIGTERM that
  reached rank 1 alone must not make a later Ctrl-C of every rank kill rank 1 mid-checkpoint.
- **The previous handlers come back** on :meth:`restore` (``kernel.close()`` calls it), unless
  someone replaced hotcb's handler meanwhile (then theirs is left alone).
- **A handler installed over hotcb's is replaced only when asked** (:meth:`reclaim`): the
  Lightning adapter does it under DDP, where Lightning's own SIGTERM handler would end ``fit()``
  on every rank before the ranks agree on the checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from types import CodeType, FrameType
from typing import Any

__all__ = ["DEFAULT_SIGNALS", "REPEAT_WINDOW", "SignalCatcher", "signal_name"]

log = logging.getLogger("hotcb")

#: What ``checkpoint_on_signal`` catches: a scheduler's preemption and Ctrl-C.
DEFAULT_SIGNALS: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)
#: Seconds in which a repeated SIGTERM counts as the first (a dying parent's threads).
REPEAT_WINDOW = 2.0


def signal_name(signum: int) -> str:
    """``"SIGTERM"`` for 15 (the number as text when the platform has no name for it)."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


class SignalCatcher:
    """Installs the handlers; ``notify(signum)`` runs inside the handler (keep it tiny: set a
    flag, no I/O). ``live()`` says whether anyone will act on it (False once the kernel closed:
    the signal then does what it did before hotcb)."""

    def __init__(self, notify: Callable[[int], None], live: Callable[[], bool]) -> None:
        self._notify = notify
        self._live = live
        self._previous: dict[int, Any] = {}  # signal -> the handler hotcb replaced
        #: the signal that asked for checkpoint-and-stop (None: none yet)
        self.received: int | None = None
        self._received_at = 0.0  # when (time.monotonic())
        self._loop: CodeType | None = None  # see within()
        self._left = False  # see leave()

    @property
    def installed(self) -> tuple[int, ...]:
        return tuple(self._previous)

    def install(self, signals: Iterable[int] = DEFAULT_SIGNALS) -> tuple[int, ...]:
        """Install for each of ``signals`` that can be caught here; return those installed
        (already installed ones count). Outside the main thread: none, and a log line."""
        if threading.current_thread() is not threading.main_thread():
            log.warning(
                "hotcb: checkpoint on signal needs the main thread (Python delivers signals "
                "there); not installed"
            )
            return self.installed
        for signum in signals:
            if signum in self._previous:
                continue
            previous = signal.getsignal(signum)
            if previous is signal.SIG_IGN or previous is None:
                # ignored on purpose, or installed outside Python (cannot be chained or restored)
                continue
            signal.signal(signum, self._handle)
            self._previous[signum] = previous
        if self._previous:
            self.received, self._left = None, False
        return self.installed

    def within(self, loop: CodeType | None) -> None:
        """Act on a signal only while a frame of ``loop`` (the training loop's code) is on the
        interrupted stack. A signal that comes when it is not (the loop raised, and nothing
        called :meth:`restore`: the HF Trainer has no exception hook) does what it did before
        hotcb, and the previous handlers come back. Checked in the handler only, never at a
        safe point."""
        self._loop = loop

    def leave(self) -> None:
        """The signal received was left to another process to act on (under torch.distributed,
        rank 0): the same signal again still ends this one, but another signal is a first one
        (a SIGTERM that reached rank 1 alone made a later Ctrl-C kill it mid-checkpoint)."""
        self._left = True

    def reclaim(self, signals: Iterable[int]) -> tuple[int, ...]:
        """Make hotcb's handler the installed one again for those of ``signals`` it caught,
        replacing a handler installed over it since (which chained hotcb's) instead of being
        called by it. The handler hotcb chains and puts back on :meth:`restore` stays the one
        it replaced at :meth:`install`. Returns the signals whose handler it replaced."""
        if threading.current_thread() is not threading.main_thread():
            return ()
        replaced = []
        for signum in signals:
            if signum in self._previous and signal.getsignal(signum) != self._handle:
                signal.signal(signum, self._handle)
                replaced.append(signum)
        return tuple(replaced)

    def reinstate(self) -> None:
        """Install hotcb's handler again for each caught signal whose handler is Python's
        default now: a Jupyter kernel installs ``default_int_handler`` around every cell, so a
        kernel made in an earlier cell than its loop lost SIGINT to it, and Ctrl-C raised
        ``KeyboardInterrupt`` mid-step with no checkpoint. A handler of anyone else's stays."""
        if not self._previous or threading.current_thread() is not threading.main_thread():
            return
        for signum in self._previous:
            now = signal.getsignal(signum)
            if now is signal.default_int_handler or now == signal.SIG_DFL:
                signal.signal(signum, self._handle)

    def restore(self) -> None:
        """Put the previous handlers back (where hotcb's is still the one installed)."""
        if not self._previous or threading.current_thread() is not threading.main_thread():
            return
        previous, self._previous = self._previous, {}
        self._loop = None
        for signum, handler in previous.items():
            if signal.getsignal(signum) == self._handle:
                signal.signal(signum, handler)

    # ------------------------------------------------------------------ in the handler
    def _handle(self, signum: int, frame: FrameType | None) -> None:
        previous = self._previous.get(signum, signal.SIG_DFL)
        if self._loop is not None and not _runs(frame, self._loop):
            self.restore()  # the loop is gone: nothing would act on it
            self._as_before(signum, frame, previous)
            return
        first = self.received is None or (self._left and signum != self.received)
        if first and self._live():
            self._left = False
            self.received, self._received_at = signum, time.monotonic()
            self._notify(signum)
            if callable(previous) and previous is not signal.default_int_handler:
                previous(signum, frame)  # a handler of the user's (or a framework's): chained
            return
        if (signum == self.received == signal.SIGTERM and self._live()
                and time.monotonic() - self._received_at < REPEAT_WINDOW):  # fmt: skip
            return  # the same request again (each thread of a dying launcher sends one)
        self._as_before(signum, frame, previous)

    @staticmethod
    def _as_before(signum: int, frame: FrameType | None, previous: Any) -> None:
        """What the signal did before hotcb: the previous handler, or the default action."""
        if callable(previous):
            previous(signum, frame)  # Python's SIGINT handler raises KeyboardInterrupt
            return
        if previous is signal.SIG_IGN:
            return
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _runs(frame: FrameType | None, code: CodeType) -> bool:
    """Whether a frame of ``code`` is on the stack from ``frame`` up."""
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False

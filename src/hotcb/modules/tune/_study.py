"""The Optuna side of the tuner: open (or share) a study, ask for a mutation, tell its score.

Imported only when a tuner is enabled on the leader rank: ``import hotcb`` and a run that never
tunes never import optuna.
"""

from __future__ import annotations

import os
import random
import socket
import time
import warnings
import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from ...errors import PathNotAllowedError
from ...runfiles import OWN_PREFIX, TUNE_DB, _within, confine_path, is_run_dir, redact_url
from ._space import Knob, storage_trouble

__all__ = ["MISSING_OPTUNA", "Study", "Worker", "confine_storage", "redact", "storage_file"]

MISSING_OPTUNA = 'the tuner needs optuna: pip install "hotcb[tune]"'


def redact(url: str | None) -> str | None:
    """A storage URL without its password (``postgresql://u:***@host/db``)."""
    return redact_url(url) if url else url


def storage_file(url: str) -> tuple[str, str] | None:
    """The file a storage URL keeps its study in, as the URL writes it, and its kind
    (``"sqlite"``, ``"journal"``); None for a database server or an in-memory database. A
    relative path is the training process's working directory's, as SQLite and Optuna's
    journal open it. A SQLite URI filename (``file:…``, ``?uri=true``: SQLite reads a URI
    there even without the flag) is refused (:class:`PathNotAllowedError`): write
    ``sqlite:///PATH``."""
    if url.startswith("journal:"):
        return url[len("journal:") :], "journal"
    if "://" not in url:  # a bare journal file (anything else here is no storage at all)
        return url, "journal"
    if url.split("://", 1)[0].split("+", 1)[0].lower() != "sqlite":
        return None  # a database server: no file of this machine is its study
    try:
        from sqlalchemy.engine import make_url  # (optuna's dependency: there when it is)
    except ImportError as exc:
        raise RuntimeError(MISSING_OPTUNA) from exc
    try:
        parsed = make_url(url)
    except Exception as exc:  # SQLAlchemy cannot read it: nor will the storage
        raise PathNotAllowedError(f"SQLAlchemy cannot read the storage URL: {exc}") from None
    database = parsed.database
    if "uri" in parsed.query or (database or "").lower().startswith("file:"):
        raise PathNotAllowedError(
            "a SQLite URI filename (file:…, uri=true) is not taken as a study's storage: "
            "write sqlite:///PATH"
        )
    if not database or database == ":memory:":
        return None
    return database, "sqlite"


def confine_storage(url: str, run_dir: str, roots: Sequence[str] = ()) -> None:
    """Refuse (:class:`PathNotAllowedError`) a storage whose file lies outside ``run_dir`` and
    ``roots`` (symlinks resolved), or is one of a run's own files (``hotcb.*``: a journal
    appended to the commands file or the ledger); a database server passes. A storage URL
    comes in a command, a recipe, ``hotcb.tune.yaml``, a restart's ``hotcb.tune.json`` or a
    checkpoint: whoever could write any of them could otherwise have the run create or
    append to any file its user may write (docs/security.md, Paths).

    The one file outside them taken: an existing ``hotcb.tune.db`` of another run directory,
    a run's default study, where a branch or a copy of a run goes on (docs/tune.md)."""
    trouble = storage_trouble(url)
    if trouble is not None:  # (a checkpoint's URL has not been through the settings' check)
        raise PathNotAllowedError(trouble)
    found = storage_file(url)
    if found is None:
        return
    given, kind = found
    if "\x00" in given:
        raise PathNotAllowedError(f"the study's file {given!r} has a NUL byte")
    path = os.path.abspath(given)
    real = os.path.realpath(path)
    if kind == "sqlite" and os.path.basename(real) == TUNE_DB and os.path.isfile(real) and (
            is_run_dir(os.path.dirname(real))):  # fmt: skip
        return  # a run's default study: a branch's parent, the original of a copied run
    base = os.path.realpath(run_dir)
    allowed = [base, *(os.path.realpath(r) for r in roots)]
    said = (repr(given) if os.path.isabs(given)
            else f"{given!r} (from the training's working directory: {path})")  # fmt: skip
    try:
        confine_path(path, base, roots, what="storage")
    except PathNotAllowedError:
        raise PathNotAllowedError(
            f"the study's file {said} is outside the run directory and the allowed roots "
            f"({', '.join(allowed)}); put it inside the run directory, or start the trainer "
            "with its folder allowed (HotKernel(allowed_roots=[...]), or HOTCB_ALLOWED_ROOTS "
            "in the training's environment)"
        ) from None
    top = os.path.relpath(real, base).split(os.sep)[0] if _within(real, base) else ""
    for name in (top.lower(), os.path.basename(real).lower()):
        if name.startswith(OWN_PREFIX) and not (kind == "sqlite" and name == TUNE_DB):
            raise PathNotAllowedError(
                f"the study's file {said} is one of a run's own files ({OWN_PREFIX}*: its "
                f"commands, ledger and state live there; {TUNE_DB} is the default study); "
                "give the file another name"
            )


def _storage(url: str) -> Any:
    import optuna

    if url.startswith("journal:"):  # journal:PATH, a file many processes append to
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(url[len("journal:") :]))
    if url.endswith((".log", ".journal")) and "://" not in url:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(url))
    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 30}}
                                      if url.startswith("sqlite") else {})  # fmt: skip


def import_optuna() -> Any:
    """optuna, or a RuntimeError that says how to install it."""
    try:
        import optuna
    except ImportError as exc:
        raise RuntimeError(MISSING_OPTUNA) from exc
    return optuna


#: Tries to open a study, for runs that start together on a database nobody has set up yet.
OPEN_TRIES = 6


def _open(url: str, name: str, sampler: Any, tries: int = OPEN_TRIES) -> tuple[Any, Any]:
    """The storage and the study ``name`` in it, created if missing. Runs that start at once
    on a new SQLite file race to create its tables (``UNIQUE constraint failed:
    alembic_version``, ``table … already exists``) or find it locked: each tries again after
    a short wait, up to ``tries`` times, before the error stands. (On the tuner's thread.)"""
    import optuna

    for attempt in range(tries):
        try:
            # the study's own storage object (optuna caches an RDB one): trials created here
            # go through the same cache the study reads
            storage = optuna.storages.get_storage(_storage(url))
            study = optuna.create_study(
                study_name=name,
                storage=storage,
                sampler=sampler,
                direction="maximize",  # the score: relative improvement over the trend
                load_if_exists=True,
            )
            return storage, study
        except Exception as exc:
            if attempt + 1 >= tries or not _racing(exc):
                raise
            time.sleep(0.1 * 2**attempt * (1 + random.random()))
    raise AssertionError("unreachable")  # pragma: no cover


def _racing(exc: BaseException) -> bool:
    """Another process is creating the same database or study at this moment."""
    try:
        from sqlalchemy import exc as sa
    except ImportError:  # pragma: no cover - optuna's RDB storage needs it
        return False
    said = str(exc)
    locked = isinstance(exc, sa.OperationalError) and ("locked" in said or "already exists" in said)
    return (
        locked
        or isinstance(exc, sa.IntegrityError)
        or (type(exc).__name__ == "DuplicatedStudyError")
    )


def _sampler(optuna: Any, startup_trials: int, seed: int | None) -> Any:
    with warnings.catch_warnings():  # multivariate TPE is "experimental" in some releases
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            n_startup_trials=startup_trials, seed=None if seed is None else seed % 2**32,
            multivariate=True,
        )  # fmt: skip


class Study:
    """One Optuna study seen by one run: trials it opened carry the run's name, so a restart
    can tell which of its own trials were left open. ``shared``: the study was named for
    several runs (``--study``, ``--storage``): a seed is mixed with the run's name, so runs
    started together with one seed do not draw the same start-up points."""

    def __init__(
        self, url: str, name: str, run: str, *, seed: int | None, startup_trials: int,
        shared: bool = False,
    ) -> None:  # fmt: skip
        optuna = import_optuna()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if seed is not None and shared:
            seed += zlib.crc32(run.encode())
        self._optuna = optuna
        self.url, self.name, self.run = url, name, run
        self._ids: dict[int, int] = {}  # trial number -> storage id, for the trials asked here
        self.storage, self.study = _open(url, name, _sampler(optuna, startup_trials, seed))
        self._study_id = self.storage.get_study_id_from_name(name)
        if seed is not None:
            # a seeded sampler drew the same start-up points in every life of the run (a
            # resume) and in every run of a shared study: it continues after the trials the
            # study holds, deterministically
            held = len(self.study.get_trials(deepcopy=False))
            if held:
                self.study.sampler = _sampler(optuna, startup_trials, seed + held)
        #: what other runs had put in the study when this one opened it (a shared study)
        self.joined = self._others()

    def _others(self) -> dict[str, Any] | None:
        """The trials other runs had told the study (an open one is not yet one) when this run
        first joined it: how many, from how many runs, the best score among them; None when
        there were none. A run that has trials in it already (a restart without a checkpoint,
        which keeps no state) joined when its first trial started, not now."""
        trials = self.study.get_trials(deepcopy=False)
        mine = [t.datetime_start for t in trials
                if t.user_attrs.get("run") == self.run and t.datetime_start is not None]  # fmt: skip
        since = min(mine, default=None)
        theirs = [t for t in trials  # told, not open, and before this run's first trial
                  if t.user_attrs.get("run") != self.run and t.state.is_finished()
                  and (since is None or (t.datetime_complete or since) <= since)]  # fmt: skip
        if not theirs:
            return None
        scores = [t.value for t in theirs if t.value is not None]
        return {"trials": len(theirs), "runs": len({t.user_attrs.get("run") for t in theirs}),
                "best": max(scores) if scores else None}  # fmt: skip

    def ask(self, knobs: Sequence[Knob], prior_first: bool) -> tuple[int, dict[str, float]]:
        """A new trial's number and its sampled number per knob.

        The trial is created with this run's name on it in one write, so a crash can never
        leave an open trial that a restart would not recognise as its own."""
        optuna = self._optuna
        fixed = {k.param: k.prior for k in knobs if k.prior is not None} if prior_first else {}
        template = optuna.trial.create_trial(
            state=optuna.trial.TrialState.RUNNING,
            user_attrs={"run": self.run, "host": socket.gethostname(), "pid": os.getpid()},
            system_attrs={"fixed_params": fixed} if fixed else None,
        )
        trial_id = self.storage.create_new_trial(self._study_id, template_trial=template)
        self.study.sampler.before_trial(self.study, self.storage.get_trial(trial_id))
        trial = optuna.trial.Trial(self.study, trial_id)
        sampled = {}
        for k in knobs:
            sampled[k.name] = trial.suggest_float(k.param, k.low, k.high, log=k.log)
        self._ids[trial.number] = trial_id
        return trial.number, sampled

    def tell(
        self, number: int, score: float | None, attrs: Mapping[str, Any] | None = None
    ) -> bool:
        """Finish trial ``number``: COMPLETE with ``score``, or FAIL when ``score`` is None.
        False, and nothing written, when it is finished already: a run resumed from a
        checkpoint taken inside a trial that the run's earlier life judged (the study keeps
        that first answer; nothing is told twice)."""
        trial_id = self._trial_id(number)
        if self.storage.get_trial(trial_id).state.is_finished():
            return False
        if attrs:  # one write (each attribute is a transaction of its own)
            self.storage.set_trial_user_attr(trial_id, "hotcb", dict(attrs))
        state = self._optuna.trial.TrialState
        if score is None:
            self.study.tell(number, state=state.FAIL)
        else:
            self.study.tell(number, score)
        return True

    def state_of(self, number: int) -> str | None:
        found = self.trial(number)
        return str(found.state.name) if found is not None else None

    def trial(self, number: int) -> Any:
        """Trial ``number`` as the study has it (Optuna's FrozenTrial), or None."""
        for t in self.study.get_trials(deepcopy=False):
            if t.number == number:
                return t
        return None

    def fail_open(
        self, keep: Collection[int] = (), judged: Mapping[int, float] | None = None
    ) -> list[int]:
        """Close this run's trials still RUNNING (a crash left them open), except ``keep``
        (the open trial and the pending proposals a checkpoint holds):
        those in ``judged`` (scored before the crash, the score not yet written) get their
        score, the others FAIL; the numbers it failed."""
        running = self._optuna.trial.TrialState.RUNNING
        failed = []
        for t in self.study.get_trials(deepcopy=False, states=(running,)):
            if t.user_attrs.get("run") != self.run or t.number in keep:
                continue
            if judged and t.number in judged:
                self.study.tell(t.number, judged[t.number])
                continue
            self.study.tell(t.number, state=self._optuna.trial.TrialState.FAIL)
            failed.append(t.number)
        return failed

    def finished_after(self, number: int) -> list[Any]:
        """This run's finished trials numbered above ``number`` (Optuna's FrozenTrials)."""
        return [t for t in self.study.get_trials(deepcopy=False)
                if t.number > number and t.state.is_finished()
                and t.user_attrs.get("run") == self.run]  # fmt: skip

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.study.get_trials(deepcopy=False):
            out[t.state.name] = out.get(t.state.name, 0) + 1
        return out

    def _trial_id(self, number: int) -> int:
        if number in self._ids:
            return self._ids[number]
        for t in self.study.get_trials(deepcopy=False):
            if t.number == number:
                return int(t._trial_id)
        raise KeyError(f"trial {number} is not in study {self.name!r}")


class Worker:
    """The one thread that talks to the study. Optuna's ask and tell take 0.1-0.4 s on an
    SQLite study (the sampler reads every trial back); done on the training thread, that is
    a stall at every segment boundary. Calls run in the order they were submitted, so the
    sampler sees a trial's score before it is asked for the next one."""

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        # its thread starts on the first call; queued calls finish before the process exits
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hotcb-tune")

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        return self._pool.submit(fn, *args)

    def drain(self) -> None:
        """Wait until every call submitted so far has run."""
        self._pool.submit(lambda: None).result()

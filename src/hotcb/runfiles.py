"""Names of the files that make up a run directory (shared/DESIGN.md §3)."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import jsonl
from ._version import __version__
from .errors import PathNotAllowedError

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
TUNE = "hotcb.tune.json"
TUNE_DB = "hotcb.tune.db"
#: The rule autopilot's state (mode, key metric, cursors, guard), written after each round.
AUTOPILOT_STATE = "hotcb.autopilot.state.json"
#: The kernel's heartbeat: ``{"step", "wall_time", "pid"}``, replaced atomically by rank 0 at
#: most once a second, so a run that records no metrics still shows as running.
HEARTBEAT = "hotcb.heartbeat.json"
#: Knob values that moved on their own (an LR scheduler): ``{"step", "wall_time", "values":
#: {key: value}}``, appended by rank 0 when the kernel's once-a-second refresh finds a change,
#: so the dashboard charts a knob from the start whenever it began to watch.
KNOBS = "hotcb.knobs.jsonl"
#: The trainer's column sidecar of the metrics file: the numbers ``MetricsCollector`` logs, as
#: int64 steps and float64 values per metric, appended in blocks (``hotcb.metrics._columns``),
#: so a dashboard opens a long run without parsing it. Derived from the metrics file; deletable.
METRICS_COLUMNS = "hotcb.metrics.cols"
#: The dashboard server's columnar cache of the metrics file (steps and values per metric up to
#: a byte offset), so a server that starts again reads only what was appended since.
METRICS_INDEX = "hotcb.metrics.idx"

#: The bundled JSONL logger callback's default output: the one ``hotcb.*`` name in a run
#: directory that a command may have something write to (:func:`confine_path`, ``writes``).
CB_LOG = "hotcb.cb_log.jsonl"
#: Every file hotcb keeps in a run directory starts so (commands, ledger, state, studies,
#: sources); a checkpoint or a callback's output given such a name would overwrite them.
OWN_PREFIX = "hotcb."

#: The files a kernel, the CLI or a controller writes into a run (not the ones a person
#: writes: ``hotcb.yaml``, ``hotcb.adjust.yaml``, a tuner recipe or a recipe, which may as well
#: lie in a folder of runs): one of them (not a folder) marks a run for ``hotcb serve``.
RUN_OUTPUTS = frozenset({COMMANDS, LEDGER, METRICS, RUN_META, ACTUATORS, HEARTBEAT, FREEZE,
                         TUNE, AUTOPILOT_STATE, KNOBS, FEATURES, METRICS_COLUMNS,
                         METRICS_INDEX, CB_LOG})  # fmt: skip

#: Version of the record formats written to the run directory.
FORMAT_VERSION = 1


@dataclass(frozen=True)
class RunPaths:
    """Absolute paths of one run directory's files."""

    root: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", os.path.abspath(os.path.expanduser(self.root)))

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
    def tune(self) -> str:
        """The tuner's state (``hotcb tune status`` and the dashboard read it)."""
        return self._p(TUNE)

    @property
    def tune_db(self) -> str:
        """The tuner's default Optuna study (SQLite)."""
        return self._p(TUNE_DB)

    @property
    def heartbeat(self) -> str:
        return self._p(HEARTBEAT)

    @property
    def knobs(self) -> str:
        return self._p(KNOBS)

    @property
    def metrics_columns(self) -> str:
        return self._p(METRICS_COLUMNS)

    @property
    def metrics_index(self) -> str:
        return self._p(METRICS_INDEX)

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


def shell_path(path: str | os.PathLike[str]) -> str:
    """``path`` as a shell word for the commands messages suggest (inside their single quotes):
    as it is when it needs no quoting, in double quotes when that is enough (a space), else
    quoted by :func:`shlex.quote`."""
    text = os.fspath(path)
    if shlex.quote(text) == text:
        return text
    if not any(c in text for c in '"$`\\!'):
        return f'"{text}"'
    return shlex.quote(text)


def is_run_dir(path: str) -> bool:
    """True when ``path`` holds any hotcb file (commands, ledger, metrics or run metadata)."""
    return any(
        os.path.exists(os.path.join(path, name)) for name in (COMMANDS, LEDGER, METRICS, RUN_META)
    )


#: How many levels below a folder of runs ``hotcb serve`` and the CLI look for runs.
SCAN_DEPTH = 2


def discover_runs(
    root: str, depth: int = SCAN_DEPTH, is_run: Callable[[str], bool] = is_run_dir
) -> list[str]:
    """The runs at and under ``root`` (``is_run``), up to ``depth`` levels down: their paths
    relative to ``root`` with ``/`` (``"."`` for the root itself), sorted. Links, hidden and
    ``__*`` folders are not entered, nor a run's own ``hotcb.*`` folders (a run may be named
    ``hotcb.exp``)."""
    found: list[str] = []

    def walk(path: str, level: int) -> None:
        run = is_run(path)
        if run:
            rel = os.path.relpath(path, root)
            found.append("." if rel == os.curdir else rel.replace(os.sep, "/"))
        if level >= depth:
            return
        skipped = (".", "__", OWN_PREFIX) if run else (".", "__")
        try:
            with os.scandir(path) as it:
                subdirs = sorted(e.path for e in it if e.is_dir(follow_symlinks=False)
                                 and not e.name.startswith(skipped))  # fmt: skip
        except OSError:  # not there (yet), or unreadable
            return
        for sub in subdirs:
            walk(sub, level + 1)

    walk(root, 0)
    return found


def folder_of_runs(path: str) -> str | None:
    """Why ``path`` is not a run but a folder of them (``hotcb serve``'s kind, runs up to
    :data:`SCAN_DEPTH` levels down), or None: it holds no hotcb file of its own and runs lie
    under it."""
    if is_run_dir(path):
        return None
    names = discover_runs(path)
    if not names:
        return None
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return (
        f"{path} is a folder of runs ({shown}), not a run: pick one, e.g. --dir "
        f"{os.path.join(path, names[0])}"
    )


#: The names of the files hotcb writes into a run (not its callback log: a logger may be given
#: that name): one of them anywhere makes a folder a run.
_RUN_FILE_NAMES = frozenset(n.lower() for n in RUN_OUTPUTS - {CB_LOG})


def _another_runs_own(real: str) -> str | None:
    """The run directory whose own file (or folder: ``hotcb.sources``) ``real`` is or lies in:
    a checkpoint saved to ``../B/hotcb.applied.jsonl`` overwrote run B's ledger."""
    parent, child = os.path.dirname(real), os.path.basename(real)
    while child:
        if child.lower().startswith(OWN_PREFIX) and any(
            os.path.isfile(os.path.join(parent, name)) for name in (COMMANDS, LEDGER, RUN_META)
        ):
            return parent
        parent, child = os.path.dirname(parent), os.path.basename(parent)
    return None


def _within(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


# ``scheme://user:password@host``: everything from the first ":" after the user name to the last
# "@" of the URL is the password (an unescaped "@" or "/" in it must not leak its tail).
_URL_PASSWORD = re.compile(r"(://[^:/?#@\s'\"]*):[^\s'\"]*@")
# ``?api-key=…``, ``&token=…``, ``#access_token=…``: a query (or fragment) parameter whose name
# says it holds a secret; its value runs to the next parameter, the fragment or the text's end.
_SECRET_PARAM = re.compile(
    r"([?&#](?:[\w.-]*[-_.])?(?:password|passwd|pwd|secret|token|key|apikey|auth|sig|signature"
    r"|credential)=)[^&#\s'\"]+",
    re.IGNORECASE,
)
#: ``https://TOKEN@host``: a user name alone, which git and HTTP tools take for a token (a
#: GitHub PAT); a database URL's user name (``postgresql://alice@db``) stays
_URL_USER = re.compile(r"(\bhttps?://)[^/?#@\s:'\"]+@", re.IGNORECASE)


def redact_url(text: str) -> str:
    """``text`` with the secrets of every URL in it replaced by ``***``: the password of
    ``scheme://user:password@host`` and the value of a query parameter named like a secret
    (``password``, ``token``, ``key``, ``api-key``, ``access_token``, ``sig``, …), and the user
    name of ``https://TOKEN@host``, and the path of a Slack or Discord webhook. Storage URLs,
    webhooks and the LLM autopilot's base URL are shown in status output, state files and the
    dashboard this way."""
    text = _URL_USER.sub(r"\1***@", _URL_PASSWORD.sub(r"\1:***@", text))
    return _SECRET_PARAM.sub(r"\1***", _WEBHOOK_PATH.sub(r"\1/***", text))


#: Webhook URLs whose path is their secret: Slack's ``/services/T/B/SECRET``, Discord's
#: ``/api/webhooks/ID/TOKEN``.
_WEBHOOK_PATH = re.compile(
    r"(\bhttps?://(?:hooks\.slack\.com|(?:[\w-]+\.)?discord(?:app)?\.com/api/webhooks))"
    r"/[^\s'\"?#]+",
    re.I,
)


def redact_urls(value: Any) -> Any:
    """``value`` (JSON: dicts, lists, strings) with :func:`redact_url` applied to every
    string in it."""
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, dict):
        return {k: redact_urls(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_urls(v) for v in value]
    return value


#: The last word of a flag or variable name (``--hf-token``, ``DB_PASSWORD``) that says its
#: value is a secret.
_SECRET_WORDS = frozenset(
    {"token", "secret", "password", "passwd", "passphrase", "pass", "pwd", "pw", "apikey",
     "credential", "credentials", "pat", "bearer", "cookie"}
)  # fmt: skip
#: The words before a last word ``key`` that make it a secret (``--api-key``, ``--wandb-key``,
#: ``AWS_SECRET_ACCESS_KEY``): ``--sort-key``, ``--metric-key`` and a bare ``--key`` are not.
_KEY_OWNERS = frozenset(
    {"api", "access", "secret", "private", "auth", "license", "encryption", "signing",
     "master", "service", "account", "client", "app", "ssh", "wandb", "hf", "huggingface",
     "openai", "anthropic", "cohere", "mistral", "groq", "together", "replicate", "comet",
     "neptune", "mlflow", "github", "gh", "aws", "gcp", "azure", "pinecone", "google",
     "kaggle"}
)  # fmt: skip
#: The words before a last word ``token`` that make it a vocabulary's token, not a secret
#: (``--eos_token "</s>"``, ``--pad-token``, ``model.mask_token=…``).
_VOCABULARY = frozenset(
    {"pad", "bos", "eos", "mask", "unk", "sep", "cls", "start", "end", "begin", "stop",
     "special", "image", "audio", "video", "vision", "placeholder", "extra", "additional",
     "new", "decoder", "eot", "eom", "sot", "think", "tool", "system", "user", "assistant",
     "boi", "eoi", "prompt", "response", "answer", "query", "label", "ignore", "default",
     "eod", "img", "chat", "sentinel", "lang", "class", "fim", "prefix", "suffix", "middle",
     "target", "separator", "thinking", "reasoning", "pooling", "register", "memory", "max",
     "min", "num", "n", "drop", "summary", "dummy", "unused"}
)  # fmt: skip
#: ``NAME=value`` as ``env`` takes it (``WANDB_API_KEY=…``) or a Hydra override does
#: (``trainer.hf_token=…``, ``+model.api_key=…``).
_ASSIGNMENT = re.compile(r"[+~]{0,2}[A-Za-z_][\w.-]*=")
REDACTED = "***"


def secret_name(name: str) -> bool:
    """Whether the flag or variable ``name`` (``--hf-token``, ``--db_password``,
    ``OPENAI_API_KEY``, ``trainer.hfToken``) names a secret: its last word is ``token``,
    ``secret``, ``password``…, or ``key`` after ``api``, ``access``, ``wandb``…
    (``--tokenizer``, ``--max-tokens``, ``--token-file``, ``--eos-token`` and ``--sort-key``
    are not)."""
    last = name.lstrip("-+~").rsplit(".", 1)[-1]
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", last)  # camelCase: its words
    words = [w for w in re.split(r"[-_\s:]+", spaced.lower()) if w]
    if not words:
        return False
    if words[-1] == "key":
        return len(words) > 1 and words[-2] in _KEY_OWNERS
    if words[-1] == "token" and len(words) > 1 and words[-2] in _VOCABULARY:
        return False
    if words[-1] == "pass" and len(words) > 1:  # --forward-pass, --num-pass: not --db-pass
        return words[-2] in ("db", "user", "admin", "root", "login", "ssh", "smtp", "proxy")
    return words[-1] in _SECRET_WORDS


def redact_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` as it may be written down (``hotcb.run.json``, which the dashboard serves) and
    shown: the value of a flag named like a secret (``--hf-token X``, ``--api-key=X``), of an
    assignment (``WANDB_API_KEY=X`` as ``env`` takes it, ``trainer.hf_token=X``) and of an
    ``Authorization: Bearer X`` is ``***``, and so are the secrets of URLs
    (:func:`redact_url`); inside an argument with spaces (``bash -c "…"``) word by word.
    ``-p X`` cannot be told from any other short flag: it is kept."""
    out: list[str] = []
    hide, before = False, ""
    for arg in argv:
        if any(c.isspace() for c in arg):  # a command line in one argument: its words
            parts = re.split(r"(\s+)", arg)
            words = redact_argv(parts[0::2])
            parts[0::2] = words
            out.append("".join(parts))
            hide, before = False, ""
            continue
        word, hide = _redact_word(arg, hide, before)
        out.append(word)
        before = arg
    return out


def redact_secrets(value: Any, name: str = "", owner: str = "") -> Any:
    """``value`` (JSON: dicts, lists, strings, numbers) with its secrets replaced by ``***``:
    whatever a key named like a secret holds (``api_key``, ``hf_token``, ``passwords``,
    ``Authorization``, ``key`` inside ``wandb``: :func:`secret_name`), a list of strings as a
    command line (``argv: ["--hf-token", X]``), a string holding a JSON document as that
    document, and in every other string what :func:`redact_argv` hides in one (``--hf-token
    X``, ``WANDB_API_KEY=X``, a URL's password). ``hotcb.run.json``, a user's ``run_meta`` in
    it (a training config, tokens and all), is served and exported this way."""
    if name and _secret_key(name, owner) and not _kept_value(value, name):
        return REDACTED
    inside = name or owner  # (through a list, the key that holds it: wandb: [{key: …}])
    if isinstance(value, dict):
        return {k: redact_secrets(v, str(k), inside) for k, v in value.items()}
    if isinstance(value, list):
        if value and all(isinstance(v, str) for v in value):
            return [_AUTH_VALUE.sub(r"\1 ***", v) for v in redact_argv(value)]
        return [redact_secrets(v, "", inside) for v in value]
    if not isinstance(value, str):
        return value
    if value.strip()[:1] in ("{", "["):  # a config kept as JSON text
        try:
            doc = json.loads(value)
        except ValueError:
            pass
        else:
            if isinstance(doc, (dict, list)):
                return json.dumps(redact_secrets(doc, "", owner))
    return _AUTH_VALUE.sub(r"\1 ***", redact_argv([value])[0])


#: A header's credentials as a value (``auth_header: "Bearer X"``).
_AUTH_VALUE = re.compile(r"(?i)^\s*(bearer|basic|token)\s+(?!\*\*\*$)\S+\s*$")


def _secret_key(name: str, owner: str) -> bool:
    """Whether a mapping's key ``name`` (inside the key ``owner``) names a secret: as a flag
    would, in the plural (``api_keys``, ``passwords``), ``Authorization``, or ``key`` and
    ``token`` inside an owner that makes them one (``wandb: {key: …}``)."""
    if secret_name(name) or name.lower() in ("authorization", "proxy-authorization"):
        return True
    single = re.sub(r"(?i)(key|password|secret|passphrase|(?<=[-_.])token)s$", r"\1", name)
    if single != name and secret_name(single):
        return True
    return bool(owner) and name.lower() in ("key", "token") and secret_name(f"{owner}_{name}")


def _kept_value(value: Any, name: str) -> bool:
    """Whether ``value``, under the secret-like key ``name``, is no secret: a flag
    (``use_auth_token: true``), nothing, a number given to a ``…token(s)`` key (a count), or a
    vocabulary's special token (``"<start_of_turn>"``, ``"[CLS]"``)."""
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, (int, float)):
        return name.lower().rstrip("s").endswith("token")
    if isinstance(value, str):
        return bool(_PLAIN_WORD.fullmatch(value) or _SPECIAL_TOKEN.fullmatch(value))
    return False


#: A vocabulary's special token: ``<s>``, ``<|endoftext|>``, ``[CLS]``.
_SPECIAL_TOKEN = re.compile(r"<\|?[\w.:/-]{0,40}\|?>|\[[A-Z_]{1,20}\]")


def _redact_word(arg: str, hide: bool, before: str) -> tuple[str, bool]:
    """One word of a command line (``before``: the one before it), and whether the next is a
    secret's value."""
    if hide and not arg.startswith("--") and not _plain(arg, before):
        return REDACTED, False  # (a value may start with one dash: "-x9")
    if _ASSIGNMENT.match(arg) or arg.startswith("-"):
        name, eq, value = arg.partition("=")
        if eq and secret_name(name) and not _plain(value, name):
            return f"{name}={REDACTED}", False
    header = before.lower().endswith("authorization:")
    scheme = (arg.lower() in _SCHEMES and header) or arg.lower().endswith(_GLUED_SCHEMES)
    named = (arg.startswith("-") or arg.endswith(":")) and "=" not in arg and secret_name(arg)
    return redact_url(arg), scheme or named


def _plain(value: str, name: str) -> bool:
    """Whether ``value``, given to the secret-like ``name``, is no secret: a boolean or nothing
    (``--use_auth_token True``), or a number given to a ``…token(s)`` flag, a count
    (``--max_token 512``). A number given to ``--password`` is one."""
    if _PLAIN_WORD.fullmatch(value):
        return True
    return bool(_NUMBER.fullmatch(value)) and name.lower().rstrip("s").endswith("token")


_PLAIN_WORD = re.compile(r"true|false|yes|no|none|null", re.I)
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*(e[-+]?\d+)?|\.\d+)", re.I)
#: ``Authorization: Bearer X`` (and ``Authorization:Bearer X``)
_SCHEMES = ("bearer", "basic", "token")
_GLUED_SCHEMES = tuple(f"authorization:{s}" for s in _SCHEMES)


def url_secrets(text: str) -> list[str]:
    """The secrets that :func:`redact_url` hides in ``text`` (passwords, then parameter
    values), for scrubbing them where they turn up on their own (an error that quotes a
    request)."""
    found = [m.group(0)[len(m.group(1)) + 1 : -1] for m in _URL_PASSWORD.finditer(text)]
    rest = _URL_PASSWORD.sub(r"\1:***@", text)
    return found + [m.group(0)[len(m.group(1)) :] for m in _SECRET_PARAM.finditer(rest)]


def run_relative(path: str | os.PathLike[str], run_dir: str | os.PathLike[str]) -> str:
    """``path`` relative to ``run_dir`` when it lies inside it, else absolute.

    A relative ``path`` is taken from the current directory (it came from this process). It
    counts as inside when it is, as written or once symlinks are resolved on both sides, so a
    run directory reached through a link still gets relative names. The ledger names files
    this way so that a run directory moved or copied elsewhere still finds them.
    """
    absolute = os.path.abspath(os.fspath(path))
    for p, base in (
        (absolute, os.path.abspath(os.fspath(run_dir))),
        (os.path.realpath(absolute), os.path.realpath(os.fspath(run_dir))),
    ):
        if _within(p, base):
            return os.path.relpath(p, base)
    return absolute


def confine_path(
    path: str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    roots: Iterable[str | os.PathLike[str]] = (),
    *,
    what: str = "path",
    writes: bool = False,
) -> str:
    """The absolute, symlink-resolved form of ``path`` (relative paths are taken from
    ``run_dir``) when it lies inside ``run_dir`` or one of ``roots``; else raise
    :class:`PathNotAllowedError`.

    Every path that arrives in a command, a recipe or a request goes through here before it
    is opened or written (DESIGN.md §10). The error names the path as given and the allowed
    places, never whether the file exists or anything it holds. ``writes``: the path is
    written to (a checkpoint, a callback's output), so it must not be one of the run's own
    files either (``hotcb.*`` in the run directory: a checkpoint saved over the commands file
    lost the next command, one over the ledger erased it).
    """
    raw = os.fspath(path)
    if not raw or "\x00" in raw:
        raise PathNotAllowedError(f"{what} must be a non-empty path, got {raw!r}")
    base = os.path.realpath(os.fspath(run_dir))
    real = os.path.realpath(os.path.join(base, os.path.expanduser(raw)))
    if writes and _within(real, base) and real != base:
        top = os.path.relpath(real, base).split(os.sep)[0].lower()  # (case-blind filesystems)
        if top.startswith(OWN_PREFIX) and top != CB_LOG:
            raise PathNotAllowedError(
                f"{what} {raw!r} is one of the run's own files ({OWN_PREFIX}*: its commands, "
                "ledger and state live there); give the file another name"
            )
    allowed = [base, *(os.path.realpath(os.fspath(r)) for r in roots)]
    other = _another_runs_own(real) if writes and not _within(real, base) else None
    if other is not None:  # (an allowed root that holds a folder of runs)
        raise PathNotAllowedError(
            f"{what} {raw!r} is one of the own files ({OWN_PREFIX}*) of the run {other}; "
            "give the file another name"
        )
    name = os.path.basename(real).lower()
    if writes and name in _RUN_FILE_NAMES:  # a folder with none yet would pass for a run
        raise PathNotAllowedError(
            f"{what} {raw!r} is named as a run's own file: its folder would pass for a run "
            "(and a trainer started there would read it); give the file another name"
        )
    if any(_within(real, root) for root in allowed):
        return real
    raise PathNotAllowedError(
        f"{what} {raw!r} is outside the run directory and the allowed roots "
        f"({', '.join(allowed)}); put the file inside the run directory or start the trainer "
        "(HotKernel(allowed_roots=[...])) or the server (--allowed-root) with its folder allowed"
    )


def write_run_meta(
    paths: RunPaths, extra: Mapping[str, Any], warn: Callable[[str, str], None]
) -> None:
    """Update ``hotcb.run.json`` for a (re)started kernel: versions, host, pid, filesystem and
    the caller's ``extra`` (config, seed, …); ``warn(key, message)`` about a network
    filesystem or a file that cannot be written."""
    fstype = filesystem_type(paths.root)
    if is_network_fs(fstype):
        warn(
            "network_fs",
            f"run directory {paths.root} is on {fstype}: flock does not serialise appends "
            "from several hosts. Send commands from this host, or from elsewhere through "
            "'hotcb serve' running here (see docs/core.md, Shared filesystems).",
        )
    meta = jsonl.read_json(paths.run_meta, {}) or {}
    now = time.time()
    meta.setdefault("created", now)
    ended = meta.pop("ended", None)  # a run starts (again) in this directory
    if isinstance(ended, dict) and ended.get("step") is not None:
        meta["ended_before"] = ended  # the last life's end (said if this one has no step)
    meta.pop("other_trainer", None)  # the caller's ``extra`` names one still running
    meta.pop("resumed_from", None)  # this life's: set when it loads a checkpoint
    meta.update(
        {
            "format_version": FORMAT_VERSION,
            "hotcb_version": __version__,
            "started": now,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "python": sys.version.split()[0],
            "run_dir": paths.root,
            "filesystem": fstype,
        }
    )
    meta.update(extra)
    try:
        jsonl.write_json_atomic(paths.run_meta, meta)
    except OSError as exc:
        warn("run_meta", f"could not write {paths.run_meta}: {exc}")


def update_run_meta(
    paths: RunPaths, fields: Mapping[str, Any], warn: Callable[[str, str], None]
) -> None:
    """Merge ``fields`` into ``hotcb.run.json`` (atomically; a failure is a warning)."""
    meta = jsonl.read_json(paths.run_meta, {}) or {}
    meta.update(fields)
    try:
        jsonl.write_json_atomic(paths.run_meta, meta)
    except OSError as exc:
        warn("run_meta", f"could not write {paths.run_meta}: {exc}")


def close_run_meta(
    paths: RunPaths, ended: Mapping[str, Any], warn: Callable[[str, str], None]
) -> None:
    """Say in ``hotcb.run.json`` that this process's kernel closed the run (``ended``), unless
    another trainer still runs in the directory: one started after this one (the file names
    it) says when the run ends; one this one found running (``other_trainer``) is named as the
    run's trainer again, since the run goes on with it."""
    meta = jsonl.read_json(paths.run_meta, {}) or {}
    me = (os.getpid(), socket.gethostname())
    other = meta.get("other_trainer")
    if meta.get("pid") is not None and (meta.get("pid"), meta.get("host")) != me:
        if not isinstance(other, dict) or (other.get("pid"), other.get("host")) != me:
            return
        meta.pop("other_trainer")  # the newer trainer runs on alone
    elif isinstance(other, dict) and other_live_trainer(other, paths.root) is not None:
        meta.pop("other_trainer")
        meta.update({k: other[k] for k in ("pid", "host", "started") if k in other})
    else:
        meta.pop("other_trainer", None)
        meta["ended"] = dict(ended)
    try:
        jsonl.write_json_atomic(paths.run_meta, meta)
    except OSError as exc:
        warn("run_meta", f"could not write {paths.run_meta}: {exc}")


def process_alive(meta: Mapping[str, Any]) -> bool | None:
    """Whether the process ``hotcb.run.json`` names still runs: None when it ran on another
    host (or the file says nothing), since only this host can tell."""
    pid, host = meta.get("pid"), meta.get("host")
    if not isinstance(pid, int) or host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """``pid`` died and waits for its parent to reap it (``kill(pid, 0)`` succeeds on it: a
    trainer killed under a notebook's unwaited ``Popen`` read as running, and blocked its
    folder). False where /proc cannot tell."""
    st = proc_stat(pid)
    return st is not None and st[0] in ("Z", "X", "x")


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """``(state, ppid, start time)`` of ``pid`` from /proc; None when it is gone (or there is
    no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        fields = data[data.rindex(b")") + 2 :].split()  # the name may hold spaces and ')'
        return fields[0].decode(), int(fields[1]), int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def other_live_trainer(meta: Mapping[str, Any], run_dir: str) -> int | None:
    """The pid of another process of this host that opened ``run_dir`` (as its
    ``hotcb.run.json``, ``meta``, says) and still runs without having closed it (no
    ``ended``); None otherwise. A copy of a live run's directory names the process of the
    original, not this one's; and a pid that now names a process started after the run's
    kernel (a pid used again after a crash) is not it, where this host can tell (Linux)."""
    pid, started, where = meta.get("pid"), meta.get("started"), meta.get("run_dir")
    if pid == os.getpid() or "ended" in meta or process_alive(meta) is not True:
        return None
    if isinstance(where, str) and os.path.realpath(where) != os.path.realpath(run_dir):
        return None
    assert isinstance(pid, int)  # (process_alive said so)
    born = _process_start(pid)
    if born is not None and isinstance(started, (int, float)) and born > started + 2:
        return None
    return pid


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), from ``/proc``; None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            ticks = int(f.read().rsplit(b")", 1)[1].split()[19])  # field 22: starttime
        with open("/proc/stat", "rb") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith(b"btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None

"""The tasks of ``hotcb bench``: real training on data that is on the machine, no downloads.

A *task* makes seeded *runs*. The contract, which user tasks (``module:function``) follow too:

- the task: ``total_steps`` (int: the default budget, overridden by ``--steps``),
  ``eval_every`` (int: validation cadence in steps), ``lr`` (float: a good lr for the base
  optimizer), ``make(seed) -> run``; optional: ``title`` (str), ``optimizer(params, lr)``
  (the base optimizer; default ``torch.optim.AdamW(params, lr=lr)``);
- the run: ``model`` (the ``nn.Module`` being trained), ``train_step(opt) -> float`` (one
  optimizer step: zero the grads, forward, backward, ``opt.step()``; return the training loss)
  and ``evaluate() -> (val_loss, val_acc or None)`` (the model is switched back to train mode
  by the next ``train_step``). Everything random in a run derives from ``seed``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib
import io
import math
import os
import pickle
import sys
import sysconfig
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import HotcbError
from . import TASKS


@dataclass(frozen=True)
class Task:
    """One built-in or user task, as the runner sees it."""

    name: str
    title: str
    total_steps: int
    eval_every: int
    lr: float
    make: Callable[[int], Any]
    optimizer: Callable[[Any, float], torch.optim.Optimizer] | None = None
    about: str = ""
    info: dict[str, Any] = field(default_factory=dict)  # recorded in bench.json (e.g. corpus)

    def base_optimizer(self, params: Any, lr: float | None = None) -> torch.optim.Optimizer:
        lr = self.lr if lr is None else lr
        if self.optimizer is not None:
            return self.optimizer(params, lr)
        return torch.optim.AdamW(params, lr=lr)


class TaskError(HotcbError, RuntimeError):
    """An exception from a task's own code (its ``make()``, ``optimizer()``, a run's
    ``model``, ``train_step()`` or ``evaluate()``), naming the task, condition and seed;
    ``__cause__`` is the task's exception and :attr:`traceback` its traceback from the
    task's code in (the CLI prints it: a bug in a user's task shows where it is)."""

    def __init__(self, where: str, call: str, exc: Exception) -> None:
        super().__init__(f"{where}: {call} raised {type(exc).__name__}: {exc} (in the task's "
                         "own code, not hotcb's)")  # fmt: skip
        tb = exc.__traceback__
        self.traceback = "".join(  # the frame that caught it is the runner's: left out
            traceback.format_exception(type(exc), exc, tb.tb_next if tb is not None else None)
        )


def task_call(where: str, call: str, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, code of a task: an exception from it becomes a :class:`TaskError`."""
    try:
        return fn(*args)
    except Exception as exc:
        raise TaskError(where, call, exc) from exc


class TaskUnavailable(Exception):
    """A task that cannot run on this machine (its message says why); the bench skips it."""


# ------------------------------------------------------------------------------ digits
@functools.cache
def _digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled 8×8 digits (1797 images), pixels scaled to [0, 1], split 80/20
    once (``random_state=0``, stratified): the same split for every run."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_va, y_tr, y_va = train_test_split(
        x / 16.0, y, test_size=0.2, random_state=0, stratify=y
    )
    as_x = functools.partial(torch.tensor, dtype=torch.float32)
    return as_x(x_tr), torch.tensor(y_tr), as_x(x_va), torch.tensor(y_va)


def _finite(loss: float, classes: int) -> float:
    """A diverged run's loss as a large finite number (10× chance level): stats stay sane."""
    return loss if math.isfinite(loss) else math.log(classes) * 10


class DigitsRun:
    """A 64-128-128-10 ReLU MLP (or the CNN), cross-entropy, minibatches of 64 drawn with
    replacement from a generator seeded with the run's seed."""

    batch_size = 64

    def __init__(self, seed: int, cnn: bool = False) -> None:
        torch.manual_seed(seed)
        if cnn:
            self.model: nn.Module = nn.Sequential(
                nn.Unflatten(1, (1, 8, 8)),
                nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 4 * 4, 10),
            )  # fmt: skip
        else:
            self.model = nn.Sequential(
                nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
            )
        self._batches = torch.Generator().manual_seed(seed)
        self.x_tr, self.y_tr, self.x_va, self.y_va = _digits()

    def train_step(self, opt: torch.optim.Optimizer) -> float:
        self.model.train()
        idx = torch.randint(0, len(self.x_tr), (self.batch_size,), generator=self._batches)
        loss = F.cross_entropy(self.model(self.x_tr[idx]), self.y_tr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call,unused-ignore]
        opt.step()
        return float(loss.item())

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float | None]:
        self.model.eval()
        out = self.model(self.x_va)
        loss = _finite(float(F.cross_entropy(out, self.y_va)), 10)
        return loss, float((out.argmax(1) == self.y_va).float().mean())


DIGITS_ABOUT = (
    "scikit-learn's bundled 8×8 digits (1797 images, 80/20 stratified split with "
    "random_state=0), batches of 64, AdamW (torch defaults but the lr)."
)


def digits_mlp() -> Task:
    return Task(
        "digits_mlp", "MLP on digits", 1200, 10, 1e-2, DigitsRun,
        about="64-128-128-10 ReLU MLP at lr 1e-2 (the best of an lr sweep at 1200 steps). "
        + DIGITS_ABOUT,
    )  # fmt: skip


def digits_badlr() -> Task:
    return Task(
        "digits_badlr", "MLP on digits, lr 10× too high", 1200, 10, 1e-1, DigitsRun,
        about="The digits MLP at lr 1e-1, 10× its good lr: it trains, badly. A rescue task. "
        + DIGITS_ABOUT,
    )  # fmt: skip


def digits_cnn() -> Task:
    return Task(
        "digits_cnn", "small CNN on digits", 1200, 10, 2e-2,
        functools.partial(DigitsRun, cnn=True),
        about="Conv 3×3 1→16, ReLU, conv 3×3 16→32, ReLU, 2×2 max-pool, linear 512→10, at lr "
        "2e-2 (the best of a sweep at 1200 steps). " + DIGITS_ABOUT,
    )  # fmt: skip


# ------------------------------------------------------------------------------ charlm
#: The corpus: these files of the running Python's standard library, in this order (files
#: missing in a Python version are skipped and listed in bench.json). Each file's first 90 %
#: goes to training and its last 10 % to validation, so a missing file changes nothing else.
CHARLM_FILES = (
    "_pydecimal.py", "turtle.py", "inspect.py", "typing.py", "pydoc.py", "tarfile.py",
    "doctest.py", "argparse.py", "_pyio.py", "pickletools.py", "difflib.py", "locale.py",
    "enum.py", "mailbox.py", "ipaddress.py", "pickle.py", "pdb.py", "ast.py", "optparse.py",
    "dataclasses.py", "threading.py", "shutil.py", "configparser.py", "imaplib.py", "ssl.py",
    "statistics.py", "smtplib.py", "platform.py", "traceback.py", "os.py", "functools.py",
    "socket.py", "codecs.py", "ftplib.py", "bdb.py", "random.py", "subprocess.py",
    "tempfile.py", "pstats.py", "trace.py", "dis.py", "fractions.py", "plistlib.py", "uuid.py",
    "socketserver.py", "contextlib.py", "tokenize.py", "asyncio/base_events.py",
    "collections/__init__.py", "json/decoder.py", "email/message.py", "http/client.py",
    "http/server.py", "logging/__init__.py", "unittest/case.py", "unittest/mock.py",
)  # fmt: skip
VAL_FRACTION = 0.1


@dataclass(frozen=True)
class Corpus:
    train: torch.Tensor  # uint8 bytes
    val: torch.Tensor
    files: tuple[str, ...]
    missing: tuple[str, ...]
    sha256: str

    def info(self) -> dict[str, Any]:
        return {
            "stdlib": sysconfig.get_paths()["stdlib"],
            "python": sys.version.split()[0],
            "files": len(self.files),
            "missing": list(self.missing),
            "train_bytes": len(self.train),
            "val_bytes": len(self.val),
            "sha256": self.sha256,
        }


@functools.cache
def charlm_corpus(stdlib: str | None = None) -> Corpus:
    """The standard library's own source, read as bytes (a 256-symbol vocabulary)."""
    root = stdlib or sysconfig.get_paths()["stdlib"]
    train, val, found, missing = [], [], [], []
    digest = hashlib.sha256()
    for rel in CHARLM_FILES:
        path = os.path.join(root, rel)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            missing.append(rel)
            continue
        cut = int(len(data) * (1 - VAL_FRACTION))
        train.append(data[:cut])
        val.append(data[cut:])
        found.append(rel)
        digest.update(rel.encode() + b"\0" + data)
    if not found:
        raise TaskUnavailable(f"charlm: none of its {len(CHARLM_FILES)} files is under {root}")

    def as_tensor(parts: list[bytes]) -> torch.Tensor:
        return torch.frombuffer(bytearray(b"".join(parts)), dtype=torch.uint8)

    return Corpus(
        as_tensor(train), as_tensor(val), tuple(found), tuple(missing), digest.hexdigest()
    )


class _Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        att = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        out: torch.Tensor = x + self.mlp(self.ln2(x))
        return out


class CharTransformer(nn.Module):
    """A pre-LayerNorm decoder-only transformer over bytes, learned positions, tied output."""

    def __init__(self, context: int, d: int, layers: int, heads: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(256, d)
        self.pos = nn.Parameter(torch.zeros(context, d))
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.Sequential(*(_Block(d, heads) for _ in range(layers)))
        self.ln = nn.LayerNorm(d)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx) + self.pos[: idx.shape[1]]
        logits: torch.Tensor = self.ln(self.blocks(x)) @ self.embed.weight.T
        return logits


@dataclass(frozen=True)
class CharLMConfig:
    context: int = 64
    d: int = 96
    layers: int = 2
    heads: int = 4
    batch: int = 16
    val_windows: int = 192  # fixed validation windows (the same for every run)


class CharLMRun:
    def __init__(self, seed: int, cfg: CharLMConfig, corpus: Corpus) -> None:
        torch.manual_seed(seed)
        self.cfg, self.corpus = cfg, corpus
        self.model = CharTransformer(cfg.context, cfg.d, cfg.layers, cfg.heads)
        self._batches = torch.Generator().manual_seed(seed)
        fixed = torch.Generator().manual_seed(0)
        n = len(corpus.val) - cfg.context - 1
        self._val_starts = torch.randint(0, n, (cfg.val_windows,), generator=fixed)

    def _windows(
        self, data: torch.Tensor, starts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        offsets = torch.arange(self.cfg.context + 1)
        chunk = data[starts[:, None] + offsets].long()
        return chunk[:, :-1], chunk[:, 1:]

    def train_step(self, opt: torch.optim.Optimizer) -> float:
        self.model.train()
        n = len(self.corpus.train) - self.cfg.context - 1
        starts = torch.randint(0, n, (self.cfg.batch,), generator=self._batches)
        x, y = self._windows(self.corpus.train, starts)
        loss = F.cross_entropy(self.model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call,unused-ignore]
        opt.step()
        return float(loss.item())

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float | None]:
        self.model.eval()
        total, correct, count = 0.0, 0, 0
        for chunk in torch.split(self._val_starts, 64):
            x, y = self._windows(self.corpus.val, chunk)
            logits = self.model(x).flatten(0, 1)
            total += float(F.cross_entropy(logits, y.flatten(), reduction="sum"))
            correct += int((logits.argmax(1) == y.flatten()).sum())
            count += y.numel()
        return _finite(total / count, 256), correct / count


def charlm(cfg: CharLMConfig | None = None) -> Task:
    cfg = cfg or CharLMConfig()
    corpus = charlm_corpus()
    return Task(
        "charlm", "character-level transformer on the Python stdlib's source", 2000, 50, 5e-3,
        functools.partial(CharLMRun, cfg=cfg, corpus=corpus),
        about=f"A {cfg.layers}-layer, {cfg.d}-wide, {cfg.heads}-head decoder-only transformer "
        f"over bytes (context {cfg.context}, batches of {cfg.batch}) on {len(corpus.files)} "
        f"fixed files of the Python {sys.version.split()[0]} standard library "
        f"({len(corpus.train) / 1e6:.2f} MB train, {len(corpus.val) / 1e6:.2f} MB val: the "
        f"last 10 % of each file); val loss in nats per byte over {cfg.val_windows} fixed "
        "windows; AdamW at lr 5e-3 (the best of 2e-3 | 5e-3 | 1e-2 at 600 steps, seed 0: "
        "val loss 2.44 | 2.34 | 2.52).",
        info={"corpus": corpus.info(), "config": vars(cfg)},
    )  # fmt: skip


# ------------------------------------------------------------------------------ cifar10
class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.short: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                       nn.BatchNorm2d(cout))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.b1(self.c1(x)))
        return F.relu(self.b2(self.c2(out)) + self.short(x))


def resnet20() -> nn.Module:
    """He et al.'s ResNet-20 for CIFAR (3 stages of 3 basic blocks, 16/32/64 channels)."""
    layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    cin = 16
    for cout, stride in ((16, 1), (32, 2), (64, 2)):
        for i in range(3):
            layers.append(_BasicBlock(cin, cout, stride if i == 0 else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)]
    return nn.Sequential(*layers)


#: CIFAR-10's "python version" (the tarball unpacks to ``cifar-10-batches-py/``); the bench
#: reads it with the standard library's pickle, numpy and torch (no torchvision) and never
#: downloads it.
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = "test_batch"
CIFAR_META = "batches.meta"  # label names; optional
#: The md5 of each file as published (torchvision checks the same): a copy that differs still
#: trains, but bench.json and the report say so, since its results are not comparable.
CIFAR_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # the usual per-channel statistics of the train set
CIFAR_STD = (0.2470, 0.2435, 0.2616)
_CIFAR_HOWTO = (
    f"download {CIFAR_URL}, unpack it (tar xzf cifar-10-python.tar.gz) and pass "
    f"--data {CIFAR_FOLDER} or the folder that holds it (docs/bench.md)"
)
# What a CIFAR-10 batch pickle may refer to (numpy's array and dtype reconstructors, and the
# bytes of a pickle written by Python 3): a pickle runs code, and --data may point anywhere.
_CIFAR_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),
}  # fmt: skip


class CifarUnavailable(TaskUnavailable):
    """CIFAR-10 is missing or broken under ``--data`` (the message names the file and what
    was expected)."""


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        canonical = module.replace("numpy._core", "numpy.core", 1)
        if (canonical, name) not in _CIFAR_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, unlike CIFAR-10")
        if canonical.startswith("numpy.core."):  # numpy 2 moved numpy.core to numpy._core
            with contextlib.suppress(ImportError, AttributeError):
                return getattr(importlib.import_module("numpy._core" + canonical[10:]), name)
        return super().find_class(module, name)


def _cifar_field(doc: dict[Any, Any], key: str) -> Any:
    """A field of a batch: keys are bytes in a pickle read with ``encoding="bytes"`` or
    written by Python 3, str in Python 2's read with ``encoding="latin1"``."""
    return doc[key] if key in doc else doc.get(key.encode())


def _cifar_batch(path: str, digest: Any, md5s: dict[str, str]) -> tuple[torch.Tensor, ...]:
    """One batch file: images as uint8 N×3×32×32, labels as int64, checked."""
    with open(path, "rb") as f:
        raw = f.read()
    name = os.path.basename(path)
    digest.update(name.encode() + b"\0" + raw)
    md5s[name] = hashlib.md5(raw, usedforsecurity=False).hexdigest()
    try:
        doc = _CifarUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as exc:  # any unpickling failure: truncated, not a pickle, foreign class
        raise CifarUnavailable(
            f"cifar10_resnet20: {path} is not a CIFAR-10 batch (a pickled dict): "
            f"{type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(doc, dict):
        raise CifarUnavailable(
            f"cifar10_resnet20: {path} holds a {type(doc).__name__}, expected a dict with "
            "b'data' and b'labels'"
        )
    data, labels = _cifar_field(doc, "data"), _cifar_field(doc, "labels")
    if data is None or labels is None:
        keys = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in doc)
        raise CifarUnavailable(
            f"cifar10_resnet20: {path} has keys {keys}, expected b'data' and b'labels'"
        )
    shape, dtype = getattr(data, "shape", None), str(getattr(data, "dtype", type(data).__name__))
    if shape is None or len(shape) != 2 or shape[1] != 3072 or dtype != "uint8":
        raise CifarUnavailable(
            f"cifar10_resnet20: {path}: data is {dtype} of shape {shape}, expected uint8 "
            "N × 3072 (N images of 3 × 32 × 32, channel-major)"
        )
    try:
        y = torch.as_tensor(list(labels), dtype=torch.int64)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CifarUnavailable(
            f"cifar10_resnet20: {path}: labels are not a list of integers ({exc})"
        ) from None
    if len(y) != shape[0]:
        raise CifarUnavailable(
            f"cifar10_resnet20: {path}: {len(y)} labels for {shape[0]} images, expected one each"
        )
    if len(y) and not 0 <= int(y.min()) <= int(y.max()) <= 9:
        raise CifarUnavailable(
            f"cifar10_resnet20: {path}: labels from {int(y.min())} to {int(y.max())}, expected 0..9"
        )
    x = torch.from_numpy(data.copy()).view(shape[0], 3, 32, 32)  # copy: contiguous, our own
    return x, y


def cifar10_folder(data_dir: str) -> str:
    """The folder holding the batches: ``data_dir`` itself or its ``cifar-10-batches-py``."""
    if not os.path.isdir(data_dir):
        raise CifarUnavailable(
            f"cifar10_resnet20: --data {data_dir} is not a folder; {_CIFAR_HOWTO}"
        )
    inner = os.path.join(data_dir, CIFAR_FOLDER)
    if os.path.isdir(inner):
        folder = inner
    elif os.path.basename(os.path.normpath(data_dir)) == CIFAR_FOLDER or any(
        os.path.exists(os.path.join(data_dir, name)) for name in (*CIFAR_TRAIN, CIFAR_TEST)
    ):
        folder = data_dir
    else:
        hints = {
            "cifar-10-python.tar.gz": "the tarball is there but not unpacked",
            "cifar-10-batches-bin": "that is the binary version; hotcb reads the python version",
            "cifar-10-batches-mat": "that is the Matlab version; hotcb reads the python version",
        }
        found = [f" ({why})" for name, why in hints.items()
                 if os.path.exists(os.path.join(data_dir, name))]  # fmt: skip
        raise CifarUnavailable(
            f"cifar10_resnet20: no CIFAR-10 under {data_dir}: expected {inner}/ or {data_dir} "
            f"itself to hold {', '.join(CIFAR_TRAIN)} and {CIFAR_TEST}{''.join(found[:1])}; "
            + _CIFAR_HOWTO
        )
    missing = [n for n in (*CIFAR_TRAIN, CIFAR_TEST)
               if not os.path.isfile(os.path.join(folder, n))]  # fmt: skip
    if missing:
        raise CifarUnavailable(
            f"cifar10_resnet20: {folder} lacks {', '.join(missing)} (CIFAR-10's python version "
            f"has {', '.join(CIFAR_TRAIN)}, {CIFAR_TEST} and {CIFAR_META}); {_CIFAR_HOWTO}"
        )
    return folder


@dataclass(frozen=True)
class CifarData:
    """CIFAR-10 in memory as uint8 (150 MB for the 50k training images, not 600 MB of floats);
    runs convert and normalise a batch at a time."""

    x_train: torch.Tensor  # uint8 N×3×32×32
    y_train: torch.Tensor  # int64
    x_test: torch.Tensor
    y_test: torch.Tensor
    folder: str
    sha256: str
    label_names: tuple[str, ...]
    differs: tuple[str, ...]  # files whose md5 is not the published one

    @property
    def official(self) -> bool:
        return not self.differs

    def info(self) -> dict[str, Any]:
        return {"folder": self.folder, "train_images": len(self.y_train),
                "test_images": len(self.y_test), "sha256": self.sha256,
                "official": self.official, "differs_from_published": list(self.differs),
                "label_names": list(self.label_names)}  # fmt: skip


def load_cifar10(data_dir: str) -> CifarData:
    """The python version of CIFAR-10 under ``data_dir`` (the ``cifar-10-batches-py`` folder
    or its parent), checked file by file; raises :class:`CifarUnavailable` saying which file
    is missing or wrong and what was expected."""
    folder = cifar10_folder(data_dir)
    digest = hashlib.sha256()
    md5s: dict[str, str] = {}
    train = [_cifar_batch(os.path.join(folder, n), digest, md5s) for n in CIFAR_TRAIN]
    x_te, y_te = _cifar_batch(os.path.join(folder, CIFAR_TEST), digest, md5s)
    names: tuple[str, ...] = ()
    meta_path = os.path.join(folder, CIFAR_META)
    if os.path.isfile(meta_path):
        with open(meta_path, "rb") as f, contextlib.suppress(Exception):  # names are a nicety
            meta = _CifarUnpickler(f, encoding="latin1").load()
            names = tuple(
                n.decode() if isinstance(n, bytes) else str(n)
                for n in _cifar_field(meta, "label_names") or ()
            )
    return CifarData(
        torch.cat([x for x, _ in train]), torch.cat([y for _, y in train]), x_te, y_te,
        os.path.abspath(folder), digest.hexdigest(), names,
        tuple(n for n, md5 in md5s.items() if md5 != CIFAR_MD5[n]),
    )  # fmt: skip


class CifarRun:
    """ResNet-20, shuffled epochs (every training image once per epoch), random crops (zero
    padding 4) and horizontal flips; order, crops and flips all come from one generator seeded
    with the run's seed, so a run is the same bit for bit on CPU."""

    batch_size = 128

    def __init__(self, seed: int, data: tuple[torch.Tensor, ...]) -> None:
        torch.manual_seed(seed)
        self.model = resnet20()
        self.x_tr, self.y_tr, self.x_va, self.y_va = data
        self._batches = torch.Generator().manual_seed(seed)
        self._order = torch.empty(0, dtype=torch.int64)
        self._pos = 0
        self._mean = torch.tensor(CIFAR_MEAN)[:, None, None]
        self._std = torch.tensor(CIFAR_STD)[:, None, None]

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255 - self._mean) / self._std

    def _next_indices(self) -> torch.Tensor:
        parts, need = [], self.batch_size
        while need:
            if self._pos == len(self._order):  # a new epoch
                self._order = torch.randperm(len(self.x_tr), generator=self._batches)
                self._pos = 0
            take = self._order[self._pos : self._pos + need]
            self._pos += len(take)
            need -= len(take)
            parts.append(take)
        return torch.cat(parts)

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        """A random 32×32 crop of each image padded by 4 (zeros: black), then a flip half the
        time."""
        b = len(x)
        padded = F.pad(x, (4, 4, 4, 4))
        dy, dx = torch.randint(0, 9, (2, b), generator=self._batches)
        span = torch.arange(32)
        rows = (dy[:, None] + span)[:, None, :, None]
        cols = (dx[:, None] + span)[:, None, None, :]
        x = padded[torch.arange(b)[:, None, None, None], torch.arange(3)[None, :, None, None],
                   rows, cols]  # fmt: skip
        flip = torch.rand(b, generator=self._batches) < 0.5
        return torch.where(flip[:, None, None, None], x.flip(3), x)

    def train_step(self, opt: torch.optim.Optimizer) -> float:
        self.model.train()
        idx = self._next_indices()
        x = self._normalise(self._augment(self.x_tr[idx]))
        loss = F.cross_entropy(self.model(x), self.y_tr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call,unused-ignore]
        opt.step()
        return float(loss.item())

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float | None]:
        self.model.eval()
        total, correct = 0.0, 0
        for xs, ys in zip(torch.split(self.x_va, 500), torch.split(self.y_va, 500), strict=True):
            out = self.model(self._normalise(xs))
            total += float(F.cross_entropy(out, ys, reduction="sum"))
            correct += int((out.argmax(1) == ys).sum())
        return _finite(total / len(self.y_va), 10), correct / len(self.y_va)


def _sgd(params: Any, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)


def cifar10_resnet20(data_dir: str | None) -> Task:
    if not data_dir:
        raise CifarUnavailable(
            "cifar10_resnet20: CIFAR-10 needs --data DIR (it is never downloaded): " + _CIFAR_HOWTO
        )
    try:
        import numpy  # noqa: F401  (the batches are pickled numpy arrays)
    except ImportError:
        raise CifarUnavailable(
            'cifar10_resnet20: reading CIFAR-10 needs numpy: pip install "hotcb[bench]"'
        ) from None
    data = load_cifar10(data_dir)
    differs = ", ".join(data.differs) if len(data.differs) < len(CIFAR_MD5) else "all six"
    return Task(
        "cifar10_resnet20", "ResNet-20 on CIFAR-10", 2000, 100, 0.1,
        functools.partial(CifarRun, data=(data.x_train, data.y_train, data.x_test, data.y_test)),
        optimizer=_sgd,
        about=f"ResNet-20 (He et al., 0.27 M parameters) on the local CIFAR-10 "
        f"({len(data.y_train)} train images, the {len(data.y_test)} test images as validation; "
        + ("the published files, md5 checked), " if data.official else
           f"NOT the published files: {differs} differ{'s' if len(data.differs) == 1 else ''}, "
           "so results are not comparable with others'), ")
        + "normalised with the usual per-channel mean and std, shuffled epochs, batches of 128 "
        "with random crops (padding 4) and horizontal flips, SGD (momentum 0.9, Nesterov, "
        "weight decay 5e-4) at lr 0.1.",
        info={"data": data.info()},
    )  # fmt: skip


# ------------------------------------------------------------------------------ user tasks
def user_task(spec: str) -> Task:
    """``module:function``: ``function()`` returns an object that follows the contract in this
    module's docstring; missing attributes are reported all at once."""
    mod_name, _, fn_name = spec.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # like python -m: a module in the current folder
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"task {spec}: cannot load it ({exc})") from exc
    obj = task_call(f"task {spec}", f"{fn_name}()", fn)
    missing = [a for a in ("total_steps", "eval_every", "lr", "make") if not hasattr(obj, a)]
    if missing:
        raise ValueError(
            f"task {spec}: {fn_name}() returned an object without {', '.join(missing)} "
            "(the contract: docs/bench.md, 'Your own task')"
        )
    try:
        numbers = int(obj.total_steps), int(obj.eval_every), float(obj.lr)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"task {spec}: total_steps and eval_every are whole numbers, lr a "
                         f"number: {exc} (the contract: docs/bench.md, 'Your own task')") from None  # fmt: skip
    return Task(
        spec, str(getattr(obj, "title", spec)), *numbers, obj.make,
        optimizer=getattr(obj, "optimizer", None),
        about=str(getattr(obj, "about", "") or f"user task {spec}"),
    )  # fmt: skip


def load_task(name: str, data_dir: str | None = None) -> Task:
    """A task by name (a built-in or ``module:function``); raises :class:`TaskUnavailable`
    when it cannot run here."""
    builders: dict[str, Callable[[], Task]] = {
        "digits_mlp": digits_mlp,
        "digits_cnn": digits_cnn,
        "digits_badlr": digits_badlr,
        "charlm": charlm,
        "cifar10_resnet20": lambda: cifar10_resnet20(data_dir),
    }
    assert set(builders) == set(TASKS)
    if name in builders:
        return builders[name]()
    return user_task(name)

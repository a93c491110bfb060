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

import functools
import hashlib
import importlib
import math
import os
import sys
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

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


class CifarRun:
    batch_size = 128

    def __init__(self, seed: int, data: tuple[torch.Tensor, ...]) -> None:
        torch.manual_seed(seed)
        self.model = resnet20()
        self.x_tr, self.y_tr, self.x_va, self.y_va = data
        self._batches = torch.Generator().manual_seed(seed)

    def train_step(self, opt: torch.optim.Optimizer) -> float:
        self.model.train()
        idx = torch.randint(0, len(self.x_tr), (self.batch_size,), generator=self._batches)
        x = self.x_tr[idx]
        flip = torch.rand(len(idx), generator=self._batches) < 0.5  # random horizontal flips
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
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
            out = self.model(xs)
            total += float(F.cross_entropy(out, ys, reduction="sum"))
            correct += int((out.argmax(1) == ys).sum())
        return _finite(total / len(self.y_va), 10), correct / len(self.y_va)


def _sgd(params: Any, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)


def cifar10_resnet20(data_dir: str | None) -> Task:
    try:
        import torchvision  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError:
        raise TaskUnavailable("cifar10_resnet20: torchvision is not installed") from None
    if not data_dir:
        raise TaskUnavailable(
            "cifar10_resnet20: CIFAR-10 needs --data DIR (it is never downloaded)"
        )
    try:
        sets = [
            torchvision.datasets.CIFAR10(data_dir, train=t, download=False) for t in (True, False)
        ]
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        raise TaskUnavailable(f"cifar10_resnet20: no CIFAR-10 under {data_dir} ({exc})") from None
    mean = torch.tensor([0.4914, 0.4822, 0.4465])[:, None, None]
    std = torch.tensor([0.2470, 0.2435, 0.2616])[:, None, None]

    def tensors(ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.tensor(ds.data).permute(0, 3, 1, 2).float() / 255
        return (x - mean) / std, torch.tensor(ds.targets)

    data = (*tensors(sets[0]), *tensors(sets[1]))
    return Task(
        "cifar10_resnet20", "ResNet-20 on CIFAR-10", 2000, 100, 0.1,
        functools.partial(CifarRun, data=data), optimizer=_sgd,
        about="ResNet-20 on the local CIFAR-10 (50k train, the 10k test set as validation), "
        "batches of 128 with random flips, SGD (momentum 0.9, Nesterov, wd 5e-4) at lr 0.1.",
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
    obj = fn()
    missing = [a for a in ("total_steps", "eval_every", "lr", "make") if not hasattr(obj, a)]
    if missing:
        raise ValueError(
            f"task {spec}: {fn_name}() returned an object without {', '.join(missing)} "
            "(the contract: docs/bench.md, 'Your own task')"
        )
    return Task(
        spec, str(getattr(obj, "title", spec)), int(obj.total_steps), int(obj.eval_every),
        float(obj.lr), obj.make, optimizer=getattr(obj, "optimizer", None),
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

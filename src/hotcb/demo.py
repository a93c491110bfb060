"""``hotcb demo``: a real training run plus the dashboard, in one command.

    hotcb demo              # a small MLP on scikit-learn's digits, steerable live
    hotcb demo --golden     # a multi-task model: three loss terms, rich metrics, every control type

Two child processes: the trainer (``python -m hotcb.demo train ...``) and the dashboard server
(``python -m hotcb serve ...``). They meet only in the run directory, exactly like a user's own
run and ``hotcb serve``; the demo adds no side channel. The demo makes the server's access token
and hands it over in the environment (``HOTCB_TOKEN``, never on a command line, which ``ps``
shows); the URL it prints carries it once. Ctrl-C (SIGINT) or SIGTERM stops both
children (the trainer first, so its ledger is flushed) and waits for them: no orphans.

The trainer uses torch when it is installed (a real model on the digits bundled with
scikit-learn, nothing downloaded) and otherwise a pure-Python loop that descends a noisy
quadratic, so ``hotcb demo`` shows the dashboard even without torch.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from . import jsonl
from ._checks import number_arg
from ._launch import _answers, port_free
from ._launch import _spawn as _launch_spawn

if TYPE_CHECKING:
    from .actuators import HotcbActuator
    from .kernel import HotKernel

__all__ = ["main", "run_demo", "server_argv", "train", "trainer_argv"]

DEFAULT_PORT = 8421
DEFAULT_MAX_STEPS = 50_000
DEFAULT_STEP_DELAY = 0.03  # ~30 steps/s: fast enough to look alive, slow enough to watch


# ---------------------------------------------------------------------------------- training
def _has_torch() -> bool:
    try:
        import sklearn  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _demo_kind(golden: bool, synthetic: bool) -> str:
    """What the demo trains, as its first line says: the synthetic loop also when torch or
    scikit-learn is missing (the trainer falls back; the line named the model it did not
    train)."""
    if synthetic:
        return "synthetic"
    missing = [m for m in ("torch", "sklearn") if importlib.util.find_spec(m) is None]
    if missing:
        return (f"synthetic: no {' or '.join(missing)} here for the "
                f"{'golden multi-task model' if golden else 'digits MLP'}; pip install "
                '"hotcb[all]"')  # fmt: skip
    return "golden multi-task" if golden else "digits MLP"


def train(
    run_dir: str,
    *,
    golden: bool = False,
    max_steps: int = DEFAULT_MAX_STEPS,
    step_delay: float = DEFAULT_STEP_DELAY,
    seed: int = 0,
    synthetic: bool | None = None,
) -> int:
    """Train until ``max_steps`` or a ``stop`` command; returns the last step.

    ``synthetic=None`` picks torch when it is installed, the pure-Python loop otherwise.
    """
    if synthetic is None:
        synthetic = not _has_torch()
    if synthetic:
        return _train_synthetic(run_dir, max_steps=max_steps, step_delay=step_delay, seed=seed)
    return _train_torch(
        run_dir, golden=golden, max_steps=max_steps, step_delay=step_delay, seed=seed
    )


def _resume(kernel: HotKernel, load: Callable[[str], dict[str, Any]], env: dict[str, Any]) -> int:
    """The first step to train: 0, or the one after the checkpoint ``$HOTCB_RESUME_FROM``
    names (`hotcb launch --resume-from`, the command `hotcb branch` prints, sets it), once
    ``load`` restored the trainer's state from it and the kernel caught up with ``env``."""
    path = os.environ.get("HOTCB_RESUME_FROM")
    if not path:
        return 0
    ckpt = load(path)
    kernel.load_state_dict(ckpt["hotcb"])
    step = int(ckpt["step"])
    kernel.catch_up({"step": step, **env}, ("train_step_end",))
    return step + 1


def _train_torch(
    run_dir: str, *, golden: bool, max_steps: int, step_delay: float, seed: int
) -> int:
    """A real model on digits. ``golden``: a shared encoder with three heads (class, input
    reconstruction, parity of the digit), three weighted loss terms, and custom knobs of
    every actuator type (bool, float, int, choice, log_float; AdamW's betas are a tuple)."""
    import torch
    from torch import nn

    from . import HotKernel
    from .testing import digits

    torch.manual_seed(seed)
    x, y = digits()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = len(x) // 6
    x_val, y_val = x[perm[:n_val]], y[perm[:n_val]]
    x_tr, y_tr = x[perm[n_val:]], y[perm[n_val:]]
    if not golden:  # hard enough to keep learning for minutes, and to respond to the knobs
        y_tr = _noisy_labels(y_tr, LABEL_NOISE, seed)

    model = _demo_net()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _warmup_cosine(200, max_steps))
    weights: dict[str, float] = (
        {"cls": 1.0, "recon": 0.5, "parity": 0.3} if golden else {"cls": 1.0, "l2": 0.0}
    )
    knobs: dict[str, Any] = {
        "input_noise": 0.0,
        "batch_size": 32,
        "clip_grad": False,
        "max_grad_norm": 1.0,
        "val_every": 25,
    }
    kernel = HotKernel(
        run_dir,
        mutable_state=_demo_actuators(model, weights, knobs, golden),
        run_meta={
            "name": "hotcb demo (golden)" if golden else "hotcb demo",
            "config": {"model": "multitask MLP" if golden else "MLP", "data": "digits"},
            "seed": seed,
        },
    )
    gen = torch.Generator().manual_seed(seed)
    ckpt_dir = os.path.join(run_dir, "checkpoints")

    def save_checkpoint(path: str | None = None, step: int = 0) -> str:
        os.makedirs(ckpt_dir, exist_ok=True)
        path = path or os.path.join(ckpt_dir, f"step_{step}.pt")
        torch.save(
            {"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
             "scheduler": sched.state_dict(), "generator": gen.get_state(),
             "rng": torch.get_rng_state(),  # dropout's
             "hotcb": kernel.state_dict()},
            path,
        )  # fmt: skip
        return path

    def load(path: str) -> dict[str, Any]:
        ckpt: dict[str, Any] = torch.load(path, weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        if "scheduler" in ckpt:  # (a checkpoint of an earlier hotcb's demo has none)
            sched.load_state_dict(ckpt["scheduler"])
            gen.set_state(ckpt["generator"])
            torch.set_rng_state(ckpt["rng"])
        return ckpt

    first = _resume(kernel, load, {"model": model, "optimizer": opt, "scheduler": sched})
    step = first - 1
    try:
        for step in range(first, max_steps):
            idx = torch.randint(0, len(x_tr), (int(knobs["batch_size"]),), generator=gen)
            inp, target = _add_noise(x_tr[idx], knobs["input_noise"], gen), y_tr[idx]
            if not golden:
                inp = _shift(inp, gen)
            terms, logits, _ = _demo_losses(model, golden, inp, target)
            loss = sum(weights[k] * v for k, v in terms.items())
            opt.zero_grad()
            loss.backward()
            limit = float(knobs["max_grad_norm"]) if knobs["clip_grad"] else math.inf
            grad_norm = float(nn.utils.clip_grad_norm_(model.parameters(), limit))
            opt.step()
            sched.step()
            metrics = {"train/loss": loss.item()}
            metrics.update({f"train/loss_{k}": v.item() for k, v in terms.items()})
            metrics["train/acc"] = float((logits.argmax(1) == target).float().mean())
            metrics["lr"] = opt.param_groups[0]["lr"]
            metrics["grad_norm"] = grad_norm
            if step % int(knobs["val_every"]) == 0:
                metrics.update(_demo_validate(model, golden, weights, x_val, y_val))
            kernel.apply(
                {
                    "framework": "torch",
                    "step": step,
                    "epoch": step * int(knobs["batch_size"]) // len(x_tr),
                    "model": model,
                    "optimizer": opt,
                    "scheduler": sched,
                    "loss": loss,
                    "metrics": metrics,
                    "max_steps": max_steps,
                    "save_checkpoint": lambda path=None, _s=step: save_checkpoint(path, _s),
                }
            )
            if kernel.stop_requested:
                break
            if step_delay:
                time.sleep(step_delay)
    finally:
        kernel.close()
    return step


#: Share of the plain demo's training labels replaced by random ones (validation stays clean):
#: the training loss cannot reach zero in a few hundred steps, the validation curve tells
#: generalisation from memorising, and lr and weight-decay changes show on both.
LABEL_NOISE = 0.3


def _noisy_labels(y: Any, share: float, seed: int) -> Any:
    """``y`` with ``share`` of its labels replaced by uniformly random classes (seeded)."""
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    flip = torch.rand(len(y), generator=gen) < share
    out = y.clone()
    out[flip] = torch.randint(0, 10, (int(flip.sum()),), generator=gen)
    return out


def _shift(inp: Any, gen: Any) -> Any:
    """Augmentation: each 8x8 digit shifted by up to one pixel in each direction."""
    import torch

    imgs = inp.view(-1, 8, 8)
    dy, dx = (int(v) for v in torch.randint(-1, 2, (2,), generator=gen))
    return torch.roll(imgs, shifts=(dy, dx), dims=(1, 2)).reshape(len(inp), 64)


def _demo_net() -> Any:
    """The demo's network: a shared encoder with a class head, an input decoder and a parity
    head (the plain demo uses only the class head)."""
    import torch
    from torch import nn

    class DemoNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Sequential(
                nn.Linear(64, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, 32), nn.ReLU()
            )
            self.dropout = self.encoder[2]
            self.cls_head = nn.Linear(32, 10)
            self.decoder = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 64))
            self.parity_head = nn.Linear(32, 1)

        def forward(self, inp: Any) -> tuple[Any, Any, Any]:
            z = self.encoder(inp)
            return self.cls_head(z), torch.sigmoid(self.decoder(z)), self.parity_head(z)[:, 0]

    return DemoNet()


def _warmup_cosine(warmup: int, max_steps: int) -> Callable[[int], float]:
    """LR factor: warm up, then a slow cosine to 10% over the run (the lr chart has a shape
    to steer)."""

    def lr_lambda(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        frac = min(1.0, (s - warmup) / max(1, max_steps - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    return lr_lambda


def _demo_actuators(
    model: Any, weights: dict[str, float], knobs: dict[str, Any], golden: bool
) -> list[HotcbActuator]:
    """Loss weights, input noise and dropout; with ``golden`` a knob of every other type."""
    from . import ActuatorType, HotcbActuator, loss_actuators

    def knob(key: str, typ: ActuatorType, description: str, **kw: Any) -> HotcbActuator:
        return HotcbActuator(
            param_key=key,
            type=typ,
            apply_fn=lambda v, env: knobs.__setitem__(key, v),
            read_fn=lambda env: knobs[key],
            group="custom",
            description=description,
            **kw,
        )

    acts = loss_actuators(weights, max_value=10.0)
    acts.append(
        knob(
            "input_noise",
            ActuatorType.FLOAT,
            "std of Gaussian noise on inputs",
            min_value=0.0,
            max_value=1.0,
        ),
    )
    acts.append(
        HotcbActuator(
            param_key="dropout",
            type=ActuatorType.FLOAT,
            apply_fn=lambda v, env: setattr(model.dropout, "p", v),
            read_fn=lambda env: model.dropout.p,
            min_value=0.0,
            max_value=0.9,
            group="custom",
            description="dropout rate of the encoder",
        )
    )
    if golden:
        acts += [
            knob("batch_size", ActuatorType.CHOICE, "samples per step", choices=(16, 32, 64, 128)),
            knob("clip_grad", ActuatorType.BOOL, "clip the gradient norm"),
            knob(
                "max_grad_norm",
                ActuatorType.LOG_FLOAT,
                "gradient norm limit when clip_grad is on",
                min_value=0.01,
                max_value=100.0,
            ),
            knob(
                "val_every",
                ActuatorType.INT,
                "steps between validations",
                min_value=5,
                max_value=500,
            ),
        ]
    return acts


def _add_noise(inp: Any, std: float, gen: Any) -> Any:
    """``inp`` plus Gaussian noise of ``std``, kept in [0, 1] (``inp`` itself when 0)."""
    import torch

    if std > 0:
        return (inp + std * torch.randn(inp.shape, generator=gen)).clamp(0, 1)
    return inp


def _demo_losses(
    model: Any, golden: bool, inp: Any, target: Any
) -> tuple[dict[str, Any], Any, Any]:
    """The loss terms (``cls`` and ``recon``/``parity`` or ``l2``), the logits and parity."""
    from torch import nn

    logits, recon, parity = model(inp)
    terms: dict[str, Any] = {"cls": nn.functional.cross_entropy(logits, target)}
    if golden:
        terms["recon"] = nn.functional.mse_loss(recon, inp)
        terms["parity"] = nn.functional.binary_cross_entropy_with_logits(
            parity, (target % 2).float()
        )
    else:
        terms["l2"] = sum(p.pow(2).sum() for p in model.parameters()) * 1e-3
    return terms, logits, parity


def _demo_validate(
    model: Any, golden: bool, weights: dict[str, float], x_val: Any, y_val: Any
) -> dict[str, float]:
    """Validation metrics: each loss term, the weighted loss, accuracy (and parity's)."""
    import torch

    model.eval()
    with torch.no_grad():
        terms, logits, parity = _demo_losses(model, golden, x_val, y_val)
    model.train()
    out = {f"val/loss_{k}": v.item() for k, v in terms.items() if k != "l2"}
    out["val/loss"] = float(sum(weights.get(k, 0.0) * v.item() for k, v in terms.items()))
    out["val/acc"] = float((logits.argmax(1) == y_val).float().mean())
    if golden:
        out["val/parity_acc"] = float(((parity > 0).long() == y_val % 2).float().mean())
    return out


def _train_synthetic(run_dir: str, *, max_steps: int, step_delay: float, seed: int) -> int:
    """No torch: SGD with momentum on a noisy 8-d quadratic, in plain Python. Same files, same
    controls (lr, momentum, a loss weight), so the dashboard behaves the same."""
    from . import ActuatorType, HotcbActuator, HotKernel

    rng = random.Random(seed)
    dim = 8
    curv = [0.5 + 4.5 * i / (dim - 1) for i in range(dim)]
    target = [rng.uniform(-2, 2) for _ in range(dim)]
    w = [0.0] * dim
    vel = [0.0] * dim
    hp: dict[str, Any] = {"lr": 0.02, "momentum": 0.9, "noise": 0.3, "reg": 0.0}

    def act(key: str, typ: ActuatorType, group: str, lo: float, hi: float) -> HotcbActuator:
        return HotcbActuator(
            param_key=key,
            type=typ,
            apply_fn=lambda v, env: hp.__setitem__(key, v),
            read_fn=lambda env: hp[key],
            min_value=lo,
            max_value=hi,
            group=group,
        )

    kernel = HotKernel(
        run_dir,
        mutable_state=[
            act("lr", ActuatorType.LOG_FLOAT, "opt", 1e-5, 1.0),
            act("momentum", ActuatorType.FLOAT, "opt", 0.0, 0.99),
            act("reg", ActuatorType.FLOAT, "loss", 0.0, 1.0),
            act("noise", ActuatorType.FLOAT, "custom", 0.0, 2.0),
        ],
        run_meta={"name": "hotcb demo (synthetic)", "config": {"model": "quadratic"}},
    )
    ckpt_dir = os.path.join(run_dir, "checkpoints")

    def save_checkpoint(path: str | None = None, step: int = 0) -> str:
        """A JSON checkpoint (no torch here): what `hotcb branch` resumes from."""
        path = path or os.path.join(ckpt_dir, f"step_{step}.json")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        jsonl.write_json_atomic(path, {"step": step, "w": w, "vel": vel, "hp": hp,
                                       "rng": rng.getstate(), "hotcb": kernel.state_dict()})  # fmt: skip
        return path

    def load(path: str) -> dict[str, Any]:
        ckpt: dict[str, Any] = jsonl.read_json(path)
        w[:], vel[:] = ckpt["w"], ckpt["vel"]
        hp.update(ckpt["hp"])
        version, state, gauss = ckpt["rng"]
        rng.setstate((version, tuple(state), gauss))
        return ckpt

    first = _resume(kernel, load, {})
    step = first - 1
    try:
        for step in range(first, max_steps):
            grads = [
                c * (wi - t) + hp["reg"] * wi + hp["noise"] * rng.gauss(0, 1)
                for c, wi, t in zip(curv, w, target, strict=True)
            ]
            for i, g in enumerate(grads):
                vel[i] = hp["momentum"] * vel[i] - hp["lr"] * g
                w[i] += vel[i]
            loss = sum(0.5 * c * (wi - t) ** 2 for c, wi, t in zip(curv, w, target, strict=True))
            metrics = {
                "train/loss": loss + hp["noise"] * abs(rng.gauss(0, 0.05)),
                "lr": hp["lr"],
                "grad_norm": math.sqrt(sum(g * g for g in grads)),
            }
            kernel.apply({"step": step, "metrics": metrics,
                          "save_checkpoint": lambda path=None, _s=step: save_checkpoint(path, _s)})  # fmt: skip
            if kernel.stop_requested:
                break
            if step_delay:
                time.sleep(step_delay)
    finally:
        kernel.close()
    return step


# ---------------------------------------------------------------------------------- launcher
def trainer_argv(
    run_dir: str, *, golden: bool, max_steps: int, step_delay: float, synthetic: bool = False
) -> list[str]:
    """argv of the demo trainer process."""
    argv = [sys.executable, "-m", "hotcb.demo", "train", "--run-dir", run_dir]
    argv += ["--max-steps", str(max_steps), "--step-delay", str(step_delay)]
    if golden:
        argv.append("--golden")
    if synthetic:
        argv.append("--synthetic")
    return argv


def server_argv(serve_dir: str, port: int) -> list[str]:
    """argv of the dashboard server process (``hotcb serve``, loopback only)."""
    # --dir is the CLI's global option (it also selects the run for every other command)
    return [sys.executable, "-m", "hotcb", "--dir", serve_dir, "serve", "--port", str(port)]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _default_run_dir(golden: bool) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = os.path.join(os.getcwd(), "runs", f"demo-{'golden-' if golden else ''}{stamp}")
    path, n = base, 1
    while os.path.exists(path):
        n += 1
        path = f"{base}-{n}"
    return path


def _open_log(path: str) -> Any:
    """The child's log, readable by its owner only (the server's holds the tokenised URL): this
    user's own regular file, never one that a writer of the run directory planted (a symbolic
    link, a file of theirs they could read): :class:`~hotcb.jsonl.RunFileRefusedError`."""
    fd, _ = jsonl.open_own(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600, mine=True)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "ab")


def _env_without(*names: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in names}


def _spawn(
    argv: Sequence[str], log_path: str | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``argv`` in its own session (a terminal's Ctrl-C reaches only the demo, which stops the
    children in order), started as ``hotcb launch`` starts its children: SIGINT back to its
    default, SIGTERM when the demo dies. No Python code runs between fork and exec: a Ctrl-C
    arriving during a ``preexec_fn`` fork was raised in an at-fork hook, where Python drops it,
    and the demo never stopped."""
    out = _open_log(log_path) if log_path else None
    try:
        return _launch_spawn(argv, env=os.environ if env is None else env, stdout=out,
                             stderr=subprocess.STDOUT if out else None)  # fmt: skip
    finally:
        if out is not None:
            out.close()


def _stop(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(sig)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    except ProcessLookupError:
        pass


def _can_open_browser() -> bool:
    # without a display, webbrowser may pick a text browser that takes over the terminal
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _demo_dirs(given: str | None, golden: bool) -> tuple[str, str, str]:
    """``(run_dir, serve_dir, run_id)``: ``given`` is served alone (run "."); by default a
    fresh ``./runs/demo-<time>`` served from ``./runs`` with the earlier demo runs."""
    if given:
        run_dir = os.path.abspath(given)
        return run_dir, run_dir, "."
    run_dir = _default_run_dir(golden)
    return run_dir, os.path.dirname(run_dir), os.path.basename(run_dir)


def _demo_port(given: int | None) -> int:
    """``given`` if it is free (HotcbError if not); by default 8421, or any free port."""
    from .errors import HotcbError

    if given is None:
        if port_free(DEFAULT_PORT):
            return DEFAULT_PORT
        port = _free_port()
        # say so: another server may answer on 8421, and the README says 8421
        print(f"hotcb demo: {DEFAULT_PORT} is in use; serving on {port}", file=sys.stderr)
        return port
    if given == 0:  # any free port, as `hotcb serve --port 0` takes it
        return _free_port()
    if not port_free(given):
        raise HotcbError(f"port {given} is in use; pick another with --port")
    return given


_port_arg = number_arg(int, lambda v: 0 <= v <= 65535, "a port number",
                       "must be 0..65535 (0: any free port)")  # fmt: skip
_steps_arg = number_arg(int, lambda v: v >= 1, "a whole number", "must be 1 or more")
_delay_arg = number_arg(float, lambda v: math.isfinite(v) and v >= 0, "seconds",
                        "must be 0 or more seconds")  # fmt: skip


def _wait_for_run(trainer: subprocess.Popen[bytes], run_dir: str, timeout: float) -> None:
    """Wait until the trainer has written the run's metadata (its first step), at most
    ``timeout`` seconds; HotcbError if the trainer exits first."""
    from .errors import HotcbError

    deadline = time.monotonic() + timeout
    meta = os.path.join(run_dir, "hotcb.run.json")
    while not os.path.exists(meta) and time.monotonic() < deadline:
        if trainer.poll() is not None:
            raise HotcbError(
                f"the demo trainer exited ({trainer.returncode}); see {run_dir}/demo.trainer.log"
            )
        time.sleep(0.1)


def _watch(
    trainer: subprocess.Popen[bytes],
    server: subprocess.Popen[bytes],
    run_dir: str,
    out: Callable[[str], None],
) -> NoReturn:
    """Until interrupted: say once when training ends; HotcbError if the server exits."""
    from .errors import HotcbError

    announced = False
    while True:
        if server.poll() is not None:
            raise HotcbError(
                f"the dashboard server exited ({server.returncode}); see {run_dir}/demo.server.log"
            )
        if trainer.poll() is not None and not announced:
            announced = True
            out(f"training finished (exit {trainer.returncode}); the dashboard stays up")
        time.sleep(0.2)


def run_demo(cfg: argparse.Namespace, *, out: Callable[[str], None] = print) -> int:
    """Start trainer and server, print the URL, wait for Ctrl-C; always stop both children.

    Default run directory: a fresh ``./runs/demo-<time>`` folder; the server then watches
    ``./runs`` so earlier demo runs can be overlaid for comparison. With ``--run-dir D`` it
    watches ``D`` only.
    """
    from .errors import HotcbError

    golden = bool(getattr(cfg, "golden", False))
    synthetic = bool(getattr(cfg, "synthetic", False))
    port = _demo_port(cfg.port)  # before the run directory: a refused port leaves none
    run_dir, serve_dir, run_id = _demo_dirs(cfg.run_dir, golden)
    created = not cfg.run_dir and not os.path.exists(run_dir)  # its own, not one named
    os.makedirs(run_dir, exist_ok=True)
    interrupted = False

    stop_signal: dict[str, int | None] = {"sig": None}

    def on_term(signum: int, frame: Any) -> None:
        stop_signal["sig"] = signum
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    # Ctrl-C stops the demo even when it was started with SIGINT ignored (``hotcb demo &``)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    children: list[subprocess.Popen[bytes]] = []
    try:
        trainer = _spawn(
            trainer_argv(
                run_dir,
                golden=golden,
                max_steps=cfg.max_steps,
                step_delay=cfg.step_delay,
                synthetic=synthetic,
            ),
            os.path.join(run_dir, "demo.trainer.log"),
        )
        children.append(trainer)
        token = secrets.token_urlsafe(24)
        server = _spawn(
            server_argv(serve_dir, port),
            os.path.join(run_dir, "demo.server.log"),
            env={**_env_without("HOTCB_NO_TOKEN"), "HOTCB_TOKEN": token},
        )
        children.append(server)
        base = f"http://127.0.0.1:{port}"
        if not _answers(base + "/api/health", 60.0, lambda: server.poll() is None):
            raise HotcbError(
                f"the dashboard server did not start; see {run_dir}/demo.server.log "
                '(is the dashboard extra installed? pip install "hotcb[dashboard]")'
            )
        # the URL is printed once the run exists (the trainer's first step), so the page opens
        # on live curves rather than on an empty folder
        _wait_for_run(trainer, run_dir, 120.0)
        query = {"token": token} if run_id == "." else {"token": token, "run": run_id}
        url = f"{base}/?{urllib.parse.urlencode(query, safe='/', quote_via=urllib.parse.quote)}"
        kind = _demo_kind(golden, synthetic)
        out(f"hotcb demo ({kind}) run: {run_dir}")
        out(f"dashboard: {url}")
        out("press Ctrl-C to stop")
        if not getattr(cfg, "no_browser", False) and _can_open_browser():
            import webbrowser

            webbrowser.open(url)
        _watch(trainer, server, run_dir, out)
    except KeyboardInterrupt:
        out("stopping…")
        interrupted = True
        return 0
    finally:
        # trainer first (SIGINT: its loop unwinds through kernel.close()), then the server
        for proc in children:
            _stop(proc, signal.SIGINT, 10.0)
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
        if interrupted and created:
            _drop_if_unstarted(run_dir)


def _drop_if_unstarted(run_dir: str) -> None:
    """Remove the folder this demo made when Ctrl-C came before its run's first step: the two
    logs are in it and, when the trainer had built its kernel, its empty commands file and
    ledger; it read as a run "not started" in ``hotcb status``."""
    logs = {"demo.trainer.log", "demo.server.log"}
    try:
        with os.scandir(run_dir) as found:
            started = [e.name for e in found if e.name not in logs
                       and not (e.is_file(follow_symlinks=False) and e.stat().st_size == 0)]  # fmt: skip
        if not started:
            shutil.rmtree(run_dir, ignore_errors=True)
    except OSError:
        pass


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``hotcb demo`` options (shared by the CLI and ``python -m hotcb.demo``)."""
    p.add_argument("--golden", action="store_true", help="multi-task model with rich metrics")
    p.add_argument("--max-steps", type=_steps_arg, default=DEFAULT_MAX_STEPS,
                   help=f"training steps (default {DEFAULT_MAX_STEPS})")  # fmt: skip
    p.add_argument(
        "--port",
        type=_port_arg,
        default=None,
        help=f"server port (default {DEFAULT_PORT}, or a free one when it is taken; 0: any "
        "free port)",
    )
    p.add_argument(
        "--run-dir",
        default=None,
        help="run directory (default: hotcb --dir when given, else a fresh "
        "./runs/demo-<time>; ./runs is served)",
    )
    p.add_argument(
        "--step-delay",
        type=_delay_arg,
        default=DEFAULT_STEP_DELAY,
        help=f"seconds to sleep per step (default {DEFAULT_STEP_DELAY}: about 30 steps/s)",
    )
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
    p.add_argument(
        "--synthetic", action="store_true", help="pure-Python loop even when torch is installed"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hotcb.demo [train] ...``: ``train`` runs only the trainer (the demo's child)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["train"]:
        p = argparse.ArgumentParser(prog="python -m hotcb.demo train")
        p.add_argument("--run-dir", required=True)
        p.add_argument("--golden", action="store_true")
        p.add_argument("--synthetic", action="store_true")
        p.add_argument("--max-steps", type=int, default=DEFAULT_MAX_STEPS)
        p.add_argument("--step-delay", type=float, default=DEFAULT_STEP_DELAY)
        p.add_argument("--seed", type=int, default=0)
        a = p.parse_args(args[1:])

        def interrupt(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        # SIGINT and SIGTERM both unwind the loop through kernel.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, interrupt)
        try:
            last = train(
                a.run_dir,
                golden=a.golden,
                max_steps=a.max_steps,
                step_delay=a.step_delay,
                seed=a.seed,
                synthetic=True if a.synthetic else None,
            )
        except KeyboardInterrupt:
            print("trainer interrupted", flush=True)
            return 0
        print(f"done at step {last}", flush=True)
        return 0
    p = argparse.ArgumentParser(prog="python -m hotcb.demo")
    add_arguments(p)
    return run_demo(p.parse_args(args))


if __name__ == "__main__":
    sys.exit(main())

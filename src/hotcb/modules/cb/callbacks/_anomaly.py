"""AnomalyGuardCallback: catch NaN/Inf in the loss or the gradients and react."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .._protocol import CallbackBase
from ._params import checks, choice, flag, names, number, whole
from ._say import no_grads_reason, warn, who

Env = Mapping[str, Any]

ACTIONS = ("record", "pause", "lr_cut")


def _finite(value: Any) -> bool:
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, (int, float)):
        return math.isfinite(value)
    detach = getattr(value, "detach", None)
    if not callable(detach):
        return True
    import torch

    with torch.no_grad():
        return bool(torch.isfinite(detach()).all().item())


class AnomalyGuardCallback(CallbackBase):
    """Checks ``keys`` of env (default ``loss``; ``env["metrics"]`` values too) and, with
    ``check_grads``, the gradients of ``env["model"]`` for NaN/Inf at each step.

    On an anomaly it adds a ledger entry (``op: "anomaly"``, decision ``noop``, what was
    non-finite in ``error``), increments the metric ``anomaly/count``, and applies ``action``:

    - ``"record"`` (default): nothing more;
    - ``"pause"``: sends ``pause`` through ``HotClient(run_dir, source="anomaly_guard")``;
    - ``"lr_cut"``: sends ``opt set_params lr=<current lr × lr_factor>``.

    Commands are sent, and anomalies ledgered, at most once per ``cooldown_steps`` steps (the
    metric counts every one); commands land at the next poll, in the ledger like any other.

    With ``check_grads``, a step where no trainable parameter has a gradient is said once (a
    warning and a ledger entry): the gradients are not checked there. Under the HF Trainer, whose
    ``zero_grad`` comes before hotcb's safe point, that is every step; its ``grad_norm`` metric
    (in ``env["metrics"]`` at logging steps) is checked instead.
    """

    rank_zero_only = True  # one guard writes the commands; every rank applies them
    _param_checks = checks(
        action=choice("action", ACTIONS),
        keys=names("keys"),
        check_grads=flag("check_grads"),
        lr_factor=number("lr_factor", above=0, high=1),
        cooldown_steps=whole("cooldown_steps", 0),
    )

    def __init__(
        self,
        action: str = "record",
        keys: Sequence[str] | str = ("loss",),
        check_grads: bool = True,
        lr_factor: float = 0.5,
        cooldown_steps: int = 100,
    ) -> None:
        c = self._param_checks
        self.action = c["action"](action)
        self.keys = c["keys"](keys)
        self.check_grads = c["check_grads"](check_grads)
        self.lr_factor = c["lr_factor"](lr_factor)
        self.cooldown_steps = c["cooldown_steps"](cooldown_steps)
        self.count = 0
        self.anomalies: list[dict[str, Any]] = []
        self.sent: list[str] = []
        self._last_action_step: int | None = None
        self._last_record_step: int | None = None
        self._said_no_grads = False

    def find(self, env: Env) -> list[str]:
        """Names of the non-finite things in env (empty: all fine)."""
        return self._scan(env)[0]

    def _scan(self, env: Env) -> tuple[list[str], bool]:
        """``(non-finite names, whether check_grads found no gradient to check)``."""
        bad = [k for k in self.keys if k in env and not _finite(env[k])]
        metrics = env.get("metrics")
        if isinstance(metrics, Mapping):
            bad += [f"metrics.{k}" for k, v in metrics.items() if not _finite(v)]
        model = env.get("model")
        if not (self.check_grads and model is not None and hasattr(model, "named_parameters")):
            return bad, False
        trainable = graded = False
        for name, p in model.named_parameters():
            trainable = trainable or p.requires_grad
            if p.grad is not None:
                graded = True
                if not _finite(p.grad):
                    bad.append(f"grad.{name}")
        return bad, trainable and not graded

    def handle(self, event: str, env: Env) -> None:
        if event != "train_step_end":
            return
        bad, no_grads = self._scan(env)
        if no_grads and not self._said_no_grads:
            self._said_no_grads = True
            warn(
                self,
                f"{who(self)}: check_grads is on but no parameter of env['model'] has a "
                f"gradient at step {env.get('step')}, so no gradient is checked (env and "
                f"env['metrics'] still are). {no_grads_reason(env)} Set check_grads=false to "
                "leave gradients out.",
            )
        if not bad:
            return
        step = env.get("step", 0)
        self.count += 1
        what = ", ".join(bad[:8]) + (f" (+{len(bad) - 8} more)" if len(bad) > 8 else "")
        info: dict[str, Any] = {"step": step, "what": bad}
        self.anomalies.append(info)
        del self.anomalies[:-100]
        sent = self._act(step, env)
        # one ledger entry per cooldown window: a diverged run is non-finite at every step
        quiet = (
            self._last_record_step is not None
            and isinstance(step, int)
            and step - self._last_record_step < self.cooldown_steps
        )
        report = bool(sent) or not quiet
        if report:
            self._last_record_step = step if isinstance(step, int) else None
            self.log(f"hotcb anomaly guard: non-finite {what} at step {step}", env)
        if report and self.ctx is not None:
            self.ctx.record(
                "anomaly",
                f"non-finite values at step {step}: {what}",
                step=step if isinstance(step, int) else None,
                event=event,
                anomaly={"what": bad[:50], "action": self.action, "sent": sent},
            )
        self.log_metrics(step, {"anomaly/count": self.count}, env.get("epoch"))

    def _act(self, step: Any, env: Env) -> str | None:
        if self.action == "record" or self.ctx is None:
            return None
        if (
            self._last_action_step is not None
            and isinstance(step, int)
            and step - self._last_action_step < self.cooldown_steps
        ):
            return None
        from ....client import HotClient

        client = HotClient(self.ctx.run_dir, source="anomaly_guard")
        if self.action == "pause":
            cmd = client.pause()
        else:
            opt = env.get("optimizer") or (env.get("optimizers") or [None])[0]
            groups = getattr(opt, "param_groups", None)
            if not groups:
                return None
            lr = float(groups[0]["lr"]) * self.lr_factor
            cmd = client.opt(lr=lr)
        self._last_action_step = step if isinstance(step, int) else None
        self.sent.append(cmd)
        return cmd

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "last_action_step": self._last_action_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.count = int(state.get("count") or 0)
        self._last_action_step = state.get("last_action_step")

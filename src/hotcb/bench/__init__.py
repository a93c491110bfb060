"""``hotcb bench``: steering (rules, the tuner, an LLM) against fixed schedules, measured on
your machine. ``hotcb bench run`` trains every task × condition × seed and saves each run's
curves; ``hotcb bench report`` turns a bench folder into an HTML page, a markdown summary and a
PNG per task (docs/bench.md).

This module imports only the standard library: the task and condition names live here so that
``hotcb bench run --help`` and name checks work without torch. Training needs the ``bench``
extra (``pip install 'hotcb[bench]'``: scikit-learn, matplotlib, tqdm, schedulefree,
prodigyopt, optuna) and torch.
"""

from __future__ import annotations

#: Built-in tasks, in run order. A ``module:function`` name is a user task (docs/bench.md).
TASKS = ("digits_mlp", "digits_cnn", "digits_badlr", "charlm", "cifar10_resnet20")

#: Conditions, in run order (``replay`` runs after the condition it replays).
CONDITIONS = ("fixed", "cosine", "plateau", "schedulefree", "prodigy", "autopilot", "tune", "ai",
              "replay")  # fmt: skip

#: The conditions that hotcb steers; the others are baselines.
HOTCB_CONDITIONS = ("autopilot", "tune", "ai")

LABELS = {
    "fixed": "fixed lr",
    "cosine": "cosine decay",
    "plateau": "ReduceLROnPlateau",
    "schedulefree": "Schedule-Free AdamW",
    "prodigy": "Prodigy",
    "autopilot": "hotcb autopilot (rules)",
    "tune": "hotcb tune",
    "ai": "hotcb AI autopilot",
    "replay": "replay (recipe)",
}


def parse_names(
    text: str, valid: tuple[str, ...], what: str, *, user_ok: bool = False
) -> list[str]:
    """``a,b,c`` → names, in the given order, without repeats. Unknown names raise
    ``ValueError`` listing the valid ones; with ``user_ok``, ``module:function`` is accepted."""
    names: list[str] = []
    for name in (n.strip() for n in text.split(",")):
        if name and name not in names:
            names.append(name)
    if not names:
        raise ValueError(f"no {what} given; valid: {', '.join(valid)}")
    bad = [n for n in names if n not in valid and not (user_ok and _is_user_task(n))]
    if bad:
        extra = ", or module:function for your own task (docs/bench.md)" if user_ok else ""
        raise ValueError(
            f"unknown {what} {', '.join(map(repr, bad))}; valid: {', '.join(valid)}{extra}"
        )
    return names


def _is_user_task(name: str) -> bool:
    mod, sep, fn = name.partition(":")
    return bool(sep and mod and fn.isidentifier())

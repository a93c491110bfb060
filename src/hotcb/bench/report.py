"""``hotcb bench report DIR``: ``DIR/report.html`` (one self-contained page: tables, verdicts,
the PNGs embedded), ``DIR/report.md`` (the same in markdown, linking the PNGs) and
``DIR/img/bench_<task>.png`` (per task: val loss, val accuracy and lr over steps, the mean
over seeds with a ± 1 std band), from the files ``hotcb bench run`` wrote."""

from __future__ import annotations

import base64
import html
import os
import re
import statistics
from collections.abc import Sequence
from typing import Any

from . import HOTCB_CONDITIONS, LABELS
from .runner import load_bench, slug

COLORS = {"fixed": "0.45", "cosine": "C0", "plateau": "C2", "schedulefree": "C4",
          "prodigy": "C1", "autopilot": "C3", "tune": "C5", "ai": "C6", "replay": "k"}  # fmt: skip


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 run``, ``2 runs`` (``many``: the plural when it is not ``word + "s"``)."""
    return f"{n} {word if n == 1 else many or word + 's'}"


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def fmt(xs: Sequence[float | None], digits: int = 3) -> str:
    vals = [x for x in xs if x is not None]
    if not vals:
        return "—"
    if len(vals) < len(xs):  # a diverged run (nan): say so rather than average it away
        return f"{len(xs) - len(vals)} of {len(xs)} diverged"
    m, s = mean_std(vals)
    return f"{m:.{digits}f} ± {s:.{digits}f}" if len(vals) > 1 else f"{m:.{digits}f}"


def _by(runs: list[dict[str, Any]], task: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        if r["task"] == task:
            out.setdefault(r["condition"], []).append(r)
    return out


def _final(rs: list[dict[str, Any]], key: str = "final_val_loss") -> list[float | None]:
    return [r["final"][key] for r in rs]


def _mean(rs: list[dict[str, Any]]) -> float:
    vals = [v for v in _final(rs) if v is not None]
    return statistics.fmean(vals) if len(vals) == len(rs) and vals else float("inf")


def best_of(groups: dict[str, list[dict[str, Any]]], digits: int = 3) -> list[str]:
    """The conditions with the lowest mean final val loss as the table shows it (``digits``):
    one, or several in a tie (in the plan's order); none when every one diverged."""
    shown = {c: round(_mean(rs), digits) for c, rs in groups.items()}
    low = min(shown.values(), default=float("inf"))
    return [c for c, m in shown.items() if m == low] if low != float("inf") else []


#: What the table adds to the best condition's name, and to each of those in a tie for it.
BEST, TIED = " (best)", " (tied best)"


# ------------------------------------------------------------------------------ content
def table(groups: dict[str, list[dict[str, Any]]]) -> tuple[list[str], list[list[str]]]:
    head = ["condition", "final val loss", "final val acc", "best val loss", "lr at end (median)",
            "hotcb actions (undone)", "s / run"]  # fmt: skip
    best = best_of(groups)
    mark = TIED if len(best) > 1 else BEST
    rows = []
    for cond, rs in groups.items():
        acts = [r["notes"].get("actions") for r in rs]
        act = "—"
        if all(a is not None for a in acts):
            undone = [r["notes"].get("undone") or 0 for r in rs]
            if len(rs) == 1:  # one seed: the counts themselves, no spread to show
                act = f"{acts[0]} ({undone[0]})"
            else:
                m, sd = mean_std(acts)
                act = f"{m:.1f} ± {sd:.1f} ({statistics.fmean(undone):.1f})"
        if cond == "replay":
            n = sum(1 for r in rs if r["notes"].get("matched"))
            act = f"replays {rs[0]['notes'].get('replay_of')}: {n}/{len(rs)} bit for bit"
        name = LABELS.get(cond, cond) + (mark if cond in best else "")
        rows.append([
            name, fmt(_final(rs)), fmt(_final(rs, "final_val_acc")),
            fmt(_final(rs, "best_val_loss")),
            f"{statistics.median(r['final']['final_lr'] for r in rs):.2e}", act,
            f"{statistics.fmean(r['seconds'] for r in rs):.1f}",
        ])  # fmt: skip
    return head, rows


def verdicts(
    task: str, groups: dict[str, list[dict[str, Any]]], warnings: Sequence[dict[str, Any]] = ()
) -> list[str]:
    """Plain statements: a tie for the lowest final val loss, where a baseline ends below a
    hotcb condition (and where not), an ai condition that never asked its model, and whether
    every replay reproduced its source bit for bit; ``warnings``: bench.json's, those of this
    task first (the tuner with no room for a trial)."""
    out = []
    for w in warnings:
        if w.get("task") == task and w.get("what") == "tune" and "tune" in groups:
            out.append(
                f"Warning: {LABELS['tune']} had no room for a trial on {task} at "
                f"{w['steps']} steps (segments of {w['segment_steps']} steps: it needs at "
                f"least {w['min_steps']}), so it made none and ran as {LABELS['fixed']} does."
            )
    baselines = [c for c in groups if c not in HOTCB_CONDITIONS and c != "replay"]
    best = best_of(groups)
    if len(best) > 1:
        tied = [LABELS.get(c, c) for c in best]
        out.append(f"{', '.join(tied[:-1])} and {tied[-1]} tie for the lowest mean final val "
                   f"loss on {task} ({fmt(_final(groups[best[0]]))}).")  # fmt: skip
    for h in (c for c in HOTCB_CONDITIONS if c in groups):
        m_h, shown_h = _mean(groups[h]), fmt(_final(groups[h]))
        out += _unasked(task, h, groups[h])
        level = [b for b in baselines if fmt(_final(groups[b])) == shown_h]
        ahead = [b for b in baselines if _mean(groups[b]) < m_h and b not in level]
        if level:
            names = ", ".join(LABELS[b] for b in level)
            out.append(f"{LABELS[h]} ends level with {names} on {task} (final val loss {shown_h}).")

        def spread(b: str, h: str = h) -> float:  # the larger of the two seeds' spreads
            return max(mean_std([v for v in _final(groups[x]) if v is not None] or [0])[1]
                       for x in (b, h))  # fmt: skip

        for b in ahead:
            close = " (less than the seeds' spread)" if m_h - _mean(groups[b]) < spread(b) else ""
            out.append(f"{LABELS[b]} beats {LABELS[h]} on {task}: final val loss "
                       f"{fmt(_final(groups[b]))} vs {shown_h}{close}.")  # fmt: skip
        if baselines and not ahead and not level:
            # the same caveat as a baseline's lead gets: by less than the seeds' spread
            near = [b for b in baselines if _mean(groups[b]) - m_h < spread(b)]
            close = (f" (ahead of {', '.join(LABELS[b] for b in near)} by less than the seeds' "
                     "spread)" if near else "")  # fmt: skip
            out.append(f"{LABELS[h]} ends below every baseline on {task} ({shown_h}){close}.")
    if "replay" in groups:
        rs = groups["replay"]
        bad = [r for r in rs if not r["notes"].get("matched")]
        entries = sum(r["notes"].get("replayed_entries") or 0 for r in rs)
        on = f"on all {len(rs)} runs" if len(rs) > 1 else "on its 1 run"
        if bad:
            steps = ", ".join(f"seed {r['seed']} from step {r['notes'].get('first_difference_step')}"
                              for r in bad)  # fmt: skip
            where = f"on {len(bad)} of {len(rs)} runs" if len(rs) > 1 else on
            out.append(f"Replay did NOT match {where} ({steps}).")
        else:
            out.append(f"Replay matched its {rs[0]['notes'].get('replay_of')} run bit for bit "
                       f"(every step's train loss, val loss, val acc and lr) {on} "
                       f"({plural(entries, 'recipe entry', 'recipe entries')} replayed).")  # fmt: skip
    return out


def _unasked(task: str, cond: str, rs: list[dict[str, Any]]) -> list[str]:
    """For the ``ai`` condition whose runs never asked the model (a short run: the model is
    asked on a detection or every ``every_steps``): say so, or its figures pass for the
    LLM's."""
    if cond != "ai":
        return []
    calls = [r["notes"].get("ai_calls") for r in rs]
    if None in calls or sum(calls) > 0:  # None: an older bench.json, which did not count them
        return []
    runs = "its run" if len(rs) == 1 else f"any of its {len(rs)} runs"
    acted = any(r["notes"].get("actions") for r in rs)
    then = ("" if acted else f", applied no action and so ran at the task's lr, as "
            f"{LABELS['fixed']} does")  # fmt: skip
    return [
        f"{LABELS[cond]} never asked the model on {task} (0 LLM calls in {runs}){then}: "
        "its figures say nothing about the LLM."
    ]


# ------------------------------------------------------------------------------ plots
def _band(rs: list[dict[str, Any]], col: str) -> tuple[list[int], list[float], list[float]]:
    steps = rs[0]["curve"]["step"]
    xs, means, stds = [], [], []
    for i, step in enumerate(steps):
        vals = [r["curve"][col][i] for r in rs if i < len(r["curve"][col])]
        if any(v is None for v in vals) or not vals:
            continue
        m, s = mean_std(vals)
        xs.append(step)
        means.append(m)
        stds.append(s)
    return xs, means, stds


def _range(rs: list[dict[str, Any]], col: str) -> tuple[list[float], list[float]]:
    cols = list(zip(*(r["curve"][col] for r in rs), strict=False))
    return [min(c) for c in cols], [max(c) for c in cols]


def plot_task(path: str, title: str, groups: dict[str, list[dict[str, Any]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for cond, rs in groups.items():
        style = {"color": COLORS.get(cond, "C7"), "label": LABELS.get(cond, cond),
                 "lw": 1.2, "ls": "--" if cond == "replay" else "-"}  # fmt: skip
        for ax, col in zip(axes, ("val_loss", "val_acc", "lr"), strict=True):
            xs, m, s = _band(rs, col)
            if not xs:
                continue
            ax.plot(xs, m, **style)
            if len(rs) > 1 and cond != "replay":
                if col == "lr":  # a log axis: the range over seeds, not ± std
                    lo, hi = _range(rs, col)
                else:
                    lo = [a - b for a, b in zip(m, s, strict=True)]
                    hi = [a + b for a, b in zip(m, s, strict=True)]
                ax.fill_between(xs, lo, hi, color=style["color"], alpha=0.15, lw=0)
    n = max(len(rs) for rs in groups.values())
    band = f"mean ± std over {n} seeds" if n > 1 else "1 seed"
    axes[0].set(title=f"val loss ({band})", xlabel="step", yscale="log")
    axes[1].set(title="val accuracy", xlabel="step")
    axes[2].set(title="lr in force (mean; band: min–max over seeds)", xlabel="step", yscale="log")
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ------------------------------------------------------------------------------ writers
def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join(r) + " |" for r in rows)]  # fmt: skip


def _md_code(text: str) -> str:
    """Markdown's `code` spans as HTML ``<code>`` (on already escaped text)."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", text)


def _setup_lines(meta: dict[str, Any], runs: Sequence[dict[str, Any]]) -> list[str]:
    m = meta["machine"]
    wall = meta.get("wall_seconds")
    took = f"; the bench took {wall:.0f} s" if wall is not None else " (not finished)"
    seeds = ", ".join(map(str, meta["seeds"]))
    if "interrupted_after_runs" in meta:
        n = meta["interrupted_after_runs"]
        failed = meta.get("interrupted_run") or {}
        if failed.get("error"):  # a run raised: no one interrupted it
            took += (f"; STOPPED by an error after {plural(n, 'run')}, in {failed.get('task')} · "
                     f"{failed.get('condition')} · seed {failed.get('seed')} "
                     f"({failed['error']}): a partial bench")  # fmt: skip
        else:
            took += f"; INTERRUPTED after {plural(n, 'run')}: a partial bench"
        ran = sorted({r["seed"] for r in runs})
        if ran != list(meta["seeds"]):  # say which seeds the partial bench holds
            which = ", ".join(map(str, ran))
            seeds += (f" planned, {'seed' if len(ran) == 1 else 'seeds'} {which} ran" if ran
                      else " planned, none ran")  # fmt: skip
    return [
        f"Seeds {seeds}; {m['cpus']} CPU cores, torch {m['torch']} on {m['threads']} thread(s), "
        f"Python {m['python']}, hotcb {m['hotcb']}{took}.",
        *([f"Command: `{meta['command']}`."] if meta.get("command") else []),
    ]


def write_report(out: str) -> dict[str, str]:
    """Write the report of the bench in ``out``; returns the paths written."""
    meta, runs = load_bench(out)
    os.makedirs(os.path.join(out, "img"), exist_ok=True)
    md = ["# hotcb bench", "", *_setup_lines(meta, runs), ""]
    setup = "<br>".join(_md_code(html.escape(x)) for x in _setup_lines(meta, runs))
    body = [f"<h1>hotcb bench</h1><p>{setup}</p>"]
    warnings = meta.get("warnings") or []  # an older bench.json has none
    if warnings:
        md += ["Warnings:", "", *(f"- {w['what']}: {w['why']}" for w in warnings), ""]
        items = "".join(f"<li>{html.escape(w['what'])}: {html.escape(w['why'])}</li>"
                        for w in warnings)  # fmt: skip
        body.append(f'<div class="skipped"><h3>Warnings</h3><ul>{items}</ul></div>')
    if meta["skipped"]:
        md += ["Skipped:", "", *(f"- {s['what']}: {s['why']}" for s in meta["skipped"]), ""]
        items = "".join(f"<li>{html.escape(s['what'])}: {html.escape(s['why'])}</li>"
                        for s in meta["skipped"])  # fmt: skip
        body.append(f'<div class="skipped"><h3>Skipped</h3><ul>{items}</ul></div>')
    overview = summary_table(meta, runs)
    md += ["## Summary: mean final val loss", "", *_md_table(*overview), ""]
    body.append("<h2>Summary: mean final val loss</h2>" + _html_table(*overview, "summary"))
    paths = {}
    for task, info in meta["tasks"].items():
        groups = _by(runs, task)
        if not groups:
            continue
        png = os.path.join(out, "img", f"bench_{slug(task)}.png")
        plot_task(png, f"{task}: {info['title']}", groups)
        paths[task] = png
        head, rows = table(groups)
        says = verdicts(task, groups, warnings)
        steps = f"{info['steps']} steps, an evaluation every {info['eval_every']}, base lr {info['lr']:g}."
        md += [f"## {task}: {info['title']}", "", info["about"], "", steps, "",
               *_md_table(head, rows), "", *(f"- {s}" for s in says), "",
               f"![{task}](img/bench_{slug(task)}.png)", ""]  # fmt: skip
        with open(png, "rb") as f:
            data = base64.b64encode(f.read()).decode()
        body.append(
            f'<section class="task" id="task-{slug(task)}"><h2>{html.escape(task)}: '
            f"{html.escape(info['title'])}</h2><p>{html.escape(info['about'])}</p>"
            f"<p>{html.escape(steps)}</p>{_html_table(head, rows, 'task', task)}"
            f'<ul class="verdicts">{"".join(f"<li>{html.escape(s)}</li>" for s in says)}</ul>'
            f'<img alt="curves of {html.escape(task)}" src="data:image/png;base64,{data}">'
            "</section>"
        )
    md_path, html_path = os.path.join(out, "report.md"), os.path.join(out, "report.html")
    with open(md_path, "w") as f:
        f.write("\n".join(md))
    with open(html_path, "w") as f:
        f.write(PAGE.format(body="\n".join(body)))
    return {"html": html_path, "md": md_path, **{f"png:{k}": v for k, v in paths.items()}}


def summary_table(
    meta: dict[str, Any], runs: list[dict[str, Any]]
) -> tuple[list[str], list[list[str]]]:
    conds = [c for c in meta["conditions"] if any(r["condition"] == c for r in runs)]
    rows = []
    for task in meta["tasks"]:
        groups = _by(runs, task)
        if groups:
            rows.append([task, *(fmt(_final(groups[c])) if c in groups else "—" for c in conds)])
    return ["task", *(LABELS.get(c, c) for c in conds)], rows


def _html_table(head: list[str], rows: list[list[str]], kind: str, task: str = "") -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "".join(
        f'<tr data-row="{html.escape(r[0].removesuffix(BEST).removesuffix(TIED))}">'
        + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
        for r in rows
    )  # fmt: skip
    return f'<table class="{kind}" data-task="{html.escape(task)}"><tr>{th}</tr>{trs}</table>'


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>hotcb bench</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; margin: .8em 0; }}
th, td {{ border: 1px solid #ccc; padding: .3em .6em; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
th {{ background: #f3f3f3; }}
img {{ max-width: 100%; border: 1px solid #eee; }}
.skipped {{ background: #fff6e0; padding: .2em 1em; }}
</style></head>
<body>
{body}
</body></html>
"""

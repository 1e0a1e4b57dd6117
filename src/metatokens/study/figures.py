"""The report's figures: loss and learning curves, accuracy by length with the floors, the differences
forest, and stage figures copied from the seed that drew them.
"""
from __future__ import annotations

import math
import shutil
from typing import Any

from ..plotting import pyplot, save_figure
from ..stats import wilson_interval
from .design import (
    TASK_LABELS,
    TASKS,
)
from .results import StudyResults, _count, baseline, cell, mean_std


def _figure(res: StudyResults, rel: str, alt: str) -> str:
    """Link one seed's figure of a stage (ablation, an analysis), copied into OUT/figures as seedS-<stage>-<name>.
    The first seed, in seed order, whose stage folder holds the figure or whose earlier copy is in OUT/figures
    gives it: a committed study keeps only stage.json in its stage folders, and a seed reused from elsewhere
    (stage results without their figures) passes the figure to the next seed. The caption names the seed when
    the report holds several."""
    name = rel.replace("/", "-")
    for seed in res.seed_list:
        src = res.out / "stages" / f"seed{seed}" / rel
        dst = res.out / "figures" / f"seed{seed}-{name}"
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        if dst.is_file():
            break
    else:
        return f"*({alt}: figure missing)*"
    if len(res.seeds) == 1:
        return f"![{alt}](figures/{dst.name})"
    # the figure is one seed's in a report of several, and says so where a reader sees it
    return f"![{alt}, seed {seed}](figures/{dst.name})\n\n*The figure above is seed {seed}'s, one of {len(res.seeds)}.*"


def _colors(n: int):
    cmap = pyplot().get_cmap("tab10")
    return [cmap(i % 10) for i in range(n)]


def loss_figure(res: StudyResults) -> str:
    plt = pyplot()
    seed = res.seed_list[0]
    pre = [m for m in res.scale.models if f"pretrain-{m}" in res.seeds[seed]]
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    for color, m in zip(_colors(len(pre)), pre):
        curve = res.result(seed, f"pretrain-{m}").get("curve", {})
        if curve.get("train"):
            ax.plot(*zip(*curve["train"]), color=color, alpha=0.45, lw=1)
        if curve.get("val"):
            ax.plot(*zip(*curve["val"]), "o-", color=color, label=f"{res.scale.models[m].label} (validation)")
    ax.set_xlabel("pre-training step")
    ax.set_ylabel("loss per text token (nats)")
    ax.set_title(f"Pre-training on the built-in corpus: every pre-trained model, seed {seed}\n"
                 "(dots: validation loss; faint lines: training loss)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = save_figure(fig, res.out / "figures" / "pretrain-loss.png")
    return f"![Pre-training loss of every pre-trained model, seed {seed}](figures/{path.name})"


def learning_curves_figure(res: StudyResults) -> str:
    """Held-out exact match during fine-tuning, one panel per task, every model (mean over seeds)."""
    plt = pyplot()
    models = [m for m in res.scale.models if res.has(f"finetune-{m}")]
    tasks = res.scale.tasks
    cols = 2 if len(tasks) == 4 else len(tasks)
    rows = math.ceil(len(tasks) / cols)
    legend_in, title_in = 0.6, 0.5  # inches kept below the panels for the legend, above them for the title
    height = 3.5 * rows + legend_in + title_in  # the title's room is made by tight_layout, which lays out suptitle
    # one panel still gets the width its title and legend need
    fig, axes = plt.subplots(rows, cols, figsize=(max(5.5 * cols, 9.0), height), sharex=True, squeeze=False)
    L = str(res.scale.ft_len)
    for ax, task in zip(axes.ravel(), tasks):
        for color, m in zip(_colors(len(models)), models):
            runs = [res.result(s, f"finetune-{m}")["curves"].get(task, []) for s in res.seed_list]
            if not runs or not runs[0]:
                continue
            steps = [p[0] for p in runs[0]]
            mean = [100 * sum(r[i][1] for r in runs if i < len(r)) / len(runs) for i in range(len(steps))]
            style = "--" if res.scale.models[m].role == "control" else "-"
            ax.plot(steps, mean, style, marker="o", ms=3, color=color, label=res.scale.models[m].label)
        _baseline_lines(ax, res, task, L)
        ax.set_title(TASK_LABELS[task], fontsize=10)
        ax.set_ylabel("dev exact match %")
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("fine-tuning step")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, max(2, len(labels) // 2)), fontsize=8)
    seeds = f"mean over {len(res.seeds)} seeds" if len(res.seeds) > 1 else f"seed {res.seed_list[0]}"
    on = (f"on the mixture of the {_count(tasks)} tasks" if len(tasks) > 1 else f"on {TASK_LABELS[tasks[0]]}")
    dashed = "; dashed: controls" if any(res.scale.models[m].role != "control" for m in models) else ""
    fig.suptitle(f"Learning curves of every model, one fine-tune each {on} at L = {L} ({seeds})\n"
                 f"dev prompts of the run, never test prompts{dashed}", fontsize=10)
    fig.tight_layout(rect=(0, legend_in / height, 1, 1))
    path = save_figure(fig, res.out / "figures" / "learning-curves.png")
    return f"![Held-out exact match during fine-tuning, every model and task]({path.relative_to(res.out)})"


BASELINE_LABELS = {"majority": "majority answer", "chance": "chance"}


def _baseline_lines(ax, res: StudyResults, task: str, key: str | dict[str, float]) -> None:
    """The majority-answer and chance lines: across the panel at one length `key`, or, given
    {length key: x}, through each length's own value."""
    for which, style in (("majority", ":"), ("chance", "-.")):
        if isinstance(key, str):
            v = baseline(res, task, key, which)
            if v is not None:
                ax.axhline(100 * v, color="gray", ls=style, lw=1.2, label=BASELINE_LABELS[which])
            continue
        points = [(x, baseline(res, task, k, which)) for k, x in key.items()]
        points = [(x, 100 * v) for x, v in points if v is not None]
        if len(points) == 1:
            ax.axhline(points[0][1], color="gray", ls=style, lw=1.2, label=BASELINE_LABELS[which])
        elif points:
            ax.plot(*zip(*points), color="gray", ls=style, lw=1.2, label=BASELINE_LABELS[which])


def accuracy_figure(res: StudyResults, task: str) -> str:
    """Exact match by length, every model (and meta models without their meta-tokens), with chance
    and majority lines; error bars: 95% Wilson (one seed) or ± one standard deviation over seeds."""
    plt = pyplot()
    L = res.scale.ft_len
    lengths = res.scale.lengths()
    keys = [str(n) for n in lengths] + [f"{4 * L}+yarn"]
    xpos = {**{str(n): n / L for n in lengths}, f"{4 * L}+yarn": 4}
    lines = [(m, "prompts") for m in res.scale.models] + [(m, "no_meta") for m in res.scale.models
                                                          if res.scale.models[m].meta]
    legend_in = 0.2 + 0.16 * math.ceil((len(lines) + 2) / 2)  # the legend's two columns: every line, the two floors
    height = 5.0 + legend_in
    fig, ax = plt.subplots(figsize=(9, height))
    colors = dict(zip(res.scale.models, _colors(len(res.scale.models))))
    spacing = min((b - a for a, b in zip(sorted(xpos.values()), sorted(xpos.values())[1:])), default=1.0)
    jitter = 0.5 * spacing / max(1, len(lines))  # the lines at one length stay within half the gap to the next
    for j, (m, variant) in enumerate(lines):
        xs, ys, lo, hi = [], [], [], []
        for key in keys:
            vals = [cell(res, s, m, task, key, variant) for s in res.seed_list]
            if any(v is None for v in vals):
                continue
            em = [v["exact_match"] for v in vals]
            mean, std = mean_std(em)
            if len(vals) == 1:
                a, b = wilson_interval(sum(vals[0]["exact_per_example"]), vals[0]["n"])
            else:
                a, b = max(0.0, mean - std), min(1.0, mean + std)
            xs.append(xpos[key] + jitter * (j - len(lines) / 2))
            ys.append(100 * mean)
            lo.append(100 * (mean - a))
            hi.append(100 * (b - mean))
        if xs:
            label = res.scale.models[m].label + (" — meta-tokens removed" if variant == "no_meta" else "")
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o" if variant == "prompts" else "x", capsize=3,
                        ls="-" if variant == "prompts" else ":", color=colors[m], label=label)
    _baseline_lines(ax, res, task, xpos)
    ax.set_xticks([n / L for n in lengths] + [4], [f"{n / L:g}L\n{n}" if n != L else f"L\n{n}" for n in lengths]
                  + [f"4L\n{4 * L}\n(RoPE, YaRN at\ntest time only)"])
    ax.set_ylabel("exact match % (test prompts)")
    ax.set_ylim(-3, 103)
    bars = "95% Wilson intervals" if len(res.seeds) == 1 else f"± 1 sd over {len(res.seeds)} seeds"
    ax.set_title(f"{TASK_LABELS[task]}: exact match of every model by prompt length\n(error bars: {bars};\ngray: "
                 "majority answer and chance at each length)", fontsize=10)
    ax.set_xlabel("test prompt length (tokens)")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=2)  # below the panel, in the room kept for it
    fig.tight_layout(rect=(0, legend_in / height, 1, 1))
    path = save_figure(fig, res.out / "figures" / f"accuracy-{task}.png")
    return f"![{TASK_LABELS[task]}: exact match by length for every model, {bars}]({path.relative_to(res.out)})"


def differences_figure(res: StudyResults, rows: list[tuple[str, dict[str, Any] | None]]) -> str:
    """A forest plot: each paired difference (points) with its 95% interval."""
    rows = [(label, c) for label, c in rows if c is not None]
    if not rows:
        return "*(differences figure: nothing measured)*"
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9.5, 0.34 * len(rows) + 1.9))
    clipped = False
    for i, (label, c) in enumerate(rows):
        y = len(rows) - i
        lo, hi = (100 * v for v in c["ci95"])
        color = "tab:green" if lo > 0 else "tab:red" if hi < 0 else "gray"
        # A difference of exact-match rates lies in [-100, 100]; an interval reaching past that is
        # drawn to the edge, with an arrow there.
        ax.plot([max(lo, -100), min(hi, 100)], [y, y], color=color, lw=2)
        for end, edge, marker in ((lo, -100, "<"), (hi, 100, ">")):
            if (end < edge) if edge < 0 else (end > edge):
                ax.plot(edge, y, marker, color=color, ms=6)
                clipped = True
        ax.plot(100 * c["diff"], y, "o", color=color)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlim(-106, 106)
    ax.set_yticks(range(len(rows), 0, -1), [label for label, _ in rows], fontsize=7.5)
    ax.set_xlabel("difference in exact match (percentage points)\n95% bootstrap interval over test prompts and seeds"
                  + ("\nan arrow at ±100: the interval goes on past it" if clipped else ""))
    tasks = [t for t in TASKS if any(label.startswith(TASK_LABELS[t] + ":") for label, _ in rows)]
    on = f" on {', '.join(TASK_LABELS[t] for t in tasks)}" if tasks else ""
    ax.set_title(f"Paired differences between models{on}, at L = {res.scale.ft_len}\n(each row: task: model vs "
                 "model; green: above 0; red: below; gray: 0 inside)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path = save_figure(fig, res.out / "figures" / "differences.png")
    return f"![Paired differences with 95% intervals]({path.relative_to(res.out)})"

"""REPORT.md of `metatokens reproduce`: findings first, then every measurement beside the paper's.

The report is rendered from the stages' results alone (`StudyResults`: the stage.json records of
every complete seed); the paper's numbers are the constants of `metatokens.study.design`. Every
comparison is a paired bootstrap over test prompts and seeds (`metatokens.study.stats`), and every
claim of the paper that the study can test gets a verdict from its interval.
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from .design import (
    PAPER_ABLATION, PAPER_ACCURACY, PAPER_ENTROPY_DIFF, PAPER_LENGTH_GAIN, PAPER_LOGIT_BOOST, PAPER_MODELS, TASK_LABELS,
    TASKS, Scale,
)
from .stats import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, contrast, mean_interval, paired, single, verdict

# An accuracy effect smaller than this (percentage points) is not what the paper claims: an interval
# entirely below it rules the claimed effect out ("not reproduced").
RULE_OUT_POINTS = 5.0
YARN_KEEP_POINTS = 15.0  # "keeps its accuracy" with YaRN: a drop from L to 4L of at most this many points
LEARNED_MARGIN = 0.05  # a model "does the task" when its exact match clears both the majority answer and chance by this much


@dataclass
class StudyResults:
    out: Path
    scale_name: str
    scale: Scale
    seeds: dict[int, dict[str, Any]]  # seed -> stage name -> StageRecord
    requested_seeds: int

    def result(self, seed: int, stage: str) -> dict[str, Any]:
        return self.seeds[seed][stage].result

    @property
    def seed_list(self) -> list[int]:
        return sorted(self.seeds)

    def has(self, stage: str) -> bool:
        return all(stage in recs for recs in self.seeds.values())


def environment() -> dict[str, str]:
    import numpy
    import torch

    env = {"metatokens": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "numpy": numpy.__version__, "platform": platform.platform(), "cpus": str(os.cpu_count())}
    for name in ("tokenizers", "transformers", "safetensors"):
        try:
            env[name] = __import__(name).__version__
        except ImportError:
            pass
    if torch.cuda.is_available():
        env["gpu"] = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return env


def mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the measured values (None and NaN left out); the
    deviation is None below two values."""
    xs = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not xs:
        return None, None
    mean = sum(xs) / len(xs)
    std = (sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else None
    return mean, std


def _pct(values: list[float | None]) -> str:
    mean, std = mean_std(values)
    if mean is None:
        return "n/a"
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


def _num(values: list[float | None], digits: int = 3) -> str:
    mean, std = mean_std(values)
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _paper(x: float | None, sign: bool = False) -> str:
    return "—" if x is None else (f"{x:+.1f}" if sign else f"{x:.1f}")


def _ci(c: dict[str, Any] | None, scale: float = 100.0, digits: int = 1, unit: str = "") -> str:
    if c is None:
        return "n/a"
    lo, hi = c["ci95"] if c.get("ci95") else (None, None)
    d = c["diff"] * scale
    inner = f" [{lo * scale:+.{digits}f}, {hi * scale:+.{digits}f}]" if lo is not None else " (no interval)"
    return f"{d:+.{digits}f}{unit}{inner}"


# ----------------------------------------------------------------------------- reading the stages


def cell(res: StudyResults, seed: int, model: str, task: str, key: str, variant: str = "prompts") -> dict | None:
    """One evaluated (model, task, length key) of one seed, or None where it was not measured."""
    stage = f"evaluate-{model}"
    if stage not in res.seeds[seed]:
        return None
    return res.result(seed, stage).get(task, {}).get(variant, {}).get(key)


def per_seed_examples(res: StudyResults, model: str, task: str, key: str, variant: str = "prompts"):
    """(per-seed exact-match vectors, per-seed prompt digests), or None if any seed lacks the cell."""
    vectors, digests = [], []
    for seed in res.seed_list:
        c = cell(res, seed, model, task, key, variant)
        if c is None:
            return None
        vectors.append(c["exact_per_example"])
        digests.append(c["prompts"])
    return vectors, digests


def compare(res: StudyResults, a: tuple, b: tuple) -> dict[str, Any] | None:
    """Paired difference of exact match, model a minus model b, on the same prompts; a and b are
    (model, task, length key, variant). None when either was not measured."""
    xa, xb = per_seed_examples(res, *a), per_seed_examples(res, *b)
    if xa is None or xb is None:
        return None
    if xa[1] != xb[1]:
        raise ValueError(f"{a} and {b} were scored on different prompts; they cannot be paired")
    return contrast([paired(xa[0], xb[0])])


def gain_contrast(res: StudyResults, a: str, b: str, task: str, short: str, long: str) -> dict[str, Any] | None:
    """(a - b at `long`) - (a - b at `short`): how much more model a gains from the longer prompts."""
    terms = []
    for key, weight in ((long, 1.0), (short, -1.0)):
        xa, xb = per_seed_examples(res, a, task, key), per_seed_examples(res, b, task, key)
        if xa is None or xb is None:
            return None
        if xa[1] != xb[1]:
            raise ValueError(f"{a} and {b} were scored on different {task} prompts at {key}; they cannot be paired")
        terms.append(paired(xa[0], xb[0], weight))
    return contrast(terms)


def ablation_contrast(res: StudyResults, model: str, task: str, variant: str) -> dict[str, Any] | None:
    stage = f"ablate-{model}"
    if not res.has(stage):
        return None
    a = [res.result(s, stage)[task][variant]["exact_per_example"] for s in res.seed_list]
    b = [res.result(s, stage)[task]["full"]["exact_per_example"] for s in res.seed_list]
    return contrast([paired(a, b)])


def baseline(res: StudyResults, task: str, key: str, which: str) -> float | None:
    values = []
    for seed in res.seed_list:
        for stage, rec in res.seeds[seed].items():
            if stage.startswith("evaluate-") and key.split("+")[0] in rec.result.get("baselines", {}).get(task, {}):
                values.append(rec.result["baselines"][task][key.split("+")[0]][which])
                break
    return sum(values) / len(values) if values else None


def per_seed_interval(values: list[float | None], single_ci: list[float] | None) -> dict[str, Any] | None:
    """A quantity measured once per seed: its mean, with the 95% t-interval over seeds (or, with one
    seed, that seed's own interval where the analysis gives one)."""
    xs = [v for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return None
    ci = mean_interval(xs) if len(xs) > 1 else single_ci
    return {"diff": sum(xs) / len(xs), "ci95": ci, "seeds": len(xs)}


# ----------------------------------------------------------------------------- findings


@dataclass
class Finding:
    claim: str
    paper: str
    ours: str
    verdict: str
    note: str = ""


def _acc_verdict(c: dict[str, Any] | None, direction: int = 1, floor: str = "") -> str:
    """An accuracy claim's verdict; a comparison where no model learned the task (`floor` says so)
    cannot test the claim, so it is inconclusive whatever its interval."""
    if c is None or floor:
        return INCONCLUSIVE
    return verdict(c["ci95"], direction=direction, rule_out=RULE_OUT_POINTS / 100)


def _size_note(c: dict[str, Any] | None, v: str, paper_points: float) -> str:
    """Where the direction is reproduced but the effect is clearly smaller than the paper's."""
    if v == REPRODUCED and c is not None and 100 * c["ci95"][1] < paper_points:
        return f"direction reproduced; the effect is smaller than the paper's {paper_points:+.1f}"
    return ""


def near_minus_far(meta: list[float], ctrl: list[float]) -> float | None:
    """(near minus far cosine) of meta-token queries minus that of text queries, near and far being the
    nearest and farthest distance bins measured for both (a seed whose meta-tokens never sit 65+
    positions apart has no value in that bin: it is skipped, not allowed to void the seed)."""
    both = [i for i, (a, b) in enumerate(zip(meta, ctrl)) if a is not None and b is not None
            and math.isfinite(a) and math.isfinite(b)]
    if len(both) < 2:
        return None
    near, far = both[0], both[-1]
    return (meta[near] - meta[far]) - (ctrl[near] - ctrl[far])


def _gain_note(res: StudyResults, m: str, c: dict[str, Any] | None, short: str, long: str) -> str:
    """For an L-to-2L contrast whose interval lies below 0: say that it is contrary, and what a baseline
    that has little to lose does to it (a model at the floor at L cannot drop much)."""
    if c is None or not c.get("ci95") or c["ci95"][1] >= 0:
        return ""
    label = res.scale.models[m].label
    note = f"contrary: {label} loses more than GPT-2 (APE) from L to 2L"
    if not _learned(res, "gpt2", "list_recall", short):
        at_l = mean_std([(cell(res, s, "gpt2", "list_recall", short) or {}).get("exact_match") for s in res.seed_list])[0]
        lead = compare(res, (m, "list_recall", long, "prompts"), ("gpt2", "list_recall", long, "prompts"))
        note += f"; GPT-2 (APE) is at {100 * at_l:.1f}% at L, at the floor, so it has little to lose"
        if lead is not None and lead.get("ci95"):
            where = ("still leads it" if lead["ci95"][0] > 0 else "trails it" if lead["ci95"][1] < 0 else
                     "is level with it (the interval holds 0)")
            note += f"; at 2L {label} {where}: {_ci(lead)}"
    return note


def findings(res: StudyResults) -> list[Finding]:
    """One row per claim of the paper (docs/method.md sections 6-7) that the study tests, with its verdict."""
    L = res.scale.ft_len
    out: list[Finding] = []
    models = res.scale.models
    for task in [t for t in ("list_recall", "parity", "copying") if t in res.scale.tasks]:
        for m in ("meta-ape", "meta-rope"):
            if m not in models or "gpt2" not in models:
                continue
            c = compare(res, (m, task, str(L), "prompts"), ("gpt2", task, str(L), "prompts"))
            paper = PAPER_ACCURACY[task][m] - PAPER_ACCURACY[task]["gpt2"]
            floor = _floor_note(res, task, [m, "gpt2"], str(L))
            v = _acc_verdict(c, floor=floor)
            out.append(Finding(f"{TASK_LABELS[task]}: {models[m].label} beats GPT-2 (APE) at L (exact match, points)",
                               f"{paper:+.1f} (at 512)", _ci(c), v, floor or _size_note(c, v, paper)))
    for m in ("meta-ape", "meta-rope"):
        if m not in models:
            continue
        c = gain_contrast(res, m, "gpt2", "list_recall", str(L), str(2 * L))
        paper = PAPER_LENGTH_GAIN[m] - PAPER_LENGTH_GAIN["gpt2"]
        floor = _floor_note(res, "list_recall", [m, "gpt2"], str(L))
        v = _acc_verdict(c, floor=floor)
        note = floor or _size_note(c, v, paper) or _gain_note(res, m, c, str(L), str(2 * L))
        out.append(Finding(f"List Recall: {models[m].label} gains more than GPT-2 (APE) from L to 2L (points)",
                           f"{paper:+.1f} (256 -> 512)", _ci(c), v, note))
    if "meta-rope" in models:
        for task in ("list_recall", "copying"):
            xs_long = per_seed_examples(res, "meta-rope", task, f"{4 * L}+yarn")
            xs_short = per_seed_examples(res, "meta-rope", task, str(L))
            c = None if xs_long is None or xs_short is None else contrast([single(xs_long[0]), single(xs_short[0], -1.0)])
            learned = _learned(res, "meta-rope", task, str(L))
            v = INCONCLUSIVE if c is None or not learned else verdict(
                [x * 100 + YARN_KEEP_POINTS for x in c["ci95"]], rule_out=0.0)
            note = ("" if learned else "Meta+RoPE does not do this task at L, so there is no accuracy to keep; ") + (
                "adapted: the paper fine-tunes inside the YaRN window and tests at 2x; here YaRN is applied at test "
                "time only, to a model fine-tuned at L")
            out.append(Finding(f"{TASK_LABELS[task]}: Meta+RoPE with YaRN keeps its accuracy at 4L, beyond its window "
                               f"(4L minus L, points; kept = drop under {YARN_KEEP_POINTS:g})",
                               "85-98% up to 2x the window", _ci(c), v, note))
    for m in ("meta-ape", "meta-rope"):
        if m not in models or not res.has(f"ablate-{m}"):
            continue
        floor = _floor_note(res, "list_recall", [m], str(L))
        c = ablation_contrast(res, m, "list_recall", "zero_meta_pos")
        # the paper: the zeroed model "matches or beats" the full one: judged as no worse by 5 points or more
        v = INCONCLUSIVE if c is None or floor else verdict([x + RULE_OUT_POINTS / 100 for x in c["ci95"]])
        out.append(Finding(f"List Recall: zeroing {models[m].label}'s meta positional encoding matches or beats the "
                           f"full model (points; matches = no more than {RULE_OUT_POINTS:g} worse)",
                           "+11 to +39", _ci(c), v, floor))
        c = ablation_contrast(res, m, "list_recall", "zero_meta_embed")
        out.append(Finding(f"List Recall: zeroing {models[m].label}'s meta embedding lowers exact match (points)",
                           "large drop", _ci(c), _acc_verdict(c, direction=-1, floor=floor), floor))
    if res.has("analyze-entropy"):
        ent = [res.result(s, "analyze-entropy") for s in res.seed_list]
        for key, paper, what in (("entropy_difference", PAPER_ENTROPY_DIFF,
                                  "attention entropy is lower at meta-token queries (non-meta minus meta, nats)"),
                                 ("max_logit_boost", PAPER_LOGIT_BOOST,
                                  "the meta embedding raises the max attention logit (real minus zeroed)")):
            vals = [e[key]["mean"] if e.get(key) else None for e in ent]
            c = per_seed_interval(vals, ent[0][key]["ci95"] if ent[0].get(key) else None)
            v = INCONCLUSIVE if c is None else verdict(c["ci95"], rule_out=0.0)
            note = "contrary: the sign is the opposite of the paper's" if v == NOT_REPRODUCED else ""
            out.append(Finding(f"Meta+RoPE, List Recall: {what}", f"{paper:+.2f}", _ci(c, 1.0, 3), v, note))
    if res.has("analyze-residual"):
        vals = []
        for s in res.seed_list:
            r = res.result(s, "analyze-residual")
            vals.append(near_minus_far(r["cosine_meta_binned"][-1], r["cosine_control_binned"][-1]))
        c = per_seed_interval(vals, None)
        v = INCONCLUSIVE if c is None or c["ci95"] is None else verdict(c["ci95"], rule_out=0.0)
        note = ("one value per seed: an interval needs two seeds or more" if c and c["ci95"] is None else
                "contrary: a meta-token's state is less tied to nearby tokens than a text token's"
                if v == NOT_REPRODUCED else "")
        out.append(Finding("Meta+RoPE: a meta-token's last-layer state is more similar to nearby than to far tokens, "
                           "more so than a text token's (near minus far cosine, meta minus text)",
                           "high near, fading with distance", _ci(c, 1.0, 3), v, note))
    if res.has("analyze-rate-distortion"):
        for a, b, what in (("last_token", "last_meta", "the meta-token's probe has lower held-out distortion than the "
                            "last token's at every rate both reach (smallest margin, nats)"),
                           ("last_meta", "last_meta_zero_pos", "zeroing the meta-token's position lowers its held-out "
                            "distortion further, at every rate (smallest margin, nats)")):
            vals = []
            for s in res.seed_list:
                curves = res.result(s, "analyze-rate-distortion")["curves"]
                vals.append(min_gap_at_equal_rate(curves[a], curves[b]))
            c = per_seed_interval(vals, None)
            v = INCONCLUSIVE if c is None or c["ci95"] is None else verdict(c["ci95"], rule_out=0.0)
            note = ("one value per seed: an interval needs two seeds or more" if c and c["ci95"] is None else
                    "contrary: the order is the opposite of the paper's" if v == NOT_REPRODUCED else "")
            if c and c["ci95"] is None and c["diff"] < 0:
                note = "contrary in every seed measured (no interval with one seed)"
            if c is None:
                note = "the two probes' rates do not overlap, so they cannot be compared at equal rate"
            out.append(Finding(f"Meta+RoPE, List Recall: {what}", "lower at every rate", _ci(c, 1.0, 3), v, note))
    return out


def min_gap_at_equal_rate(a: list[dict[str, Any]], b: list[dict[str, Any]], points: int = 25) -> float | None:
    """The smallest held-out distortion gap a - b over the rates both curves reach (linear
    interpolation of each curve's distortion against its rate); None where their rates do not overlap."""
    import numpy as np

    key = "test_" if "test_distortion" in a[0] else ""
    curves = []
    for c in (a, b):
        pts = sorted((p[f"{key}rate"], p[f"{key}distortion"]) for p in c)
        curves.append((np.array([r for r, _ in pts]), np.array([d for _, d in pts])))
    lo, hi = max(c[0].min() for c in curves), min(c[0].max() for c in curves)
    if not hi >= lo:
        return None
    grid = np.linspace(lo, hi, points) if hi > lo else np.array([lo])
    gap = np.interp(grid, *curves[0]) - np.interp(grid, *curves[1])
    return float(gap.min())


def controls(res: StudyResults) -> list[tuple[str, str, dict[str, Any] | None, str, bool]]:
    """(question, task, paired difference at L in exact match, verdict, whether no model of the two
    learned the task) for each control."""
    L, models = str(res.scale.ft_len), res.scale.models
    rows = []
    pairs = [
        ("meta-rope", "prompts", "gpt2-rope", "prompts", "Meta+RoPE vs GPT-2 (RoPE, no meta): the meta-tokens alone"),
        ("meta-rope", "prompts", "gpt2-rope-wide", "prompts",
         "Meta+RoPE vs GPT-2 (RoPE, wide): meta-attention, not its extra parameters"),
        ("meta-rope", "prompts", "meta-rope", "no_meta", "Meta+RoPE with vs without meta-tokens in the test prompts"),
        ("meta-ape", "prompts", "meta-ape", "no_meta", "Meta+APE with vs without meta-tokens in the test prompts"),
        ("scratch-meta", "prompts", "scratch-plain", "prompts",
         "not pre-trained, with vs without meta-tokens: the marker alone"),
        ("meta-rope", "prompts", "scratch-meta", "prompts", "Meta+RoPE pre-trained vs not: what pre-training adds"),
    ]
    for a, va, b, vb, question in pairs:
        if a not in models or b not in models:
            continue
        for task in res.scale.tasks:
            c = compare(res, (a, task, L, va), (b, task, L, vb))
            floor = _floor_note(res, task, [a, b], L)
            rows.append((question, task, c, _acc_verdict(c, floor=floor), bool(floor)))
    return rows


def _learned(res: StudyResults, model: str, task: str, key: str) -> bool:
    vals = [cell(res, s, model, task, key) for s in res.seed_list]
    if any(v is None for v in vals):
        return False
    mean = sum(v["exact_match"] for v in vals) / len(vals)
    floor = max(baseline(res, task, key, "majority") or 0.0, baseline(res, task, key, "chance") or 0.0)
    return mean > floor + LEARNED_MARGIN


def _floor_note(res: StudyResults, task: str, models: list[str], key: str) -> str:
    idle = [res.scale.models[m].label for m in models if not _learned(res, m, task, key)]
    if len(idle) == len(models):
        return "no model here clears the majority answer and chance by 5 points: the task is not learned at this scale"
    return ""


# ----------------------------------------------------------------------------- figures


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
    from ..plotting import pyplot

    cmap = pyplot().get_cmap("tab10")
    return [cmap(i % 10) for i in range(n)]


def loss_figure(res: StudyResults) -> str:
    from ..plotting import pyplot, save_figure

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
    from ..plotting import pyplot, save_figure

    plt = pyplot()
    models = [m for m in res.scale.models if res.has(f"finetune-{m}")]
    tasks = res.scale.tasks
    cols = 2 if len(tasks) == 4 else len(tasks)
    rows = math.ceil(len(tasks) / cols)
    legend_in, title_in = 0.6, 0.5  # inches kept below the panels for the legend, above them for the title
    height = 3.5 * rows + legend_in + title_in  # the title's room is made by tight_layout, which lays out suptitle
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, height), sharex=True, squeeze=False)
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
        ax.set_ylabel("held-out exact match %")
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("fine-tuning step")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
    seeds = f"mean over {len(res.seeds)} seeds" if len(res.seeds) > 1 else f"seed {res.seed_list[0]}"
    fig.suptitle(f"Learning curves of every model, one fine-tune each on the mixture of the {_count(tasks)} tasks at "
                 f"L = {L} ({seeds})\nheld-out prompts of the run, not the test prompts; dashed: controls", fontsize=10)
    fig.tight_layout(rect=(0, legend_in / height, 1, 1))
    path = save_figure(fig, res.out / "figures" / "learning-curves.png")
    return f"![Held-out exact match during fine-tuning, every model and task]({path.relative_to(res.out)})"


def _count(items) -> str:
    return {1: "one", 2: "two", 3: "three", 4: "four"}.get(len(items), str(len(items)))


def _fraction(items) -> str:
    return {1: "whole", 2: "half", 3: "third", 4: "quarter"}.get(len(items), f"1/{len(items)}")


def _left_out(sc: Scale) -> str:
    """The sentence saying which of the paper's tasks this scale does not run, and why."""
    missing = [TASK_LABELS[t] for t in TASKS if t not in sc.tasks]
    if not missing:
        return ""
    return f" {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} left out at this scale: {sc.tasks_note}"


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
    from ..plotting import pyplot, save_figure
    from ..evaluate import wilson_interval

    plt = pyplot()
    L = res.scale.ft_len
    keys = [str(L), str(2 * L), f"{4 * L}+yarn"]
    xpos = {str(L): 1, str(2 * L): 2, f"{4 * L}+yarn": 4}
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    lines = [(m, "prompts") for m in res.scale.models] + [(m, "no_meta") for m in res.scale.models
                                                          if res.scale.models[m].meta]
    colors = dict(zip(res.scale.models, _colors(len(res.scale.models))))
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
            xs.append(xpos[key] + 0.05 * (j - len(lines) / 2))
            ys.append(100 * mean)
            lo.append(100 * (mean - a))
            hi.append(100 * (b - mean))
        if xs:
            label = res.scale.models[m].label + (" — meta-tokens removed" if variant == "no_meta" else "")
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o" if variant == "prompts" else "x", capsize=3,
                        ls="-" if variant == "prompts" else ":", color=colors[m], label=label)
    _baseline_lines(ax, res, task, xpos)
    ax.set_xticks([1, 2, 4], [f"L = {L}", f"2L = {2 * L}", f"4L = {4 * L}\n(RoPE + YaRN)"])
    ax.set_ylabel("exact match % (test prompts)")
    ax.set_ylim(-3, 103)
    bars = "95% Wilson intervals" if len(res.seeds) == 1 else f"± 1 sd over {len(res.seeds)} seeds"
    ax.set_title(f"{TASK_LABELS[task]}: exact match of every model by prompt length\n(error bars: {bars}; gray: "
                 "majority answer and chance at each length)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    path = save_figure(fig, res.out / "figures" / f"accuracy-{task}.png")
    return f"![{TASK_LABELS[task]}: exact match by length for every model, {bars}]({path.relative_to(res.out)})"


def differences_figure(res: StudyResults, rows: list[tuple[str, dict[str, Any] | None]]) -> str:
    """A forest plot: each paired difference (points) with its 95% interval."""
    from ..plotting import pyplot, save_figure

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


# ----------------------------------------------------------------------------- the report


def render_report(res: StudyResults) -> str:
    sc, L = res.scale, res.scale.ft_len
    models = sc.models
    n_seeds = len(res.seeds)
    missing = [s for s in range(res.requested_seeds) if s not in res.seeds]
    spread = " (mean ± standard deviation over seeds)" if n_seeds > 1 else ""
    out = [
        "# metatokens reproduction report",
        "",
        f"Scale `{res.scale_name}` ({sc.budget}), {n_seeds} seed(s): {', '.join(map(str, res.seed_list))}{spread}"
        + (f"; seeds {', '.join(map(str, missing))} not finished yet" if missing else "")
        + f"; written {time.strftime('%Y-%m-%d %H:%M:%S %Z')}. Paper: Shah et al., *Language Modeling with Learned "
        "Meta-Tokens*, arXiv 2509.16278. Every number in a column marked *ours* was measured by this run and is read "
        "from a stage's `stage.json` (the stage table at the end gives each one's command); the *paper* columns are "
        "the paper's own numbers (GPT-2 small at 1024 tokens, pre-trained on about 98B tokens of C4).",
        "",
    ]
    if sc.smoke_test:
        out += ["> **Smoke test.** At this scale the models are too small and trained too briefly to learn the tasks: "
                "the report shows that every stage runs and every table fills, and **its numbers carry no evidence** "
                "about meta-tokens. The evidence is the `tiny` study (`metatokens reproduce --scale tiny --seeds 3`; "
                "committed in `docs/results/reproduce_tiny/`).", ""]
    out += [f"Re-create this report: `metatokens reproduce --scale {res.scale_name} --seeds {res.requested_seeds} "
            f"--out {res.out}` (finished stages are reused; `--seed S` runs one seed, and the report merges every "
            "seed whose stages have all finished).", ""]

    found = findings(res)
    ctrl = controls(res)
    counts = {v: sum(f.verdict == v for f in found) for v in (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)}
    out += [
        "## Findings",
        "",
        f"{len(found)} claims of the paper tested: **{counts[REPRODUCED]} reproduced, {counts[NOT_REPRODUCED]} not "
        f"reproduced, {counts[INCONCLUSIVE]} inconclusive** at this scale. Differences are paired (the same test "
        f"prompts for every model, {sc.eval_n} per task and length per seed, none seen in training) with 95% bootstrap "
        f"intervals over prompts and seeds (`metatokens.study.stats`). A verdict reads the interval: *reproduced* when "
        f"it lies on the paper's side of 0; *not reproduced* when it excludes an effect of {RULE_OUT_POINTS:g} points "
        "or more in the paper's direction (for accuracy; for the analyses, when it lies on the other side of 0: a "
        "contrary finding); *inconclusive* otherwise.",
        "",
        "| claim (paper, docs/method.md sections 6-7) | paper | ours: difference [95% CI] | verdict | note |",
        "|---|---|---|---|---|",
    ]
    for f in found:
        out.append(f"| {f.claim} | {f.paper} | {f.ours} | **{f.verdict}** | {f.note} |")
    out += ["", "### Controls: where a difference comes from", "",
            f"Paired differences in exact match at L = {L} (points, 95% CI); *shown* when the interval is above 0, "
            f"*ruled out* when it excludes a gain of {RULE_OUT_POINTS:g} points or more; *not learned*: neither model "
            "clears the majority answer and chance by 5 points, so the comparison cannot tell.", "",
            "| comparison | " + " | ".join(TASK_LABELS[t] for t in sc.tasks) + " |",
            "|---|" + "---|" * len(sc.tasks)]
    words = {REPRODUCED: "shown", NOT_REPRODUCED: "ruled out", INCONCLUSIVE: "inconclusive"}
    for question in dict.fromkeys(q for q, *_ in ctrl):
        cells = [f"{_ci(c)} {words[v]}" + (" (not learned)" if floor else "") for q, t, c, v, floor in ctrl
                 if q == question]
        out.append(f"| {question} | " + " | ".join(cells) + " |")
    forest = [(f"{TASK_LABELS[t]}: {q.split(':')[0]}", c) for q, t, c, *_ in ctrl if t in ("list_recall", "copying")]
    for m in ("meta-ape", "meta-rope"):
        for task in ("list_recall", "copying"):
            if m in models:
                forest.insert(0, (f"{TASK_LABELS[task]}: {models[m].label} vs GPT-2 (APE)",
                                  compare(res, (m, task, str(L), "prompts"), ("gpt2", task, str(L), "prompts"))))
    out += ["", differences_figure(res, forest), ""]

    # 1. pre-training
    out += ["## 1. Pre-training", "",
            "| model | role | parameters | steps | training tokens | val loss / text token (ours) | val bits per byte (ours) |",
            "|---|---|---|---|---|---|---|"]
    for m, ms in models.items():
        if not res.has(f"pretrain-{m}"):
            continue
        rows = [res.result(s, f"pretrain-{m}") for s in res.seed_list]
        out.append(f"| {ms.label} | {ms.role} | {rows[0]['params']:,} | {rows[0]['step']} | {rows[0]['train_tokens']:,} | "
                   f"{_num([r['val_loss'] for r in rows])} | {_num([r['val_bpb'] for r in rows])} |")
    out += ["", "Validation loss counts text tokens only (no loss on meta-token targets), so the models compare "
            "fairly. Models marked *not pre-trained* start fine-tuning from a random initialisation.", "",
            loss_figure(res), ""]

    # 2. task accuracy
    out += [f"## 2. Task accuracy after fine-tuning at L = {L} (exact match %)", "",
            f"One fine-tune per model on a mixture of the {_count(sc.tasks)} tasks ({sc.ft_steps} steps, batch "
            f"{sc.ft_batch}, shares {':'.join(map(str, sc.ft_weights))} of {', '.join(TASK_LABELS[t] for t in sc.tasks)}, "
            f"lr {sc.ft_lr:g} with cosine decay to {sc.ft_min_lr_ratio:g}x, {sc.difficulty} difficulty): every task sees "
            f"the same fine-tuning examples in every model, and one run per model costs a {_fraction(sc.tasks)} of "
            f"{_count(sc.tasks)}.{_left_out(sc)} Evaluated on "
            f"{sc.eval_n} test prompts of 0.75 L to L tokens per task. Paper: fine-tuned and evaluated at 512 (its Fig. 1). "
            "*majority*: always answering the most common answer of the test prompts; *chance*: a uniform guess among "
            "the answers the question allows.", "",
            "| model | " + " | ".join(f"{TASK_LABELS[t]} ours | paper" for t in sc.tasks) + " |",
            "|---|" + "---|---|" * len(sc.tasks)]
    for m, ms in models.items():
        for variant in ("prompts", "no_meta") if ms.meta else ("prompts",):
            cells = []
            for t in sc.tasks:
                cells.append(_pct([(cell(res, s, m, t, str(L), variant) or {}).get("exact_match") for s in res.seed_list]))
                cells.append(_paper(PAPER_ACCURACY[t].get(m)) if variant == "prompts" and m in PAPER_MODELS else "—")
            label = ms.label + (" — meta-tokens removed from the test prompts" if variant == "no_meta" else "")
            out.append(f"| {label} | " + " | ".join(cells) + " |")
    for which in ("majority", "chance"):
        cells = []
        for t in sc.tasks:
            v = baseline(res, t, str(L), which)
            cells += ["n/a" if v is None else f"{100 * v:.1f}", "—"]
        out.append(f"| *{which} answer* | " + " | ".join(cells) + " |")
    out += ["", "Token accuracy (answer tokens right under teacher forcing, %) and answer loss (nats per answer token) "
            "separate models that tie on exact match:", "",
            "| model | " + " | ".join(f"{TASK_LABELS[t]} token acc. / loss" for t in sc.tasks) + " |",
            "|---|" + "---|" * len(sc.tasks)]
    for m, ms in models.items():
        cells = []
        for t in sc.tasks:
            vals = [cell(res, s, m, t, str(L)) or {} for s in res.seed_list]
            cells.append(f"{_pct([v.get('token_accuracy') for v in vals])} / {_num([v.get('answer_loss') for v in vals])}")
        out.append(f"| {ms.label} | " + " | ".join(cells) + " |")
    out += ["", learning_curves_figure(res), ""]

    # 3. length generalisation
    out += [f"## 3. Length generalisation: L = {L} -> 2L = {2 * L}, and 4L = {4 * L} with YaRN (exact match %)", "",
            "2L is inside every model's pre-training window; 4L is beyond it, so only RoPE models are read there, after "
            "YaRN extension. Paper: fine-tuned at 256 and evaluated at 512, gains of "
            + ", ".join(f"{PAPER_LENGTH_GAIN[m]:+.1f} points ({models[m].label})" for m in PAPER_MODELS if m in models)
            + ".", "",
            "| model | task | L | 2L | 2L - L | 4L + YaRN | paper gain at 2x |", "|---|---|---|---|---|---|---|"]
    for m, ms in models.items():
        for t in sc.tasks:
            accs = {k: [(cell(res, s, m, t, k) or {}).get("exact_match") for s in res.seed_list]
                    for k in (str(L), str(2 * L), f"{4 * L}+yarn")}
            diffs = [None if a is None or b is None else b - a for a, b in zip(accs[str(L)], accs[str(2 * L)])]
            mean, _ = mean_std(diffs)
            gain = "n/a" if mean is None else f"{100 * mean:+.1f}"
            yarn = _pct(accs[f"{4 * L}+yarn"]) if any(v is not None for v in accs[f"{4 * L}+yarn"]) else "—"
            paper = _paper(PAPER_LENGTH_GAIN.get(m), sign=True) if m in PAPER_MODELS and t == "list_recall" else "—"
            out.append(f"| {ms.label} | {TASK_LABELS[t]} | {_pct(accs[str(L)])} | {_pct(accs[str(2 * L)])} | {gain} "
                       f"| {yarn} | {paper} |")
    out += ["", "n/a: not measured (an APE model's prompts plus answers of that length do not fit its learned positions); "
            "—: not applicable (4L: APE models cannot be extended).", ""]
    out += ["### Paired differences by task and length", "",
            "Exact match, model A minus model B on the same test prompts (points, 95% CI over prompts and seeds).", "",
            "| A vs B | task | L | 2L | 4L + YaRN |", "|---|---|---|---|---|"]
    for a, b in (("meta-ape", "gpt2"), ("meta-rope", "gpt2"), ("meta-rope", "gpt2-rope"), ("meta-rope", "gpt2-rope-wide")):
        if a not in models or b not in models:
            continue
        for t in sc.tasks:
            cells = [_ci(compare(res, (a, t, k, "prompts"), (b, t, k, "prompts")))
                     for k in (str(L), str(2 * L), f"{4 * L}+yarn")]
            out.append(f"| {models[a].label} vs {models[b].label} | {TASK_LABELS[t]} | " + " | ".join(cells) + " |")
    out.append("")
    out += [accuracy_figure(res, t) for t in sc.tasks] + [""]

    # 4. ablations
    out += [f"## 4. Ablations at meta positions, at L = {L} (exact match %)", "",
            "Same weights, changed at inference: the positional encoding of meta-tokens zeroed (APE: no position "
            f"vector; RoPE: q/k unrotated), or their token embedding zeroed. Paper (Table 2): {PAPER_ABLATION}.", "",
            "| model | task | full | meta position zeroed | meta embedding zeroed | position zeroed - full [95% CI] "
            "| embedding zeroed - full [95% CI] | answer loss: full / pos. / emb. |", "|---|---|---|---|---|---|---|---|"]
    variants = ("full", "zero_meta_pos", "zero_meta_embed")
    for m in PAPER_MODELS:
        if not res.has(f"ablate-{m}"):
            continue
        for t in sc.tasks:
            rows = [res.result(s, f"ablate-{m}")[t] for s in res.seed_list]
            out.append(f"| {models[m].label} | {TASK_LABELS[t]} | "
                       + " | ".join(_pct([row[v]["exact_match"] for row in rows]) for v in variants) + " | "
                       + f"{_ci(ablation_contrast(res, m, t, 'zero_meta_pos'))} | "
                       + f"{_ci(ablation_contrast(res, m, t, 'zero_meta_embed'))} | "
                       + " / ".join(_num([row[v]["answer_loss"] for row in rows]) for v in variants) + " |")
    out += ["", _figure(res, "ablate-meta-rope/ablate.png", "Ablations, Meta+RoPE, all tasks"), ""]

    # 5-7. analyses
    if res.has("analyze-entropy"):
        ent = [res.result(s, "analyze-entropy") for s in res.seed_list]
        out += ["## 5. Attention sharpening at meta-tokens (Meta+RoPE, List Recall)", "",
                "| quantity | ours | paper |", "|---|---|---|"]
        for key, paper, what in (("entropy_difference", PAPER_ENTROPY_DIFF,
                                  "attention entropy, non-meta minus meta query positions (nats)"),
                                 ("entropy_difference_nearby", None, "the same, non-meta queries near a meta-token only "
                                  "(as many keys to attend to)"),
                                 ("max_logit_boost", PAPER_LOGIT_BOOST, "max attention logit, real meta embedding minus zeroed")):
            if not any(e.get(key) for e in ent):
                continue
            vals = [e[key]["mean"] if e.get(key) else None for e in ent]
            ci = ent[0][key]["ci95"] if ent[0].get(key) else None
            out.append(f"| {what} | {_num(vals)}" + (f" (95% CI, seed {res.seed_list[0]}: {ci[0]:.3f} to {ci[1]:.3f})" if ci else "")
                       + f" | {'—' if paper is None else f'{paper:.2f}'} |")
        out += ["", _figure(res, "analyze-entropy/entropy.png", "Entropy difference by layer and head"), ""]
    if res.has("analyze-residual"):
        out += ["## 6. Residual stream: what a meta-token caches", "",
                "Cosine similarity between a query token's hidden state and earlier tokens' by distance, per layer, at "
                "meta and at text (control) queries (paper: high near the meta-token, fading with distance).", "",
                _figure(res, "analyze-residual/residual.png", "Cosine similarity by distance and layer"), ""]
    if res.has("analyze-rate-distortion"):
        rd = res.result(res.seed_list[0], "analyze-rate-distortion")
        out += ["## 7. Rate-distortion of a VIB probe", "",
                "Frozen model; a variational information bottleneck head on the hidden state of the last meta-token, of "
                "the last token, and of the last meta-token with its positional encoding zeroed; beta swept from 0.01 to 1. "
                "Fitted on training prompts, scored on held-out ones. Paper: at every rate the meta-token has lower "
                "distortion than the last token, and zeroing its position lowers it further.", "",
                _figure(res, "analyze-rate-distortion/rate_distortion.png", "Distortion vs rate, training and held-out"), ""]
        curves = rd.get("curves", {})
        if curves:
            betas = [p["beta"] for p in next(iter(curves.values()))]
            out += [f"Seed {res.seed_list[0]}: rate / distortion in nats per beta, on the training prompts and (after the "
                    f"slash pair) on {rd.get('n_test')} held-out prompts. Rate 0 (the label prior): distortion "
                    f"{rd.get('no_information_train', float('nan')):.2f} on the training prompts, "
                    f"{(rd.get('no_information_test') or float('nan')):.2f} held out.", "",
                    "| representation | " + " | ".join(f"beta {b:g}" for b in betas) + " |",
                    "|---|" + "---|" * len(betas)]
            for name, points in curves.items():
                out.append(f"| {name} | " + " | ".join(
                    f"{p['rate']:.2f} / {p['distortion']:.2f}; held out {p.get('test_rate', float('nan')):.2f} / "
                    f"{p.get('test_distortion', float('nan')):.2f}" for p in points) + " |")
            out.append("")
    out += _stage_table(res)
    runs = [(s, inv) for s in res.seed_list for inv in seed_invocations(res, s)[:1] if inv.get("environment")]
    out += ["", "## Environment", ""]
    if runs:
        out += ["Where each seed's stages ran (their first invocation):", "",
                "| | " + " | ".join(f"seed {s}" for s, _ in runs) + " |", "|---|" + "---|" * len(runs)]
        for k in runs[0][1]["environment"]:
            out.append(f"| {k} | " + " | ".join(str(inv["environment"].get(k, "")) for _, inv in runs) + " |")
        out += ["", "This report was rendered with:", ""]
    env = environment()
    out += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in env.items()] + [""]
    return "\n".join(out) + "\n"


def seed_invocations(res: StudyResults, seed: int) -> list[dict[str, Any]]:
    """The invocations that ran stages of a seed (stages/seed<S>/seed.json), first first."""
    import json

    path = res.out / "stages" / f"seed{seed}" / "seed.json"
    try:
        return json.loads(path.read_text()).get("invocations", []) if path.is_file() else []
    except (OSError, json.JSONDecodeError):
        return []


def _stage_table(res: StudyResults) -> list[str]:
    lines = ["## Stages, commands and wall time", ""]
    for seed in res.seed_list:
        recs = list(res.seeds[seed].values())
        total = sum(r.wall_s for r in recs)
        now = sum(r.wall_s for r in recs if not r.cached)
        wall = ""
        for k, info in enumerate(seed_invocations(res, seed)):
            together = [s for s in info.get("seeds_run_together", [seed]) if s != seed]
            wall += (f"{'**' if k == 0 else ''}wall time {info['wall_s'] / 60:.1f} min{'**' if k == 0 else ''} for "
                     f"{info['stages_run']} stage(s) ({info['jobs']} stage process(es) at once on {info['cpus']} CPUs, "
                     f"finished {info['finished']}"
                     + (f"; run together with seed(s) {', '.join(map(str, together))}" if together else "") + "); ")
        lines.append(f"- seed {seed}: {wall}{len(recs)} stages, {total / 60:.1f} min of stage time in all "
                     f"({now / 60:.1f} min of it run by this invocation; stages run in parallel overlap)")
    lines += ["", "Paths are relative to the report folder.", "",
              "| stage | wall time (s) | cached | command |", "|---|---|---|---|"]
    for seed in res.seed_list:
        for r in res.seeds[seed].values():
            lines.append(f"| {r.name} | {r.wall_s:.0f} | {'yes' if r.cached else 'no'} | `{r.command}` |")
    return lines

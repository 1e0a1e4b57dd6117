"""REPORT.md of the memory measurement (`metatokens reproduce --memory`, design.MemoryProtocol): does a
meta-token carry the context before it when self-attention can no longer reach that context?

Every number is read from the `window-*` stages: each arm's exact match per test prompt, each prompt's
gap (how far before the answer the queried list or span ends) and the K/V entries a bounded cache holds.
A claim compares two arms on the same prompts, those whose gap exceeds the window ("far" prompts), as a
paired difference with the study's hierarchical bootstrap, judged after Holm's correction across the
pre-registered claims (design.memory_claims).
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..fileio import json_sha256
from ..plotting import pyplot, save_figure
from ..stats import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, contrast, corrected_verdict, holm, p_value, paired, single
from ..training.config import load_run_config
from .design import CORRECTION, MEMORY_ARMS, SESOI, TASK_LABELS, memory_claims, memory_preregistration
from .results import StudyResults, _ci, stages_and_environment

METRIC = "exact_per_example"


def _stage(arm: str, w: int | None) -> str:
    return f"window-{arm}" + (f"-w{w}" if w and arm != "full" else "")


def _variant(arm: str, w: int | None) -> str:
    """The full-attention arm read with the window at test time only is its variant test-time-w<W>."""
    return f"test-time-w{w}" if arm == "full" and w else "prompts"


def _per_seed(res: StudyResults, arm: str, w: int | None, task: str) -> list[np.ndarray] | None:
    L = str(res.scale.ft_len)
    out = []
    for s in res.seed_list:
        cell = res.result(s, _stage(arm, w)).get(task, {}).get(_variant(arm, w), {}).get(L)
        if cell is None:
            return None
        out.append(np.asarray(cell[METRIC], dtype=np.float64))
    return out


def _digests(res: StudyResults, arm: str, w: int | None, task: str) -> list[str]:
    L = str(res.scale.ft_len)
    return [res.result(s, _stage(arm, w))[task][_variant(arm, w)][L]["prompts"] for s in res.seed_list]


def _far(res: StudyResults, task: str, beyond: int) -> list[np.ndarray]:
    """Per seed, the indices of the test prompts whose gap exceeds `beyond` (the same in every arm)."""
    return [np.flatnonzero(np.asarray(res.result(s, "window-full")["gap"][task]) > beyond) for s in res.seed_list]


def _subset_contrast(res: StudyResults, a: tuple, b: tuple | None, task: str, idx: list[np.ndarray]):
    """Paired difference of exact match, arm a minus arm b (or a's rate alone with b None), on the prompts
    `idx` of every seed; None where a seed has none of them."""
    if any(i.size == 0 for i in idx):
        return None
    xa = _per_seed(res, *a, task)
    if b is None:
        return contrast([single([x[i] for x, i in zip(xa, idx)])])
    if _digests(res, *a, task) != _digests(res, *b, task):
        raise ValueError(f"{a} and {b} were scored on different prompts of {task}; they cannot be paired")
    xb = _per_seed(res, *b, task)
    return contrast([paired([x[i] for x, i in zip(xa, idx)], [y[i] for y, i in zip(xb, idx)])])


def _reach(res: StudyResults, w: int) -> int:
    """How far back text alone can carry information through n_layer windows: n_layer * (W - 1) positions, so
    a prompt with gap > that + 1 is beyond any path that does not pass through a kept key."""
    sc = res.scale
    n_layer = load_run_config(sc.models["meta-rope"].preset, list(sc.pretrain_overrides)).model.n_layer
    return n_layer * (w - 1) + 1


def _rate(c: dict[str, Any] | None) -> str:
    return "—" if c is None else f"{100 * c['diff']:.1f}"


def _floor(res: StudyResults, task: str) -> float:
    """The larger of the majority-answer and chance rates on a task's test prompts, averaged over seeds."""
    vals = [max(res.result(s, "window-full")["baselines"][task].values()) for s in res.seed_list]
    return float(np.mean(vals))


def claim_rows(res: StudyResults) -> list[dict[str, Any]]:
    """The pre-registered claims with their contrasts, p-values, Holm-adjusted p-values and verdicts."""
    mp, rule_out = res.scale.memory, SESOI["accuracy_points"] / 100
    rows, tests = [], {}
    for cid, task, rival, w in memory_claims(mp):
        idx = _far(res, task, w)
        c = _subset_contrast(res, ("meta", w), (rival, w), task, idx)
        full = _subset_contrast(res, ("full", None), None, task, idx)
        # the probe must work: with full attention the model answers these prompts above the floor
        unlearned = full is None or full["diff"] < _floor(res, task) + rule_out
        rows.append({"id": cid, "task": task, "rival": rival, "w": w, "c": c, "n": sum(int(i.size) for i in idx),
                     "unlearned": unlearned})
        if c is not None:
            tests[cid] = (p_value(c, 0.0), p_value(c, rule_out, direction=-1))
    effect, ruled = holm({k: v[0] for k, v in tests.items()}), holm({k: v[1] for k, v in tests.items()})
    for r in rows:
        cid = r["id"]
        r["p"], r["p_holm"] = (tests[cid][0], effect[cid]) if cid in tests else (None, None)
        if r["c"] is None or r["unlearned"]:
            r["verdict"] = INCONCLUSIVE
        else:
            r["verdict"] = corrected_verdict(effect[cid], ruled[cid])
    return rows


def _accuracy_figure(res: StudyResults) -> str:
    plt = pyplot()
    mp = res.scale.memory
    fig, axes = plt.subplots(1, len(mp.tasks), figsize=(5.6 * len(mp.tasks), 4.6), squeeze=False)
    lines = [("meta", "Meta+RoPE, window W", "C0", "o-"), ("plain", "GPT-2 (RoPE), window W (b)", "C1", "s-"),
             ("sinks", f"Meta+RoPE, {mp.sinks} sinks, no meta-tokens (c)", "C2", "^-"),
             ("full-test", "Meta+RoPE full, window at test time only (d)", "C3", "v--")]
    for ax, task in zip(axes[0], mp.tasks):
        for arm, label, color, style in lines:
            ys, per_seed = [], []
            for w in mp.windows:
                key = ("full", w) if arm == "full-test" else (arm, w)
                c = _subset_contrast(res, key, None, task, _far(res, task, w))
                ys.append(np.nan if c is None else 100 * c["diff"])
                per_seed.append([] if c is None else [100 * v for v in c["per_seed"]])
            ax.plot(mp.windows, ys, style, color=color, label=label)
            for w, vals in zip(mp.windows, per_seed):
                ax.scatter([w] * len(vals), vals, color=color, alpha=0.3, s=12)
        full = [_subset_contrast(res, ("full", None), None, task, _far(res, task, w)) for w in mp.windows]
        ax.plot(mp.windows, [np.nan if c is None else 100 * c["diff"] for c in full], ":", color="black",
                label="Meta+RoPE, full attention (a)")
        ax.axhline(100 * _floor(res, task), color="grey", lw=0.8, ls="-.", label="majority / chance floor")
        ax.set_xscale("log", base=2)
        ax.set_xticks(mp.windows, [str(w) for w in mp.windows])
        ax.set_ylim(-3, 103)
        ax.set_xlabel("window W (positions)")
        ax.set_ylabel("exact match % on prompts with gap > W")
        ax.set_title(TASK_LABELS[task])
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8)
    seeds = f"mean of {len(res.seeds)} seeds (dots: each seed)" if len(res.seeds) > 1 else f"seed {res.seed_list[0]}"
    fig.suptitle(f"What survives past the window: test prompts whose queried list or span ends more than W tokens "
                 f"before the answer ({seeds})", fontsize=10)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    path = save_figure(fig, res.out / "figures" / "memory-accuracy.png")
    return f"![Exact match on far prompts against the window, every arm]({path.relative_to(res.out)})"


def render_memory(res: StudyResults) -> str:
    sc, mp, L = res.scale, res.scale.memory, res.scale.ft_len
    seeds = ", ".join(str(res.seed_values.get(s, s)) for s in res.seed_list)
    digest = json_sha256(memory_preregistration(sc))[:16]
    rows = claim_rows(res)
    counts = {v: sum(r["verdict"] == v for r in rows) for v in (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)}
    out = ["# metatokens memory measurement: what a meta-token caches", "",
           f"Scale `{res.scale_name}-memory` (the memory measurement of scale `{res.scale_name}`), {len(res.seeds)} of {res.requested_seeds} seed(s) complete (seed "
           f"values {seeds}); written {time.strftime('%Y-%m-%d %H:%M:%S %Z')}. Re-create it with "
           f"`metatokens reproduce --scale {res.scale_name} --memory --seeds {res.requested_seeds} --out OUT` "
           "(docs/memory.md).", "",
           "## What this measures", "",
           "The paper explains meta-tokens as caches of the context before them. With full attention that cannot be "
           "tested: every token can still read the raw context. Here self-attention is windowed "
           "(`model.attn_window = W`: each token sees its last W positions, every earlier meta-token, and with "
           "`attn_sinks` the first positions), so past the window the meta-tokens are the only keys left.", "",
           f"Each seed pre-trains and fine-tunes Meta+RoPE and GPT-2 (RoPE) exactly as the study does (the same "
           f"stages and recipe: {sc.ft_steps} steps at L = {L}), then continues each model for {mp.steps} steps of "
           f"{mp.batch} on {' and '.join(TASK_LABELS[t] for t in mp.tasks)} at L = {L} (weights "
           f"{':'.join(map(str, mp.weights))}, lr {mp.lr:g} with {mp.warmup} warm-up steps, the YaRN protocol's "
           "continuation rate, fixed before any result; every arm gets the same steps, rate and examples) in four arms:",
           ""]
    for arm, (label, model, meta, windowed, sinks) in MEMORY_ARMS.items():
        out.append(f"- **{label}**: continues the study's `finetune-{model}`; meta-tokens in its prompts: "
                   f"{'yes' if meta else 'no'}; window: {'W = ' + ', '.join(map(str, mp.windows)) if windowed else 'none'}"
                   + (f"; the first {mp.sinks} positions kept as sinks" if sinks else "") + ".")
    out += ["- **(d)** the full-attention arm (a) tested with the window switched on at test time only.", "",
            f"Every arm is scored on the same {mp.eval_n} test prompts per task (exact match of the whole answer). A "
            "prompt's *gap* is how far before the answer its queried list (List Recall) or span (Copying) ends, in "
            "tokens of the prompt without meta-tokens; the query that predicts the answer's first token sees the "
            "span's last token through the window iff gap <= W. The claims read the *far* prompts, gap > W. Text can "
            "still relay information from window to window, one layer at a time: n_layer x (W - 1) positions at "
            "most. So only prompts beyond that reach (the last column of the tables) are out of reach of every path "
            "that avoids a kept key.", ""]
    out += ["## Findings", "", f"### Primary claims (pre-registered, digest `{digest}`)", "",
            f"{len(rows)} claims, fixed in `metatokens.study.design` (`memory_claims`, `memory_preregistration`) "
            "before any seed of this measurement ran: at every window and on both tasks, on the far prompts, the "
            "windowed meta model beats (b) the windowed model without meta-tokens, and (c) the windowed model with "
            f"sinks instead of meta-tokens. Smallest effect of interest {SESOI['accuracy_points']:g} points; "
            f"{CORRECTION}. **{counts[REPRODUCED]} reproduced, {counts[NOT_REPRODUCED]} not reproduced, "
            f"{counts[INCONCLUSIVE]} inconclusive.** Each is a paired difference of exact match on the same prompts, "
            "with a 95% hierarchical percentile bootstrap interval (seeds, then prompts). A claim whose prompts the "
            "full-attention arm (a) does not answer above the majority/chance floor by 5 points is inconclusive: the "
            "task is not learned there, so the window cannot be what fails.", "",
            "| | claim | far prompts (all seeds) | difference, points [95% CI] | each seed | p | Holm p | verdict |",
            "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rival = "GPT-2 (RoPE), no meta-tokens (b)" if r["rival"] == "plain" else f"{mp.sinks} sinks, no meta-tokens (c)"
        each = "—" if r["c"] is None else ", ".join(f"{100 * v:+.1f}" for v in r["c"]["per_seed"])
        p = "—" if r["p"] is None else f"{r['p']:.4f}"
        ph = "—" if r["p_holm"] is None else f"{r['p_holm']:.4f}"
        note = " (not learned with full attention)" if r["unlearned"] and r["c"] is not None else ""
        out.append(f"| {r['id']} | {TASK_LABELS[r['task']]}, W = {r['w']}: windowed meta beats {rival} | {r['n']} | "
                   f"{_ci(r['c'])} | {each} | {p} | {ph} | **{r['verdict']}**{note} |")
    out += ["", "## Accuracy on far prompts", "",
            "Exact match % on the prompts with gap > W (mean over seeds; the same prompts in every column of a row). "
            "The last two columns are exploratory differences with their own 95% intervals: what the window costs "
            "the meta model against full attention, and the meta model against (b) on the prompts beyond text's "
            "reach (gap > n_layer x (W - 1) + 1; n/a where a seed has none).", ""]
    for task in mp.tasks:
        out += [f"### {TASK_LABELS[task]}", "",
                "| W | far prompts | meta, window W | (b) plain, window W | (c) sinks, window W | (a) full attention | "
                "(d) full, window at test | meta W minus (a) | beyond reach: prompts, meta minus (b) |",
                "|---|---|---|---|---|---|---|---|---|"]
        for w in mp.windows:
            idx = _far(res, task, w)
            rate = {k: _subset_contrast(res, key, None, task, idx) for k, key in
                    (("meta", ("meta", w)), ("plain", ("plain", w)), ("sinks", ("sinks", w)), ("full", ("full", None)),
                     ("test", ("full", w)))}
            cost = _subset_contrast(res, ("meta", w), ("full", None), task, idx)
            beyond = _far(res, task, _reach(res, w))
            deep = _subset_contrast(res, ("meta", w), ("plain", w), task, beyond)
            out.append(f"| {w} | {sum(int(i.size) for i in idx)} | {_rate(rate['meta'])} | {_rate(rate['plain'])} | "
                       f"{_rate(rate['sinks'])} | {_rate(rate['full'])} | {_rate(rate['test'])} | {_ci(cost)} | "
                       f"{sum(int(i.size) for i in beyond)}: {_ci(deep)} |")
        out.append("")
    out += [_accuracy_figure(res), "", "## Memory", "",
            "K/V entries per layer that a cache holds once the prompt is read (mean over the far prompts and seeds): "
            "every position with full attention; the last W - 1 positions and every earlier kept key (meta-token or "
            "sink) with the window. These are counts from the prompts, not timings; cache bytes and tokens/s against "
            "length (1k to 16k tokens) are measured by `benchmarks/window_attention.py` (BENCHMARKS.md section 9).", "",
            "| task | W | (a) full | meta, window W | (b) plain | (c) sinks |", "|---|---|---|---|---|---|"]
    for task in mp.tasks:
        for w in mp.windows:
            idx = _far(res, task, w)
            means = []
            for arm, ww in (("full", None), ("meta", w), ("plain", w), ("sinks", w)):
                vals = [np.asarray(res.result(s, _stage(arm, ww))["kv"][task]["prompts"])[i]
                        for s, i in zip(res.seed_list, idx)]
                joined = np.concatenate(vals) if vals else np.array([])
                means.append("—" if joined.size == 0 else f"{joined.mean():.1f}")
            out.append(f"| {TASK_LABELS[task]} | {w} | " + " | ".join(means) + " |")
    out += [""] + stages_and_environment(res)
    return "\n".join(out) + "\n"

"""REPORT.md of `metatokens reproduce`: findings first, then every measurement beside the paper's.

The report is rendered from the stages' results alone (`StudyResults`: the stage.json records of
every complete seed); the paper's numbers are the constants of `metatokens.study.design`. Every
comparison is a paired bootstrap over test prompts and seeds (`metatokens.stats`), and every
claim of the paper that the study can test gets a verdict from its interval.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ..stats import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED
from .design import (
    PAPER_ABLATION,
    PAPER_ACCURACY,
    PAPER_ENTROPY_DIFF,
    PAPER_LENGTH_GAIN,
    PAPER_LOGIT_BOOST,
    PAPER_MODELS,
    TASK_LABELS,
    TASKS,
    Scale,
)
from .figures import (
    _figure,
    accuracy_figure,
    differences_figure,
    learning_curves_figure,
    loss_figure,
)
from .findings import RULE_OUT_POINTS, controls, findings
from .results import (
    StudyResults,
    _ci,
    _count,
    _fraction,
    _num,
    _paper,
    _pct,
    ablation_contrast,
    baseline,
    cell,
    compare,
    environment,
    mean_std,
)

# ----------------------------------------------------------------------------- figures


def _left_out(sc: Scale) -> str:
    """The sentence saying which of the paper's tasks this scale does not run, and why."""
    missing = [TASK_LABELS[t] for t in TASKS if t not in sc.tasks]
    if not missing:
        return ""
    return f" {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} left out at this scale: {sc.tasks_note}"


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
        f"intervals over prompts and seeds (`metatokens.stats`). A verdict reads the interval: *reproduced* when "
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

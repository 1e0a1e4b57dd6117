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

from ..fileio import json_sha256
from ..stats import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED
from .design import (
    CORRECTION,
    PAPER_ABLATION,
    PAPER_ACCURACY,
    PAPER_ENTROPY_DIFF,
    PAPER_LOGIT_BOOST,
    PAPER_MODELS,
    SESOI,
    TASK_LABELS,
    TASKS,
    Scale,
    preregistration,
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
    per_example_contrast,
)
from .sections import length_section, training_prompts_section, yarn_section

# ----------------------------------------------------------------------------- figures


def _left_out(sc: Scale) -> str:
    """The sentence saying which of the paper's tasks this scale does not run, and why."""
    missing = [TASK_LABELS[t] for t in TASKS if t not in sc.tasks]
    if not missing:
        return ""
    return f" {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} left out at this scale: {sc.tasks_note}"


# ----------------------------------------------------------------------------- the report

INTERVAL_METHOD = ("95% hierarchical percentile bootstrap (4,000 replicates: seeds drawn with replacement, then each "
                   "drawn seed's test prompts; one pseudo-prompt pair per seed), `metatokens.stats`")


def _seeds(values: list[float] | None, digits: int = 1) -> str:
    return "—" if not values else ", ".join(f"{v:+.{digits}f}" for v in values)


def _findings_section(res: StudyResults, primary, explore, digest: str) -> list[str]:
    counts = {v: sum(f.verdict == v for f in primary) for v in (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)}
    out = ["## Findings", "",
           f"### Primary claims (pre-registered, digest `{digest}`)", "",
           f"{len(primary)} primary claims, fixed with their smallest effect of interest "
           f"({SESOI['accuracy_points']:g} points) and their correction ({CORRECTION}) in "
           "`metatokens.study.design` before the confirmatory seeds ran; the digest is that of "
           "`preregistration(scale)` (claims, effects of interest, correction, recipe, seeds), so a changed design "
           f"shows. **{counts[REPRODUCED]} reproduced, {counts[NOT_REPRODUCED]} not reproduced, "
           f"{counts[INCONCLUSIVE]} inconclusive.** Each is a paired difference of exact match on the same test "
           f"prompts ({res.scale.eval_n} per task and length per seed; none drawn in training: see the training-prompt "
           f"record below), with its {INTERVAL_METHOD}. *p*: one-sided bootstrap p of no effect on the claimed side; "
           "*Holm p*: adjusted across the primary claims. A verdict reads the adjusted p-values: *reproduced* when "
           "Holm p < 0.025; *not reproduced* when the adjusted p of an effect at least the smallest of interest is "
           "below 0.025; *inconclusive* otherwise, and always where neither model clears the majority answer and "
           "chance by 5 points (the task is not learned, so the comparison cannot tell).", "",
           "| | claim | paper | ours: difference [95% CI] | each seed | p | Holm p | verdict | note |",
           "|---|---|---|---|---|---|---|---|---|"]
    for f in primary:
        p = "—" if f.p is None else f"{f.p:.4f}"
        ph = "—" if f.p_holm is None else f"{f.p_holm:.4f}"
        out.append(f"| {f.id} | {f.claim} | {f.paper} | {f.ours} | {_seeds(f.per_seed)} | {p} | {ph} | "
                   f"**{f.verdict}** | {f.note} |")
    out += ["", "### Exploratory rows", "",
            "Every other claim of the paper that the study tests. Each row is read from its own 95% interval, with no "
            "correction, so they suggest rather than confirm: *reproduced* when the interval lies on the paper's side "
            "of 0, *not reproduced* when it excludes the smallest effect of interest on that side (5 points for "
            "accuracy; the analyses' own, in the note), *inconclusive* otherwise; — where the row cannot judge the "
            "claim (a probe that learned nothing, a protocol the paper does not use).", "",
            "| claim (paper, docs/method.md sections 6-7) | paper | ours: difference [95% CI] | each seed | verdict | "
            "note |", "|---|---|---|---|---|---|"]
    for f in explore:
        digits = 1 if "points" in f.claim else 3
        out.append(f"| {f.claim} | {f.paper} | {f.ours} | {_seeds(f.per_seed, digits)} | **{f.verdict}** | {f.note} |")
    return out


def render_report(res: StudyResults) -> str:
    sc, L = res.scale, res.scale.ft_len
    models = sc.models
    n_seeds = len(res.seeds)
    missing = [s for s in range(res.requested_seeds) if s not in res.seeds]
    spread = " (mean ± standard deviation over seeds)" if n_seeds > 1 else ""
    out = [
        "# metatokens reproduction report",
        "",
        f"Scale `{res.scale_name}` ({sc.budget}), {n_seeds} seed(s): "
        + ", ".join(f"{s} (seed value {res.seed_values.get(s, s)})" for s in res.seed_list) + spread
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
                "about meta-tokens. The evidence is the `tiny` study (`metatokens reproduce --scale tiny --seeds 5`; "
                "committed in `docs/results/reproduce_tiny/`).", ""]
    out += [f"Re-create this report: `metatokens reproduce --scale {res.scale_name} --seeds {res.requested_seeds} "
            f"--out {res.out}` (finished stages are reused; `--seed S` runs one seed, and the report merges every "
            "seed whose stages have all finished).", ""]

    found = findings(res)
    ctrl = controls(res)
    primary = [f for f in found if f.id]
    explore = [f for f in found if not f.id]
    prereg = preregistration(sc)
    digest = json_sha256(prereg)[:16]
    out += _findings_section(res, primary, explore, digest)
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
            "| model | role | parameters | steps | positions trained on (epochs of the corpus) | val loss / text token "
            "(ours) | val bits per byte (ours) |",
            "|---|---|---|---|---|---|---|"]
    for m, ms in models.items():
        if not res.has(f"pretrain-{m}"):
            continue
        rows = [res.result(s, f"pretrain-{m}") for s in res.seed_list]
        positions = rows[0].get("positions")
        seen = "n/a" if not positions else f"{positions:,} ({positions / rows[0]['train_tokens']:.1f})"
        out.append(f"| {ms.label} | {ms.role} | {rows[0]['params']:,} | {rows[0]['step']} | {seen} | "
                   f"{_num([r['val_loss'] for r in rows])} | {_num([r['val_bpb'] for r in rows])} |")
    tokens = res.result(res.seed_list[0], next(f"pretrain-{m}" for m in models if res.has(f"pretrain-{m}")))["train_tokens"]
    out += ["", f"The corpus's training split holds {tokens:,} tokens; *positions trained on* counts steps x sequences x "
            "window (meta-tokens take positions too), and the epochs are that over the corpus. Validation loss counts "
            "text tokens only (no loss on meta-token targets), so the models compare fairly. Models marked *not "
            "pre-trained* start fine-tuning from a random initialisation.", "",
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
    out += length_section(res) + yarn_section(res)
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
                f"Mean over seeds of each seed's mean over {sc.analysis_n} test prompts, with a 95% hierarchical percentile "
                "bootstrap (seeds drawn with replacement, then each drawn seed's prompts; no pseudo-observations for "
                "these continuous values).", "",
                "| quantity | ours [95% CI] | each seed | paper |", "|---|---|---|---|"]
        for key, paper, what in (("entropy_difference", PAPER_ENTROPY_DIFF,
                                  "attention entropy, non-meta minus meta query positions (nats)"),
                                 ("entropy_difference_nearby", None, "the same, non-meta queries near a meta-token only "
                                  "(as many keys to attend to)"),
                                 ("max_logit_boost", PAPER_LOGIT_BOOST, "max attention logit, real meta embedding minus zeroed")):
            if not any(e.get(key) for e in ent):
                continue
            c = per_example_contrast([(e.get(key) or {}).get("per_example") for e in ent])
            ours = _ci(c, 1.0, 3) if c is not None else _num([(e.get(key) or {}).get("mean") for e in ent])
            each = "—" if c is None else ", ".join(f"{v:+.3f}" for v in c["per_seed"])
            out.append(f"| {what} | {ours} | {each} | {'—' if paper is None else f'{paper:.2f}'} |")
        out += ["", _figure(res, "analyze-entropy/entropy.png", "Entropy difference by layer and head"), ""]
    if res.has("analyze-residual"):
        out += ["## 6. Residual stream: what a meta-token caches", "",
                "Centred cosine similarity (the mean hidden state of the layer subtracted first) between a query token's "
                "hidden state and earlier tokens' by distance, per layer, at meta and at text (control) queries (paper: "
                "high near the meta-token, fading with distance). The Findings judge the meta-token's own decay, near "
                "minus far at the last layer, per example, bootstrapped over seeds then examples.", "",
                _figure(res, "analyze-residual/residual.png", "Cosine similarity by distance and layer"), ""]
    if res.has("analyze-rate-distortion"):
        out += _rate_distortion_section(res)
    out += training_prompts_section(res)
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


def _rate_distortion_section(res: StudyResults) -> list[str]:
    rds = {s: res.result(s, "analyze-rate-distortion") for s in res.seed_list}
    first = rds[res.seed_list[0]]
    out = ["## 7. Rate-distortion of a VIB probe", "",
           "Frozen model; a variational information bottleneck head on the hidden state of the last meta-token, of the "
           "last token, and of the last meta-token with its positional encoding zeroed; beta swept from 0.01 to 1. "
           f"Fitted on {first.get('n_train')} training prompts, scored on {first.get('n_test')} held-out ones. The "
           "meta-token comes before the question, so the decoder is told the question (which item is asked): both "
           "probes could reach zero distortion. The *no-information line* is the held-out cross-entropy of the "
           "answer given the question alone (fitted on the training prompts); a probe whose best held-out distortion "
           "is not below it learned nothing from the state, and its comparison gives no verdict. Paper: at every "
           "rate the meta-token has lower distortion than the last token, and zeroing its position lowers it "
           "further.", "",
           _figure(res, "analyze-rate-distortion/rate_distortion.png", "Distortion vs rate, training and held-out"), "",
           "| seed | no-information line (held out, nats) | " + " | ".join(
               f"{name}: best held-out distortion (learned?)" for name in first.get("curves", {})) + " |",
           "|---|---|" + "---|" * len(first.get("curves", {}))]
    for seed, rd in rds.items():
        cells = []
        for name, points in rd.get("curves", {}).items():
            best = min((p.get("test_distortion", float("nan")) for p in points), default=float("nan"))
            flag = ((rd.get("learned") or {}).get(name) or {}).get("learned")
            cells.append(f"{best:.2f} ({'yes' if flag else 'no' if flag is not None else 'not checked'})")
        line = rd.get("no_information_test")
        out.append(f"| {seed} | {'n/a' if line is None else f'{line:.2f}'} | " + " | ".join(cells) + " |")
    curves = first.get("curves", {})
    if curves:
        betas = [p["beta"] for p in next(iter(curves.values()))]
        out += ["", f"Seed {res.seed_list[0]}: rate / distortion in nats per beta, held out.", "",
                "| representation | " + " | ".join(f"beta {b:g}" for b in betas) + " |", "|---|" + "---|" * len(betas)]
        for name, points in curves.items():
            out.append(f"| {name} | " + " | ".join(f"{p.get('test_rate', float('nan')):.2f} / "
                                                    f"{p.get('test_distortion', float('nan')):.2f}" for p in points) + " |")
    return out + [""]

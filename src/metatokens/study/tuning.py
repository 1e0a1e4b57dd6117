"""REPORT.md of `metatokens reproduce --tune`: the learning-rate grid on dev prompts, and the rate it chooses
for each tuned model.

The rule, fixed before the grid ran: a model's rate is the one with the highest dev exact match at L,
averaged over the scale's tasks (a tie goes to the smaller rate). Only dev prompts are read: the
fine-tunes' learning curves and the evaluations here draw from the dev split, which no test prompt
can fall into (`metatokens.tasks.split_of`). The choice is then frozen by hand in
`metatokens.study.design` (`Scale.ft_lrs`), where the study's stage keys pick it up.
"""
from __future__ import annotations

import time
from typing import Any

from .design import LR_FROM, TASK_LABELS, TUNED_MODELS
from .results import StudyResults, baseline, environment, training_record


def dev_accuracy(res: StudyResults, m: str, lr: float, task: str, length: int) -> float | None:
    seed = res.seed_list[0]
    stage = f"evaluate-{m}-lr{lr:g}"
    if stage not in res.seeds[seed]:
        return None
    c = res.result(seed, stage).get(task, {}).get("prompts", {}).get(str(length))
    return None if c is None else c["exact_match"]


def choose_rates(res: StudyResults) -> dict[str, dict[str, Any]]:
    """Per tuned model: the score (mean dev exact match at L over the tasks) of every rate, and the rate chosen."""
    sc, L = res.scale, res.scale.ft_len
    out = {}
    for m in [m for m in TUNED_MODELS if m in sc.models]:
        scores = {}
        for lr in sc.lr_grid:
            accs = [dev_accuracy(res, m, lr, t, L) for t in sc.tasks]
            scores[lr] = None if any(a is None for a in accs) else sum(accs) / len(accs)
        measured = {lr: v for lr, v in scores.items() if v is not None}
        best = max(sorted(measured), key=lambda lr: measured[lr]) if measured else None  # ties: the smaller rate
        out[m] = {"scores": scores, "chosen": best}
    return out


def render_tuning(res: StudyResults) -> str:
    sc, L = res.scale, res.scale.ft_len
    seed = res.seed_list[0]
    sv = res.seed_values.get(seed, sc.tune_seed)
    chosen = choose_rates(res)
    out = [
        "# metatokens: the fine-tuning learning rate, chosen on dev prompts",
        "",
        f"Scale `{res.scale_name}-tune` (the tuning run of scale `{res.scale_name}`), one seed (seed value {sv}, never "
        "a study seed); written "
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}. Re-create: `metatokens reproduce --scale {res.scale_name} --tune "
        f"--out {res.out}`.",
        "",
        f"Every model of the paper's comparison, and GPT-2 with RoPE, is fine-tuned with the same recipe at each rate of "
        f"the grid ({', '.join(f'{lr:g}' for lr in sc.lr_grid)}; {sc.ft_steps} steps, batch {sc.ft_batch}, cosine decay "
        f"to {sc.ft_min_lr_ratio:g}x) from its own pre-training, and scored on {sc.eval_n} **dev** prompts per task and "
        "length. No test prompt is read here: the dev split is disjoint from the test split by the prompt's hash. "
        f"The rule (fixed before the grid ran): the rate with the highest dev exact match at L = {L}, averaged over "
        f"{', '.join(TASK_LABELS[t] for t in sc.tasks)}; a tie goes to the smaller rate. The controls take the rate of "
        "the model they are compared with: "
        + ", ".join(f"{sc.models[c].label} from {sc.models[t].label}" for c, t in LR_FROM.items() if c in sc.models)
        + ".",
        "",
        "## The grid (dev exact match %, at L and 2L)",
        "",
        "| model | rate | " + " | ".join(f"{TASK_LABELS[t]} L | 2L" for t in sc.tasks) + " | mean at L | chosen |",
        "|---|---|" + "---|---|" * len(sc.tasks) + "---|---|",
    ]
    for m, info in chosen.items():
        for lr in sc.lr_grid:
            cells = []
            for t in sc.tasks:
                for n in (L, 2 * L):
                    a = dev_accuracy(res, m, lr, t, n)
                    cells.append("n/a" if a is None else f"{100 * a:.1f}")
            score = info["scores"][lr]
            out.append(f"| {sc.models[m].label} | {lr:g} | " + " | ".join(cells) + " | "
                       + ("n/a" if score is None else f"{100 * score:.1f}") + " | "
                       + ("**yes**" if lr == info["chosen"] else "") + " |")
    for which in ("majority", "chance"):
        cells = []
        for t in sc.tasks:
            for n in (L, 2 * L):
                v = baseline(res, t, str(n), which)
                cells.append("n/a" if v is None else f"{100 * v:.1f}")
        out.append(f"| *{which} answer* | | " + " | ".join(cells) + " | | |")
    out += ["", "Frozen in `metatokens.study.design` as `ft_lrs = {"
            + ", ".join(f'"{m}": {info["chosen"]:g}' for m, info in chosen.items() if info["chosen"] is not None)
            + "}`.", ""]
    y = sc.yarn
    if y is not None and any(f"yarn-{m}" in res.seeds[seed] for m in y.models):
        out += ["## The YaRN protocol, tried on dev prompts", "",
                f"YaRN on at scale {y.scale:g} (window {y.scale:g}x the pre-training window), fine-tuned at L_y = {y.length} "
                f"for {y.steps} steps (batch {y.batch}, lr {y.lr:g}) from the fine-tune at rate {max(sc.lr_grid):g}, "
                f"tested at L_y and 2 L_y = {2 * y.length} on dev prompts (exact match %).", "",
                "| model | " + " | ".join(f"{TASK_LABELS[t]} L_y | 2 L_y" for t in y.tasks) + " |",
                "|---|" + "---|---|" * len(y.tasks)]
        for m in y.models:
            if f"yarn-{m}" not in res.seeds[seed]:
                continue
            r = res.result(seed, f"yarn-{m}")
            cells = []
            for t in y.tasks:
                for n in (y.length, 2 * y.length):
                    c = r.get(t, {}).get("prompts", {}).get(str(n))
                    cells.append("n/a" if c is None else f"{100 * c['exact_match']:.1f}")
            out.append(f"| {sc.models[m].label} | " + " | ".join(cells) + " |")
        for which in ("majority", "chance"):
            cells = []
            for t in y.tasks:
                for n in (y.length, 2 * y.length):
                    v = baseline(res, t, str(n), which)
                    cells.append("n/a" if v is None else f"{100 * v:.1f}")
            out.append(f"| *{which} answer* | " + " | ".join(cells) + " |")
        out.append("")
    out += ["## Training prompts", "", "Per fine-tune: prompts drawn, distinct, and how many of them hash into the dev "
            "or test split (both must be 0).", "", "| stage | task | drawn | distinct | in dev | in test |",
            "|---|---|---|---|---|---|"]
    for name, rec in res.seeds[seed].items():
        record = training_record(rec.result)
        for task, c in (record or {}).items():
            out.append(f"| {name} | {TASK_LABELS.get(task, task)} | {c.get('drawn')} | {c.get('distinct')} | "
                       f"{c.get('in_dev')} | {c.get('in_test')} |")
    out += ["", "## Stages", "", "| stage | wall time (s) | command |", "|---|---|---|"]
    for name, rec in res.seeds[seed].items():
        out.append(f"| {name} | {rec.wall_s:.0f} | `{rec.command}` |")
    out += ["", "## Environment", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in environment().items()]
    return "\n".join(out) + "\n"

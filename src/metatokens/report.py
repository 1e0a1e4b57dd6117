"""REPORT.md of `metatokens reproduce`: our measurements beside the paper's numbers.

Every number in the report is read from a stage's stage.json (measured in this study); the
paper's numbers are constants from SPEC section 6-7, each in its own column.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from typing import Any

from .analysis.ablate import VARIANTS
from .reproduce import (
    MODELS, PAPER_ABLATION, PAPER_ACCURACY, PAPER_ENTROPY_DIFF, PAPER_LENGTH_GAIN, PAPER_LOGIT_BOOST, TASKS,
    environment,
)


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


def _figure(pipe, rel: str, alt: str) -> str:
    """Copy a stage's figure into OUT/figures (seed 0) and link it."""
    src = pipe.out / "stages" / "seed0" / rel
    if not src.is_file():
        return f"*({alt}: figure missing)*"
    dst = pipe.out / "figures" / rel.replace("/", "-")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return f"![{alt}](figures/{dst.name})"


def _loss_figure(pipe) -> str:
    from .commands.plot import plot_runs

    runs = [pipe.out / "stages" / "seed0" / f"pretrain-{m}" / "run" for m in MODELS]
    if not all((r / "metrics.jsonl").is_file() for r in runs):
        return "*(loss curves: missing)*"
    path = plot_runs(runs, pipe.out / "figures" / "pretrain-loss.png", names=list(MODELS.values()))
    return f"![Pre-training loss of the three models, seed 0]({path.relative_to(pipe.out)})"


def _seed_models(pipe, seed: int, task: str) -> list[dict[str, Any]]:
    """The evaluation JSON models of one seed (the three models, plus RoPE + YaRN), in a fixed order."""
    models = []
    for m in MODELS:
        folder = pipe.out / "stages" / f"seed{seed}" / f"evaluate-{m}-{task}"
        for stem in (task, f"{task}-yarn"):
            if (folder / f"{stem}.json").is_file():
                models += json.loads((folder / f"{stem}.json").read_text())["models"]
    return models


def _mean_over_seeds(per_seed: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each model's metrics averaged over seeds, matched by model name and length; error bars become
    mean ± standard deviation. A length measured in only one seed (the others skipped it as too long)
    keeps that seed's 95% Wilson interval and is marked `single_seed`."""
    rows: dict[tuple[str, int], list[dict[str, Any]]] = {}
    first: dict[str, dict[str, Any]] = {}  # in first-seen order
    for models in per_seed:
        for model in models:
            first.setdefault(model["name"], model)
            for row in model["results"]:
                rows.setdefault((model["name"], row["length"]), []).append(row)
    merged = []
    for name in first:
        lengths = sorted({length for (n, length) in rows if n == name})
        results = []
        for length in lengths:
            measured = [r for r in rows[name, length] if not r.get("skipped")]
            if not measured:
                results.append(dict(rows[name, length][0]))
                continue
            out = dict(measured[0])
            if len(measured) == 1:
                out["single_seed"] = True
            else:
                for key in ("exact_match", "token_accuracy"):
                    mean, std = mean_std([r.get(key) for r in measured])
                    if mean is not None:
                        out[key], out[f"{key}_ci95"] = mean, [max(0.0, mean - (std or 0.0)), min(1.0, mean + (std or 0.0))]
            results.append(out)
        merged.append({**first[name], "results": results})
    return merged


def _accuracy_figure(pipe, task: str, seeds: int) -> str:
    """One accuracy-vs-length plot with the three models: seed 0 with 95% Wilson intervals, or with
    several seeds their mean with ± one standard deviation."""
    from .evaluate import task_plot

    per_seed = [_seed_models(pipe, seed, task) for seed in range(seeds)]
    if not per_seed[0]:
        return f"*({task}: accuracy figure missing)*"
    models = per_seed[0] if seeds == 1 else _mean_over_seeds(per_seed)
    first = json.loads((pipe.out / "stages" / "seed0" / f"evaluate-gpt2-{task}" / f"{task}.json").read_text())
    lengths = sorted({r["length"] for m in models for r in m["results"]})
    bars = "95% Wilson intervals" if seeds == 1 else f"mean ± standard deviation over {seeds} seeds"
    if any(r.get("single_seed") for m in models for r in m["results"]):
        bars += " (95% Wilson where only one seed fits)"
    path = task_plot({**first, "models": models, "lengths": lengths, "error_bars": bars},
                     pipe.out / "figures" / f"accuracy-{task}.png")
    return f"![{task}: exact match and token accuracy by length, {bars}]({path.relative_to(pipe.out)})"


def render_report(pipe, results: list[dict[str, Any]]) -> str:
    sc, L = pipe.scale, pipe.scale.ft_len
    n_seeds = len(results)
    spread = " (mean ± standard deviation over seeds)" if n_seeds > 1 else ""
    out = [
        "# metatokens reproduction report",
        "",
        f"Scale `{pipe.scale_name}` ({sc.budget}), {n_seeds} seed(s){spread}; written "
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}. Paper: Shah et al., *Language Modeling with Learned "
        "Meta-Tokens*, arXiv 2509.16278. Every number in a column marked *ours* was measured by this run; "
        "the *paper* columns are the paper's own numbers (GPT-2 small at 1024 tokens, pre-trained on about "
        "98B tokens of C4), so at small scales expect them to differ.",
        "",
        f"Re-create this report: `metatokens reproduce --scale {pipe.scale_name} --seeds {pipe.seeds} --out {pipe.out}` "
        "(finished stages are reused; delete `stages/` to start over).",
        "",
        "## 1. Pre-training",
        "",
        "| model | parameters | steps | training tokens | val loss / text token (ours) | val bits per byte (ours) |",
        "|---|---|---|---|---|---|",
    ]
    for m, label in MODELS.items():
        rows = [r["pretrain"][m] for r in results]
        out.append(f"| {label} | {rows[0]['params']:,} | {rows[0]['step']} | {rows[0]['train_tokens']:,} | "
                   f"{_num([r['val_loss'] for r in rows])} | {_num([r['val_bpb'] for r in rows])} |")
    out += ["", "Validation loss counts text tokens only (no loss on meta-token targets), so the three compare fairly.", "",
            _loss_figure(pipe), ""]

    out += [
        f"## 2. Task accuracy after fine-tuning at L = {L} (exact match %)",
        "",
        f"Fine-tuned {sc.ft_steps} steps (batch {sc.ft_batch}) per task, evaluated on {sc.eval_n} held-out test "
        f"prompts of 0.75 L to L tokens. Paper: fine-tuned and evaluated at 512 (its Fig. 1).",
        "",
        "| task | " + " | ".join(f"{label} ours | paper" for label in MODELS.values()) + " | GPT-Neo-125M paper |",
        "|---|" + "---|---|" * len(MODELS) + "---|",
    ]
    for task in TASKS:
        cells = []
        for m in MODELS:
            cells.append(_pct([r["eval"][(m, task)]["exact_match"].get(str(L)) for r in results]))
            cells.append(_paper(PAPER_ACCURACY[task][m]))
        out.append(f"| {task} | " + " | ".join(cells) + f" | {_paper(PAPER_ACCURACY[task]['gpt-neo'])} |")
    out += [
        "",
        "Exact match needs every answer token right, so small models sit at its floor (or at the share of the "
        "most common answer) and tie. Token accuracy (answer tokens right under teacher forcing) and answer loss "
        "(nats per answer token; lower is better) separate them sooner. The paper reports exact match only.",
        "",
        "| task | " + " | ".join(f"{label} token acc. % ours" for label in MODELS.values()) + " | "
        + " | ".join(f"{label} answer loss ours" for label in MODELS.values()) + " |",
        "|---|" + "---|" * (2 * len(MODELS)),
    ]
    for task in TASKS:
        evals = {m: [r["eval"][(m, task)] for r in results] for m in MODELS}
        acc = [_pct([e["token_accuracy"].get(str(L)) for e in evals[m]]) for m in MODELS]
        loss = [_num([e["answer_loss"].get(str(L)) for e in evals[m]]) for m in MODELS]
        out.append(f"| {task} | " + " | ".join(acc + loss) + " |")
    out.append("")

    out += [
        f"## 3. Length generalisation: L = {L} -> 2L = {2 * L}, and 4L = {4 * L} with YaRN (exact match %)",
        "",
        "2L is inside every model's pre-training window; 4L is beyond it, so only the RoPE model can be read "
        "there, after YaRN extension. Paper: fine-tuned at 256 and evaluated at 512, gains of "
        + ", ".join(f"{PAPER_LENGTH_GAIN[m]:+.1f} points ({MODELS[m]})" for m in MODELS) + ".",
        "",
        "| model | task | L ours | 2L ours | 2L - L ours | 4L + YaRN ours | paper gain at 2x "
        "| token acc. %: L / 2L / 4L + YaRN ours |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows_from = len(out)
    for m, label in MODELS.items():
        for task in TASKS:
            acc = [r["eval"][(m, task)]["exact_match"] for r in results]
            diffs = [None if a.get(str(L)) is None or a.get(str(2 * L)) is None else a[str(2 * L)] - a[str(L)] for a in acc]
            mean, _ = mean_std(diffs)
            gain = "n/a" if mean is None else f"{100 * mean:+.1f}"
            yarn = _pct([a.get(f"{4 * L}+yarn") for a in acc]) if m == "meta-rope" else "beyond the APE table"
            tok = [r["eval"][(m, task)]["token_accuracy"] for r in results]
            tok_cells = [_pct([t.get(k) for t in tok]) for k in (str(L), str(2 * L), f"{4 * L}+yarn")]
            if m != "meta-rope":
                tok_cells = tok_cells[:2]
            out.append(f"| {label} | {task} | {_pct([a.get(str(L)) for a in acc])} | {_pct([a.get(str(2 * L)) for a in acc])} "
                       f"| {gain} | {yarn} | {_paper(PAPER_LENGTH_GAIN[m], sign=True)} | {' / '.join(tok_cells)} |")
    if any("n/a" in line for line in out[rows_from:]):
        out += ["", "n/a: the prompts plus answers of that length do not fit the model's learned position table."]
    out.append("")
    out += [_accuracy_figure(pipe, task, n_seeds) for task in TASKS] + [""]

    out += [
        f"## 4. Ablations at meta positions, at L = {L} (exact match %)",
        "",
        "Same weights, changed at inference: the positional encoding of meta-tokens zeroed (APE: no position "
        f"vector; RoPE: q/k unrotated), or their token embedding zeroed. Paper (Table 2): {PAPER_ABLATION}.",
        "",
        "Answer loss (nats per answer token) shows an ablation's effect even where exact match is at its floor.",
        "",
        "| model | task | full ours | meta position zeroed ours | meta embedding zeroed ours "
        "| answer loss: full / position zeroed / embedding zeroed ours |",
        "|---|---|---|---|---|---|",
    ]
    variants = tuple(VARIANTS)  # full, meta position zeroed, meta embedding zeroed
    for m in ("meta-ape", "meta-rope"):
        for task in TASKS:
            rows = [r["ablate"][(m, task)] for r in results]
            out.append(f"| {MODELS[m]} | {task} | "
                       + " | ".join(_pct([row[v]["exact_match"] for row in rows]) for v in variants) + " | "
                       + " / ".join(_num([row[v]["answer_loss"] for row in rows]) for v in variants) + " |")
    out += ["", _figure(pipe, "ablate-meta-rope-list_recall/ablate.png", "Ablations, Meta+RoPE, List Recall"), ""]

    ent = [r["analysis"]["entropy"] for r in results]
    diff = [e["entropy_difference"]["mean"] if e.get("entropy_difference") else None for e in ent]
    boost = [e["max_logit_boost"]["mean"] if e.get("max_logit_boost") else None for e in ent]
    ci = ent[0]["entropy_difference"]["ci95"] if ent[0].get("entropy_difference") else None
    out += [
        "## 5. Attention sharpening at meta-tokens (Meta+RoPE, List Recall)",
        "",
        "| quantity | ours | paper |",
        "|---|---|---|",
        f"| attention entropy, non-meta minus meta query positions (nats) | {_num(diff)}"
        + (f" (95% CI seed 0: {ci[0]:.3f} to {ci[1]:.3f})" if ci else "") + f" | {PAPER_ENTROPY_DIFF:.2f} |",
        f"| max attention logit, real meta embedding minus zeroed | {_num(boost)} | {PAPER_LOGIT_BOOST:.2f} |",
        "",
        _figure(pipe, "analyze-entropy/entropy.png", "Entropy difference by layer and head"),
        "",
        "## 6. Residual stream: what a meta-token caches",
        "",
        "Cosine similarity between the meta-token's hidden state and earlier tokens' by distance, per layer "
        "(paper: high near the meta-token, fading with distance); logit lens in the stage's residual.json.",
        "",
        _figure(pipe, "analyze-residual/residual.png", "Cosine similarity by distance and layer"),
        "",
        "## 7. Rate-distortion of a VIB probe",
        "",
        "Frozen model; a variational information bottleneck head on the hidden state of the last meta-token, "
        "of the last token, and of the last meta-token with its positional encoding zeroed; beta swept from "
        "0.01 to 1. Paper: at every rate the meta-token has lower distortion than the last token, and zeroing its "
        "position lowers it further.",
        "",
        _figure(pipe, "analyze-rate-distortion/rate_distortion.png", "Distortion vs rate"),
        "",
    ]
    curves = results[0]["analysis"]["rate-distortion"].get("curves", {})
    if curves:
        betas = [p["beta"] for p in next(iter(curves.values()))]
        out += ["Seed 0, training examples: rate / distortion in nats per beta.", "",
                "| representation | " + " | ".join(f"beta {b:g}" for b in betas) + " |",
                "|---|" + "---|" * len(betas)]
        for name, points in curves.items():
            out.append(f"| {name} | " + " | ".join(f"{p['rate']:.2f} / {p['distortion']:.2f}" for p in points) + " |")
        out.append("")
    out += _stage_table(pipe)
    env = environment()
    out += ["", "## Environment", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in env.items()] + [""]
    return "\n".join(out) + "\n"


def _stage_table(pipe) -> list[str]:
    now = sum(r.wall_s for r in pipe.records if not r.cached)
    total = sum(r.wall_s for r in pipe.records)
    lines = ["## Stages, commands and wall time", "",
             f"Wall time of all stages: {total / 60:.1f} min, of which {now / 60:.1f} min were run now (cached stages "
             "show the time they took when run). "
             "`{stage}` is the stage's folder under `stages/`; `{name}` the folder of the stage it reads.", "",
             "| stage | wall time (s) | cached | command |", "|---|---|---|---|"]
    for r in pipe.records:
        lines.append(f"| {r.name} | {r.wall_s:.0f} | {'yes' if r.cached else 'no'} | `{r.command}` |")
    return lines

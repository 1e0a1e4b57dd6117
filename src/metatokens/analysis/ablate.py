"""Ablations at meta positions, at inference time (docs/method.md section 3; the paper's Table 2).

The same weights are run three ways: as trained ("full"), with the positional encoding zeroed at
meta positions (meta_pos="zero": no APE vector there, no RoPE rotation of meta q/k), and with
the meta-token's embedding zeroed (meta_embed="zero"). Accuracy is exact match of the answer.

Accuracy is scored by `metatokens.evaluation.scoring.score_examples`, as `metatokens evaluate` scores it:
teacher-forced, the prompt plus the answer (without its last id) fed once, an answer correct
when the argmax at every answer position is the answer's token (EOS included). That exact match
equals greedy decoding's: if every teacher-forced argmax is right, greedy decoding reproduces
the answer token by token, and if one is wrong, greedy decoding first goes wrong at the first
such position. (Token accuracy, the second figure, is teacher-forced and so can differ from
greedy decoding's.) The argmax never picks the meta-token or ids past the tokenizer's
vocabulary, as generation never samples them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..evaluation.scoring import score_examples
from ..model.gpt import GPT
from ..plotting import analysis_title, pyplot, save_figure, wrap_title
from ..progress import progress_bar
from ..tasks.registry import make_examples
from .common import check_fits, model_variant

VARIANTS = {  # name -> config changes, in the order of the table's columns
    "full": {},
    "zero_meta_pos": {"meta_pos": "zero"},
    "zero_meta_embed": {"meta_embed": "zero"},
}
LABELS = {"full": "full model", "zero_meta_pos": "meta pos. zeroed", "zero_meta_embed": "meta embed. zeroed"}


def answer_accuracy(
    model: torch.nn.Module,
    examples: Sequence,
    *,
    meta_token_id: int | None = None,
    vocab_limit: int | None = None,
    batch_size: int = 16,
    progress: bool = False,
    desc: str = "accuracy",
) -> dict[str, Any]:
    """Teacher-forced exact match and token accuracy of the answers, with 95% Wilson intervals.

    The scoring is `metatokens.evaluation.scoring.score_examples`, so `ablate` and `evaluate` report the
    same number for the same model; `model(idx)` must return (logits (B, T, V), ...).
    """
    device = next(model.parameters()).device
    pad = 0 if meta_token_id != 0 else 1  # never the meta id, so padding adds no meta-token
    with progress_bar(total=len(examples), desc=desc, unit="example", disable=not progress) as bar:
        score = score_examples(
            model, examples, pad_id=pad, vocab_limit=vocab_limit, meta_token_id=meta_token_id,
            batch_size=batch_size, device=device, progress=bar,
        )
    return score.summary()


def ablation_study(
    model: GPT,
    tokenizer,
    tasks: Sequence[str],
    lengths: Sequence[int],
    *,
    difficulty: str = "medium",
    n: int = 100,
    seed: int = 0,
    split: str = "test",
    batch_size: int = 16,
    progress: bool = False,
) -> dict[str, Any]:
    """Accuracy of the three variants on every (task, length); rows in task-major order."""
    examples = {}
    for task in tasks:  # made (and checked) before any model run, so bad input fails fast
        for length in lengths:
            batch = make_examples(task, tokenizer, length=length, difficulty=difficulty, n=n, seed=seed, split=split)
            check_fits(model, batch, with_answer=True, what=f"{task} prompts with answers")
            examples[task, length] = batch
    models = {name: model if not changes else model_variant(model, **changes) for name, changes in VARIANTS.items()}
    rows = []
    for (task, length), batch in examples.items():
        row: dict[str, Any] = {"task": task, "length": length, "n": len(batch)}
        for name, variant in models.items():
            row[name] = answer_accuracy(
                variant, batch, meta_token_id=model.config.meta_token_id, vocab_limit=tokenizer.vocab_size,
                batch_size=batch_size, progress=progress, desc=f"{task}@{length} {name}",
            )
        rows.append(row)
    return {"difficulty": difficulty, "split": split, "seed": seed, "variants": VARIANTS, "rows": rows}


def markdown_table(result: dict[str, Any], metric: str = "exact_match") -> str:
    """Accuracy in percent per task and length; the ablations also show their change from full."""
    head = "| task | length | n | " + " | ".join(LABELS[v] for v in VARIANTS) + " |"
    lines = [head, "|---|---:|---:|" + "---:|" * len(VARIANTS)]
    for row in result["rows"]:
        full = 100 * row["full"][metric]
        cells = [f"{full:.1f}"]
        for name in list(VARIANTS)[1:]:
            value = 100 * row[name][metric]
            cells.append(f"{value:.1f} ({value - full:+.1f})")
        lines.append(f"| {row['task']} | {row['length']} | {row['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def bar_labels(result: dict[str, Any], metric: str = "exact_match") -> dict[str, list[str]]:
    """The text over each bar of `plot_ablation`: the full model's accuracy in percent ("75.0"),
    and for each ablation its change from the full model in points ("-75.0", "+12.5", "±0.0"), so a
    bar too short to see still says what zeroing did."""
    labels: dict[str, list[str]] = {name: [] for name in VARIANTS}
    for row in result["rows"]:
        full = 100 * row["full"][metric]
        labels["full"].append(f"{full:.1f}")
        for name in list(VARIANTS)[1:]:
            diff = round(100 * row[name][metric] - full, 1)
            labels[name].append("±0.0" if diff == 0 else f"{diff:+.1f}")
    return labels


def plot_ablation(result: dict[str, Any], path, title: str = "") -> None:
    """Grouped bars: exact-match accuracy of each variant, one group per (task, length); the full
    model's bars carry its accuracy, the ablations' their change from it."""
    plt = pyplot()
    rows = result["rows"]
    groups = [f"{r['task'].replace('_', ' ').title()}\n@{r['length']}" for r in rows]  # list_recall: List Recall
    width = 0.8 / len(VARIANTS)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.8 * len(rows) + 2), 4.8))
    x = np.arange(len(rows))
    texts = bar_labels(result)
    for k, name in enumerate(VARIANTS):
        values = [100 * r[name]["exact_match"] for r in rows]
        colour = f"C{k}"
        # An edge in the bar's colour keeps a bar of height 0 visible as a line at 0.
        bars = ax.bar(x + (k - (len(VARIANTS) - 1) / 2) * width, values, width, label=LABELS[name], color=colour,
                      edgecolor=colour, linewidth=1.5)
        ax.bar_label(bars, labels=texts[name], fontsize=7.5, padding=2,
                     fontweight="bold" if name == "full" else "normal")
    ax.set_xticks(x, groups)
    ax.set_ylabel("exact match (%)")
    ax.set_ylim(-2, 122)  # room above 100 for the labels and the legend
    ax.set_yticks(range(0, 101, 20))
    ax.axhline(0, color="black", lw=0.8)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=len(VARIANTS), loc="upper center", frameon=False)
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    lengths = ", ".join(str(n) for n in dict.fromkeys(r["length"] for r in rows))
    head = title or analysis_title(result, "ablations at meta positions (inference time)")
    if not all(t in head for t in tasks):  # name the tasks where the caller's title does not
        head += f"\n{', '.join(tasks)} @ {lengths} tokens"
    chars = int(fig.get_figwidth() * 72 / (9.5 * 0.6))  # what fits across the figure at this font size
    ax.set_title(wrap_title(head + "\nlabels: full model's exact match %; each ablation's change from it (points)", chars),
                 fontsize=9.5)
    fig.tight_layout()
    save_figure(fig, path)

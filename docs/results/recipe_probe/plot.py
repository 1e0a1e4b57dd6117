"""The figure of the List Recall probes: held-out exact match by optimiser step, with the floor lines.

    python docs/results/recipe_probe/plot.py      # -> docs/results/recipe_probe/list-recall-batch-and-schedule.png

Reads the metrics.jsonl kept beside this file (and the 4,000-step run of docs/results/list_recall_probe);
the majority-answer and chance lines come from the runs' own held-out prompts (100, the test split under
the fine-tuning seed + HELD_OUT_SEED_OFFSET, as `metatokens finetune` draws them).
"""

import json
from pathlib import Path

from metatokens.evaluation.scoring import answer_baselines
from metatokens.training.finetune import HELD_OUT_SEED_OFFSET
from metatokens.plotting import pyplot, save_figure
from metatokens.tasks import make_examples
from metatokens.tokenizer import MetaTokenizer

HERE = Path(__file__).resolve().parent
RUNS = [(HERE.parent / "list_recall_probe" / "seed0-meta", "batch 16, 4,000 steps (list_recall_probe)"),
        (HERE / "list-recall-batch8-4000", "batch 8, 4,000 steps (half the examples)"),
        (HERE / "list-recall-batch16-2500", "batch 16, 2,500-step cosine")]

plt = pyplot()
fig, ax = plt.subplots(figsize=(8, 4.8))
for run, label in RUNS:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    points = [(r["step"], 100 * r["val_exact_match"]) for r in rows if "val_exact_match" in r]
    ax.plot(*zip(*points), marker="o", ms=4, label=label)
info = json.loads((RUNS[0][0] / "run.json").read_text())["finetune"]
tok = MetaTokenizer.from_file(HERE / "list-recall-batch8-4000" / "tokenizer.json")  # the tiny preset's, as every run's
held_out = make_examples("list_recall", tok, length=info["max_len"], n=info["eval_n"], split="test",
                         seed=info["seed"] + HELD_OUT_SEED_OFFSET)
floors = answer_baselines(held_out)
ax.axhline(100 * floors["chance"], color="gray", ls="-.", lw=1, label=f"chance ({100 * floors['chance']:.1f}%)")
ax.axhline(100 * floors["majority"], color="gray", ls=":", lw=1, label=f"majority answer ({100 * floors['majority']:.1f}%)")
ax.set_xlabel("optimiser step")
ax.set_ylabel("held-out exact match % (100 prompts)")
ax.set_ylim(-3, 103)
ax.grid(alpha=0.3)
ax.legend(fontsize=8, loc="upper left")
ax.set_title("List Recall alone, tiny Meta+RoPE from scratch, L = 96, seed 0:\n"
             "with half the examples, or a shorter schedule, it stays below chance", fontsize=10)
fig.tight_layout()
print(save_figure(fig, HERE / "list-recall-batch-and-schedule.png"))

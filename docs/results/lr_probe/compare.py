"""Paired differences on the same 100 test prompts at L = 96: lr 3e-3 against the study's own runs
at lr 2e-3 (docs/results/reproduce_tiny_2026-12-06), with the study's own intervals
(metatokens.stats: a bootstrap over the prompts for one seed; over seeds and prompts, widened to
the t-interval over seeds, for several).

Two kinds of lr-3e-3 runs are compared: the two fine-tunes that missed List Recall's jump in the
study, re-run alone (<run>/eval/<task>.json), and the whole of seed 0 re-run at lr 3e-3 by
`metatokens reproduce` (its stage results became the current study's seed 0:
docs/results/reproduce_tiny/stages/seed0/). A last table compares the two whole studies, all 3 seeds,
model by model (the same test prompts in both: each seed's evaluation seed is the study seed).

    python docs/results/lr_probe/compare.py [FOLDER]   # FOLDER holds <run>/eval/<task>.json (default: beside this file)
"""

import json
import sys
from pathlib import Path

from metatokens.stats import contrast, paired

HERE = Path(__file__).parent
OLD = HERE.parent / "reproduce_tiny_2026-12-06" / "stages"  # the study at lr 2e-3
NEW = HERE.parent / "reproduce_tiny" / "stages"  # the study at lr 3e-3; its seed 0 is this probe's whole seed 0
RUNS = [("seed2-meta-rope-lr3e-3", 2, "meta-rope"), ("seed1-scratch-meta-lr3e-3", 1, "scratch-meta")]
MODELS = ["meta-rope", "meta-ape", "scratch-meta", "gpt2", "gpt2-rope", "gpt2-rope-wide", "scratch-plain"]
TASKS = ("list_recall", "copying")
HEADER = "| {} | task | lr 2e-3 | lr 3e-3 | lr 3e-3 - lr 2e-3 [95% CI] |\n|---|---|---:|---:|---|"


def at_L(stages: Path, seed: int, model: str, task: str) -> dict:
    """What an evaluate stage of a study kept for one task at L = 96: exact_per_example, prompts (sha256)."""
    stage = json.loads((stages / f"seed{seed}" / f"evaluate-{model}" / "stage.json").read_text())
    return stage["result"][task]["prompts"]["96"]


def row(label: str, task: str, old: list[dict], new: list[dict]) -> str:
    """One line: old and new are per seed, each {exact_per_example, prompts}, on the same prompts."""
    if any(o["prompts"] != n["prompts"] for o, n in zip(old, new)):
        raise SystemExit(f"{label} {task}: not the study's test prompts")
    c = contrast([paired([n["exact_per_example"] for n in new], [o["exact_per_example"] for o in old])])
    mean = lambda runs: 100 * sum(sum(r["exact_per_example"]) / len(r["exact_per_example"]) for r in runs) / len(runs)
    lo, hi = c["ci95"]
    return f"| {label} | {task} | {mean(old):.0f}% | {mean(new):.0f}% | {100 * c['diff']:+.0f} [{100 * lo:+.0f}, {100 * hi:+.0f}] |"


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    print(HEADER.format("run re-done alone"))
    for run, seed, model in RUNS:
        for task in TASKS:
            got = json.loads((folder / run / "eval" / f"{task}.json").read_text())["models"][0]["results"][0]
            new = {"exact_per_example": got["exact_per_example"], "prompts": got["prompts_sha256"]}
            print(row(run, task, [at_L(OLD, seed, model, task)], [new]))
    print("\n" + HEADER.format("seed 0, the whole seed re-run"))
    for model in MODELS:
        for task in TASKS:
            print(row(model, task, [at_L(OLD, 0, model, task)], [at_L(NEW, 0, model, task)]))
    print("\n" + HEADER.format("both studies, 3 seeds (mean)"))
    for model in MODELS:
        for task in TASKS:
            print(row(model, task, [at_L(OLD, s, model, task) for s in range(3)],
                      [at_L(NEW, s, model, task) for s in range(3)]))


if __name__ == "__main__":
    main()

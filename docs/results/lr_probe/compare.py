"""Paired differences on the same 100 test prompts at L = 96: lr 3e-3 against the study's own runs
at lr 2e-3 (docs/results/reproduce_tiny_2026-12-06), with a bootstrap 95% interval over the prompts.

Two kinds of lr-3e-3 runs are compared: the two fine-tunes that missed List Recall's jump in the
study, re-run alone (<run>/eval/<task>.json), and the whole of seed 0 re-run at lr 3e-3 by
`metatokens reproduce` (its stage results became the current study's seed 0:
docs/results/reproduce_tiny/stages/seed0/).

    python docs/results/lr_probe/compare.py [FOLDER]   # FOLDER holds <run>/eval/<task>.json (default: beside this file)
"""

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
STUDY = HERE.parent / "reproduce_tiny_2026-12-06" / "stages"  # the study at lr 2e-3
PROBE_STUDY = HERE.parent / "reproduce_tiny" / "stages" / "seed0"  # the whole of seed 0 at lr 3e-3, now the study's
RUNS = [("seed2-meta-rope-lr3e-3", 2, "meta-rope"), ("seed1-scratch-meta-lr3e-3", 1, "scratch-meta")]
SEED0_MODELS = ["meta-rope", "meta-ape", "scratch-meta", "gpt2", "gpt2-rope", "gpt2-rope-wide", "scratch-plain"]
TASKS = ("list_recall", "copying")


def evaluation(seed_folder: Path, model: str) -> dict:
    """What an evaluate stage of a study kept (its `result`)."""
    return json.loads((seed_folder / f"evaluate-{model}" / "stage.json").read_text())["result"]


def row(label: str, task: str, ref: dict, got_exact: list[int], got_sha: str, rng) -> str:
    if got_sha != ref["prompts"]:
        raise SystemExit(f"{label} {task}: not the study's test prompts")
    d = np.array(got_exact) - np.array(ref["exact_per_example"])
    boot = d[rng.integers(0, d.size, (10000, d.size))].mean(1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return (f"| {label} | {task} | {100 * np.mean(ref['exact_per_example']):.0f}% | {100 * np.mean(got_exact):.0f}% | "
            f"{100 * d.mean():+.0f} [{100 * lo:+.0f}, {100 * hi:+.0f}] |")


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    rng = np.random.default_rng(0)
    print("| run | task | study (lr 2e-3) | lr 3e-3 | lr 3e-3 - study [95% CI] |")
    print("|---|---|---:|---:|---|")
    for run, seed, model in RUNS:
        ref = evaluation(STUDY / f"seed{seed}", model)
        for task in TASKS:
            got = json.loads((folder / run / "eval" / f"{task}.json").read_text())["models"][0]["results"][0]
            print(row(f"{run} (alone)", task, ref[task]["prompts"]["96"], got["exact_per_example"], got["prompts_sha256"],
                      rng))
    if PROBE_STUDY.is_dir():
        for model in SEED0_MODELS:
            ref, got = evaluation(STUDY / "seed0", model), evaluation(PROBE_STUDY, model)
            for task in TASKS:
                g = got[task]["prompts"]["96"]
                print(row(f"seed 0 {model} (whole seed)", task, ref[task]["prompts"]["96"], g["exact_per_example"],
                          g["prompts"], rng))


if __name__ == "__main__":
    main()

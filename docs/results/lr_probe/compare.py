"""Paired differences on the same 100 test prompts: each lr-3e-3 probe run against the study's own run
(docs/results/reproduce_tiny, lr 2e-3), with a bootstrap 95% interval over the prompts.

    python docs/results/lr_probe/compare.py [FOLDER]   # FOLDER holds <run>/eval/<task>.json (default: beside this file)
"""

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
STUDY = HERE.parent / "reproduce_tiny" / "stages"
RUNS = [("seed2-meta-rope-lr3e-3", 2, "meta-rope"), ("seed1-scratch-meta-lr3e-3", 1, "scratch-meta")]


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    rng = np.random.default_rng(0)
    print("| run | task | study (lr 2e-3) | probe (lr 3e-3) | probe - study [95% CI] |")
    print("|---|---|---:|---:|---|")
    for run, seed, model in RUNS:
        stage = json.loads((STUDY / f"seed{seed}" / f"evaluate-{model}" / "stage.json").read_text())["result"]
        for task in ("list_recall", "copying"):
            ref = stage[task]["prompts"]["96"]
            got = json.loads((folder / run / "eval" / f"{task}.json").read_text())["models"][0]["results"][0]
            if got["prompts_sha256"] != ref["prompts"]:
                raise SystemExit(f"{run} {task}: not the study's test prompts")
            d = np.array(got["exact_per_example"]) - np.array(ref["exact_per_example"])
            boot = d[rng.integers(0, d.size, (10000, d.size))].mean(1)
            lo, hi = np.percentile(boot, [2.5, 97.5])
            print(f"| {run} | {task} | {100 * np.mean(ref['exact_per_example']):.0f}% | "
                  f"{100 * np.mean(got['exact_per_example']):.0f}% | {100 * d.mean():+.0f} [{100 * lo:+.0f}, {100 * hi:+.0f}] |")


if __name__ == "__main__":
    main()

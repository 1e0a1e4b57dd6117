"""The finished stages of a study as `StudyResults`, the cells and paired contrasts read from them, and
the number formats of the report.
"""
from __future__ import annotations

import dataclasses
import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy
import numpy as np
import torch

from .. import __version__
from ..stats import contrast, paired, values
from .design import (
    Scale,
)


@dataclass
class StudyResults:
    out: Path
    scale_name: str
    scale: Scale
    seeds: dict[int, dict[str, Any]]  # seed -> stage name -> StageRecord
    requested_seeds: int
    seed_values: dict[int, int] = dataclasses.field(default_factory=dict)  # seed index -> the seed value it ran with

    def result(self, seed: int, stage: str) -> dict[str, Any]:
        return self.seeds[seed][stage].result

    @property
    def seed_list(self) -> list[int]:
        return sorted(self.seeds)

    def has(self, stage: str) -> bool:
        return all(stage in recs for recs in self.seeds.values())


def environment() -> dict[str, str]:
    env = {"metatokens": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "numpy": numpy.__version__, "platform": platform.platform(), "cpus": str(os.cpu_count())}
    for name in ("tokenizers", "transformers", "safetensors"):
        try:
            env[name] = __import__(name).__version__
        except ImportError:
            pass
    if torch.cuda.is_available():
        env["gpu"] = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return env


def mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the measured values (None and NaN left out); the
    deviation is None below two values."""
    xs = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not xs:
        return None, None
    mean = sum(xs) / len(xs)
    std = (sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else None
    return mean, std


def eval_stage(model: str) -> str:
    """The stage that holds a model's test results: evaluate-<model>, or yarn-<model> for "<model>+yarn"
    (the model after the YaRN protocol: fine-tuned inside the YaRN window and tested there)."""
    return f"yarn-{model.removesuffix('+yarn')}" if model.endswith("+yarn") else f"evaluate-{model}"


def cell(res: StudyResults, seed: int, model: str, task: str, key: str, variant: str = "prompts") -> dict | None:
    """One evaluated (model, task, length key) of one seed, or None where it was not measured."""
    stage = eval_stage(model)
    if stage not in res.seeds[seed]:
        return None
    return res.result(seed, stage).get(task, {}).get(variant, {}).get(key)


def per_seed_examples(res: StudyResults, model: str, task: str, key: str, variant: str = "prompts"):
    """(per-seed exact-match vectors, per-seed prompt digests), or None if any seed lacks the cell."""
    vectors, digests = [], []
    for seed in res.seed_list:
        c = cell(res, seed, model, task, key, variant)
        if c is None:
            return None
        vectors.append(c["exact_per_example"])
        digests.append(c["prompts"])
    return vectors, digests


def compare(res: StudyResults, a: tuple, b: tuple) -> dict[str, Any] | None:
    """Paired difference of exact match, model a minus model b, on the same prompts; a and b are
    (model, task, length key, variant). None when either was not measured."""
    xa, xb = per_seed_examples(res, *a), per_seed_examples(res, *b)
    if xa is None or xb is None:
        return None
    if xa[1] != xb[1]:
        raise ValueError(f"{a} and {b} were scored on different prompts; they cannot be paired")
    return contrast([paired(xa[0], xb[0])])


def training_record(result: dict[str, Any]) -> dict[str, Any] | None:
    """The training-prompt record of a fine-tuning stage, or of a YaRN stage's fine-tune; None where none was kept."""
    return result.get("training_prompts") or (result.get("finetune") or {}).get("training_prompts")


def ablation_contrast(res: StudyResults, model: str, task: str, variant: str) -> dict[str, Any] | None:
    stage = f"ablate-{model}"
    if not res.has(stage):
        return None
    a = [res.result(s, stage)[task][variant]["exact_per_example"] for s in res.seed_list]
    b = [res.result(s, stage)[task]["full"]["exact_per_example"] for s in res.seed_list]
    return contrast([paired(a, b)])


def baseline(res: StudyResults, task: str, key: str, which: str) -> float | None:
    """The majority or chance answer's exact match on the test prompts of a task and length (the same
    prompts for every model of a seed), averaged over seeds."""
    found = []
    for seed in res.seed_list:
        for stage, rec in res.seeds[seed].items():
            if stage.startswith(("evaluate-", "yarn-")) and key.split("+")[0] in rec.result.get("baselines", {}).get(task, {}):
                found.append(rec.result["baselines"][task][key.split("+")[0]][which])
                break
    return sum(found) / len(found) if found else None


def per_seed_interval(per_seed: list[float | None]) -> dict[str, Any] | None:
    """A quantity measured once per seed (with no per-example values to resample): its mean, and the
    seed level of the bootstrap alone (percentiles of the mean of S seeds drawn with replacement);
    no interval below two seeds."""
    xs = [v for v in per_seed if v is not None and math.isfinite(v)]
    if not xs:
        return None
    if len(xs) < 2:
        return {"diff": xs[0], "ci95": None, "seeds": 1, "per_seed": xs}
    return contrast([values([[x] for x in xs])])


def per_example_contrast(per_seed: list[list[float] | None]) -> dict[str, Any] | None:
    """A quantity with one value per example in each seed (an analysis): the hierarchical bootstrap of
    its mean, seeds then examples."""
    if not per_seed or any(not v for v in per_seed):
        return None
    return contrast([values(per_seed)])


def min_gap_at_equal_rate(a: list[dict[str, Any]], b: list[dict[str, Any]], points: int = 25) -> float | None:
    """The smallest held-out distortion gap a - b over the rates both curves reach (linear
    interpolation of each curve's distortion against its rate); None where their rates do not overlap."""
    key = "test_" if "test_distortion" in a[0] else ""
    curves = []
    for c in (a, b):
        pts = sorted((p[f"{key}rate"], p[f"{key}distortion"]) for p in c)
        curves.append((np.array([r for r, _ in pts]), np.array([d for _, d in pts])))
    lo, hi = max(c[0].min() for c in curves), min(c[0].max() for c in curves)
    if not hi >= lo:
        return None
    grid = np.linspace(lo, hi, points) if hi > lo else np.array([lo])
    gap = np.interp(grid, *curves[0]) - np.interp(grid, *curves[1])
    return float(gap.min())


def _learned(res: StudyResults, model: str, task: str, key: str) -> bool:
    vals = [cell(res, s, model, task, key) for s in res.seed_list]
    if any(v is None for v in vals):
        return False
    mean = sum(v["exact_match"] for v in vals) / len(vals)
    floor = max(baseline(res, task, key, "majority") or 0.0, baseline(res, task, key, "chance") or 0.0)
    return mean > floor + LEARNED_MARGIN


LEARNED_MARGIN = 0.05  # a model "does the task" when its exact match clears both the majority answer and chance by this much


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


def _ci(c: dict[str, Any] | None, scale: float = 100.0, digits: int = 1, unit: str = "") -> str:
    if c is None:
        return "n/a"
    lo, hi = c["ci95"] if c.get("ci95") else (None, None)
    d = c["diff"] * scale
    inner = f" [{lo * scale:+.{digits}f}, {hi * scale:+.{digits}f}]" if lo is not None else " (no interval)"
    return f"{d:+.{digits}f}{unit}{inner}"


def stages_and_environment(res: StudyResults) -> list[str]:
    """A report's closing sections: every stage of every seed with its wall time and command, then the machine."""
    out = ["## Stages", "", "| stage | wall time (s) | command |", "|---|---|---|"]
    for seed in res.seed_list:
        for r in res.seeds[seed].values():
            out.append(f"| {r.name} | {r.wall_s:.0f} | `{r.command}` |")
    return out + ["", "## Environment", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in environment().items()]


def _count(items) -> str:
    return {1: "one", 2: "two", 3: "three", 4: "four"}.get(len(items), str(len(items)))


def _fraction(items) -> str:
    return {1: "whole", 2: "half", 3: "third", 4: "quarter"}.get(len(items), f"1/{len(items)}")

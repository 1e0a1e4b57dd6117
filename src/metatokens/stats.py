"""Every interval and test in the project, in one place. Imports nothing from metatokens.

* `wilson_interval`: the score interval of one binomial proportion (an exact-match or token rate
  of one model on one set of prompts; `metatokens evaluate` prints it beside every rate).
* `contrast` and its terms (`paired`, `single`), `verdict`, `mean_interval`: the study's
  comparisons, described below.

Intervals and verdicts: paired bootstrap differences over prompts and seeds.

Every comparison of the study is a *contrast*: a sum of terms ``weight * mean(values)``, where each
term's values are one number per test prompt (1 or 0 for an exact match, or the difference of two
models on the same prompt), measured in each seed. Its 95% interval:

* a bootstrap over prompts (percentiles of the resampled contrast, each term's prompts resampled
  independently; with several seeds, the seeds are resampled too, then the prompts inside each);
* with two or more seeds, also a t-interval over the seeds' own contrast values (each seed's
  value already holds its prompts' noise). With three seeds a seed bootstrap is far too narrow
  (it draws the worst seed three times 1 time in 27, and knows only (S-1)/S of the between-seed
  variance), so the interval reported is the union of the two: the t-interval, widened where the
  prompt bootstrap is wider (when every seed gives the same value, say).

Paired differences (model A minus model B on the same prompts) enter as one term whose values are
``a_i - b_i``; the pairing removes the prompts' own difficulty from the spread. A difference of
differences (a gain from L to 2L, meta minus baseline) is two such terms with weights +1 and -1.

Exact match is 0 or 1, and two models that tie on every prompt (both at the floor, say) give a
bootstrap interval of width 0, which would claim certainty that 100 prompts cannot give. So the
interval (not the point estimate) is computed with pseudo-observations added to each seed, in the
spirit of Agresti and Min's adjusted interval for paired proportions: one prompt won by each
side (+1 and -1) for a paired difference, one right and one wrong answer for a single rate.
With 100 tied prompts the interval is then about +-3 points; with 4, +-50.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from math import sqrt
from typing import Any

import numpy as np

Z95 = 1.959963984540054  # standard normal quantile of 0.975: two-sided 95% intervals


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927); (0, 1) when trials == 0."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denom = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    # At 0 or n successes the bound is exactly 0 or 1; the subtraction above leaves rounding dust.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high


REPS = 4000  # bootstrap replicates


@dataclass
class Term:
    """``weight * mean(values)``, with ``values[s]`` the per-prompt numbers measured in seed s;
    ``pseudo`` are added to every seed's values for the interval only (see the module notes)."""

    weight: float
    values: list[np.ndarray]
    pseudo: tuple[float, ...] = ()


def paired(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], weight: float = 1.0) -> Term:
    """The term ``weight * mean(a - b)``; a[s] and b[s] are the same prompts, in the same order."""
    if len(a) != len(b):
        raise ValueError(f"paired terms need the same seeds ({len(a)} vs {len(b)})")
    out = []
    for s, (x, y) in enumerate(zip(a, b)):
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if x.shape != y.shape:
            raise ValueError(f"seed {s}: paired values differ in length ({x.size} vs {y.size})")
        out.append(x - y)
    return Term(weight, out, pseudo=(1.0, -1.0))


def single(a: Sequence[Sequence[float]], weight: float = 1.0) -> Term:
    """The term ``weight * mean(a)`` of a 0/1 rate (one right and one wrong pseudo-answer per seed)."""
    return Term(weight, [np.asarray(x, dtype=np.float64) for x in a], pseudo=(1.0, 0.0))


def contrast(terms: Sequence[Term], *, reps: int = REPS, seed: int = 0) -> dict[str, Any]:
    """Point estimate (mean over seeds of the contrast), 95% two-level bootstrap interval, and counts."""
    if not terms:
        raise ValueError("a contrast needs at least one term")
    seeds = {len(t.values) for t in terms}
    if len(seeds) != 1 or 0 in seeds:
        raise ValueError("every term needs the same, non-zero number of seeds")
    (n_seeds,) = seeds
    rng = np.random.default_rng(seed)
    # per term and seed: `reps` prompt-resampled means (row r of every term shares seed draw r below)
    boot = []
    for t in terms:
        per_seed = []
        for v in t.values:
            if v.size == 0:
                raise ValueError("a term has a seed with no prompts")
            v = np.concatenate([v, np.asarray(t.pseudo, dtype=np.float64)])
            idx = rng.integers(0, v.size, size=(reps, v.size))
            per_seed.append(v[idx].mean(axis=1))
        boot.append(np.stack(per_seed))  # (seeds, reps)
    point = sum(t.weight * np.mean([v.mean() for v in t.values]) for t in terms)
    if n_seeds > 1:
        draw = rng.integers(0, n_seeds, size=(reps, n_seeds))  # seeds drawn with replacement, per replicate
        cols = np.arange(reps)[:, None]
        samples = sum(t.weight * b[draw, cols].mean(axis=1) for t, b in zip(terms, boot))
    else:
        samples = sum(t.weight * b[0] for t, b in zip(terms, boot))
    lo, hi = (float(x) for x in np.percentile(samples, [2.5, 97.5]))
    out = {"diff": float(point), "ci95": [lo, hi], "ci95_bootstrap": [lo, hi], "seeds": n_seeds,
           "prompts": [int(sum(v.size for v in t.values)) for t in terms]}
    if n_seeds > 1:
        per_seed = [sum(t.weight * t.values[s].mean() for t in terms) for s in range(n_seeds)]
        t_lo, t_hi = mean_interval(per_seed)
        out.update(per_seed=[float(x) for x in per_seed], ci95_t=[t_lo, t_hi], ci95=[min(lo, t_lo), max(hi, t_hi)])
    return out


REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"


def verdict(ci95: Sequence[float] | None, *, direction: int = 1, rule_out: float = 0.0) -> str:
    """The verdict on a claim that a quantity is above 0 (``direction`` +1) or below 0 (-1), read
    from the quantity's 95% interval, turned so that the claimed side is positive:

    * reproduced: the whole interval is above 0 (an effect on the claimed side is shown);
    * not reproduced: the whole interval is below ``rule_out``, so an effect of that size on the
      claimed side is ruled out (with ``rule_out`` 0: the opposite effect is shown);
    * inconclusive: neither, or no interval.
    """
    if ci95 is None or any(v is None or not np.isfinite(v) for v in ci95):
        return INCONCLUSIVE
    lo, hi = sorted(direction * float(v) for v in ci95)
    if lo > 0:
        return REPRODUCED
    if hi < rule_out:
        return NOT_REPRODUCED
    return INCONCLUSIVE


# two-sided 95% (0.975 quantile) Student t for 1..30 degrees of freedom; the normal 1.96 beyond
T975 = dict(enumerate([12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
                       2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
                       2.052, 2.048, 2.045, 2.042], start=1))


def mean_interval(values: Sequence[float]) -> list[float] | None:
    """95% t-interval of the mean of a few per-seed values (None below two values)."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if x.size < 2:
        return None

    t = T975.get(x.size - 1, 1.96)
    half = t * x.std(ddof=1) / sqrt(x.size)
    return [float(x.mean() - half), float(x.mean() + half)]

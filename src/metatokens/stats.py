"""Every interval and test in the project, in one place. Imports nothing from metatokens.

* `wilson_interval`: the score interval of one binomial proportion (an exact-match or token rate
  of one model on one set of prompts; `metatokens evaluate` prints it beside every rate).
* `contrast` and its terms (`paired`, `single`, `values`), `verdict`, `p_value`, `holm`,
  `corrected_verdict`: the study's comparisons, described below.

Intervals: a hierarchical percentile bootstrap, seeds then prompts.

Every comparison of the study is a *contrast*: a sum of terms ``weight * mean(values)``, where each
term's values are one number per test prompt (1 or 0 for an exact match, or the difference of two
models on the same prompt), measured in each seed. The point estimate is the mean over seeds of
the contrast. Its 95% interval is the 2.5th and 97.5th percentiles of 4,000 bootstrap replicates,
each drawn in two levels: S seeds drawn with replacement from the S measured, then, for every seed
drawn, that seed's prompts drawn with replacement (afresh for every draw, so a seed drawn twice
gets two independent resamples). A percentile interval of means lies inside the range of the
values resampled, so it never leaves what is possible (an accuracy difference stays in
[-100, +100] points). With few seeds it is narrower than a t-interval would be (it knows about
(S-1)/S of the between-seed variance); the study therefore runs at least 5 seeds for its
confirmatory claims, and prints every seed's own value beside each mean.

Paired differences (model A minus model B on the same prompts) enter as one term whose values are
``a_i - b_i``; the pairing removes the prompts' own difficulty from the spread. A difference of
differences is two such terms with weights +1 and -1.

Exact match is 0 or 1, and two models that tie on every prompt (both at the floor, say) give a
bootstrap interval of width 0, which would claim certainty that 100 prompts cannot give. So the
interval (not the point estimate) is computed with pseudo-observations added to each seed, in the
spirit of Agresti and Min's adjusted interval for paired proportions: one prompt won by each
side (+1 and -1) for a paired difference, one right and one wrong answer for a single rate. They
lie inside the possible range, so the interval does too. With 100 tied prompts the interval is
then about +-3 points; with 4, +-50.

Tests and the correction for several claims. The same replicates give one-sided bootstrap
p-values (`p_value`: the share of replicates on the wrong side of a threshold, with the usual +1
in numerator and denominator). A claim tested alone is *reproduced* when its 95% interval lies on
the claimed side of 0, which is a one-sided p below 0.025. A family of claims tested together
(the study's pre-registered primary claims) is corrected with Holm's step-down method (`holm`),
and `corrected_verdict` reads each claim from its Holm-adjusted p-values: reproduced when the
adjusted p for "no effect or the opposite" is below 0.025, not reproduced when the adjusted p for
"an effect of at least the smallest effect of interest" is below 0.025, inconclusive otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
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
REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"


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


def values(a: Sequence[Sequence[float]], weight: float = 1.0) -> Term:
    """The term ``weight * mean(a)`` of continuous per-example values (an entropy difference, a
    cosine): no pseudo-observations."""
    return Term(weight, [np.asarray(x, dtype=np.float64) for x in a])


def contrast(terms: Sequence[Term], *, reps: int = REPS, seed: int = 0) -> dict[str, Any]:
    """Point estimate (mean over seeds of the contrast), its 95% hierarchical percentile bootstrap
    interval (seeds, then prompts within each seed drawn), every seed's own value, and the replicates
    (``samples``, for `p_value`; not meant for JSON)."""
    if not terms:
        raise ValueError("a contrast needs at least one term")
    seeds = {len(t.values) for t in terms}
    if len(seeds) != 1 or 0 in seeds:
        raise ValueError("every term needs the same, non-zero number of seeds")
    (n_seeds,) = seeds
    rng = np.random.default_rng(seed)
    for t in terms:
        if any(v.size == 0 for v in t.values):
            raise ValueError("a term has a seed with no prompts")
    # Level 1: which seed fills each of the S slots of each replicate.
    draw = rng.integers(0, n_seeds, size=(reps, n_seeds)) if n_seeds > 1 else np.zeros((reps, 1), dtype=np.int64)
    samples = np.zeros(reps)
    for t in terms:
        padded = [np.concatenate([v, np.asarray(t.pseudo, dtype=np.float64)]) for v in t.values]
        total = np.zeros(reps)
        for slot in range(n_seeds):
            # Level 2: a fresh prompt resample of the seed drawn into this slot (each slot its own).
            for s in range(n_seeds):
                rows = np.flatnonzero(draw[:, slot] == s)
                if rows.size:
                    v = padded[s]
                    total[rows] += v[rng.integers(0, v.size, size=(rows.size, v.size))].mean(axis=1)
        samples += t.weight * total / n_seeds
    per_seed = [float(sum(t.weight * t.values[s].mean() for t in terms)) for s in range(n_seeds)]
    lo, hi = (float(x) for x in np.percentile(samples, [2.5, 97.5]))
    return {"diff": float(np.mean(per_seed)), "ci95": [lo, hi], "seeds": n_seeds, "per_seed": per_seed,
            "prompts": [int(sum(v.size for v in t.values)) for t in terms], "samples": samples}


def p_value(c: dict[str, Any], threshold: float = 0.0, *, direction: int = 1) -> float:
    """One-sided bootstrap p-value of the null "the contrast is at most `threshold`" (direction +1)
    or "at least `threshold`" (-1): the share of replicates on the null's side, (k + 1) / (reps + 1)."""
    x = np.asarray(c["samples"], dtype=np.float64)
    k = int(np.sum(x <= threshold)) if direction > 0 else int(np.sum(x >= threshold))
    return (k + 1) / (x.size + 1)


def holm(p: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjusted p-values of a family of tests (Holm 1979): sorted ascending, the i-th
    smallest of m is multiplied by m - i + 1, kept non-decreasing, capped at 1."""
    order = sorted(p, key=lambda k: p[k])
    m, running, out = len(order), 0.0, {}
    for i, key in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[key]))
        out[key] = running
    return out


ALPHA_ONE_SIDED = 0.025  # the one-sided level of a two-sided 95% interval


def corrected_verdict(p_effect: float, p_rule_out: float | None, *, alpha: float = ALPHA_ONE_SIDED) -> str:
    """A claim's verdict from Holm-adjusted one-sided p-values: `p_effect` for the null "no effect on
    the claimed side", `p_rule_out` for the null "an effect at least the smallest effect of interest"
    (None: no rule-out test)."""
    if p_rule_out is not None and p_rule_out < alpha:  # first: a shown effect below the smallest of interest
        return NOT_REPRODUCED
    if p_effect < alpha:
        return REPRODUCED
    return INCONCLUSIVE


def verdict(ci95: Sequence[float] | None, *, direction: int = 1, rule_out: float = 0.0) -> str:
    """The verdict on a claim that a quantity is above 0 (``direction`` +1) or below 0 (-1), read
    from the quantity's 95% interval, turned so that the claimed side is positive:

    * not reproduced: the whole interval is below ``rule_out``, so an effect of that size on the
      claimed side is ruled out (with ``rule_out`` 0: the opposite effect is shown). This comes
      first: an interval above 0 but wholly below ``rule_out`` shows an effect too small to be the
      one claimed;
    * reproduced: the whole interval is above 0 (and not below ``rule_out``);
    * inconclusive: neither, or no interval.
    """
    if ci95 is None or any(v is None or not np.isfinite(v) for v in ci95):
        return INCONCLUSIVE
    lo, hi = sorted(direction * float(v) for v in ci95)
    if hi < rule_out:
        return NOT_REPRODUCED
    if lo > 0:
        return REPRODUCED
    return INCONCLUSIVE

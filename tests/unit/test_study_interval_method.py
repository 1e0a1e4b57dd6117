"""The study's interval and tests are what stats.py and docs/study.md say: a hierarchical percentile bootstrap
(seeds, then prompts) that stays inside the possible range, one-sided bootstrap p-values, and Holm's correction."""

import math

import numpy as np
import pytest

from metatokens.stats import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    REPRODUCED,
    contrast,
    corrected_verdict,
    holm,
    p_value,
    paired,
    single,
    values,
)

T975_DF2 = 4.303  # Student t, 0.975 quantile, 2 degrees of freedom (tables)


def rate(k: int, n: int = 100) -> np.ndarray:
    return np.r_[np.ones(k), np.zeros(n - k)]


def test_the_interval_stays_inside_the_possible_range_where_a_t_interval_did_not():
    """Meta minus baseline at 94, 99 and 80 points over 3 seeds (the kind of seeds the exploratory study had):
    the old t-interval over seeds reached past +100 points; the bootstrap of means of values in [-1, 1] cannot."""
    a = [rate(k) for k in (95, 100, 82)]
    b = [rate(k) for k in (1, 1, 2)]
    per_seed = [0.94, 0.99, 0.80]
    mean, sd = np.mean(per_seed), np.std(per_seed, ddof=1)
    assert mean + T975_DF2 * sd / math.sqrt(3) > 1.0  # the old method left the range here
    c = contrast([paired(a, b)])
    assert -1.0 <= c["ci95"][0] < c["diff"] < c["ci95"][1] <= 1.0
    assert c["per_seed"] == pytest.approx(per_seed)
    # a single rate stays in [0, 1], and a difference of differences in [-2, 2]
    r = contrast([single([rate(100), rate(99), rate(100)])])
    assert 0.0 <= r["ci95"][0] and r["ci95"][1] <= 1.0
    dd = contrast([paired(a, b), paired(b, a, -1.0)])
    assert -2.0 <= dd["ci95"][0] and dd["ci95"][1] <= 2.0


def test_seeds_that_disagree_widen_the_interval_beyond_any_one_seeds():
    spread = [rate(m) for m in (20, 50, 80, 35, 65)]
    base = [np.zeros(100)] * 5
    wide = contrast([paired(spread, base)])
    one = max((contrast([paired([x], [y])])["ci95"] for x, y in zip(spread, base)), key=lambda c: c[1] - c[0])
    assert wide["ci95"][1] - wide["ci95"][0] > 1.5 * (one[1] - one[0])
    assert wide["diff"] == pytest.approx(0.5)


def test_agreeing_seeds_keep_the_prompt_level_width():
    """Five seeds with the same 50% rate on 100 prompts: the seed level adds nothing, and every drawn seed gets a
    fresh prompt resample, so the standard error is that of 5 independent resamples of 102 values (one right and
    one wrong pseudo-answer added): 1.96 * sqrt(var / 102 / 5) = 0.043. A resample reused for a seed drawn twice
    (the old way) would give sqrt(9/25 * var / 102) * 1.96 = 0.058."""
    c = contrast([single([rate(50)] * 5)], reps=8000)
    with_pseudo = np.r_[rate(50), 1.0, 0.0]
    narrow = 1.96 * math.sqrt(with_pseudo.var() / with_pseudo.size / 5)
    half = (c["ci95"][1] - c["ci95"][0]) / 2
    assert 0.85 * narrow <= half <= 1.15 * narrow, f"half-width {half:.4f}, expected {narrow:.4f}"


def test_continuous_values_take_no_pseudo_observations():
    x = [np.full(50, 0.3)] * 3
    c = contrast([values(x)])
    assert c["ci95"] == pytest.approx([0.3, 0.3])  # nothing varies, and nothing is added
    assert contrast([single(x)])["ci95"][0] < 0.3 - 1e-3  # a rate gets its pseudo-answers


def test_p_value_counts_the_replicates_on_the_nulls_side():
    c = {"samples": np.array([-0.1, 0.05, 0.2, 0.3])}
    assert p_value(c, 0.0) == pytest.approx((1 + 1) / 5)  # one replicate at or below 0
    assert p_value(c, 0.05, direction=-1) == pytest.approx((3 + 1) / 5)  # three at or above 0.05
    clear = contrast([paired([rate(90)] * 5, [rate(10)] * 5)])
    assert p_value(clear) == pytest.approx(1 / 4001)


def test_holm_by_hand():
    """Holm (1979): sorted p 0.01, 0.03, 0.04 of m = 3 become 0.03, max(0.06, 0.03) = 0.06, max(0.04, 0.06) = 0.06."""
    assert holm({"a": 0.01, "b": 0.04, "c": 0.03}) == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})
    assert holm({"a": 0.6, "b": 0.9}) == pytest.approx({"a": 1.0, "b": 1.0})  # capped at 1
    assert holm({}) == {}


def test_a_claim_significant_alone_but_not_after_holm_reads_inconclusive():
    """p = 0.02 alone is below 0.025 (its 95% interval excludes 0), but with 7 more claims at p = 0.5 Holm
    multiplies it by 8: 0.16, inconclusive."""
    assert corrected_verdict(0.02, 0.9) == REPRODUCED
    family = {"P1": 0.02, **{f"P{i}": 0.5 for i in range(2, 9)}}
    assert corrected_verdict(holm(family)["P1"], 0.9) == INCONCLUSIVE
    assert corrected_verdict(0.5, 0.001) == NOT_REPRODUCED
    assert corrected_verdict(0.5, None) == INCONCLUSIVE
    assert corrected_verdict(0.001, 0.001) == NOT_REPRODUCED  # an effect shown, but below the smallest of interest

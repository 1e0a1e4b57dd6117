"""The study's paired interval is what stats.py and docs/study.md say: the t-interval over seeds widened to the bootstrap."""

import math

import numpy as np
import pytest

from metatokens.stats import contrast, paired, single

T975_DF2 = 4.303  # Student t, 0.975 quantile, 2 degrees of freedom (tables)


def t_interval_by_hand(values):
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = T975_DF2 * sd / math.sqrt(n)
    return mean - half, mean + half


def test_disagreeing_seeds_give_at_least_the_t_interval_over_seeds():
    """Seeds at +20, +50 and +80 points: the prompts' bootstrap over 3 seeds is far narrower than the
    t-interval (it draws one seed three times 1 time in 27), so the reported interval is the t-interval."""
    a = [np.r_[np.ones(m), np.zeros(100 - m)] for m in (20, 50, 80)]
    b = [np.zeros(100)] * 3
    c = contrast([paired(a, b)])
    lo, hi = t_interval_by_hand([0.2, 0.5, 0.8])
    assert (lo, hi) == pytest.approx((0.5 - 4.303 * 0.3 / math.sqrt(3), 0.5 + 4.303 * 0.3 / math.sqrt(3)))
    got = c["ci95"]
    assert got[0] <= lo + 1e-9 and got[1] >= hi - 1e-9, f"interval {got} does not hold the t-interval [{lo:.4f}, {hi:.4f}]"
    assert got == pytest.approx([lo, hi], abs=1e-9)  # the bootstrap lies inside it here: the union is the t-interval
    assert c["diff"] == pytest.approx(0.5)


def test_agreeing_seeds_keep_the_prompt_bootstrap_width():
    """Three seeds with the same 50% rate on 100 prompts: the t-interval has width 0, but 100 prompts per
    seed cannot give certainty. The bootstrap (one right and one wrong pseudo-answer added: p = 51/102) has
    a standard error between sqrt(p(1-p)/102/3) (every seed's prompts resampled independently) and
    sqrt(5/9 * p(1-p)/102) (a seed drawn twice in a replicate reuses its resample), so a 95% half-width
    between 1.96 * 0.0286 = 0.056 and 1.96 * 0.0369 = 0.072; the reported interval must be that wide."""
    rate = [np.r_[np.ones(50), np.zeros(50)]] * 3
    check_bootstrap_width(contrast([single(rate)]), np.r_[rate[0], 1.0, 0.0], 0.5)
    # paired: the same two models on the same prompts in every seed, model A right on 30 more of 100
    # (pseudo-pairs +1 and -1 added: 31 of 102 differences are +1, one is -1)
    a, b = [np.r_[np.ones(60), np.zeros(40)]] * 3, [np.r_[np.ones(30), np.zeros(70)]] * 3
    d = contrast([paired(a, b)])
    assert d["diff"] == pytest.approx(0.3)
    check_bootstrap_width(d, np.r_[a[0] - b[0], 1.0, -1.0], 0.3)


def check_bootstrap_width(c, with_pseudo, value):
    """The interval's half-width lies between 1.96 standard errors of the two-level bootstrap's mean over 3
    seeds with independent prompt resamples (var / n / 3) and with a seed's resample reused when it is
    drawn again (5/9 var / n: E[sum of squared draw counts] = 5 for 3 draws among 3 seeds)."""
    var, n = with_pseudo.var(), with_pseudo.size
    narrow, wide = 1.96 * math.sqrt(var / n / 3), 1.96 * math.sqrt(5 / 9 * var / n)
    lo, hi = c["ci95"]
    assert lo < value < hi, f"interval {c['ci95']} has no width around the common value {value}"
    half = (hi - lo) / 2
    assert 0.8 * narrow <= half <= 1.2 * wide, f"half-width {half:.4f}, expected {narrow:.4f} to {wide:.4f}"

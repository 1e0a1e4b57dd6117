"""The no-information line of the rate-distortion probe, and whether a probe got below it
(rate_distortion.py; docs/analysis.md).

No information: the best decoder that ignores z but sees the question, the conditional label
prior p(y|q) fitted on the fitting set and smoothed toward the (add-one) label marginal,

    p(y|q) = (n(q, y) + m * p(y)) / (n(q) + m)

with the strength m chosen by leave-one-out cross-entropy on the fitting set (m = inf: the
marginal). A probe has learned something when its held-out distortion is below this line:
`learned` holds, per representation, the best beta's margin and a paired bootstrap interval over
held-out examples of (no-information CE minus probe CE), Bonferroni-widened for the choice of the
best of the betas.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .common import bootstrap_ci

# Strengths m of the no-information prior's pull toward the marginal, tried by leave-one-out.
PRIOR_STRENGTHS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0, math.inf)


def label_prior(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Label frequencies with add-one (Laplace) smoothing, so no class has probability 0."""
    counts = torch.bincount(y, minlength=n_classes).double() + 1.0
    return counts / counts.sum()


def label_entropy(y: torch.Tensor, n_classes: int) -> float:
    """H(y) in nats, on the empirical frequencies."""
    p = torch.bincount(y, minlength=n_classes).double() / len(y)
    return float(torch.special.entr(p).sum())


def _pair_counts(y: torch.Tensor, q: torch.Tensor, n_classes: int, n_questions: int) -> torch.Tensor:
    counts = torch.zeros(n_questions, n_classes, dtype=torch.float64)
    return counts.index_put_((q, y), torch.ones(len(y), dtype=torch.float64), accumulate=True)


def leave_one_out_cross_entropy(y: torch.Tensor, q: torch.Tensor, n_classes: int, n_questions: int,
                                strength: float) -> float:
    """Mean of -ln p(y_i | q_i) under the conditional prior fitted on all examples but i."""
    counts = _pair_counts(y, q, n_classes, n_questions)
    marginal = torch.bincount(y, minlength=n_classes).double()[y] / (len(y) - 1 + n_classes)  # add-one, without i
    if math.isinf(strength):
        return float(-marginal.log().mean())
    p = (counts[q, y] - 1 + strength * marginal) / (counts.sum(1)[q] - 1 + strength)
    return float(-p.log().mean())


def conditional_prior(y: torch.Tensor, q: torch.Tensor, n_classes: int, n_questions: int,
                      strength: float | None = None) -> tuple[torch.Tensor, float]:
    """(p(y|q) as a (n_questions, n_classes) table, the strength m used): counts smoothed toward the
    add-one label marginal (see the module docstring); m = None picks it from PRIOR_STRENGTHS by
    leave-one-out cross-entropy. A question value never seen gets the marginal."""
    if strength is None:
        losses = [leave_one_out_cross_entropy(y, q, n_classes, n_questions, m) for m in PRIOR_STRENGTHS]
        strength = PRIOR_STRENGTHS[min(range(len(losses)), key=losses.__getitem__)]
    marginal = label_prior(y, n_classes)
    if math.isinf(strength):
        return marginal.expand(n_questions, n_classes).clone(), strength
    counts = _pair_counts(y, q, n_classes, n_questions)
    return (counts + strength * marginal) / (counts.sum(1, keepdim=True) + strength), strength


def no_information_losses(fit: tuple[torch.Tensor, torch.Tensor], evaluate: tuple[torch.Tensor, torch.Tensor],
                          n_classes: int, n_questions: int, strength: float | None = None) -> torch.Tensor:
    """-ln p(y|q) per evaluated example, under the conditional prior of the fitting (y, q)."""
    table, _ = conditional_prior(*fit, n_classes, n_questions, strength)
    y, q = evaluate
    return -table[q, y].log()


def learned_summary(points: Sequence[dict[str, Any]], no_information: Sequence[float], *, seed: int = 0
                    ) -> dict[str, Any]:
    """Did the probe learn anything? At the beta with the lowest held-out distortion: the margin below
    the no-information line (nats), its paired bootstrap interval over held-out examples (95%, and
    widened to 1 - 0.05 / len(points) for picking the best of the betas on the same examples), and
    `learned`: the widened interval lies above 0."""
    best = min(points, key=lambda p: p["test_distortion"])
    base = torch.as_tensor(no_information, dtype=torch.float64)
    diffs = (base - torch.as_tensor(best["test_distortion_per_example"], dtype=torch.float64)).numpy()
    level = 1.0 - 0.05 / len(points)
    wide = bootstrap_ci(diffs, level=level, n_boot=4000, seed=seed)
    return {
        "best_beta": best["beta"],
        "best_distortion": best["test_distortion"],
        "no_information": float(base.mean()),
        "margin_nats": float(diffs.mean()),
        "ci95": list(bootstrap_ci(diffs, n_boot=4000, seed=seed)),
        "ci_selection": {"level": level, "interval": list(wide)},
        "learned": bool(wide[0] > 0),
    }

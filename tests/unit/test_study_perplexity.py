"""The pre-training perplexity rows of the study's Findings, from hand-made validation losses: the paper's
comparison (Meta+RoPE against GPT-2 with APE) and the control that keeps RoPE and drops the meta-tokens."""

from __future__ import annotations

import math

import pytest

from metatokens.study.findings import _perplexity_rows
from metatokens.stats import NOT_REPRODUCED, REPRODUCED


class HandMade:
    """The three things the perplexity rows read from a study's results: which stages exist, each seed's
    result, and the seeds."""

    def __init__(self, losses: dict[str, list[float]]):
        self.losses = losses
        self.seed_list = list(range(len(next(iter(losses.values())))))

    def has(self, stage: str) -> bool:
        return stage in self.losses

    def result(self, seed: int, stage: str) -> dict[str, float]:
        return {"val_loss": self.losses[stage][seed]}


def _rows(losses):
    return {("RoPE" if "RoPE, no meta" in f.claim else "APE"): f for f in _perplexity_rows(HandMade(losses))}


def test_meta_beating_ape_but_not_rope_reads_as_two_different_verdicts():
    """Meta+RoPE 0.13 nats below GPT-2 (APE) but 0.07 above GPT-2 (RoPE) in every seed, as the tiny study
    measured: the paper's comparison is reproduced, the control that isolates the meta-tokens is not."""
    rows = _rows({"pretrain-meta-rope": [4.88, 4.90, 4.87], "pretrain-gpt2": [5.01, 5.03, 4.99],
                  "pretrain-gpt2-rope": [4.81, 4.82, 4.80]})
    assert rows["APE"].verdict == REPRODUCED
    assert rows["APE"].per_seed == pytest.approx([-0.13, -0.13, -0.12])
    assert rows["RoPE"].verdict == NOT_REPRODUCED
    assert rows["RoPE"].per_seed == pytest.approx([0.07, 0.08, 0.07])
    assert rows["RoPE"].ours.startswith("+0.07")
    # perplexities in the note are exp of the seed means, meta first
    assert f"perplexity {math.exp(4.883333):.1f} vs {math.exp(4.81):.1f}" in rows["RoPE"].note
    assert "added after seeds 0-2" in rows["RoPE"].note and "added after" not in rows["APE"].note


def test_a_meta_gain_over_both_baselines_reads_reproduced_twice_and_a_missing_stage_drops_its_row():
    losses = {"pretrain-meta-rope": [4.50, 4.52, 4.49], "pretrain-gpt2": [5.01, 5.03, 4.99],
              "pretrain-gpt2-rope": [4.81, 4.82, 4.80]}
    rows = _rows(losses)
    assert rows["APE"].verdict == REPRODUCED and rows["RoPE"].verdict == REPRODUCED
    assert rows["RoPE"].per_seed == pytest.approx([-0.31, -0.30, -0.31])
    del losses["pretrain-gpt2-rope"]
    assert set(_rows(losses)) == {"APE"}

"""Exact match scores an answer cut short by an early end-of-text as wrong (hand-made bigram models)."""

import math

import pytest
import torch
from torch import nn

from metatokens.evaluation.scoring import score_examples
from metatokens.tasks import Example

V, EOS, META_ID, MARGIN = 20, 0, 1, 8.0


class Bigram(nn.Module):
    """Logits depend on the current input token only: MARGIN on `table[token]`, 0 elsewhere."""

    def __init__(self, table: dict[int, int]):
        super().__init__()
        self.table = table

    def forward(self, idx, targets=None):
        logits = torch.zeros(*idx.shape, V)
        for token, nxt in self.table.items():
            logits[..., nxt] += MARGIN * (idx == token)
        return logits, None


def example(prompt, answer):
    return Example(list(prompt), [*answer, EOS], [], "prompt", "answer", {})


# A: prompt 5 6 7, answer 10 11 EOS.  B: prompt 5 8, answer 12 13 14 EOS (longer: B pads A's row).
EXAMPLES = [example([5, 6, 7], [10, 11]), example([5, 8], [12, 13, 14])]
RIGHT = {7: 10, 10: 11, 11: EOS, 8: 12, 12: 13, 13: 14, 14: EOS}
STOPS_EARLY_ON_A = {**RIGHT, 10: EOS}  # A's first answer token right, then end-of-text


def nll_of(rank_right: bool) -> float:
    """Cross-entropy of one token when MARGIN sits on one of V logits: on the target or elsewhere."""
    log_z = math.log(math.exp(MARGIN) + V - 1)
    return log_z - (MARGIN if rank_right else 0.0)


def score(model):
    return score_examples(model, EXAMPLES, pad_id=EOS, vocab_limit=V, meta_token_id=META_ID)


def test_a_right_model_scores_every_answer_exactly():
    s = score(Bigram(RIGHT))
    assert (s.examples, s.exact, s.per_example) == (2, 2, [1, 1])
    assert (s.tokens, s.tokens_correct) == (3 + 4, 7)
    assert s.nll == pytest.approx(7 * nll_of(True), rel=1e-5)


def test_an_answer_cut_short_by_an_early_eos_is_not_an_exact_match():
    s = score(Bigram(STOPS_EARLY_ON_A))
    # A: "10" right, then EOS predicted where 11 is due (wrong), then EOS after 11 (right under teacher forcing)
    assert s.per_example == [0, 1], f"per-example exact match {s.per_example}: the truncated answer A must score 0"
    assert s.exact == 1 and s.examples == 2
    assert (s.tokens, s.tokens_correct) == (7, 6)
    assert s.nll == pytest.approx(6 * nll_of(True) + nll_of(False), rel=1e-5)


def test_a_model_that_only_ever_says_eos_scores_nothing_but_the_final_eos():
    s = score(Bigram({t: EOS for t in range(V)}))
    assert s.exact == 0 and s.per_example == [0, 0]
    assert (s.tokens, s.tokens_correct) == (7, 2)  # each answer's final EOS only

"""Teacher-forced scoring of task examples: one forward pass per batch gives, for every example, whether
its whole answer is right (exact match), how many answer tokens are right, and the answer's loss.

`collate` lays a batch out as ``prompt + answer[:-1]`` with targets on the answer tokens only
(IGNORE_INDEX elsewhere); `score_examples` takes the argmax at each answer position, the meta-token
and padding rows excluded exactly as generation excludes them (tasks.py says why this equals greedy
decoding). `answer_baselines` gives the floor a model must clear: the majority answer and chance.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..model.config import IGNORE_INDEX
from ..stats import wilson_interval
from ..tasks.base import Example


@dataclass
class Score:
    """Counts of one model on one set of examples."""

    examples: int = 0
    exact: int = 0
    tokens: int = 0
    tokens_correct: int = 0
    nll: float = 0.0  # summed over answer tokens
    per_example: list[int] | None = None  # 1 where that example (in the order given) was exactly right

    def add(self, other: "Score") -> "Score":
        for name in ("examples", "exact", "tokens", "tokens_correct", "nll"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def summary(self) -> dict[str, Any]:
        em_lo, em_hi = wilson_interval(self.exact, self.examples)
        tok_lo, tok_hi = wilson_interval(self.tokens_correct, self.tokens)
        return {
            "n": self.examples,
            "exact": self.exact,
            "exact_match": self.exact / self.examples if self.examples else None,
            "exact_match_ci95": [em_lo, em_hi],
            "answer_tokens": self.tokens,
            "tokens_correct": self.tokens_correct,
            "token_accuracy": self.tokens_correct / self.tokens if self.tokens else None,
            "token_accuracy_ci95": [tok_lo, tok_hi],
            "answer_loss": self.nll / self.tokens if self.tokens else None,
            **({"exact_per_example": self.per_example} if self.per_example is not None else {}),
        }


def answer_baselines(examples: Sequence[Example]) -> dict[str, float]:
    """Exact match of two guessers that never read the prompt's content, the floor a model must clear:
    "majority" always gives the most common answer of these examples; "chance" guesses uniformly
    among the answers the question allows (1/k for a List Recall list of k items, 1/2 for Parity,
    one over the possible counts 1..w for Segment Counting over w words, 0 for Copying, whose spans
    are random word sequences)."""
    if not examples:
        return {"majority": 0.0, "chance": 0.0}
    majority = Counter(e.answer_text for e in examples).most_common(1)[0][1] / len(examples)
    total = 0.0
    for e in examples:
        info = e.info
        if info.get("task") == "list_recall":
            total += 1 / len(info["lists"][info["target"]])
        elif info.get("task") == "parity":
            total += 1 / 2
        elif info.get("task") == "segment_counting":
            total += 1 / sum(len(items) for items in info["lists"][info["start"]: info["end"] + 1])
    return {"majority": majority, "chance": total / len(examples)}


def prompts_digest(examples: Sequence[Example]) -> str:
    """A digest of the examples' prompt texts (meta-tokens left out) and answers, in order: two
    evaluations with the same digest scored the same prompts, one for one, so their
    ``exact_per_example`` lists can be paired."""
    h = hashlib.sha256()
    for e in examples:
        h.update(e.prompt_text.encode("utf-8") + b"\x00" + e.answer_text.encode("utf-8") + b"\x01")
    return h.hexdigest()[:16]


def needed_positions(examples: Sequence[Example]) -> int:
    """Positions a teacher-forced row needs: prompt + answer, less the last answer token (never an input)."""
    return max(len(e.prompt_ids) + len(e.answer_ids) - 1 for e in examples)


def collate(examples: Sequence[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded teacher-forcing rows: x = prompt + answer[:-1], y = answer at the answer positions.

    Prompt and padding targets are -100, so a loss or score covers the answer tokens only (the
    meta-token never appears in an answer, so it is never a target).
    """
    width = needed_positions(examples)
    x = torch.full((len(examples), width), pad_id, dtype=torch.long)
    y = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(examples):
        seq = list(e.prompt_ids) + list(e.answer_ids)
        x[i, : len(seq) - 1] = torch.tensor(seq[:-1])
        p = len(e.prompt_ids)
        y[i, p - 1 : len(seq) - 1] = torch.tensor(e.answer_ids)
    return x, y


def answer_logits(model: nn.Module, x: torch.Tensor, where: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    if hasattr(model, "hidden_states") and hasattr(model, "lm_head"):
        return model.lm_head(model.hidden_states(x)[where]).float()
    logits, _ = model(x)
    return logits[where].float()


@torch.no_grad()
def score_examples(
    model: nn.Module,
    examples: Sequence[Example],
    *,
    pad_id: int,
    vocab_limit: int | None = None,
    meta_token_id: int | None = None,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    progress=None,
) -> Score:
    """Exact match, token accuracy and answer loss of `model` on `examples` (teacher-forced argmax).

    The argmax never picks `meta_token_id` or ids at or above `vocab_limit`, as generation never
    does, so exact match equals that of greedy decoding.
    """
    total = Score(per_example=[0] * len(examples))
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].prompt_ids) + len(examples[i].answer_ids))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = [examples[i] for i in rows]
        x, y = collate(batch, pad_id)
        x, y = x.to(device), y.to(device)
        where = (y != IGNORE_INDEX).nonzero(as_tuple=True)
        logits = answer_logits(model, x, where)  # (answer tokens, V)
        targets = y[where]
        nll = F.cross_entropy(logits, targets, reduction="sum")
        if meta_token_id is not None and meta_token_id < logits.size(1):
            logits[:, meta_token_id] = float("-inf")
        if vocab_limit is not None:
            logits[:, vocab_limit:] = float("-inf")
        right = logits.argmax(-1) == targets
        per_row = torch.zeros(len(batch), dtype=torch.long, device=x.device).index_add_(0, where[0], right.long())
        lengths = torch.tensor([len(e.answer_ids) for e in batch], device=x.device)
        exact = (per_row == lengths).tolist()
        for i, ok in zip(rows, exact):
            total.per_example[i] = int(ok)
        total.add(Score(len(batch), sum(exact), int(targets.numel()), int(right.sum()), float(nll)))
        if progress is not None:
            progress.update(len(batch))
    return total

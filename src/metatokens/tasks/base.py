"""What every synthetic task shares: the example type, the task interface, and length windows.

A task module only writes *text*: its :meth:`Task.render` returns the prompt as a list of text
segments, with one meta-token belonging between each pair of neighbours, plus the answer text.
Turning that into token ids, hitting the requested prompt length, the meta / no-meta variants and
the train / dev / test split are done once, in :mod:`metatokens.tasks.registry`.
"""

from __future__ import annotations

import dataclasses
import math
import random
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from ..errors import TaskError

__all__ = [
    "DIFFICULTIES",
    "PAPER_MAX_LENGTH",
    "Draft",
    "Example",
    "META",
    "Task",
    "TaskError",
    "TokenizerLike",
    "bin_for",
    "length_bins",
    "length_window",
]

# Structure grows from medium to long (see each task's LEVELS). The paper's splits: medium, hard
# and extra-hard prompts have at most 1024 tokens, long prompts at most 2048 (arXiv 2509.16278).
DIFFICULTIES: tuple[str, ...] = ("medium", "hard", "extra-hard", "long")
PAPER_MAX_LENGTH: Mapping[str, int] = {"medium": 1024, "hard": 1024, "extra-hard": 1024, "long": 2048}

# Prompts generated for a target length L have between ceil(0.75 * L) and L tokens, so targets
# that double (128, 256, 512 ...) give windows that never overlap.
WINDOW_LOW_FRACTION = 0.75


class TokenizerLike(Protocol):
    """What the generators need from a tokenizer; :class:`~metatokens.tokenizer.MetaTokenizer` has it."""

    meta_token_id: int
    eos_token_id: int

    def encode(self, text: str) -> list[int]: ...


class _Meta:
    def __repr__(self) -> str:
        return "META"


META = _Meta()
"""Marker a task puts among its text parts where a meta-token belongs."""


@dataclass
class Draft:
    """A task's rendered prompt, before tokenization.

    ``segments`` is the prompt text cut at the meta-token places: one meta-token goes between
    each pair of neighbouring segments, so ``len(segments) - 1`` meta-tokens in all. Every cut
    must fall where a byte-level (GPT-2 style) pre-tokenizer splits anyway (before a space, a
    newline or punctuation), so tokenizing the pieces separately gives the same ids as
    tokenizing the whole text.
    """

    segments: list[str]
    answer: str  # the answer text, starting with the space that follows "Answer:"
    info: dict[str, Any]
    units: int  # the size knob actually used (lists, bits, sentences); see Task.render

    @classmethod
    def from_parts(cls, parts: Sequence[str | _Meta], answer: str, info: dict[str, Any], units: int) -> Draft:
        segments = [""]
        for part in parts:
            if part is META:
                segments.append("")
            else:
                segments[-1] += part
        return cls(segments, answer, info, units)

    @property
    def text(self) -> str:
        return "".join(self.segments)


@dataclass
class Example:
    """One prompt / answer pair, ready for a model.

    ``prompt_ids`` holds the meta-token id at each index of ``meta_positions`` and nowhere else
    (``meta_positions`` is empty for the no-meta variant). ``answer_ids`` is the tokenized
    ``answer_text`` followed by the tokenizer's EOS id, so a model learns where to stop.
    ``prompt_text`` is the prompt without meta-tokens; ``answer_text`` starts with a space
    because every prompt ends with "Answer:". ``info`` holds what an independent checker needs
    (the lists, the query, the segment bounds ...) plus ``task``, ``difficulty``, ``length``,
    ``split``; it is JSON-serialisable.
    """

    prompt_ids: list[int]
    answer_ids: list[int]
    meta_positions: list[int]
    prompt_text: str
    answer_text: str
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Example:
        names = {f.name for f in dataclasses.fields(cls)}
        missing = names - set(data)
        if missing:
            raise TaskError(f"example record lacks {', '.join(sorted(missing))}")
        return cls(**{name: data[name] for name in names})


class Task(ABC):
    """A synthetic task: renders random prompts of a requested size.

    Subclasses set ``name``, ``summary`` and ``LEVELS`` (difficulty -> parameters) and implement
    :meth:`render`. They draw every random choice from the ``rng`` they are given, and draw the
    structure (list length, segment size ...) before anything that depends on ``units``, so the
    prompt grows smoothly with ``units``: the length search in the registry relies on it.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    unit_name: ClassVar[str]  # what `units` counts, for messages and docs
    LEVELS: ClassVar[Mapping[str, Any]]
    # The `info` fields holding what the question asks beyond what the meta-token's place already
    # fixes (List Recall: the item number; the list is the one the meta-token follows). A probe
    # of a state read before the question is given them (analysis/rate_distortion.py).
    question_fields: ClassVar[tuple[str, ...]] = ()

    def level(self, difficulty: str) -> Any:
        if difficulty not in self.LEVELS:
            raise TaskError(f"unknown difficulty {difficulty!r} for {self.name}; choose from {', '.join(self.LEVELS)}")
        return self.LEVELS[difficulty]

    @abstractmethod
    def render(self, rng: random.Random, level: Any, units: int) -> Draft:
        """A random prompt with about ``units`` units of content.

        Uses more units than asked when the structure needs them (e.g. enough lists for the
        distractors) and reports the number actually used in :attr:`Draft.units`.
        """


# ---------------------------------------------------------------------------------------------
# Lengths
# ---------------------------------------------------------------------------------------------


def _check_length(length: int) -> int:
    if isinstance(length, bool) or not isinstance(length, int) or length < 8:
        raise TaskError(f"length must be an integer >= 8 (a prompt length in tokens), got {length!r}")
    return length


def length_window(length: int) -> tuple[int, int]:
    """(lowest, highest) prompt length in tokens, both inclusive, generated for target ``length``."""
    _check_length(length)
    return math.ceil(WINDOW_LOW_FRACTION * length), length


def length_bins(edges: Sequence[int]) -> list[tuple[int, int]]:
    """Contiguous bins ``(low, high]`` over prompt lengths, one per edge.

    ``length_bins([256, 512, 1024])`` is ``[(0, 256), (256, 512), (512, 1024)]``: a prompt of
    300 tokens falls in the 512 bin. Prompts generated for target ``L`` always land in bin ``L``
    when the edges are the targets used.
    """
    clean = sorted({_check_length(e) for e in edges})
    if not clean:
        raise TaskError("length_bins needs at least one edge")
    return list(zip([0, *clean[:-1]], clean))


def bin_for(n_tokens: int, edges: Sequence[int]) -> int | None:
    """The edge whose ``(low, high]`` bin holds ``n_tokens``; None when longer than every edge."""
    for low, high in length_bins(edges):
        if low < n_tokens <= high:
            return high
    return None

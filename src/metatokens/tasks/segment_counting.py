"""Segment Counting: count how often a word occurs in a run of lists wrapped by two meta-tokens.

Prompt (one meta-token before the first list of the segment, one after its last item)::

    Read the lists below.
    List 1: goat, duck, goat
    <|meta|>List 2: duck, duck, frog
    List 3: frog, goat, goat<|meta|>
    List 4: goat, frog, duck
    Question: How many times does goat appear in lists 2 to 3?
    Answer: 2

A one-list segment is asked as "in list 2". The words of a prompt come from a small pool, so
they repeat within and outside the segment (counting the whole prompt gives the wrong answer);
the counted word occurs at least once in the segment.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .base import META, Draft, Task
from .list_recall import INTRO, list_line
from .words import ITEMS


@dataclass(frozen=True)
class Level:
    items: tuple[int, int]  # words per list (inclusive range, drawn per prompt)
    pool: int  # distinct words a prompt draws from
    segment: tuple[int, int]  # lists in the segment (inclusive range, drawn per prompt)


LEVELS = {
    "medium": Level(items=(3, 5), pool=5, segment=(1, 2)),
    "hard": Level(items=(4, 6), pool=8, segment=(2, 4)),
    "extra-hard": Level(items=(5, 8), pool=10, segment=(3, 6)),
    "long": Level(items=(6, 10), pool=12, segment=(4, 8)),
}


def question(word: str, start: int, end: int) -> str:
    """The question for 0-based inclusive list indices ``start..end``."""
    where = f"list {start + 1}" if start == end else f"lists {start + 1} to {end + 1}"
    return f"Question: How many times does {word} appear in {where}?\nAnswer:"


class SegmentCounting(Task):
    name = "segment_counting"
    summary = "named lists; count a word's occurrences in the lists between two meta-tokens"
    unit_name = "lists"
    LEVELS = LEVELS
    question_fields = ("word",)  # the meta-tokens wrap the segment; the counted word is new

    def render(self, rng: random.Random, level: Level, units: int) -> Draft:
        k = rng.randint(*level.items)
        size = rng.randint(*level.segment)
        pool = rng.sample(ITEMS, level.pool)
        start_fraction = rng.random()  # drawn before `units` matters, so prompts grow smoothly
        n = max(units, size + 1)  # at least one list outside the segment

        lists = [[rng.choice(pool) for _ in range(k)] for _ in range(n)]
        start = min(int(start_fraction * (n - size + 1)), n - size)
        end = start + size - 1
        inside = [w for items in lists[start : end + 1] for w in items]
        word = rng.choice(sorted(set(inside)))  # sorted: set order varies between processes
        count = inside.count(word)

        parts: list = [INTRO]
        for i, items in enumerate(lists):
            if i == start:
                parts.append(META)
            parts.append(list_line(i, items))
            if i == end:
                parts.append(META)
            parts.append("\n")
        parts.append(question(word, start, end))
        info = {"lists": lists, "start": start, "end": end, "word": word, "count": count}
        return Draft.from_parts(parts, f" {count}", info, units=n)

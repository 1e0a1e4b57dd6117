"""Copying: reproduce, word for word, the bracketed span that the meta-tokens wrap.

Prompt (filler sentences with bracketed spans of random words; one meta-token right before the
queried span's ``[``, one right after its ``]``)::

    Read the text below.
    The old farmer saw the lamp. [ river stone apple ] A quiet baker walked to the market in
    the morning.<|meta|> [ tiger plate ]<|meta|> The kind child found the bell.
    Question: Copy the words inside bracket 2.
    Answer: tiger plate

(The text is one line in the prompt.) Brackets are counted from 1 in reading order. The spans of
a prompt are all different, and their words are random nouns, so the answer cannot be guessed
from the surrounding prose.

The brackets stand apart from the words (``[ tiger plate ]``, not ``[tiger plate]``) so that
every word of a span is written as the answer writes it, with its leading space: a byte-level BPE
then gives the answer's token ids verbatim inside the prompt, and copying them is all the task
asks. (Glued to ``[``, a span's first word was spelled with other tokens than in the answer.)
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .base import META, Draft, Task
from .words import ADJECTIVES, ITEMS, PEOPLE, PLACES, TIMES, VERBS

INTRO = "Read the text below.\n"
QUESTION = "\nQuestion: Copy the words inside bracket {index}.\nAnswer:"


@dataclass(frozen=True)
class Level:
    spans: tuple[int, int]  # bracketed spans per prompt (inclusive range)
    words: tuple[int, int]  # words per span (inclusive range, drawn per span)


LEVELS = {
    "medium": Level(spans=(2, 3), words=(2, 4)),
    "hard": Level(spans=(3, 5), words=(4, 8)),
    "extra-hard": Level(spans=(4, 8), words=(8, 16)),
    "long": Level(spans=(6, 12), words=(12, 24)),
}


def sentence(rng: random.Random) -> str:
    """One short filler sentence; it never contains brackets."""
    form = rng.randrange(3)
    if form == 0:
        return f"The {rng.choice(ADJECTIVES)} {rng.choice(PEOPLE)} {rng.choice(VERBS)} the {rng.choice(ITEMS)}."
    if form == 1:
        who, where, when = rng.choice(PEOPLE), rng.choice(PLACES), rng.choice(TIMES)
        return f"A {rng.choice(ADJECTIVES)} {who} walked to the {where} in the {when}."
    return f"The {rng.choice(ITEMS)} was near the {rng.choice(PLACES)}."


def bracket(span: str) -> str:
    """``[ w1 w2 ]``: each word keeps the leading space it has in the answer ``" w1 w2"``."""
    return f"[ {span} ]"


class Copying(Task):
    name = "copying"
    summary = "prose with bracketed spans; copy the span wrapped by meta-tokens"
    unit_name = "sentences"
    LEVELS = LEVELS
    question_fields = ()  # the meta-tokens wrap the queried bracket

    def render(self, rng: random.Random, level: Level, units: int) -> Draft:
        spans: list[str] = []
        for _ in range(rng.randint(*level.spans)):
            while True:
                span = " ".join(rng.sample(ITEMS, rng.randint(*level.words)))
                if span not in spans:
                    break
            spans.append(span)
        target = rng.randrange(len(spans))
        gap_fractions = sorted(rng.random() for _ in spans)
        n = max(units, 1)

        sentences = [sentence(rng) for _ in range(n)]
        # Span i goes into gap g (0: before the first sentence, n: after the last one).
        gaps = [min(int(f * (n + 1)), n) for f in gap_fractions]
        chunks: list[str | int] = []  # sentences, and span indices where spans go
        for gap in range(n + 1):
            chunks += [i for i, g in enumerate(gaps) if g == gap]
            if gap < n:
                chunks.append(sentences[gap])
        parts: list = [INTRO]
        for position, chunk in enumerate(chunks):
            space = "" if position == 0 else " "  # the space opens the next chunk: cuts stay before it
            if isinstance(chunk, str):
                parts.append(space + chunk)
            elif chunk == target:
                parts += [META, f"{space}{bracket(spans[chunk])}", META]
            else:
                parts.append(f"{space}{bracket(spans[chunk])}")
        parts.append(QUESTION.format(index=target + 1))
        info = {"spans": spans, "target": target, "sentences": n}
        return Draft.from_parts(parts, " " + spans[target], info, units=n)

"""Parity: the XOR of the bits before the meta-token.

Prompt (bits separated by spaces so each is its own token; the meta-token follows bit p)::

    Read the bits below.
    Bits: 1 0 1 1<|meta|> 0 1 0 0 1
    Question: What is the XOR of the first 4 bits?
    Answer: 1

At least one bit follows the meta-token, so its place is never simply "the end of the string".
Difficulty sets how many bits come before it; the prompt length sets how many follow.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .base import META, Draft, Task

INTRO = "Read the bits below.\nBits:"
QUESTION = "\nQuestion: What is the XOR of the first {p} bits?\nAnswer:"


@dataclass(frozen=True)
class Level:
    prefix: tuple[int, int]  # p, the bits before the meta-token (inclusive; capped by the string)


LEVELS = {
    "medium": Level(prefix=(2, 16)),
    "hard": Level(prefix=(8, 64)),
    "extra-hard": Level(prefix=(32, 256)),
    "long": Level(prefix=(64, 1024)),
}


class Parity(Task):
    name = "parity"
    summary = "a bit string; answer the XOR of the bits before the meta-token"
    unit_name = "bits"
    LEVELS = LEVELS
    question_fields = ()  # "the first p bits": p is the meta-token's own place

    def render(self, rng: random.Random, level: Level, units: int) -> Draft:
        low, high = level.prefix
        fraction = rng.random()
        n = max(units, low + 1)
        high = min(high, n - 1)
        p = low + min(int(fraction * (high - low + 1)), high - low)
        bits = [rng.getrandbits(1) for _ in range(n)]

        parts = [INTRO, "".join(f" {b}" for b in bits[:p]), META, "".join(f" {b}" for b in bits[p:])]
        parts.append(QUESTION.format(p=p))
        parity = sum(bits[:p]) % 2
        return Draft.from_parts(parts, f" {parity}", {"bits": bits, "p": p, "parity": parity}, units=n)

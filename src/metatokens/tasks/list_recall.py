"""List Recall (the paper's "List Pointer"): find the list that holds a word, answer its j-th item.

Prompt (one line per list; the meta-token sits right after the last item of the queried list)::

    Read the lists below.
    List 1: apple, river, chair, stone
    List 2: horse, cloud, bread, glass<|meta|>
    List 3: tiger, plate, window, garden
    Question: In the list that contains cloud, which word is number 3?
    Answer: bread

Guarantees: every list has ``k`` distinct items; the queried word occurs exactly once in the
whole prompt; ``j`` is never the queried word's own position. Decoy lists (hard and above)
reuse the queried list's other items in a new order, so finding "a list with these words" is
not enough: the model has to find the one with the queried word.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .base import META, Draft, Task
from .words import ITEMS

INTRO = "Read the lists below.\n"
QUESTION = "Question: In the list that contains {query}, which word is number {position}?\nAnswer:"


@dataclass(frozen=True)
class Level:
    items: tuple[int, int]  # k, the items per list, drawn per prompt from this inclusive range
    decoys: int  # lists made of the queried list's other items, reshuffled


LEVELS = {
    "medium": Level(items=(3, 5), decoys=0),
    "hard": Level(items=(5, 8), decoys=1),
    "extra-hard": Level(items=(8, 12), decoys=2),
    "long": Level(items=(10, 16), decoys=3),
}


def list_line(index: int, items: list[str]) -> str:
    """``List 3: a, b, c`` without the newline (the meta-token may follow it)."""
    return f"List {index + 1}: " + ", ".join(items)


class ListRecall(Task):
    name = "list_recall"
    summary = "N named lists of k words; answer item j of the list that contains the queried word"
    unit_name = "lists"
    LEVELS = LEVELS
    question_fields = ("position",)  # the queried list is the one the meta-token follows

    def render(self, rng: random.Random, level: Level, units: int) -> Draft:
        k = rng.randint(*level.items)
        position = rng.randint(1, k)  # 1-based, as the question says it
        query_at = rng.choice([i for i in range(k) if i != position - 1])
        n = max(units, level.decoys + 2)  # at least one list that is neither target nor decoy

        lists = [rng.sample(ITEMS, k) for _ in range(n)]
        target = rng.randrange(n)
        query = lists[target][query_at]
        others = [i for i in range(n) if i != target]
        decoys = sorted(rng.sample(others, level.decoys))
        for d in decoys:
            fresh = rng.choice([w for w in ITEMS if w not in lists[target]])
            decoy = [fresh if w == query else w for w in lists[target]]
            rng.shuffle(decoy)
            lists[d] = decoy
        for i in others:  # the queried word must point at exactly one list
            if query in lists[i]:
                spare = [w for w in ITEMS if w not in lists[i] and w != query]
                lists[i][lists[i].index(query)] = rng.choice(spare)

        parts: list = [INTRO]
        for i, items in enumerate(lists):
            parts += [list_line(i, items), META, "\n"] if i == target else [list_line(i, items) + "\n"]
        parts.append(QUESTION.format(query=query, position=position))
        answer = lists[target][position - 1]
        info = {"lists": lists, "target": target, "query": query, "position": position, "decoys": decoys}
        return Draft.from_parts(parts, " " + answer, info, units=n)

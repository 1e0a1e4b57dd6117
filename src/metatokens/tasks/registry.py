"""The task registry and the one way to make examples: tokenize, fit the length, split, dedupe.

How an example is made (``iter_examples``):

1. Candidate ``i`` gets its own random stream, seeded by the string
   ``"{task}|{difficulty}|{length}|{split}|{seed}|{i}"`` (Python seeds string seeds through
   SHA-512, so this is stable across processes and ``PYTHONHASHSEED``).
2. Its prompt length is fitted: a target length is drawn uniformly from ``length_window(length)``
   and the task's size knob (lists, bits, sentences) is searched until the prompt lands inside the
   window (both with and without its meta-tokens), as close to the target as the knob allows.
3. The prompt text is hashed (BLAKE2b, 8 bytes); an odd first byte puts it in the test split (1/2
   of all prompts); an even first byte puts it in dev when the second byte is below 32 (1/16 of all
   prompts), else in train (7/16). A candidate of another split is skipped. Because the split is a
   function of the text itself, no prompt of one split can ever equal a prompt of another, whatever
   seeds, lengths or difficulties the sets were made with. Dev is for choices made while training
   (learning curves, recipes), so that only the final evaluation reads test prompts. Dev was carved
   out of the old two-way rule's train half, so test prompts are what they always were. (A kept
   test prompt costs about 2 candidates, a train one about 2.3, a dev one about 16.)
4. A prompt already produced by this call is skipped, so the ``n`` examples are distinct.

The meta and no-meta variants go through the same steps with the same random draws, so they hold
the same examples; the no-meta prompt is the meta prompt with the meta ids removed.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Iterator
from typing import NamedTuple

from ..errors import TaskError
from .base import PAPER_MAX_LENGTH, Draft, Example, Task, TokenizerLike, length_window
from .copying import Copying
from .list_recall import ListRecall
from .parity import Parity
from .segment_counting import SegmentCounting

__all__ = [
    "ALIASES",
    "SPLITS",
    "TASKS",
    "Phase",
    "curriculum",
    "get_task",
    "iter_examples",
    "make_examples",
    "question_key",
    "split_of",
]

TASKS: dict[str, Task] = {task.name: task for task in (ListRecall(), SegmentCounting(), Parity(), Copying())}
ALIASES = {"list_pointer": "list_recall"}  # the paper uses both names
SPLITS = ("train", "dev", "test")

_FIT_ATTEMPTS = 4  # fresh content draws before a length is declared unreachable
_FIT_STEPS = 12  # renders per attempt; the secant search below needs 3-5 in practice
_UNFIT_LIMIT = 50  # candidates in a row that fit nowhere in the window before the stream gives up


class _Unfit(TaskError):
    """One candidate's content cannot land in the window (a long sentence in a narrow window, say);
    the next candidate may. Unlike a window below the task's smallest prompt, this is not final."""


def get_task(name: str) -> Task:
    task = TASKS.get(ALIASES.get(name, name))
    if task is None:
        raise TaskError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    return task


def question_key(example: Example) -> tuple:
    """What the example's question asks beyond the meta-token's place: its task's
    ``question_fields`` read from ``example.info``, as a tuple (``(3,)``: List Recall's item 3;
    ``()`` for Parity and Copying, whose meta-tokens already mark everything the question names)."""
    task = example.info.get("task")
    if task is None:
        raise TaskError("the example's info names no task; make it with make_examples")
    fields = get_task(task).question_fields
    missing = [f for f in fields if f not in example.info]
    if missing:
        raise TaskError(f"the {task} example's info lacks {', '.join(missing)}")
    return tuple(example.info[f] for f in fields)


_DEV_BELOW = 32  # an even first byte and a second byte below this: dev (32/256 of the even half)


def split_of(prompt_text: str) -> str:
    """"train", "dev" or "test": the split a prompt belongs to, fixed by its text alone (module docstring)."""
    digest = hashlib.blake2b(prompt_text.encode("utf-8"), digest_size=8).digest()
    if digest[0] & 1:
        return "test"
    return "dev" if digest[1] < _DEV_BELOW else "train"


def make_examples(
    task: str,
    tokenizer: TokenizerLike,
    *,
    length: int,
    difficulty: str = "medium",
    n: int,
    seed: int,
    split: str = "train",
    meta: bool = True,
) -> list[Example]:
    """``n`` distinct examples whose prompts have between ``ceil(0.75 * length)`` and ``length`` tokens.

    Deterministic in its arguments, and ``make_examples(n=5)`` is the start of ``make_examples(n=10)``.
    ``meta=False`` gives the same examples without meta-tokens (for models that have none).
    """
    if n is None:
        raise TaskError("make_examples needs n; use iter_examples(n=None) for an endless stream")
    return list(
        iter_examples(task, tokenizer, length=length, difficulty=difficulty, n=n, seed=seed, split=split, meta=meta)
    )


def iter_examples(
    task: str,
    tokenizer: TokenizerLike,
    *,
    length: int,
    difficulty: str = "medium",
    n: int | None,
    seed: int,
    split: str = "train",
    meta: bool = True,
) -> Iterator[Example]:
    """Like :func:`make_examples`, one at a time; ``n=None`` never stops (stream as many as needed).

    Arguments are checked here, before the first example is asked for.
    """
    the_task = get_task(task)
    level = the_task.level(difficulty)
    window = length_window(length)
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise TaskError(f"n must be a non-negative integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TaskError(f"seed must be an integer, got {seed!r}")
    if split not in SPLITS:
        raise TaskError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    for attribute in ("encode", "meta_token_id", "eos_token_id"):
        if not hasattr(tokenizer, attribute):
            raise TaskError(f"tokenizer has no {attribute}; pass a metatokens MetaTokenizer")
    return _generate(the_task, level, difficulty, tokenizer, length, window, n, seed, split, meta)


def _generate(
    task: Task,
    level,
    difficulty: str,
    tokenizer: TokenizerLike,
    length: int,
    window: tuple[int, int],
    n: int | None,
    seed: int,
    split: str,
    meta: bool,
) -> Iterator[Example]:
    seen: set[bytes] = set()
    tokens_per_unit = None  # carried from candidate to candidate to start each length search close
    produced = 0
    duplicates_in_a_row = unfit_in_a_row = 0
    for i in itertools.count():
        if n is not None and produced >= n:
            return
        stream = f"{task.name}|{difficulty}|{length}|{split}|{seed}|{i}"
        try:
            draft, pieces, tokens_per_unit = _fit(task, level, tokenizer, stream, *window, difficulty, tokens_per_unit)
        except _Unfit:
            # Skipped like a duplicate: a stream of thousands of examples must not die on one candidate
            # (copying at L = 96 met one in its 13,600th). Streams that never met one are unchanged.
            unfit_in_a_row += 1
            if unfit_in_a_row >= _UNFIT_LIMIT:
                raise
            continue
        unfit_in_a_row = 0
        text = draft.text
        if split_of(text) != split:
            continue
        key = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
        if key in seen:
            duplicates_in_a_row += 1
            if duplicates_in_a_row > 1000:  # the prompt space at this setting is nearly used up
                raise TaskError(
                    f"only {produced} distinct {task.name}/{difficulty} prompts found at length {length}; "
                    "ask for fewer or use a longer length"
                )
            continue
        seen.add(key)
        duplicates_in_a_row = 0
        produced += 1
        info = {"task": task.name, "difficulty": difficulty, "length": length, "split": split, **draft.info}
        yield _example(pieces, draft, tokenizer, meta, info)


class Phase(NamedTuple):
    length: int
    difficulty: str


def curriculum(task: str, max_length: int, phases: int = 5, *, min_length: int = 64) -> list[Phase]:
    """Growing (length, difficulty) phases ending at ``max_length``.

    Lengths rise linearly (``max_length * i / phases``, raised to ``min_length`` but never past
    ``max_length``); difficulty
    rises medium -> hard -> extra-hard in thirds, and the last phase is "long" when
    ``max_length`` exceeds 1024 (the paper's limit for the other splits). The default 5 phases
    follow the paper's curriculum, which raises list length and prompt length together.
    """
    get_task(task)
    length_window(max_length)
    if isinstance(phases, bool) or not isinstance(phases, int) or phases < 1:
        raise TaskError(f"phases must be a positive integer, got {phases!r}")
    top = "long" if max_length > PAPER_MAX_LENGTH["extra-hard"] else "extra-hard"
    ladder = ("medium", "hard", top)
    plan = []
    for i in range(phases):
        level = ladder[-1] if i == phases - 1 else ladder[min(2, 3 * i // phases)]
        length = min(max_length, max(min_length, round(max_length * (i + 1) / phases)))
        plan.append(Phase(length, level))
    return plan


# ---------------------------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------------------------


def _encode(tokenizer: TokenizerLike, draft: Draft) -> list[list[int]]:
    pieces = [tokenizer.encode(segment) for segment in draft.segments]
    if any(tokenizer.meta_token_id in piece for piece in pieces):
        raise TaskError("the tokenizer turned task text into the meta-token id; its meta id must never come from text")
    return pieces


def _fit(
    task: Task,
    level,
    tokenizer: TokenizerLike,
    stream: str,
    low: int,
    high: int,
    difficulty: str,
    tokens_per_unit: float | None = None,
) -> tuple[Draft, list[list[int]], float]:
    """Render with a size knob chosen so the prompt length lands in [low, high].

    The length grows roughly linearly with the knob, so a secant step aims at the target and a
    bracket (largest knob known too short, smallest known too long) keeps the search from cycling.
    ``tokens_per_unit`` (returned for the next call) only picks the first knob value to try.
    """
    fit_rng = random.Random(stream + "|fit")
    smallest_seen: int | None = None
    for attempt in range(_FIT_ATTEMPTS):
        target = fit_rng.randint(low, high)
        content_seed = f"{stream}|{attempt}"
        best = None  # (distance to target, draft, pieces, length)
        below = above = None  # (units, length) bracketing the target
        units = max(1, round(target / tokens_per_unit)) if tokens_per_unit else 1
        floor = 1  # the smallest knob value the task accepts, learnt when it raises ours
        tried: set[int] = set()
        for _ in range(_FIT_STEPS):
            draft = task.render(random.Random(content_seed), level, units)
            pieces = _encode(tokenizer, draft)
            if draft.units > units:  # the task raised it to what its structure needs
                floor = units = draft.units
            tried.add(units)
            n_meta = len(pieces) - 1
            with_meta = sum(map(len, pieces)) + n_meta
            smallest_seen = min(with_meta, smallest_seen or with_meta)
            if with_meta - n_meta >= low and with_meta <= high and (best is None or abs(with_meta - target) < best[0]):
                best = (abs(with_meta - target), draft, pieces, with_meta)
                if best[0] == 0:
                    break
            if with_meta < target:
                below = (units, with_meta) if below is None or units > below[0] else below
            else:
                above = (units, with_meta) if above is None or units < above[0] else above
            if below and above:
                slope = (above[1] - below[1]) / max(1, above[0] - below[0])
            else:
                slope = with_meta / units  # proportional guess until the target is bracketed
            proposal = units + round((target - with_meta) / max(slope, 1e-9))
            proposal = max(proposal, floor, below[0] + 1 if below else floor)
            if above:
                proposal = min(proposal, above[0] - 1)
            if proposal in tried or proposal < floor:
                break  # nothing untried left inside the bracket
            units = proposal
        if best is not None:
            _, draft, pieces, length = best
            return draft, pieces, length / draft.units
    if smallest_seen is not None and smallest_seen > high:
        raise TaskError(
            f"length {high} is too short for {task.name}/{difficulty} with this tokenizer: "
            f"its smallest prompts have about {smallest_seen} tokens"
        )
    raise _Unfit(
        f"could not fit {task.name}/{difficulty} prompts into {low}..{high} tokens; "
        f"one of its {task.unit_name} is too long for that window, use a longer length"
    )


def _example(pieces: list[list[int]], draft: Draft, tokenizer: TokenizerLike, meta: bool, info: dict) -> Example:
    prompt_ids: list[int] = []
    positions: list[int] = []
    for i, piece in enumerate(pieces):
        if i and meta:
            positions.append(len(prompt_ids))
            prompt_ids.append(tokenizer.meta_token_id)
        prompt_ids.extend(piece)
    answer_ids = [*tokenizer.encode(draft.answer), tokenizer.eos_token_id]
    return Example(prompt_ids, answer_ids, positions, draft.text, draft.answer, info)

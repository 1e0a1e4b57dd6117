"""The paper's four synthetic long-context tasks (arXiv 2509.16278, docs/method.md section 5).

>>> examples = make_examples("list_recall", tokenizer, length=512, difficulty="hard", n=100, seed=0)

Each task module writes prompts as text; :mod:`.registry` tokenizes them, fits them to the
requested length, inserts the meta-token ids and keeps the train, dev and test splits apart. See docs/tasks.md.

May import: errors, tokenizer, data (only `python -m metatokens.tasks`, for its tokenizer).
"""
from ..errors import TaskError
from .base import (
    DIFFICULTIES,
    PAPER_MAX_LENGTH,
    Example,
    Task,
    TokenizerLike,
    bin_for,
    length_bins,
    length_window,
)
from .registry import (
    ALIASES,
    SPLITS,
    TASKS,
    Phase,
    curriculum,
    get_task,
    iter_examples,
    make_examples,
    question_key,
    split_of,
)

__all__ = [
    "ALIASES",
    "DIFFICULTIES",
    "PAPER_MAX_LENGTH",
    "SPLITS",
    "TASKS",
    "Example",
    "Phase",
    "Task",
    "TaskError",
    "TokenizerLike",
    "bin_for",
    "curriculum",
    "get_task",
    "iter_examples",
    "length_bins",
    "length_window",
    "make_examples",
    "question_key",
    "split_of",
]

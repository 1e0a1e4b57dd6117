"""Fine-tuning's batches: an endless, deterministic stream of task examples cut into micro-batches.

`TaskSpec` holds what to fine-tune on (tasks, mixture weights, length, curriculum); `plan_phases`
turns it into phases of length and difficulty; `TaskBatches` is the loop's batch source, whose
whole position is one integer (see finetune.py's docstring for the layout and exact resume).

The stream also keeps a record of the prompts it handed to training (`TaskBatches.prompt_counts`):
per task, prompts drawn, distinct ones (by an 8-byte BLAKE2b digest of the prompt text), and how
many of them hash into the test split and into the dev split by `tasks.split_of`, applied again to
each drawn prompt's text (the generator's own label is not trusted); both must be 0. The record
counts the whole stream, every process's micro-batches, so each process holds the same one and any
checkpoint resumes it: it is saved with the position (`state_dict`, digests included: about 11
bytes a distinct prompt), or, from a checkpoint saved before the record existed, rebuilt by
drawing the stream again up to the position.
"""
from __future__ import annotations

import base64
import hashlib
import math
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import FinetuneError
from ..evaluation.scoring import collate
from ..tasks import TaskError
from ..tasks.base import Example
from ..tasks.registry import (
    TASKS,
    Phase,
    curriculum,
    get_task,
    iter_examples,
    make_examples,
    split_of,
)
from ..tokenizer.meta import MetaTokenizer

CHUNK = 256  # examples generated at a time; a resume regenerates at most this many


_STATE_VERSION = 1


@dataclass
class TaskSpec:
    """What to fine-tune on."""

    task: str = "list_recall"  # a task of metatokens.tasks, or several comma-separated (a mixture), or "all"
    weights: list[int] | None = None  # a mixture's share of each task, in examples (default: equal shares)
    max_len: int = 128  # longest prompt in tokens (prompts of 0.75 L to L); rows add the answer
    difficulty: str | None = None  # medium, hard, extra-hard, long; None: medium (or the curriculum's ladder)
    curriculum: bool = False  # phases of growing length (and difficulty unless one is given)
    phases: int = 5  # curriculum phases (paper: 5)
    meta: str = "auto"  # auto (the model's pre-training decides), on, off: the tasks' meta-token variant
    seed: int = 0  # seeds the example stream and the held-out examples
    eval_n: int = 64  # dev-split examples scored at every evaluation (the learning curves)
    yarn_scale: float | None = None  # extend a RoPE model's window L -> s * L with YaRN before fine-tuning


class _PromptRecord:
    """One task's record of the prompts drawn for training: counts, split checks and distinct digests."""

    def __init__(self, drawn: int = 0, in_test: int = 0, in_dev: int = 0, digests: set[int] | None = None):
        self.drawn, self.in_test, self.in_dev = drawn, in_test, in_dev
        self.digests = digests if digests is not None else set()

    def add(self, prompt_text: str) -> None:
        self.drawn += 1
        split = split_of(prompt_text)
        self.in_test += split == "test"
        self.in_dev += split == "dev"
        self.digests.add(int.from_bytes(hashlib.blake2b(prompt_text.encode("utf-8"), digest_size=8).digest(), "big"))

    def counts(self) -> dict[str, int]:
        return {"drawn": self.drawn, "distinct": len(self.digests), "in_test": self.in_test, "in_dev": self.in_dev}

    def state(self) -> dict[str, Any]:
        packed = b"".join(d.to_bytes(8, "big") for d in sorted(self.digests))
        return {"drawn": self.drawn, "in_test": self.in_test, "in_dev": self.in_dev,
                "digests": base64.b64encode(packed).decode("ascii")}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> _PromptRecord:
        packed = base64.b64decode(state["digests"], validate=True)
        if len(packed) % 8:
            raise FinetuneError("the saved prompt digests are damaged (not whole 8-byte digests)")
        digests = {int.from_bytes(packed[i:i + 8], "big") for i in range(0, len(packed), 8)}
        drawn, in_test, in_dev = (int(state[k]) for k in ("drawn", "in_test", "in_dev"))
        if not len(digests) <= drawn or not 0 <= in_test + in_dev <= drawn:
            raise FinetuneError("the saved prompt record is damaged (its counts do not add up)")
        return cls(drawn, in_test, in_dev, digests)


def _chunk_seed(seed: int, phase: int, chunk: int) -> int:
    # Distinct per (seed, phase, chunk); tasks key every candidate on this integer.
    return (seed << 32) | (phase << 24) | chunk


def task_names(task: str) -> list[str]:
    """The tasks of a `--task` value: one name, several comma-separated ones, or "all" (the four)."""
    names = list(TASKS) if task.strip() == "all" else [t.strip() for t in task.split(",") if t.strip()]
    if not names:
        raise FinetuneError("--task names no task")
    canonical = [get_task(n).name for n in names]
    if len(set(canonical)) != len(canonical):
        raise FinetuneError(f"--task names a task twice: {task}")
    return canonical


def mixture_slots(weights: list[int]) -> list[int]:
    """One cycle of task indices, ``weights[t]`` times task t, spread evenly (smooth weighted round
    robin): weights 2,1,1 give [0, 1, 0, 2]. Example g of the stream is of task ``slots[g % len]``."""
    if not weights or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in weights):
        raise FinetuneError(f"mixture weights must be positive integers, got {weights}")
    current, slots = [0] * len(weights), []
    for _ in range(sum(weights)):
        current = [c + w for c, w in zip(current, weights)]
        best = max(range(len(weights)), key=lambda t: current[t])
        current[best] -= sum(weights)
        slots.append(best)
    return slots


class TaskBatches:
    """Endless, deterministic, resumable micro-batches of right-padded task examples.

    One task, or a mixture: example ``g`` of the stream (counted over all processes) is of task
    ``slots[g % len(slots)]`` (see `mixture_slots`) and is that task's own example number ``q * c +
    (its earlier slots in the cycle)``, so each task has its own stream and a batch mixes tasks in
    the set shares. `next_batch()` returns ``(x, y)`` int64 tensors of shape (B, width), width =
    the longest ``prompt + answer - 1`` in the batch. `state_dict()` holds the micro-batch counter
    and the record of the prompts drawn (`prompt_counts`, module docstring).
    """

    def __init__(
        self,
        task: str | list[str],
        tokenizer: MetaTokenizer,
        plan: list[Phase] | list[list[Phase]],
        *,
        batch_size: int,
        seed: int,
        meta: bool,
        total_batches: int,
        max_positions: int | None = None,
        rank: int = 0,
        world: int = 1,
        weights: list[int] | None = None,
    ):
        self.tasks = task_names(task) if isinstance(task, str) else [get_task(t).name for t in task]
        self.tokenizer = tokenizer
        # one task's plan is a list of (length, difficulty); a mixture's is one such list per task
        plans = plan if plan and isinstance(plan[0][0], (list, tuple)) else [plan]
        if not plan or not all(plans):
            raise FinetuneError("the phase plan is empty")
        if len(plans) != len(self.tasks) or len({len(p) for p in plans}) != 1:
            raise FinetuneError("a mixture needs one phase plan per task, all with the same number of phases")
        self.plans = [[Phase(*p) for p in pl] for pl in plans]
        self.weights = list(weights) if weights is not None else [1] * len(self.tasks)
        if len(self.weights) != len(self.tasks):
            raise FinetuneError(f"{len(self.weights)} mixture weights for {len(self.tasks)} tasks")
        self.slots = mixture_slots(self.weights)
        self._slot_rank = [sum(1 for s in self.slots[:r] if s == self.slots[r]) for r in range(len(self.slots))]
        self.batch_size, self.seed, self.meta = batch_size, seed, meta
        self.per_phase = max(1, math.ceil(total_batches / len(self.plans[0])))
        self.max_positions, self.rank, self.world = max_positions, rank, world
        self.batch = 0
        self._chunks: dict[tuple[int, int, int], list[Example]] = {}
        self._records = [_PromptRecord() for _ in self.tasks]

    @property
    def task(self) -> str:
        return ",".join(self.tasks)

    @property
    def plan(self) -> list[Phase]:
        return self.plans[0]

    def phase_of(self, batch: int) -> int:
        return min(len(self.plans[0]) - 1, batch // self.per_phase)

    def _chunk(self, t: int, phase: int, chunk: int) -> list[Example]:
        key = (t, phase, chunk)
        if key not in self._chunks:
            if len(self._chunks) >= 4 * len(self.tasks):  # keep memory flat over a long run
                self._chunks.pop(next(iter(self._chunks)))
            length, difficulty = self.plans[t][phase]
            self._chunks[key] = list(iter_examples(
                self.tasks[t], self.tokenizer, length=length, difficulty=difficulty, n=CHUNK,
                seed=_chunk_seed(self.seed, phase, chunk), split="train", meta=self.meta,
            ))
        return self._chunks[key]

    def _example(self, phase: int, g: int) -> Example:
        cycle, r = divmod(g, len(self.slots))
        t = self.slots[r]
        i = cycle * self.weights[t] + self._slot_rank[r]  # this task's own example number
        return self._chunk(t, phase, i // CHUNK)[i % CHUNK]

    def examples(self, batch: int) -> list[Example]:
        """The examples of this process's micro-batch number `batch`."""
        phase = self.phase_of(batch)
        within = batch - phase * self.per_phase
        first = (within * self.world + self.rank) * self.batch_size
        return [self._example(phase, g) for g in range(first, first + self.batch_size)]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = collate(self.examples(self.batch), self.tokenizer.eos_token_id)
        if self.max_positions is not None and x.size(1) > self.max_positions:
            raise FinetuneError(f"a {self.task} row of {x.size(1)} tokens exceeds the model's {self.max_positions} learned "
                                "positions; use a smaller --max-len")
        self._record(self.batch)
        self.batch += 1
        return x, y

    def _record(self, batch: int) -> None:
        """Add micro-batch `batch` of every process (this one's and the others') to the record."""
        phase = self.phase_of(batch)
        first = (batch - phase * self.per_phase) * self.world * self.batch_size
        for g in range(first, first + self.world * self.batch_size):
            self._records[self.slots[g % len(self.slots)]].add(self._example(phase, g).prompt_text)

    def prompt_counts(self) -> dict[str, dict[str, int]]:
        """Per task, the prompts drawn so far by all processes: ``drawn``, ``distinct``, and ``in_test`` /
        ``in_dev``, those whose text hashes into the test or dev split (`tasks.split_of`); both must be 0."""
        return {task: record.counts() for task, record in zip(self.tasks, self._records)}

    def _identity(self) -> dict[str, Any]:
        # The phase split matters only with several phases; one phase may be run for longer.
        per_phase = self.per_phase if len(self.plans[0]) > 1 else None
        ident = {"task": self.task, "plan": [list(p) for p in self.plans[0]], "batch_size": self.batch_size,
                 "seed": self.seed, "meta": self.meta, "per_phase": per_phase, "world": self.world}
        if len(self.tasks) > 1:  # single-task runs keep the identity they always had
            ident.update(weights=self.weights, plans=[[list(p) for p in pl] for pl in self.plans])
        return ident

    def state_dict(self) -> dict[str, Any]:
        return {"version": _STATE_VERSION, "batch": self.batch, **self._identity(),
                "prompts": [record.state() for record in self._records]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != _STATE_VERSION:
            raise FinetuneError(f"unknown task-batch state version {state.get('version')!r}")
        mine = self._identity()
        changed = [k for k in mine if state.get(k) != mine[k]]
        if changed:
            raise FinetuneError(f"the saved example stream differs from this run's ({', '.join(changed)}); refusing to resume")
        batch = int(state["batch"])
        if "prompts" not in state:  # saved before the record existed: draw the stream again up to its position
            self._records = [_PromptRecord() for _ in self.tasks]
            for b in range(batch):
                self._record(b)
        else:
            saved = state["prompts"]
            if not isinstance(saved, list) or len(saved) != len(self.tasks):
                raise FinetuneError(f"the saved prompt record does not hold one entry per task ({self.task})")
            records = [_PromptRecord.from_state(r) for r in saved]
            if sum(r.drawn for r in records) != batch * self.world * self.batch_size:
                raise FinetuneError(f"the saved prompt record's prompts drawn ({sum(r.drawn for r in records)}) do not "
                                    f"match the stream's position ({batch} micro-batches of {self.world} x "
                                    f"{self.batch_size}); the checkpoint is damaged")
            self._records = records
        self.batch = batch


def plan_phases(spec: TaskSpec, tokenizer: MetaTokenizer, meta: bool, task: str | None = None) -> list[Phase]:
    """The (length, difficulty) phases of `task` (default: the spec's only task); lengths raised
    where a difficulty needs more tokens."""
    task = get_task(task or spec.task).name
    if not spec.curriculum:
        plan = [Phase(spec.max_len, spec.difficulty or "medium")]
    else:
        try:
            plan = curriculum(task, spec.max_len, spec.phases)
        except TaskError as err:
            raise FinetuneError(str(err)) from None
        if spec.difficulty:
            plan = [Phase(p.length, spec.difficulty) for p in plan]
    fitted = []
    for length, difficulty in plan:
        while True:
            try:
                make_examples(task, tokenizer, length=length, difficulty=difficulty, n=1, seed=spec.seed, meta=meta)
                break
            except TaskError as err:
                if length >= spec.max_len:
                    raise FinetuneError(f"{task}/{difficulty} does not fit --max-len {spec.max_len} with this "
                                        f"tokenizer ({err})") from None
                length = min(spec.max_len, length + 8)
        fitted.append(Phase(length, difficulty))
    return fitted

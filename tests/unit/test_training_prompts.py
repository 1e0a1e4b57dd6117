"""The fine-tuning stream's record of the prompts it trained on (`TaskBatches.prompt_counts`): per task,
prompts drawn, distinct ones, and how many hash into the test and dev splits, found by hashing each
drawn prompt's text again (the generator's own split label is never trusted). The record survives a
state round trip (a checkpoint), is rebuilt from the stream for a state without one, and counts the
whole stream of every process.

Whole fine-tuning runs that resume with the same record are in tests/integration/test_finetune_runs.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from metatokens.errors import FinetuneError
from metatokens.tasks import Phase, make_examples
from metatokens.training import task_batches
from metatokens.training.task_batches import TaskBatches

PLAN = [Phase(96, "medium")]


def split_by_hand(text: str) -> str:
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return "test" if digest[0] % 2 else "dev" if digest[1] < 32 else "train"


def stream(tok, task="list_recall", plan=PLAN, **kw):
    return TaskBatches(task, tok, plan, **{"batch_size": 4, "seed": 0, "meta": True, "total_batches": 100, **kw})


def test_each_drawn_prompt_is_hashed_again_not_taken_from_the_generator(task_tokenizer, monkeypatch):
    """A generator that mislabels: chunk c holds prompts of split ("train", "dev", "test")[c % 3], all labelled
    train, made with seed c % 2, so chunk 6 repeats chunk 0. The record sees what the prompts are."""

    def mislabelling(task, tok, *, length, difficulty, n, seed, split, meta):
        chunk = seed & 0xFFFFFF  # task_batches._chunk_seed puts the chunk number in the low bits
        made = make_examples(task, tok, length=length, difficulty=difficulty, n=n, seed=chunk % 2,
                             split=("train", "dev", "test")[chunk % 3], meta=meta)
        return [dataclasses.replace(e, info={**e.info, "split": split}) for e in made]

    monkeypatch.setattr(task_batches, "iter_examples", mislabelling)
    monkeypatch.setattr(task_batches, "CHUNK", 4)  # one micro-batch of 4 per chunk
    batches = stream(task_tokenizer)
    texts = []
    for b in range(7):
        texts += [e.prompt_text for e in batches.examples(b)]
        batches.next_batch()
    assert all(e.info["split"] == "train" for e in batches.examples(0))  # the labels lie
    by_hand = [split_by_hand(t) for t in texts]
    expected = {"drawn": 28, "distinct": len(set(texts)), "in_test": by_hand.count("test"), "in_dev": by_hand.count("dev")}
    assert batches.prompt_counts() == {"list_recall": expected}
    assert expected == {"drawn": 28, "distinct": 24, "in_test": 8, "in_dev": 8}


def test_a_real_stream_draws_no_test_or_dev_prompt_and_probing_draws_nothing(task_tokenizer):
    batches = stream(task_tokenizer, ["list_recall", "copying"], [PLAN, PLAN], weights=[3, 1])
    batches.examples(5)  # a look ahead (the run's width probe) is not a draw
    assert batches.prompt_counts() == {t: {"drawn": 0, "distinct": 0, "in_test": 0, "in_dev": 0}
                                       for t in ("list_recall", "copying")}
    texts = {"list_recall": [], "copying": []}
    for b in range(6):
        for e in batches.examples(b):
            texts[e.info["task"]].append(e.prompt_text)
        batches.next_batch()
    assert [len(texts[t]) for t in texts] == [18, 6]
    assert all(split_by_hand(t) == "train" for ts in texts.values() for t in ts)
    assert batches.prompt_counts() == {t: {"drawn": len(ts), "distinct": len(set(ts)), "in_test": 0, "in_dev": 0}
                                       for t, ts in texts.items()}


def test_the_record_survives_a_checkpoint_and_is_rebuilt_without_one(task_tokenizer, monkeypatch):
    monkeypatch.setattr(task_batches, "CHUNK", 8)  # several chunks (each of its own seed) in a few batches
    full = stream(task_tokenizer, "parity", [Phase(64, "medium")], batch_size=6)  # few distinct prompts: repeats
    for _ in range(5):
        full.next_batch()
    state = json.loads(json.dumps(full.state_dict()))  # as trainer_state.json keeps it
    for _ in range(5):
        full.next_batch()
    counts = full.prompt_counts()["parity"]
    assert counts["drawn"] == 60 and counts["distinct"] < 60, "control: the stream repeats prompts across chunks"

    resumed = stream(task_tokenizer, "parity", [Phase(64, "medium")], batch_size=6)
    resumed.load_state_dict(state)
    older = {k: v for k, v in state.items() if k != "prompts"}  # a checkpoint from before the record
    rebuilt = stream(task_tokenizer, "parity", [Phase(64, "medium")], batch_size=6)
    rebuilt.load_state_dict(older)
    for again in (resumed, rebuilt):
        assert again.prompt_counts()["parity"]["drawn"] == 30
        for _ in range(5):
            again.next_batch()
        assert again.prompt_counts() == full.prompt_counts()

    saved = state["prompts"][0]
    for damage, message in (({"drawn": saved["drawn"] + 1}, "prompts drawn"), ({"in_test": 31}, "do not add up"),
                            ({"digests": saved["digests"][:-4]}, "whole 8-byte digests")):
        with pytest.raises(FinetuneError, match=message):
            stream(task_tokenizer, "parity", [Phase(64, "medium")], batch_size=6).load_state_dict(
                {**state, "prompts": [{**saved, **damage}]})


def test_every_process_records_the_whole_stream(task_tokenizer):
    """With 2 processes of batch 4, micro-batch b of the run is examples 8b..8b+7 (both processes); each
    process's record is that of the whole run, so any process's checkpoint resumes it."""
    ranks = [stream(task_tokenizer, rank=r, world=2) for r in (0, 1)]
    alone = stream(task_tokenizer, batch_size=8)
    for _ in range(3):
        for s in (*ranks, alone):
            s.next_batch()
    assert ranks[0].prompt_counts() == ranks[1].prompt_counts() == alone.prompt_counts()
    assert alone.prompt_counts()["list_recall"]["drawn"] == 24

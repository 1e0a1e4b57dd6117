"""The tasks' three prompt splits (train, dev, test), fixed by a hash of each prompt's text.

The rule is written out here by hand (`split_by_hand`) and the generator's labels are never trusted.
The dev split was carved out of the old train split, so test prompts must stay byte for byte what
they were: pinned twice, by digests recorded under the old two-way rule and by re-running the
generator with the old rule put back in place of `split_of`.
"""

from __future__ import annotations

import hashlib

import pytest

from metatokens.cli.main import build_parser
from metatokens.tasks import SPLITS, TASKS, make_examples, registry, split_of
from metatokens.tasks import __main__ as tasks_main
from metatokens.tokenizer import MetaTokenizer

# Digests of make_examples(task, bytes-only tokenizer, length=L, n=100, seed=5, split="test") recorded
# before the dev split existed (commit 518efe6, the two-way rule): prompt and answer texts, in order.
OLD_TEST_DIGESTS = {
    ("list_recall", 256): "d5c136327321c16bdba5248f330b0f2095e1f60ad0fd7aa92bbed76e8c2543d9",
    ("parity", 160): "238e19ec953a3599688b5126b7cd1336a4baa97a7b744a7f624bcbf7d2ed14d6",
    ("copying", 256): "b0e5b8f3f8593f0bf055a51160ed7b2c7a7f8ae58f45b8896b2fb71f9fec95e5",
    ("segment_counting", 320): "71083a27a52b020dcc6f9bece8bbbdab903016dd1ffc3e02d5747559ea797fc6",
}


@pytest.fixture(scope="module")
def tok():
    return MetaTokenizer.train(["ab"], 258)  # bytes only: no training text needed, the same on every machine


def split_by_hand(text: str) -> str:
    """BLAKE2b-64 of the UTF-8 text: an odd first byte is test; an even one is dev when the second byte
    is below 32 (1/16 of all prompts), else train."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    if digest[0] % 2 == 1:
        return "test"
    return "dev" if digest[1] < 32 else "train"


def old_split_of(text: str) -> str:
    """The two-way rule before the dev split: odd first byte test, even train."""
    return "test" if hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()[0] % 2 else "train"


def _digest(examples) -> str:
    return hashlib.sha256("\x00".join(e.prompt_text + "\x01" + e.answer_text for e in examples).encode()).hexdigest()


def test_split_of_follows_the_rule_and_dev_is_a_sixteenth():
    assert SPLITS == ("train", "dev", "test")
    assert {task for task, _ in OLD_TEST_DIGESTS} == set(TASKS)  # every task's test prompts are pinned
    texts = [f"List 1: prompt number {i}\n" for i in range(4000)]
    splits = [split_of(t) for t in texts]
    assert splits == [split_by_hand(t) for t in texts]
    share = {s: splits.count(s) / len(texts) for s in SPLITS}
    # expected 1/2, 1/16 and 7/16; the bounds are about 4 standard deviations wide
    assert 0.47 < share["test"] < 0.53 and 0.045 < share["dev"] < 0.08 and 0.40 < share["train"] < 0.47, share
    # test is exactly the old rule's test; dev and train together are the old rule's train
    assert all((s == "test") == (old_split_of(t) == "test") for s, t in zip(splits, texts))


@pytest.mark.parametrize("task,length", list(OLD_TEST_DIGESTS))
def test_test_prompts_are_the_ones_the_two_way_rule_made(tok, task, length, monkeypatch):
    now = make_examples(task, tok, length=length, n=100, seed=5, split="test")
    assert _digest(now) == OLD_TEST_DIGESTS[task, length]
    monkeypatch.setattr(registry, "split_of", old_split_of)
    before = make_examples(task, tok, length=length, n=100, seed=5, split="test")
    assert [e.to_dict() for e in now] == [e.to_dict() for e in before]


def test_train_prompts_are_the_old_ones_without_the_dev_ones(tok, monkeypatch):
    """The candidates of a train stream are unchanged; only those that now hash into dev are dropped."""
    kw = {"length": 256, "n": 200, "seed": 3, "split": "train"}
    now = [e.prompt_text for e in make_examples("list_recall", tok, **kw)]
    monkeypatch.setattr(registry, "split_of", old_split_of)
    before = [e.prompt_text for e in make_examples("list_recall", tok, **kw)]
    kept = [t for t in before if split_by_hand(t) == "train"]
    assert len(kept) < len(before), "control: some old train prompts are dev prompts now"
    assert now[: len(kept)] == kept


def test_the_three_splits_are_disjoint_and_each_prompt_hashes_into_its_own(tok):
    for task, length in OLD_TEST_DIGESTS:
        sets = {}
        for split in SPLITS:
            examples = make_examples(task, tok, length=length, n=40, seed=1, split=split)
            assert [split_by_hand(e.prompt_text) for e in examples] == [split] * 40, (task, split)
            assert all(e.info["split"] == split for e in examples)
            sets[split] = {e.prompt_text for e in examples}
            assert len(sets[split]) == 40
        assert not sets["train"] & sets["dev"] and not sets["train"] & sets["test"] and not sets["dev"] & sets["test"]


def test_dev_is_about_a_sixteenth_of_the_candidates(tok, monkeypatch):
    """Every candidate the generator fits goes through split_of once; about 1/16 of them land in dev."""
    seen = []
    real = registry.split_of

    def recording(text):
        seen.append(real(text))
        return seen[-1]

    monkeypatch.setattr(registry, "split_of", recording)
    make_examples("list_recall", tok, length=256, n=300, seed=0, split="dev")
    assert seen.count("dev") == 300
    share = 300 / len(seen)  # expected 1/16 = 0.0625 of about 4,800 candidates
    assert 0.05 < share < 0.077, (len(seen), share)


def test_the_commands_offer_the_dev_split(tok, tmp_path, capsys):
    tok.save(tmp_path / "tok.json")
    args = ["--show", "--tokenizer", str(tmp_path / "tok.json"), "--length", "256", "--task", "list_recall"]
    assert tasks_main.main([*args, "--split", "dev"]) == 0
    shown = capsys.readouterr().out
    dev = make_examples("list_recall", tok, length=256, n=1, seed=0, split="dev")[0]
    assert dev.answer_text in shown and split_by_hand(dev.prompt_text) == "dev"
    parser = build_parser()
    for split in SPLITS:
        parsed = parser.parse_args(["analyze", "entropy", "--checkpoint", "x", "--task", "list_recall", "--split", split])
        assert parsed.split == split

"""Tests for metatokens.tasks: the four synthetic tasks of arXiv 2509.16278.

Every answer is re-derived here from the *decoded prompt text* by small parsers written for this
file; the generator's own ``info`` is never trusted. Meta placement is checked twice: where the
``<|meta|>`` markers sit in the decoded text, and that ``meta_positions`` index exactly those ids.
"""

from __future__ import annotations

import json
import random
import re

import pytest

from conftest import SENTENCES
from metatokens.tasks import (
    DIFFICULTIES,
    TASKS,
    Example,
    TaskError,
    bin_for,
    curriculum,
    length_bins,
    length_window,
    iter_examples,
    make_examples,
)
from metatokens.tasks import __main__ as tasks_main
from metatokens.tasks.words import ITEMS, TEMPLATE_WORDS
from metatokens.tokenizer import META_TOKEN, MetaTokenizer

# Long enough for every difficulty with the small test tokenizer, which spends 2-3 tokens a word.
LENGTH = {"medium": 160, "hard": 320, "extra-hard": 640, "long": 1280}
N_EXAMPLES = 6
META_COUNT = {"list_recall": 1, "segment_counting": 2, "parity": 1, "copying": 2}


# ---------------------------------------------------------------------------------------------
# Independent checkers: decoded text in, expected answer out (assertions on the layout inside)
# ---------------------------------------------------------------------------------------------

LIST_LINE = re.compile(
    r"^(?P<open><\|meta\|>)?List (?P<number>\d+): (?P<items>[a-z]+(?:, [a-z]+)*)(?P<close><\|meta\|>)?$"
)


def _parse_lists(lines: list[str]) -> tuple[list[list[str]], list[tuple[int, str]]]:
    """Lists in order, and (list index, 'open'|'close') for each meta marker on a list line."""
    lists, markers = [], []
    for line in lines:
        m = LIST_LINE.match(line)
        assert m, f"not a list line: {line!r}"
        assert int(m["number"]) == len(lists) + 1, "lists are numbered 1, 2, 3 ..."
        for side in ("open", "close"):
            if m[side]:
                markers.append((len(lists), side))
        lists.append(m["items"].split(", "))
    return lists, markers


def check_list_recall(text: str) -> str:
    lines = text.split("\n")
    assert lines[0] == "Read the lists below." and lines[-1] == "Answer:"
    q = re.fullmatch(r"Question: In the list that contains ([a-z]+), which word is number (\d+)\?", lines[-2])
    assert q, lines[-2]
    query, j = q[1], int(q[2])
    lists, markers = _parse_lists(lines[1:-2])
    assert len(lists) >= 2
    holders = [i for i, items in enumerate(lists) if query in items]
    assert len(holders) == 1 and sum(items.count(query) for items in lists) == 1, "queried word occurs once"
    h = holders[0]
    assert all(len(set(items)) == len(items) for items in lists), "items of a list are distinct"
    assert 1 <= j <= len(lists[h]) and lists[h][j - 1] != query
    assert markers == [(h, "close")], "one meta-token, right after the list holding the queried word"
    return " " + lists[h][j - 1]


def check_segment_counting(text: str) -> str:
    lines = text.split("\n")
    assert lines[0] == "Read the lists below." and lines[-1] == "Answer:"
    where = r"(?:list (\d+)|lists (\d+) to (\d+))"
    q = re.fullmatch(rf"Question: How many times does ([a-z]+) appear in {where}\?", lines[-2])
    assert q, lines[-2]
    word = q[1]
    start, end = (int(q[2]), int(q[2])) if q[2] else (int(q[3]), int(q[4]))
    assert start < end or q[2], "a range names two different lists"
    lists, markers = _parse_lists(lines[1:-2])
    assert markers == [(start - 1, "open"), (end - 1, "close")], "meta-tokens wrap exactly the asked lists"
    assert len(lists) > end - start + 1, "some lists lie outside the segment"
    between = text.split(META_TOKEN)[1]
    count = len(re.findall(rf"\b{word}\b", between))
    assert count == sum(items.count(word) for items in lists[start - 1 : end])
    assert count >= 1, "the counted word is in the segment"
    return f" {count}"


def check_parity(text: str) -> str:
    lines = text.split("\n")
    assert lines[0] == "Read the bits below." and lines[-1] == "Answer:" and len(lines) == 4
    q = re.fullmatch(r"Question: What is the XOR of the first (\d+) bits\?", lines[2])
    assert q, lines[2]
    p = int(q[1])
    assert lines[1].startswith("Bits: ") and lines[1].count(META_TOKEN) == 1
    before, after = lines[1][len("Bits:") :].split(META_TOKEN)
    assert re.fullmatch(r"( [01])+", before) and re.fullmatch(r"( [01])+", after)
    bits_before = [int(b) for b in before.split()]
    assert len(bits_before) == p, "the meta-token follows bit p"
    return f" {sum(bits_before) % 2}"


def check_copying(text: str) -> str:
    lines = text.split("\n")
    assert lines[0] == "Read the text below." and lines[-1] == "Answer:" and len(lines) == 4
    q = re.fullmatch(r"Question: Copy the words inside bracket (\d+)\.", lines[2])
    assert q, lines[2]
    i = int(q[1])
    paragraph = lines[1]
    plain = paragraph.replace(META_TOKEN, "")
    spans = re.findall(r"\[ ([^\]]*) \]", plain)
    assert plain.count("[") == plain.count("]") == len(spans) >= 2
    assert all(re.fullmatch(r"[a-z]+( [a-z]+)*", s) for s in spans)
    assert len(set(spans)) == len(spans), "spans are unique"
    assert 1 <= i <= len(spans)
    marked = re.fullmatch(r"(?P<pre>[^<]*)<\|meta\|>(?P<span> ?\[ [a-z ]+ \])<\|meta\|>(?P<post>[^<]*)", paragraph)
    assert marked, "two meta-tokens wrap exactly one bracketed span"
    assert marked["pre"].count("[") == i - 1, "the wrapped span is the one asked for"
    assert marked["span"].strip() == f"[ {spans[i - 1]} ]"
    return " " + spans[i - 1]


CHECKERS = {
    "list_recall": check_list_recall,
    "segment_counting": check_segment_counting,
    "parity": check_parity,
    "copying": check_copying,
}


def assert_meta_ids(sentence_tokenizer: MetaTokenizer, ex: Example) -> None:
    """meta_positions index the meta ids, all of them, and the text before each marker."""
    assert ex.meta_positions == [i for i, t in enumerate(ex.prompt_ids) if t == sentence_tokenizer.meta_token_id]
    parts = sentence_tokenizer.decode(ex.prompt_ids, skip_meta=False).split(META_TOKEN)
    assert len(parts) == len(ex.meta_positions) + 1
    for k, p in enumerate(ex.meta_positions):
        assert sentence_tokenizer.decode(ex.prompt_ids[:p]) == "".join(parts[: k + 1])


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def test_word_lists_cannot_be_confused_with_the_templates():
    assert len(set(ITEMS)) == len(ITEMS) >= 100
    assert all(w.isascii() and w.isalpha() and w.islower() for w in ITEMS)
    assert not set(ITEMS) & TEMPLATE_WORDS


@pytest.mark.parametrize("difficulty", DIFFICULTIES)
@pytest.mark.parametrize("task", list(TASKS))
def test_examples_are_correct_and_fit_their_window(sentence_tokenizer, task, difficulty):
    length = LENGTH[difficulty]
    low, high = length_window(length)
    for split in ("train", "test"):
        for ex in make_examples(task, sentence_tokenizer, length=length, difficulty=difficulty, n=N_EXAMPLES, seed=1,
                                split=split):
            assert low <= len(ex.prompt_ids) - len(ex.meta_positions) and len(ex.prompt_ids) <= high
            assert len(ex.meta_positions) == META_COUNT[task]
            assert_meta_ids(sentence_tokenizer, ex)
            text = sentence_tokenizer.decode(ex.prompt_ids, skip_meta=False)
            expected = CHECKERS[task](text)
            assert ex.answer_ids[-1] == sentence_tokenizer.eos_token_id
            assert sentence_tokenizer.decode(ex.answer_ids[:-1]) == expected == ex.answer_text
            assert ex.prompt_text == text.replace(META_TOKEN, "")


@pytest.mark.parametrize("task", list(TASKS))
def test_no_meta_variant_is_the_meta_variant_without_meta_ids(sentence_tokenizer, task):
    kw = dict(length=LENGTH["hard"], difficulty="hard", n=N_EXAMPLES, seed=3, split="test")
    with_meta = make_examples(task, sentence_tokenizer, meta=True, **kw)
    without = make_examples(task, sentence_tokenizer, meta=False, **kw)
    for a, b in zip(with_meta, without, strict=True):
        assert b.prompt_ids == [t for t in a.prompt_ids if t != sentence_tokenizer.meta_token_id]
        assert b.meta_positions == [] and sentence_tokenizer.meta_token_id not in b.prompt_ids
        for name in ("answer_ids", "prompt_text", "answer_text", "info"):
            assert getattr(a, name) == getattr(b, name)


@pytest.mark.parametrize("task", list(TASKS))
def test_ids_are_the_plain_tokenization_of_the_text(sentence_tokenizer, task):
    # Cutting the text at the meta places must not change how it tokenizes, or a model would see
    # token sequences at fine-tuning time that plain text never produces.
    for ex in make_examples(task, sentence_tokenizer, length=LENGTH["hard"], difficulty="hard", n=N_EXAMPLES, seed=4,
                            meta=False):
        assert sentence_tokenizer.encode(ex.prompt_text) == ex.prompt_ids
        assert sentence_tokenizer.encode(ex.prompt_text + ex.answer_text) == ex.prompt_ids + ex.answer_ids[:-1]


def test_deterministic_and_prefix_stable(sentence_tokenizer):
    for task in TASKS:
        kw = dict(length=200, difficulty="medium", seed=11)
        first = [e.to_dict() for e in make_examples(task, sentence_tokenizer, n=6, **kw)]
        again = [e.to_dict() for e in make_examples(task, sentence_tokenizer, n=6, **kw)]
        assert first == again
        assert [e.to_dict() for e in make_examples(task, sentence_tokenizer, n=3, **kw)] == first[:3]
        other = {e.prompt_text for e in make_examples(task, sentence_tokenizer, length=200, difficulty="medium", seed=12, n=6)}
        assert not other & {e["prompt_text"] for e in first}


def test_train_and_test_never_share_a_prompt(sentence_tokenizer):
    # Parity with a handful of bits has few distinct prompts, so independent draws do collide:
    # the two train sets below share prompts, the train and test sets must not.
    kw = dict(length=56, difficulty="medium", n=150)
    train = {e.prompt_text for e in make_examples("parity", sentence_tokenizer, seed=0, split="train", **kw)}
    train_again = {e.prompt_text for e in make_examples("parity", sentence_tokenizer, seed=1, split="train", **kw)}
    test = {e.prompt_text for e in make_examples("parity", sentence_tokenizer, seed=0, split="test", **kw)}
    assert len(train) == len(test) == 150, "examples within a split are distinct"
    assert train & train_again, "control: this setting is small enough for draws to collide"
    assert not train & test
    for task in TASKS:
        kw = dict(length=160, difficulty="medium", n=20, seed=2)
        train = {e.prompt_text for e in make_examples(task, sentence_tokenizer, split="train", **kw)}
        test = {e.prompt_text for e in make_examples(task, sentence_tokenizer, split="test", **kw)}
        assert len(train) == len(test) == 20 and not train & test


def test_answers_are_spread_out(sentence_tokenizer):
    parity = [e.answer_text for e in make_examples("parity", sentence_tokenizer, length=160, n=40, seed=0)]
    assert set(parity) == {" 0", " 1"}
    recall = make_examples("list_recall", sentence_tokenizer, length=320, difficulty="hard", n=40, seed=0)
    assert len({e.info["position"] for e in recall}) >= 4
    assert len({len(e.prompt_ids) for e in recall}) >= 10, "lengths spread over the window"


def test_length_helpers():
    assert length_window(512) == (384, 512)
    assert length_window(100) == (75, 100)
    assert length_bins([512, 256, 1024]) == [(0, 256), (256, 512), (512, 1024)]
    assert [bin_for(n, [256, 512]) for n in (1, 256, 257, 512, 513)] == [256, 256, 512, 512, None]


def test_curriculum_grows_and_each_phase_can_be_generated(sentence_tokenizer):
    phases = curriculum("list_recall", 1024)
    assert [p.length for p in phases] == [205, 410, 614, 819, 1024]
    assert [p.difficulty for p in phases] == ["medium", "medium", "hard", "hard", "extra-hard"]
    assert curriculum("parity", 2048)[-1] == (2048, "long")
    assert curriculum("copying", 256, phases=1) == [(256, "extra-hard")]
    assert [p.length for p in curriculum("parity", 100)] == [64, 64, 64, 80, 100]
    for length, difficulty in phases:
        assert make_examples("list_recall", sentence_tokenizer, length=length, difficulty=difficulty, n=2, seed=0)


def test_example_round_trips_through_json(sentence_tokenizer):
    ex = make_examples("copying", sentence_tokenizer, length=160, n=1, seed=0)[0]
    assert Example.from_dict(json.loads(json.dumps(ex.to_dict()))) == ex


def test_list_pointer_is_an_alias(sentence_tokenizer):
    a = make_examples("list_pointer", sentence_tokenizer, length=160, n=2, seed=0)
    b = make_examples("list_recall", sentence_tokenizer, length=160, n=2, seed=0)
    assert [e.prompt_ids for e in a] == [e.prompt_ids for e in b]


def test_a_candidate_that_fits_nowhere_is_skipped_not_fatal(sentence_tokenizer, monkeypatch):
    """A fine-tuning stream of thousands of examples died on one candidate whose content could not land
    in the window (copying/medium at L = 96, chunk 53 of seed 0). Now such a candidate is skipped: the
    stream is the unpatched one without it, and only a window that nothing fits still raises."""
    from metatokens.tasks import registry

    clean = make_examples("copying", sentence_tokenizer, length=160, n=6, seed=0)
    real_fit = registry._fit
    doomed = [clean[2].prompt_text]

    def fit(task, level, tokenizer, stream, *args):
        draft, pieces, per_unit = real_fit(task, level, tokenizer, stream, *args)
        if draft.text in doomed:  # this candidate's content "fits nowhere"
            raise registry._Unfit("could not fit copying/medium prompts into 120..160 tokens; test")
        return draft, pieces, per_unit

    monkeypatch.setattr(registry, "_fit", fit)
    skipped = make_examples("copying", sentence_tokenizer, length=160, n=5, seed=0)
    assert [e.prompt_ids for e in skipped] == [e.prompt_ids for e in clean[:2] + clean[3:]]

    def never(*args):
        raise registry._Unfit("could not fit copying/medium prompts into 120..160 tokens; test")

    monkeypatch.setattr(registry, "_fit", never)
    with pytest.raises(TaskError, match="could not fit"):
        make_examples("copying", sentence_tokenizer, length=160, n=1, seed=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(task="sorting"), "unknown task 'sorting'"),
        (dict(difficulty="easy"), "unknown difficulty 'easy'"),
        (dict(split="val"), "unknown split 'val'"),
        (dict(length=24), "too short for list_recall/medium"),
        (dict(length=4), "length must be an integer >= 8"),
        (dict(n=-1), "n must be a non-negative integer"),
    ],
)
def test_bad_requests_raise_one_line_task_errors(sentence_tokenizer, kwargs, message):
    args = dict(task="list_recall", length=160, difficulty="medium", n=1, seed=0, split="train") | kwargs
    task = args.pop("task")
    with pytest.raises(TaskError, match=re.escape(message)) as info:
        make_examples(task, sentence_tokenizer, **args)
    assert "\n" not in str(info.value)
    if "too short" not in message:  # argument errors surface at the call, not at the first next()
        with pytest.raises(TaskError, match=re.escape(message)):
            iter_examples(task, sentence_tokenizer, **args)


def test_show_prints_examples_and_errors_exit_2(sentence_tokenizer, tmp_path, capsys):
    sentence_tokenizer.save(tmp_path / "tok.json")
    assert tasks_main.main(["--show", "--tokenizer", str(tmp_path / "tok.json"), "--length", "160"]) == 0
    out = capsys.readouterr().out
    assert out.count("===") == len(TASKS) and META_TOKEN in out
    assert tasks_main.main(["--show", "--tokenizer", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


# ---------------------------------------------------------------------------------------------
# Answers that can be copied: the answer's token ids occur verbatim in the prompt
# ---------------------------------------------------------------------------------------------


class _PlainBPE:
    """A GPT-2-style byte-level BPE made here with the `tokenizers` library alone (GPT-2's
    pre-tokenizer regex, no prefix space), independent of `MetaTokenizer`, plus the two special
    ids the task generators need."""

    def __init__(self, texts: list[str], vocab_size: int = 600):
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        self.backend = Tokenizer(models.BPE())
        self.backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        self.backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|meta|>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        self.backend.train_from_iterator(texts, trainer)
        self.eos_token_id = self.backend.token_to_id("<|endoftext|>")
        self.meta_token_id = self.backend.token_to_id("<|meta|>")

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode(ids, skip_special_tokens=False)


def _occurs(needle: list[int], haystack: list[int]) -> bool:
    n = len(needle)
    return n > 0 and any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


@pytest.fixture(scope="module")
def plain_bpe() -> _PlainBPE:
    rng = random.Random(1)
    texts = [" ".join(rng.sample(ITEMS, 6)) + ". " + rng.choice(SENTENCES) for _ in range(400)]
    return _PlainBPE(texts)


@pytest.fixture(scope="module")
def builtin_tok(tmp_path_factory) -> MetaTokenizer:
    """The tokenizer the tiny study uses: 2048-token BPE on the built-in corpus."""
    from metatokens.data.packing import train_tokenizer_on

    return train_tokenizer_on("builtin", 2048, cache_dir=tmp_path_factory.mktemp("tokcache"))


def _copyable_ids(task: str, ex: Example, tokenizer) -> list[tuple[list[int], list[int]]]:
    """(ids that must occur, ids they must occur in) for one example. The answer minus EOS must
    appear in the prompt, except for Segment Counting, whose answer is a count: there the counted
    word must be spelled in the question as it is in the lists."""
    answer = list(ex.answer_ids[:-1])
    if task != "segment_counting":
        return [(answer, list(ex.prompt_ids))]
    word_ids = tokenizer.encode(" " + ex.info["word"])
    lists_end = ex.prompt_text.index("\nQuestion:")
    lists_ids = tokenizer.encode(ex.prompt_text[:lists_end])
    question_ids = tokenizer.encode(ex.prompt_text[lists_end:])
    return [(word_ids, lists_ids), (word_ids, question_ids)]


@pytest.mark.parametrize("which", ["builtin", "plain_bpe"])
@pytest.mark.parametrize("task", sorted(TASKS))
def test_answer_ids_occur_verbatim_in_the_prompt(task, which, request):
    """What a model must copy is spelled with the same token ids in the prompt as in the answer,
    with the study's tokenizer and with an independent GPT-2-style BPE (both meta variants)."""
    tokenizer = request.getfixturevalue("builtin_tok" if which == "builtin" else which)
    for meta in (True, False):
        for difficulty in ("medium", "hard"):
            examples = make_examples(task, tokenizer, length=LENGTH[difficulty] * 2, difficulty=difficulty, n=25,
                                     seed=3, meta=meta)
            for ex in examples:
                for needle, haystack in _copyable_ids(task, ex, tokenizer):
                    assert _occurs(needle, haystack), (task, ex.prompt_text, ex.answer_text)


@pytest.mark.parametrize("which", ["builtin", "plain_bpe"])
def test_every_item_word_is_spelled_alike_in_prompt_and_answer(which, request):
    """For every item word, the ids of `" " + word` (how answers write it) occur inside the prompt
    text that each task writes around it: a Copying span (first, middle and last word), a List
    Recall / Segment Counting list (first and later items) and their questions."""
    from metatokens.tasks.copying import bracket
    from metatokens.tasks.list_recall import QUESTION, list_line
    from metatokens.tasks.segment_counting import question

    tokenizer = request.getfixturevalue("builtin_tok" if which == "builtin" else which)
    other = [w for w in ITEMS][:3]
    for word in ITEMS:
        ids = tokenizer.encode(" " + word)
        fill = [w for w in other if w != word][:2]
        contexts = [
            "The lamp was near the barn. " + bracket(" ".join([word, *fill])) + " The end.",
            "The lamp was near the barn. " + bracket(" ".join([fill[0], word, fill[1]])) + " The end.",
            "The lamp was near the barn. " + bracket(" ".join([*fill, word])) + " The end.",
            "Read the lists below.\n" + list_line(0, [word, *fill]) + "\n",
            "Read the lists below.\n" + list_line(4, [*fill, word]) + "\n",
            QUESTION.format(query=word, position=2),
            question(word, 1, 3),
        ]
        for text in contexts:
            assert _occurs(ids, tokenizer.encode(text)), (word, text)

"""Tests for metatokens.tokenizer: training, round trips, the meta-id guarantee, files, GPT-2."""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import pre_tokenizers

from metatokens.tokenizer import EOS_TOKEN, META_TOKEN, MetaTokenizer
from metatokens.errors import TokenizerError

VOCAB_SIZE = 400

TRICKY_TEXTS = [
    "",
    " ",
    "hello world",
    "  leading spaces and trailing  ",
    "tabs\tand\nnew\r\nlines\n\n",
    "emoji 😀🎉👩‍👩‍👧 and flags 🇫🇷",
    "中文字符和日本語のテキスト、한국어",
    "accents: café naïve Ångström ß",
    "zero\u200bwidth and combining e\u0301",
    "nul \x00 and control \x07 chars",
    f"literal {META_TOKEN} in text",
    f"{META_TOKEN}{META_TOKEN}{EOS_TOKEN}",
    f"end{EOS_TOKEN}start {EOS_TOKEN} x",
    "<|meta", "meta|>", "<|<|meta|>|>",
]


def _corpus(n_lines: int = 300, seed: int = 0) -> list[str]:
    """A few KB of varied text, built here so tests need no data files."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "tra", "zen", "qu", "ph", "or", "ent", "ish", "数", "据", "é", "ß"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(400)]
    words += ["meta", "token", "😀", "def", "return", "x", "=", "1", "+", "(", ")", "\t"]
    lines = []
    for _ in range(n_lines):
        line = " ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))
        if rng.random() < 0.2:
            line = "    " + line
        if rng.random() < 0.1:
            line += f" {META_TOKEN}"  # training text may contain the literal spelling too
        lines.append(line)
    return lines


@pytest.fixture(scope="module")
def tok() -> MetaTokenizer:
    return MetaTokenizer.train(_corpus(), VOCAB_SIZE)


def _random_unicode(rng: random.Random, length: int) -> str:
    pools = [
        (0x20, 0x7E), (0x09, 0x0D), (0xA0, 0x2FF), (0x370, 0x3FF), (0x400, 0x4FF),
        (0x4E00, 0x4FFF), (0x3040, 0x30FF), (0x1F300, 0x1F64F), (0x10000, 0x1007F),
    ]
    chars = []
    for _ in range(length):
        lo, hi = rng.choice(pools)
        chars.append(chr(rng.randint(lo, hi)))
    return "".join(chars)


# ---------------------------------------------------------------- training


def test_trained_vocab_size_equals_request(tok: MetaTokenizer) -> None:
    assert tok.vocab_size == VOCAB_SIZE == len(tok)
    assert tok.backend.get_vocab_size(with_added_tokens=True) == VOCAB_SIZE
    assert {tok.eos_token_id, tok.meta_token_id} == {0, 1}
    assert tok.backend.id_to_token(tok.meta_token_id) == META_TOKEN
    assert tok.backend.id_to_token(tok.eos_token_id) == EOS_TOKEN


def test_vocab_size_is_truthful_when_bpe_runs_out_of_merges() -> None:
    # Tiny corpus: BPE runs out of pairs long before 5000 entries.
    small = MetaTokenizer.train(["abc abc abd"] * 3, 5000)
    assert small.vocab_size < 5000
    assert small.vocab_size == len(small.backend.get_vocab())
    assert max(small.backend.get_vocab().values()) == small.vocab_size - 1


def test_train_accepts_generators_and_minimum_size() -> None:
    gen = (line for line in _corpus(50))
    t = MetaTokenizer.train(gen, 258, min_frequency=1)
    assert t.vocab_size == 258  # bytes + 2 specials, no merges
    text = "any text 😀"
    assert t.decode(t.encode(text)) == text


@pytest.mark.parametrize("bad", [0, 100, 257])
def test_train_rejects_too_small_vocab(bad: int) -> None:
    with pytest.raises(TokenizerError, match="too small"):
        MetaTokenizer.train(["abc"], bad)


# ---------------------------------------------------------------- round trip and meta guarantee


@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_round_trip_tricky_texts(tok: MetaTokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert tok.meta_token_id not in ids
    assert tok.eos_token_id not in ids
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_meta=False) == text


def test_round_trip_random_unicode(tok: MetaTokenizer) -> None:
    rng = random.Random(1)
    texts = [_random_unicode(rng, rng.randint(0, 80)) for _ in range(200)]
    # Splice the special spellings into random places.
    texts += [t[:5] + META_TOKEN + t[5:] + EOS_TOKEN for t in texts[:50]]
    for text, ids in zip(texts, tok.encode_batch(texts)):
        assert ids == tok.encode(text)
        assert tok.meta_token_id not in ids and tok.eos_token_id not in ids
        assert tok.decode(ids) == text


def test_special_spellings_are_plain_text(tok: MetaTokenizer) -> None:
    for text in (META_TOKEN, EOS_TOKEN, f" {META_TOKEN} ", f"a{META_TOKEN}b{EOS_TOKEN}c"):
        ids = tok.encode(text)
        assert len(ids) > 1  # split into ordinary pieces, not one special id
        assert tok.meta_token_id not in ids and tok.eos_token_id not in ids
        assert tok.decode(ids) == text


def test_encode_batch_matches_encode(tok: MetaTokenizer) -> None:
    assert tok.encode_batch(TRICKY_TEXTS) == [tok.encode(t) for t in TRICKY_TEXTS]
    assert tok.encode_batch([]) == []
    with pytest.raises(TypeError):
        tok.encode_batch("not a list")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        tok.encode_batch(["ok", 3])  # type: ignore[list-item]


# ---------------------------------------------------------------- decode


def test_decode_meta_rendering(tok: MetaTokenizer) -> None:
    a, b = tok.encode("hello"), tok.encode(" world")
    ids = a + [tok.meta_token_id] + b + [tok.meta_token_id]
    assert tok.decode(ids) == "hello world"
    assert tok.decode(ids, skip_meta=True) == "hello world"
    assert tok.decode(ids, skip_meta=False) == f"hello{META_TOKEN} world{META_TOKEN}"
    # EOS ids are always shown: they mark document boundaries.
    assert tok.decode(a + [tok.eos_token_id] + b) == f"hello{EOS_TOKEN} world"


def test_decode_accepts_tensors_and_arrays(tok: MetaTokenizer) -> None:
    ids = tok.encode("tensor 😀") + [tok.meta_token_id]
    expected = tok.decode(ids)
    assert tok.decode(torch.tensor(ids)) == expected
    assert tok.decode(torch.tensor(ids, dtype=torch.int32)) == expected
    assert tok.decode(np.array(ids, dtype=np.int64)) == expected
    assert tok.decode(tuple(ids)) == expected
    assert tok.decode(torch.tensor(ids), skip_meta=False) == f"tensor 😀{META_TOKEN}"
    assert tok.decode([]) == ""


def test_decode_rejects_bad_ids(tok: MetaTokenizer) -> None:
    with pytest.raises(ValueError):
        tok.decode([tok.vocab_size])
    with pytest.raises(ValueError):
        tok.decode([-1])
    with pytest.raises(ValueError):
        tok.decode(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(TypeError):
        tok.decode([1.5])


# ---------------------------------------------------------------- persistence


def test_save_load_round_trip(tok: MetaTokenizer, tmp_path) -> None:
    path = tmp_path / "sub" / "tokenizer.json"
    tok.save(path)
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.json"]  # no temp files left
    loaded = MetaTokenizer.from_file(path)
    assert (loaded.vocab_size, loaded.meta_token_id, loaded.eos_token_id) == (
        tok.vocab_size, tok.meta_token_id, tok.eos_token_id)
    assert loaded.backend.get_vocab() == tok.backend.get_vocab()
    assert loaded.encode_batch(TRICKY_TEXTS) == tok.encode_batch(TRICKY_TEXTS)
    # The guarantee is re-established on load (the flag is not stored in the JSON).
    ids = loaded.encode(f"x {META_TOKEN} {EOS_TOKEN}")
    assert loaded.meta_token_id not in ids and loaded.eos_token_id not in ids
    # Overwriting an existing file works too.
    tok.save(path)
    assert MetaTokenizer.from_file(str(path)).encode("abc") == tok.encode("abc")


def test_failed_save_keeps_old_file(tok: MetaTokenizer, tmp_path, monkeypatch) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text("old contents", encoding="utf-8")

    def failing_replace(src, dst):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr("metatokens.fileio.os.replace", failing_replace)  # where the rename happens
    with pytest.raises(OSError, match="simulated"):
        tok.save(path)
    assert path.read_text(encoding="utf-8") == "old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]


def test_json_str_and_pickle_round_trip(tok: MetaTokenizer) -> None:
    for other in (MetaTokenizer.from_json_str(tok.to_json_str()), pickle.loads(pickle.dumps(tok))):
        assert other.encode_batch(TRICKY_TEXTS) == tok.encode_batch(TRICKY_TEXTS)
        assert other.meta_token_id not in other.encode(META_TOKEN)


def _assert_one_line_error(excinfo, path) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    assert str(path) in message


def test_missing_file(tmp_path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(TokenizerError) as excinfo:
        MetaTokenizer.from_file(path)
    _assert_one_line_error(excinfo, path)


def test_directory_instead_of_file(tmp_path) -> None:
    with pytest.raises(TokenizerError) as excinfo:
        MetaTokenizer.from_file(tmp_path)
    _assert_one_line_error(excinfo, tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "binary", "wrong_json", "bad_schema"])
def test_corrupt_files(tok: MetaTokenizer, tmp_path, damage: str) -> None:
    path = tmp_path / "tokenizer.json"
    good = tok.to_json_str()
    if damage == "truncate":
        path.write_text(good[: len(good) // 2], encoding="utf-8")
    elif damage == "garbage":
        path.write_text("{ this is\n not json", encoding="utf-8")
    elif damage == "empty":
        path.write_text("", encoding="utf-8")
    elif damage == "binary":
        path.write_bytes(b"\xff\xfe\x00\x01garbage")
    elif damage == "wrong_json":
        path.write_text(json.dumps({"hello": ["world"]}), encoding="utf-8")
    else:
        broken = json.loads(good)
        broken["model"]["type"] = "NoSuchModel"
        path.write_text(json.dumps(broken), encoding="utf-8")
    with pytest.raises(TokenizerError) as excinfo:
        MetaTokenizer.from_file(path)
    _assert_one_line_error(excinfo, path)


def test_tokenizer_without_meta_token_is_rejected(tok: MetaTokenizer, tmp_path) -> None:
    # A perfectly valid tokenizers JSON that simply lacks <|meta|>.
    from tokenizers import Tokenizer, models

    plain = Tokenizer(models.BPE(vocab={"a": 0, "b": 1, EOS_TOKEN: 2}, merges=[]))
    plain.add_special_tokens([EOS_TOKEN])
    path = tmp_path / "plain.json"
    plain.save(str(path))
    with pytest.raises(TokenizerError, match="meta") as excinfo:
        MetaTokenizer.from_file(path)
    _assert_one_line_error(excinfo, path)
    with pytest.raises(TokenizerError, match="meta"):
        MetaTokenizer.from_json_str(plain.to_str())


def test_meta_as_ordinary_added_token_is_rejected(tok: MetaTokenizer) -> None:
    # Non-special added tokens are matched in raw text, which would break the guarantee.
    cfg = json.loads(tok.to_json_str())
    for entry in cfg["added_tokens"]:
        if entry["content"] == META_TOKEN:
            entry["special"] = False
    with pytest.raises(TokenizerError, match="special"):
        MetaTokenizer.from_json_str(json.dumps(cfg))


def test_merge_that_builds_meta_is_rejected(tok: MetaTokenizer) -> None:
    # If some merge could assemble the meta spelling, BPE itself could emit the id.
    cfg = json.loads(tok.to_json_str())
    vocab = cfg["model"]["vocab"]
    vocab["<|meta"] = len(vocab)
    cfg["model"]["merges"].append(["<|meta", "|>"])
    with pytest.raises(TokenizerError, match="merge"):
        MetaTokenizer.from_json_str(json.dumps(cfg))


# ---------------------------------------------------------------- GPT-2


GPT2_MERGES = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"), ("Ġ", "w"), ("o", "r"), ("Ġw", "or")]


def _write_tiny_gpt2(folder) -> dict[str, int]:
    """GPT-2-format files: 256 byte symbols, a few merges, then <|endoftext|> last like GPT-2."""
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for left, right in GPT2_MERGES:
        vocab[left + right] = len(vocab)
    vocab[EOS_TOKEN] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    merges = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in GPT2_MERGES)
    (folder / "merges.txt").write_text(merges, encoding="utf-8")
    return vocab


def test_from_gpt2_local_folder(tmp_path) -> None:
    vocab = _write_tiny_gpt2(tmp_path)
    tok = MetaTokenizer.from_gpt2(tmp_path)
    assert tok.eos_token_id == vocab[EOS_TOKEN] == len(vocab) - 1
    assert tok.meta_token_id == len(vocab)
    assert tok.vocab_size == len(vocab) + 1 == len(tok)
    # "hello" merges fully; " world" -> "Ġwor" + "l" + "d".
    assert tok.encode("hello world") == [vocab["hello"], vocab["Ġwor"], vocab["l"], vocab["d"]]
    # The special spellings in text are split into ordinary pieces, as with real GPT-2 ids.
    ids = tok.encode(f"hello{EOS_TOKEN}{META_TOKEN}")
    assert tok.eos_token_id not in ids and tok.meta_token_id not in ids
    text = f"hello world {META_TOKEN} 😀\t中文"
    assert tok.decode(tok.encode(text)) == text


def _write_tiny_gpt2_json(folder) -> None:
    """The same tokenizer as _write_tiny_gpt2, as GPT-2's tokenizer.json (no <|meta|>) alone."""
    _write_tiny_gpt2(folder / "vocab-merges")
    cfg = json.loads(MetaTokenizer.from_gpt2(folder / "vocab-merges").to_json_str())
    cfg["added_tokens"] = [t for t in cfg["added_tokens"] if t["content"] != META_TOKEN]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps(cfg), encoding="utf-8")
    for name in ("vocab.json", "merges.txt"):
        (folder / "vocab-merges" / name).unlink()
    (folder / "vocab-merges").rmdir()


def test_from_gpt2_tokenizer_json_folder(tmp_path) -> None:
    # A folder holding a tokenizer.json (as the HF cache does) gives the same ids.
    _write_tiny_gpt2(tmp_path / "files")
    from_files = MetaTokenizer.from_gpt2(tmp_path / "files")
    _write_tiny_gpt2_json(tmp_path / "json")
    assert sorted(p.name for p in (tmp_path / "json").iterdir()) == ["tokenizer.json"]
    from_json = MetaTokenizer.from_gpt2(tmp_path / "json")
    assert from_json.meta_token_id == from_files.meta_token_id
    assert from_json.encode_batch(TRICKY_TEXTS) == from_files.encode_batch(TRICKY_TEXTS)


def test_from_gpt2_hf_cache_layout(tmp_path, monkeypatch) -> None:
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    snapshot = tmp_path / "hub" / "models--gpt2" / "snapshots" / "0123abcd"
    vocab = _write_tiny_gpt2(snapshot)
    tok = MetaTokenizer.from_gpt2()
    assert tok.meta_token_id == len(vocab)


def test_from_gpt2_matches_transformers(tmp_path) -> None:
    import transformers

    _write_tiny_gpt2(tmp_path)
    ours = MetaTokenizer.from_gpt2(tmp_path)
    theirs = transformers.GPT2TokenizerFast.from_pretrained(str(tmp_path))
    rng = random.Random(2)
    for _ in range(50):
        text = _random_unicode(rng, 40) + " hello world"
        assert ours.encode(text) == theirs(text)["input_ids"]


@pytest.fixture(autouse=True)
def _no_hub_downloads(monkeypatch) -> None:
    """No test here reaches the network: a from_gpt2() that would download fails the test.

    pytest.fail raises a BaseException, which from_gpt2's `except Exception` cannot turn into a
    TokenizerError, so a test expecting a TokenizerError still notices the attempted download.
    """
    try:
        import huggingface_hub
    except ImportError:
        return

    def refuse(*args, **kwargs):
        pytest.fail(f"a test tried to download from the Hugging Face Hub: {args} {kwargs}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache in tmp_path (HF_HOME) and no offline variable set; its hub folder."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return tmp_path / "hf" / "hub"


class FakeHub:
    """Stands in for huggingface_hub.hf_hub_download: 'downloads' the files of a local folder.

    Lays them out as huggingface_hub does (CACHE/models--ORG--NAME/snapshots/COMMIT/FILE plus
    refs/main) and records every call.
    """

    COMMIT = "0123456789abcdef0123456789abcdef01234567"

    def __init__(self, files, missing: tuple[str, ...] = ()) -> None:
        self.files = files
        self.missing = missing
        self.calls: list[dict] = []

    def __call__(self, repo_id, filename, *, revision=None, cache_dir=None, **kwargs):
        from huggingface_hub.utils import EntryNotFoundError

        self.calls.append({"repo_id": repo_id, "filename": filename, "revision": revision, "cache_dir": cache_dir})
        if filename in self.missing or not (self.files / filename).is_file():
            raise EntryNotFoundError(f"404: {filename} is not in {repo_id}")
        repo = Path(cache_dir) / f"models--{repo_id.replace('/', '--')}"
        snapshot = repo / "snapshots" / (revision or self.COMMIT)
        snapshot.mkdir(parents=True, exist_ok=True)
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(self.COMMIT, encoding="utf-8")
        shutil.copyfile(self.files / filename, snapshot / filename)
        return str(snapshot / filename)


@pytest.mark.parametrize("var,value", [("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("HF_HUB_OFFLINE", "true")])
def test_from_gpt2_offline_says_how_to_allow_the_download(empty_hf_cache, monkeypatch, var, value) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(TokenizerError) as excinfo:  # and the autouse guard: no download attempted
        MetaTokenizer.from_gpt2()
    message = str(excinfo.value)
    assert "\n" not in message and "GPT-2" in message and str(empty_hf_cache) in message
    assert f"{var}={value}" in message  # what forbade the download
    assert "unset HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE" in message  # how to allow it
    assert "from_gpt2(path=...)" in message and "hf download gpt2" in message  # or how to do without


@pytest.mark.parametrize("hub_offline,transformers_offline", [
    (None, None), ("1", None), ("0", "1"), (None, "yes"), ("", "1"), ("off", None), ("TRUE", "0"),
])
def test_offline_rule_is_huggingface_hubs(monkeypatch, hub_offline, transformers_offline) -> None:
    # Same variables, precedence and truthy spellings as huggingface_hub.constants (and so datasets).
    from huggingface_hub import constants

    from metatokens.tokenizer.gpt2 import _hf_offline_setting

    for var, value in (("HF_HUB_OFFLINE", hub_offline), ("TRANSFORMERS_OFFLINE", transformers_offline)):
        if value is None:
            monkeypatch.delenv(var, raising=False)
        else:
            monkeypatch.setenv(var, value)
    theirs = constants._is_true(os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE"))
    assert (_hf_offline_setting() is not None) == theirs


def test_from_gpt2_downloads_tokenizer_json_when_not_cached(tmp_path, empty_hf_cache, monkeypatch) -> None:
    import huggingface_hub

    _write_tiny_gpt2_json(tmp_path / "upstream")
    hub = FakeHub(tmp_path / "upstream")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)
    tok = MetaTokenizer.from_gpt2()
    assert [(c["repo_id"], c["filename"]) for c in hub.calls] == [("openai-community/gpt2", "tokenizer.json")]
    assert hub.calls[0]["cache_dir"] == str(empty_hf_cache)  # into the cache from_gpt2 searches
    snapshot = empty_hf_cache / "models--openai-community--gpt2" / "snapshots" / FakeHub.COMMIT
    assert sorted(p.name for p in snapshot.iterdir()) == ["tokenizer.json"]
    expected = MetaTokenizer.from_gpt2(path=tmp_path / "upstream")
    assert tok.to_json_str() == expected.to_json_str()
    assert tok.encode_batch(TRICKY_TEXTS) == expected.encode_batch(TRICKY_TEXTS)
    assert (tok.meta_token_id, tok.eos_token_id) == (expected.meta_token_id, expected.eos_token_id)
    # Next time the cache serves it, offline too: no second download.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert MetaTokenizer.from_gpt2().to_json_str() == expected.to_json_str()
    assert len(hub.calls) == 1


def test_from_gpt2_downloads_vocab_and_merges_without_tokenizer_json(tmp_path, empty_hf_cache, monkeypatch) -> None:
    import huggingface_hub

    _write_tiny_gpt2(tmp_path / "upstream")
    hub = FakeHub(tmp_path / "upstream")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)
    tok = MetaTokenizer.from_gpt2()
    assert [c["filename"] for c in hub.calls] == ["tokenizer.json", "vocab.json", "merges.txt"]
    assert hub.calls[2]["revision"] == FakeHub.COMMIT  # merges.txt of the same revision as vocab.json
    expected = MetaTokenizer.from_gpt2(path=tmp_path / "upstream")
    assert tok.to_json_str() == expected.to_json_str()
    assert tok.encode_batch(TRICKY_TEXTS) == expected.encode_batch(TRICKY_TEXTS)


def test_from_gpt2_download_failure_is_one_line(tmp_path, empty_hf_cache, monkeypatch) -> None:
    import huggingface_hub


    def unreachable(*args, **kwargs):
        raise ConnectionError("no route to host\n(second line of the client's message)")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises(TokenizerError) as excinfo:
        MetaTokenizer.from_gpt2()
    message = str(excinfo.value)
    assert "\n" not in message and str(empty_hf_cache) in message
    assert "failed (ConnectionError: no route to host" in message and "from_gpt2(path=...)" in message
    # A repository without tokenizer.json whose other files are missing too: also one line.
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", FakeHub(tmp_path / "nothing-here"))
    with pytest.raises(TokenizerError, match="EntryNotFoundError") as excinfo:
        MetaTokenizer.from_gpt2()
    assert "\n" not in str(excinfo.value)


def test_from_gpt2_without_huggingface_hub(empty_hf_cache, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import huggingface_hub -> ImportError
    with pytest.raises(TokenizerError) as excinfo:
        MetaTokenizer.from_gpt2()
    message = str(excinfo.value)
    assert "\n" not in message and str(empty_hf_cache) in message
    assert "pip install huggingface_hub" in message and "from_gpt2(path=...)" in message


def test_from_gpt2_not_found(tmp_path, monkeypatch) -> None:
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TokenizerError) as excinfo:
        MetaTokenizer.from_gpt2()
    message = str(excinfo.value)
    assert "\n" not in message and "GPT-2" in message and str(tmp_path) in message
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TokenizerError) as excinfo:
        MetaTokenizer.from_gpt2(empty)
    _assert_one_line_error(excinfo, empty)
    with pytest.raises(TokenizerError):
        MetaTokenizer.from_gpt2(tmp_path / "does-not-exist")


def test_from_gpt2_bad_merges(tmp_path) -> None:
    _write_tiny_gpt2(tmp_path)
    (tmp_path / "merges.txt").write_text("#version: 0.2\nh e x\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match="line 2") as excinfo:
        MetaTokenizer.from_gpt2(tmp_path)
    _assert_one_line_error(excinfo, tmp_path / "merges.txt")

"""prepare_data: tokenising into cached flat token files, the validation split, the cache."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from metatokens.errors import DataError
from metatokens.data.corpora import builtin_documents
from metatokens.data.packing import PackedData, prepare_data, token_dtype, tokenizer_hash, train_tokenizer_on
from metatokens.tokenizer import MetaTokenizer

N_DOCS = 60


@pytest.fixture(scope="module")
def documents() -> list[str]:
    # Unique markers let a test tell from decoded tokens which document landed in which split.
    prose = list(builtin_documents())[:N_DOCS]
    return [f"doc{i:03d}. {text[:1500]}" for i, text in enumerate(prose)]


@pytest.fixture(scope="module")
def tokenizer(documents) -> MetaTokenizer:
    return MetaTokenizer.train(documents, 400)


@pytest.fixture()
def corpus(tmp_path, documents):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents), encoding="utf-8")
    return path


def split_documents(tokenizer, tokens) -> list[str]:
    """Decode an EOS-joined token stream back into its documents."""
    ids = np.asarray(tokens).tolist()
    assert ids[-1] == tokenizer.eos_token_id  # every document, the last included, ends with EOS
    docs, current = [], []
    for token in ids:
        if token == tokenizer.eos_token_id:
            docs.append(tokenizer.decode(current))
            current = []
        else:
            current.append(token)
    return docs


def test_tokens_match_direct_tokenisation(tmp_path, corpus, documents, tokenizer):
    data = prepare_data(str(corpus), tokenizer, tmp_path / "cache", val_fraction=0.1, progress=False)
    assert isinstance(data, PackedData)
    assert isinstance(data.train, np.memmap) and isinstance(data.val, np.memmap)
    eos = tokenizer.eos_token_id
    stride = 10  # round(1 / 0.1): documents 0, 10, 20, ... are held out
    expected = {"train": [], "val": []}
    for i, doc in enumerate(documents):
        expected["val" if i % stride == 0 else "train"].extend(tokenizer.encode(doc) + [eos])
    assert data.train.tolist() == expected["train"]
    assert data.val.tolist() == expected["val"]
    meta = data.meta
    assert meta["train_tokens"] == len(expected["train"]) and meta["val_tokens"] == len(expected["val"])
    assert meta["val_documents"] == 6 and meta["train_documents"] == N_DOCS - 6
    assert meta["train_bytes"] == sum(len(d.encode()) for i, d in enumerate(documents) if i % stride)
    assert meta["val_bytes"] == sum(len(d.encode()) for i, d in enumerate(documents) if i % stride == 0)
    assert meta["tokenizer_sha256"] == tokenizer_hash(tokenizer)
    assert meta["dtype"] == "uint16" and data.train.dtype == np.uint16
    # bits per byte = loss * tokens / bytes / ln 2
    assert data.bits_per_byte(2.0) == pytest.approx(2.0 * meta["val_tokens"] / meta["val_bytes"] / math.log(2))


def test_val_split_is_disjoint_by_documents_and_deterministic(tmp_path, corpus, documents, tokenizer):
    data = prepare_data(str(corpus), tokenizer, tmp_path / "a", val_fraction=0.05, progress=False)
    train_docs = split_documents(tokenizer, data.train)
    val_docs = split_documents(tokenizer, data.val)
    marker = re.compile(r"^doc(\d{3})\. ")
    train_ids = {int(marker.match(d).group(1)) for d in train_docs}
    val_ids = {int(marker.match(d).group(1)) for d in val_docs}
    assert val_ids == {0, 20, 40}
    assert not train_ids & val_ids
    assert train_ids | val_ids == set(range(N_DOCS))
    assert sorted(train_docs + val_docs) == sorted(documents)
    again = prepare_data(str(corpus), tokenizer, tmp_path / "b", val_fraction=0.05, progress=False)
    assert again.val.tolist() == data.val.tolist() and again.train.tolist() == data.train.tolist()


def test_default_val_fraction_still_holds_out_a_document(tmp_path, corpus, tokenizer):
    data = prepare_data(str(corpus), tokenizer, tmp_path / "c", progress=False)
    assert data.meta["val_documents"] == 1  # 60 documents, every 200th held out: the first
    assert len(data.val) > 0


def test_single_document_corpus_is_cut_at_a_line(tmp_path, tokenizer):
    text = "".join(f"line {i} of the only document\n" for i in range(400))
    (tmp_path / "one.txt").write_text(text, encoding="utf-8")
    data = prepare_data(str(tmp_path / "one.txt"), tokenizer, tmp_path / "cache", val_fraction=0.1, progress=False)
    assert data.meta["val_split"] == "single-document-tail"
    (train_text,) = split_documents(tokenizer, data.train)
    (val_text,) = split_documents(tokenizer, data.val)
    assert train_text + val_text == text
    assert train_text.endswith("\n") and val_text.startswith("line ")
    assert 0.05 < len(val_text) / len(text) < 0.15
    assert data.meta["train_bytes"] + data.meta["val_bytes"] == len(text.encode())


def test_cache_is_reused_without_retokenising(tmp_path, corpus, tokenizer, monkeypatch):
    first = prepare_data(str(corpus), tokenizer, tmp_path / "cache", progress=False)

    def refuse(texts):
        raise AssertionError("re-tokenised although the cache was valid")

    monkeypatch.setattr(tokenizer, "encode_batch", refuse)
    second = prepare_data(str(corpus), tokenizer, tmp_path / "cache", progress=False)
    assert second.path == first.path
    assert second.meta == first.meta
    assert second.train.tolist() == first.train.tolist()
    # Nothing but the finished files (and the lock) stays behind.
    assert sorted(p.name for p in first.path.iterdir()) == [".lock", "meta.json", "train.bin", "val.bin"]


def test_cache_key_changes_with_inputs(tmp_path, corpus, tokenizer, documents):
    base = prepare_data(str(corpus), tokenizer, tmp_path, progress=False).path
    assert prepare_data(str(corpus), tokenizer, tmp_path, val_fraction=0.1, progress=False).path != base
    other_tokenizer = MetaTokenizer.train(documents[:20], 300)
    assert prepare_data(str(corpus), other_tokenizer, tmp_path, progress=False).path != base
    assert prepare_data(str(corpus), tokenizer, tmp_path, max_documents=10, progress=False).path != base
    corpus.write_text(corpus.read_text() + json.dumps({"text": "one more"}) + "\n")
    assert prepare_data(str(corpus), tokenizer, tmp_path, progress=False).path != base


@pytest.mark.parametrize("damage", ["no-meta", "bad-meta", "short-train"])
def test_half_written_cache_is_rebuilt(tmp_path, corpus, tokenizer, damage, monkeypatch):
    first = prepare_data(str(corpus), tokenizer, tmp_path, progress=False)
    reference = first.train.tolist()
    del first
    folder = next(tmp_path.glob("tokens-*"))
    if damage == "no-meta":
        (folder / "meta.json").unlink()
    elif damage == "bad-meta":
        (folder / "meta.json").write_text('{"format": 1, "key": ')
    else:
        raw = (folder / "train.bin").read_bytes()
        (folder / "train.bin").write_bytes(raw[: len(raw) // 2])
    calls = []
    original = tokenizer.encode_batch
    monkeypatch.setattr(tokenizer, "encode_batch", lambda texts: calls.append(len(texts)) or original(texts))
    rebuilt = prepare_data(str(corpus), tokenizer, tmp_path, progress=False)
    assert calls, "a damaged cache must be rebuilt"
    assert rebuilt.train.tolist() == reference


def test_failed_build_leaves_no_usable_entry(tmp_path, tokenizer):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "fine"}\n{"text": broken}\n')
    with pytest.raises(DataError, match=r"c\.jsonl:2"):
        prepare_data(str(path), tokenizer, tmp_path / "cache", progress=False)
    (folder,) = (tmp_path / "cache").glob("tokens-*")
    assert not (folder / "meta.json").exists()
    assert not list(folder.glob("*.tmp")) and not list(folder.glob("*.bin"))


def test_dtype_choice(tmp_path, corpus, tokenizer):
    assert token_dtype(400) == np.uint16
    assert token_dtype(65535) == np.uint16
    assert token_dtype(65536) == np.uint32
    assert token_dtype(100_000) == np.uint32

    class BigVocab:  # same encoding, but claims a vocabulary too large for uint16
        vocab_size = 70_000
        eos_token_id = tokenizer.eos_token_id
        meta_token_id = tokenizer.meta_token_id
        encode_batch = staticmethod(tokenizer.encode_batch)

        @staticmethod
        def to_json_str():
            return tokenizer.to_json_str() + " "

    wide = prepare_data(str(corpus), BigVocab(), tmp_path, progress=False)
    narrow = prepare_data(str(corpus), tokenizer, tmp_path, progress=False)
    assert wide.train.dtype == np.uint32 and wide.meta["dtype"] == "uint32"
    assert wide.train.tolist() == narrow.train.tolist()


def test_tokenizer_emitting_special_ids_is_rejected(tmp_path, corpus, tokenizer):
    class Leaky:
        vocab_size = tokenizer.vocab_size
        eos_token_id = tokenizer.eos_token_id
        meta_token_id = tokenizer.meta_token_id

        @staticmethod
        def encode_batch(texts):
            return [[5, tokenizer.meta_token_id] for _ in texts]

        @staticmethod
        def to_json_str():
            return "leaky"

    with pytest.raises(DataError, match="meta or EOS"):
        prepare_data(str(corpus), Leaky(), tmp_path, progress=False)


def test_bad_val_fraction(tmp_path, corpus, tokenizer):
    for bad in (0, -0.1, 0.6):
        with pytest.raises(DataError, match="val_fraction"):
            prepare_data(str(corpus), tokenizer, tmp_path, val_fraction=bad, progress=False)


def test_train_tokenizer_on_is_cached(tmp_path, corpus, monkeypatch):
    first = train_tokenizer_on(str(corpus), 320, cache_dir=tmp_path)
    assert isinstance(first, MetaTokenizer) and first.vocab_size <= 320
    assert len(list(tmp_path.glob("tokenizer-*.json"))) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("retrained although a cached tokenizer exists")

    monkeypatch.setattr(MetaTokenizer, "train", refuse)
    second = train_tokenizer_on(str(corpus), 320, cache_dir=tmp_path)
    assert second.to_json_str() == first.to_json_str()
    with pytest.raises(AssertionError):
        train_tokenizer_on(str(corpus), 330, cache_dir=tmp_path)  # other options: a new key


def test_builtin_slice_end_to_end(tmp_path, tokenizer):
    data = prepare_data("builtin", tokenizer, tmp_path, max_documents=30, val_fraction=0.1, progress=False)
    assert data.meta["train_documents"] == 27 and data.meta["val_documents"] == 3
    assert data.meta["source"] == "builtin"
    assert data.meta["train_tokens"] > data.meta["train_documents"]

"""Tokenise a corpus once into flat token files, cached and safe against interrupted runs.

Layout of a cache entry ``CACHE_DIR/tokens-<key>/``:

* ``train.bin`` / ``val.bin`` - raw little-endian token ids (uint16 when the vocabulary fits,
  else uint32); every document is followed by one EOS token, so documents are joined with EOS
  and the stream ends with EOS.
* ``meta.json`` - counts (tokens, documents, UTF-8 bytes of each split), dtype and hashes. It is
  written last, so its presence marks a complete entry; a run killed half-way leaves no
  ``meta.json`` and the entry is rebuilt.

Validation split: documents are held out whole. Every ``round(1 / val_fraction)``-th document,
counting from the first, goes to validation, so held-out text is spread evenly over the corpus,
the rule works on a stream of unknown length, and the first document guarantees at least one.
A corpus of one single document (say one big .txt file) is instead cut at a line break near
``1 - val_fraction`` of its characters, so that both splits still get text.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..fileio import (
    atomic_write_text,
    fsync_dir,
    json_sha256,
    lock_exclusively,
    writing,
)
from ..progress import progress_bar
from ..tokenizer.meta import MetaTokenizer
from .corpora import corpus_fingerprint, iter_documents

# Bump whenever the file layout or the split rule changes: old cache entries are then ignored.
CACHE_FORMAT = 1
CACHE_ELSEWHERE = "set data.cache_dir to another disk"  # what to do when the cache's disk is full
# Documents per encode_batch call, and a cap on their characters, so memory stays bounded
# while `tokenizers` still gets enough work to parallelise.
_BATCH_DOCUMENTS = 1024
_BATCH_CHARS = 8_000_000


@dataclass
class PackedData:
    """A tokenised corpus: read-only memory-mapped token streams and their metadata."""

    train: np.ndarray  # 1-D np.memmap of token ids (uint16/uint32), documents joined with EOS
    val: np.ndarray  # same for the held-out documents
    meta: dict[str, Any] = field(default_factory=dict)  # counts, dtype, hashes (see meta.json)
    path: Path | None = None  # the cache entry folder

    def bits_per_byte(self, loss_per_token: float, split: str = "val") -> float:
        """Convert a mean loss (nats per token of `split`) into bits per UTF-8 byte of its text.

        Uses the whole split's tokens-per-byte ratio; EOS tokens count as tokens, their text as 0
        bytes (so a model is charged for predicting document ends, as usual).
        """
        tokens, num_bytes = self.meta[f"{split}_tokens"], self.meta[f"{split}_bytes"]
        return loss_per_token * tokens / num_bytes / math.log(2)


def tokenizer_hash(tokenizer: "MetaTokenizer") -> str:
    """SHA-256 of the tokenizer's JSON: two tokenizers with the same hash encode identically."""
    return hashlib.sha256(tokenizer.to_json_str().encode("utf-8")).hexdigest()


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 halves the disk and page-cache footprint whenever every id fits in it."""
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


def _check_val_fraction(val_fraction: float) -> int:
    """Validate `val_fraction` and return the hold-out stride (every stride-th document)."""
    if not 0 < val_fraction <= 0.5:
        raise DataError(f"val_fraction must be in (0, 0.5], got {val_fraction!r}")
    return max(2, round(1 / val_fraction))


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def _finish(handle, final: Path) -> None:
    """Flush `handle` to disk and move its file onto `final` in one atomic step."""
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()
    os.replace(handle.name, final)


def _open_tokens(path: Path, dtype: np.dtype, count: int) -> np.ndarray:
    if count == 0:  # mmap cannot map an empty file
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))


def _load_entry(folder: Path, key: str) -> PackedData | None:
    """The cache entry in `folder` if it is complete and matches `key`, else None."""
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT or meta.get("key") != key:
        return None
    try:
        dtype = np.dtype(meta["dtype"])
        for split in ("train", "val"):
            if (folder / f"{split}.bin").stat().st_size != meta[f"{split}_tokens"] * dtype.itemsize:
                return None
        return PackedData(
            train=_open_tokens(folder / "train.bin", dtype, meta["train_tokens"]),
            val=_open_tokens(folder / "val.bin", dtype, meta["val_tokens"]),
            meta=meta,
            path=folder,
        )
    except (OSError, KeyError, TypeError, ValueError):
        return None


@contextlib.contextmanager
def _exclusive(folder: Path):
    """Hold an inter-process lock on `folder` (waiting for another holder), so concurrent ranks build an
    entry only once.

    Best effort: where flock is missing (Windows) builds may race, which stays correct because
    every file lands by atomic rename and the content is deterministic - only work is wasted.
    """
    fd = lock_exclusively(folder / ".lock", None)
    try:
        yield
    finally:
        os.close(fd)  # drops the lock; the file stays in the entry, as it always has


# ---------------------------------------------------------------------------------------------
# Tokenising
# ---------------------------------------------------------------------------------------------


def _batches(documents: Iterable[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    chars = 0
    for document in documents:
        batch.append(document)
        chars += len(document)
        if len(batch) >= _BATCH_DOCUMENTS or chars >= _BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


class _SplitWriter:
    """Appends EOS-terminated documents of one split to a temporary token file."""

    def __init__(self, folder: Path, name: str, dtype: np.dtype) -> None:
        self.handle = tempfile.NamedTemporaryFile("w+b", dir=folder, prefix=f".{name}.", suffix=".tmp", delete=False)
        self.dtype = dtype
        self.tokens = self.documents = self.bytes = 0

    def add(self, texts: list[str], ids: list[list[int]], eos: int, meta_id: int) -> None:
        if not texts:
            return
        flat = np.fromiter(
            itertools.chain.from_iterable(itertools.chain(doc, (eos,)) for doc in ids),
            dtype=np.int64,
            count=sum(map(len, ids)) + len(ids),
        )
        # Catch an id that would wrap around in the narrow dtype instead of corrupting the data.
        if flat.min() < 0 or flat.max() > np.iinfo(self.dtype).max:
            raise DataError(f"token id {int(flat.max())} does not fit {self.dtype}; tokenizer vocab_size is wrong")
        # The loss mask and the document boundaries rely on these ids never coming from text.
        if (flat == meta_id).any() or np.count_nonzero(flat == eos) != len(ids):
            raise DataError("the tokenizer produced a meta or EOS id from text; use a MetaTokenizer")
        self.handle.write(flat.astype(self.dtype).tobytes())
        self.tokens += flat.size
        self.documents += len(texts)
        self.bytes += sum(len(text.encode("utf-8", errors="surrogatepass")) for text in texts)

    def reset(self) -> None:
        self.handle.seek(0)
        self.handle.truncate()
        self.tokens = self.documents = self.bytes = 0

    def discard(self) -> None:
        self.handle.close()
        Path(self.handle.name).unlink(missing_ok=True)


def _cut_single_document(text: str, val_fraction: float) -> tuple[str, str]:
    """Split one document into (train, val) text at a line break near 1 - val_fraction."""
    if len(text) < 2:
        raise DataError("corpus is a single document of under 2 characters; cannot hold out validation text")
    cut = min(len(text) - 1, max(1, int(len(text) * (1 - val_fraction))))
    newline = text.find("\n", cut)
    if 0 <= newline < len(text) - 1:
        cut = newline + 1
    return text[:cut], text[cut:]


def _tokenise_into(
    documents: Iterable[str],
    tokenizer: "MetaTokenizer",
    train: _SplitWriter,
    val: _SplitWriter,
    *,
    val_fraction: float,
    progress: bool,
    desc: str,
) -> str:
    """Stream documents through the tokenizer into the two writers; returns the split rule used."""
    stride = _check_val_fraction(val_fraction)
    eos, meta_id = tokenizer.eos_token_id, tokenizer.meta_token_id
    index = 0
    first_document: str | None = None
    with progress_bar(desc=desc, unit="doc", disable=not progress) as bar:
        for batch in _batches(documents):
            ids = tokenizer.encode_batch(batch)
            held_out = [(index + i) % stride == 0 for i in range(len(batch))]
            if index == 0:
                first_document = batch[0]  # kept only in case the corpus turns out to be one document
            for writer, wanted in ((val, True), (train, False)):
                picked = [i for i, h in enumerate(held_out) if h == wanted]
                writer.add([batch[i] for i in picked], [ids[i] for i in picked], eos, meta_id)
            index += len(batch)
            bar.update(len(batch))
            bar.set_postfix(tokens=f"{train.tokens + val.tokens:,}", refresh=False)
    if index > 1:
        return "documents"
    # One document went to validation and none to training: cut it in two instead.
    assert first_document is not None
    train_text, val_text = _cut_single_document(first_document, val_fraction)
    train.reset()
    val.reset()
    train_ids, val_ids = tokenizer.encode_batch([train_text, val_text])
    train.add([train_text], [train_ids], eos, meta_id)
    val.add([val_text], [val_ids], eos, meta_id)
    return "single-document-tail"


# ---------------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------------


def prepare_data(
    source: str,
    tokenizer: "MetaTokenizer",
    cache_dir: str | os.PathLike[str],
    *,
    val_fraction: float = 0.005,
    text_field: str = "text",
    hf_config: str | None = None,
    split: str = "train",
    max_documents: int | None = None,
    progress: bool = True,
) -> PackedData:
    """Tokenise `source` once into ``cache_dir`` and return memory-mapped train/val streams.

    The cache key covers the corpus fingerprint (see `corpus_fingerprint`), the tokenizer's JSON
    and `val_fraction`, so a second call with the same inputs reuses the files without reading
    the corpus again. Processes racing on the same entry (e.g. DDP ranks) serialise on a file
    lock; the first builds it, the others load it.
    """
    stride = _check_val_fraction(val_fraction)
    corpus_options = dict(text_field=text_field, hf_config=hf_config, split=split, max_documents=max_documents)
    fingerprint = corpus_fingerprint(source, **corpus_options)
    tok_hash = tokenizer_hash(tokenizer)
    key = json_sha256((CACHE_FORMAT, fingerprint, tok_hash, val_fraction))
    folder = Path(cache_dir).expanduser() / f"tokens-{key[:20]}"

    cached = _load_entry(folder, key)
    if cached is not None:
        return cached
    # The temporary token files are removed on any failure: a full disk leaves no half-written entry.
    with writing(folder, instead=CACHE_ELSEWHERE):
        folder.mkdir(parents=True, exist_ok=True)
        with _exclusive(folder):
            cached = _load_entry(folder, key)  # another process may have finished while we waited
            if cached is not None:
                return cached
            # Invalidate first: from here until the new meta.json lands, the entry reads as incomplete.
            (folder / "meta.json").unlink(missing_ok=True)
            dtype = token_dtype(tokenizer.vocab_size)
            train, val = _SplitWriter(folder, "train", dtype), _SplitWriter(folder, "val", dtype)
            try:
                rule = _tokenise_into(
                    iter_documents(source, **corpus_options),
                    tokenizer,
                    train,
                    val,
                    val_fraction=val_fraction,
                    progress=progress,
                    desc=f"tokenising {source}",
                )
                meta = {
                    "format": CACHE_FORMAT,
                    "key": key,
                    "source": os.fspath(source),
                    **corpus_options,
                    "corpus_fingerprint": fingerprint,
                    "tokenizer_sha256": tok_hash,
                    "vocab_size": tokenizer.vocab_size,
                    "eos_token_id": tokenizer.eos_token_id,
                    "meta_token_id": tokenizer.meta_token_id,
                    "dtype": dtype.name,
                    "val_fraction": val_fraction,
                    "val_every": stride,
                    "val_split": rule,
                }
                for name, writer in (("train", train), ("val", val)):
                    meta[f"{name}_tokens"] = writer.tokens
                    meta[f"{name}_documents"] = writer.documents
                    meta[f"{name}_bytes"] = writer.bytes
                    _finish(writer.handle, folder / f"{name}.bin")
                fsync_dir(folder)
                atomic_write_text(folder / "meta.json", json.dumps(meta, indent=1, sort_keys=True) + "\n")
            finally:
                train.discard()  # no-op for files already moved into place
                val.discard()
    loaded = _load_entry(folder, key)
    if loaded is None:  # pragma: no cover - would mean the files changed under us
        raise DataError(f"{folder}: cache entry unreadable right after writing it; check the disk")
    return loaded


def train_tokenizer_on(
    source: str,
    vocab_size: int,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    min_frequency: int = 2,
    text_field: str = "text",
    hf_config: str | None = None,
    split: str = "train",
    max_documents: int | None = None,
    show_progress: bool = False,
) -> "MetaTokenizer":
    """Train a byte-level BPE `MetaTokenizer` on the documents of `source`.

    With `cache_dir`, the result is stored as ``tokenizer-<key>.json`` keyed by the corpus
    fingerprint and the training options, and loaded from there next time. The tokenizer sees
    every document, validation ones included, as is usual for BPE; the effect on held-out loss
    is negligible.
    """
    corpus_options = dict(text_field=text_field, hf_config=hf_config, split=split, max_documents=max_documents)
    path = None
    if cache_dir is not None:
        fingerprint = corpus_fingerprint(source, **corpus_options)
        key = json_sha256((CACHE_FORMAT, "tokenizer", fingerprint, vocab_size, min_frequency))
        path = Path(cache_dir).expanduser() / f"tokenizer-{key[:20]}.json"
        if path.is_file():
            return MetaTokenizer.from_file(path)
    tokenizer = MetaTokenizer.train(
        iter_documents(source, **corpus_options),
        vocab_size,
        min_frequency=min_frequency,
        show_progress=show_progress,
    )
    if path is not None:
        with writing(path, instead=CACHE_ELSEWHERE):
            tokenizer.save(path)  # atomic: a reader sees no file or a whole one
    return tokenizer

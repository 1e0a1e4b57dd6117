"""Data: corpora -> cached token streams -> batches with injected meta-tokens.

- `corpora.py`: the built-in corpus (standard-library prose), local files, Hugging Face datasets;
- `packing.py`: tokenising once into a cached flat token file, the train/validation split;
- `inject.py`: `round(k * n)` meta-tokens at random positions of every row, no loss on meta targets.

May import: errors, fileio, progress, model (IGNORE_INDEX), tokenizer.
"""
from ..errors import DataError
from .corpora import builtin_documents, corpus_fingerprint, iter_documents
from .inject import MetaBlockLoader, inject_meta, meta_positions, num_meta, val_batches
from .packing import (
    PackedData,
    prepare_data,
    token_dtype,
    tokenizer_hash,
    train_tokenizer_on,
)

__all__ = [
    "DataError",
    "MetaBlockLoader",
    "PackedData",
    "builtin_documents",
    "corpus_fingerprint",
    "inject_meta",
    "iter_documents",
    "meta_positions",
    "num_meta",
    "prepare_data",
    "token_dtype",
    "tokenizer_hash",
    "train_tokenizer_on",
    "val_batches",
]

"""Byte-level BPE tokenizer with a reserved meta token.

The meta-token method (arXiv 2509.16278) injects ``<|meta|>`` into training
sequences at chosen positions.  That only works if the id of ``<|meta|>`` can
never arise from ordinary text: a document that happens to contain the string
"<|meta|>" must be tokenized like any other text.  The same holds for the
end-of-text marker, which the data pipeline inserts between documents.

:class:`MetaTokenizer` wraps a Hugging Face ``tokenizers.Tokenizer`` and
enforces that guarantee for every way a tokenizer can be created (training,
loading a file, GPT-2's files, unpickling).
"""

from __future__ import annotations

import json
import logging
import operator
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers

from ..errors import TokenizerError
from ..fileio import atomic_write_text
from .backend import (
    _BYTE_ALPHABET_SIZE,
    EOS_TOKEN,
    META_TOKEN,
    SPECIAL_TOKENS,
    _new_byte_level_backend,
)
from .gpt2 import (
    _GPT2_FILES,
    _download_gpt2,
    _gpt2_backend_from_vocab_merges,
    _gpt2_in_hf_cache,
    _has_gpt2_files,
    _hf_hub_cache,
)

__all__ = ["EOS_TOKEN", "META_TOKEN", "SPECIAL_TOKENS", "MetaTokenizer", "TokenizerError"]

log = logging.getLogger("metatokens.tokenizer")


class MetaTokenizer:
    """Byte-level BPE tokenizer whose ``<|meta|>`` and EOS ids never come from text.

    Build one with :meth:`train`, :meth:`from_file`, :meth:`from_json_str` or
    :meth:`from_gpt2`.  The constructor accepts a ready ``tokenizers.Tokenizer``
    and validates it; it raises :class:`TokenizerError` when the guarantee cannot
    be upheld.

    Do not change settings on :attr:`backend`; the guarantee depends on them.
    """

    def __init__(self, backend: Tokenizer, *, source: str | os.PathLike[str] | None = None) -> None:
        if not isinstance(backend, Tokenizer):
            raise TypeError(f"backend must be a tokenizers.Tokenizer, got {type(backend).__name__}")
        self.meta_token_id = _special_token_id(backend, META_TOKEN, source)
        self.eos_token_id = _special_token_id(backend, EOS_TOKEN, source)
        self.vocab_size = _contiguous_vocab_size(backend, source)
        _check_model_cannot_emit(backend, (META_TOKEN, EOS_TOKEN), source)
        # By default the added-vocabulary pass finds special tokens in raw text and
        # maps them to their ids.  With this flag they are split like ordinary text
        # instead.  It is not part of the serialized JSON, so it is (re)applied
        # here, which every constructor and unpickling goes through.
        backend.encode_special_tokens = True
        self._backend = backend
        self._self_check(source)

    # ------------------------------------------------------------------ creation

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        *,
        min_frequency: int = 2,
        show_progress: bool = False,
    ) -> MetaTokenizer:
        """Train a byte-level BPE tokenizer on any iterable of strings.

        ``vocab_size`` counts everything: the 256 byte tokens, the merges and the
        two special tokens.  BPE stops early when no pair reaches
        ``min_frequency`` any more, so the result may be smaller than requested;
        :attr:`vocab_size` always reports the real size.
        """
        if isinstance(texts, str):
            raise TypeError("texts must be an iterable of str, not a single str")
        minimum = _BYTE_ALPHABET_SIZE + len(SPECIAL_TOKENS)
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
            raise TokenizerError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
        if vocab_size < minimum:
            raise TokenizerError(
                f"vocab_size={vocab_size} is too small: a byte-level tokenizer needs at least "
                f"{minimum} ({_BYTE_ALPHABET_SIZE} bytes + {len(SPECIAL_TOKENS)} special tokens)"
            )
        backend = _new_byte_level_backend(models.BPE())
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            show_progress=show_progress,
            special_tokens=list(SPECIAL_TOKENS),
            # Seeding all 256 byte symbols means any input, including bytes never
            # seen during training, stays encodable.
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        length = len(texts) if hasattr(texts, "__len__") else None  # only used for the progress bar
        backend.train_from_iterator(texts, trainer=trainer, length=length)
        return cls(backend)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> MetaTokenizer:
        """Load a ``tokenizer.json`` written by :meth:`save` (or any compatible one)."""
        file = Path(path)
        try:
            raw = file.read_bytes()
        except FileNotFoundError:
            raise TokenizerError("tokenizer file not found", file) from None
        except IsADirectoryError:
            raise TokenizerError("is a directory, expected a tokenizer.json file", file) from None
        except OSError as exc:
            raise TokenizerError(f"cannot read tokenizer file ({exc.strerror or exc})", file) from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise TokenizerError("not a tokenizer JSON file (not UTF-8 text)", file) from None
        return cls._from_json(text, source=file)

    @classmethod
    def from_json_str(cls, s: str) -> MetaTokenizer:
        """Build from the JSON text produced by :meth:`to_json_str`."""
        if not isinstance(s, str):
            raise TypeError(f"expected a JSON str, got {type(s).__name__}")
        return cls._from_json(s, source=None)

    @classmethod
    def from_gpt2(cls, path: str | os.PathLike[str] | None = None) -> MetaTokenizer:
        """GPT-2's own BPE plus ``<|meta|>`` (id 50257, vocab 50258).

        ``path`` is a folder holding ``tokenizer.json`` or ``vocab.json`` +
        ``merges.txt``; it is read as is and the network is never used.  Without
        it the local Hugging Face hub cache is searched (``HF_HUB_CACHE``, else
        ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``), and when the cache
        lacks the files they are downloaded into it from the Hub
        (``openai-community/gpt2``, with ``huggingface_hub``), unless
        ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set, as for ``hf:``
        corpora.  Offline, without ``huggingface_hub``, or when the download
        fails, a one-line :class:`TokenizerError` says what to do.
        """
        if path is not None:
            folder = Path(path)
            if not folder.is_dir():
                raise TokenizerError(f"not a folder; expected one with {_GPT2_FILES}", folder)
            if not _has_gpt2_files(folder):
                raise TokenizerError(f"no GPT-2 tokenizer files here; expected {_GPT2_FILES}", folder)
        else:
            hub = _hf_hub_cache()
            folder = _gpt2_in_hf_cache(hub) or _download_gpt2(hub)
        return cls._from_gpt2_folder(folder)

    # ------------------------------------------------------------------ persistence

    def to_json_str(self) -> str:
        return self._backend.to_str()

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write one JSON file atomically: readers see the old file or the new one, never a partial one."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, self.to_json_str())  # temp file beside it, fsync, rename

    # Tokenizer pickling goes through JSON, which drops encode_special_tokens;
    # rebuilding through __init__ restores it (DataLoader workers pickle us).
    def __getstate__(self) -> dict[str, Any]:
        return {"json": self.to_json_str()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(Tokenizer.from_str(state["json"]))

    # ------------------------------------------------------------------ encoding

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; never contains :attr:`meta_token_id` or :attr:`eos_token_id`."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        # add_special_tokens=False keeps a loaded file's post-processor (e.g. a
        # template appending EOS) from inserting special ids.
        return self._backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Like :meth:`encode` for many texts, parallelised inside ``tokenizers``."""
        if isinstance(texts, str):
            raise TypeError("encode_batch expects a list of str, got a single str")
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"encode_batch expects str items, item {i} is {type(text).__name__}")
        # encode_batch_fast skips offset tracking, which we never use.
        batch_encode = getattr(self._backend, "encode_batch_fast", self._backend.encode_batch)
        return [enc.ids for enc in batch_encode(texts, add_special_tokens=False)]

    def decode(self, ids: Any, *, skip_meta: bool = True) -> str:
        """Text of ``ids`` (a list, tuple, or 1-D tensor / array).

        Meta ids are dropped by default; with ``skip_meta=False`` each is rendered as
        ``<|meta|>``.  EOS ids are always rendered as ``<|endoftext|>`` so document
        boundaries stay visible.
        """
        id_list = _as_id_list(ids)
        if id_list and (min(id_list) < 0 or max(id_list) >= self.vocab_size):
            bad = next(i for i in id_list if not 0 <= i < self.vocab_size)
            raise ValueError(f"token id {bad} is outside the vocabulary [0, {self.vocab_size})")
        if skip_meta:
            id_list = [i for i in id_list if i != self.meta_token_id]
        return self._backend.decode(id_list, skip_special_tokens=False)

    # ------------------------------------------------------------------ misc

    @property
    def backend(self) -> Tokenizer:
        """The underlying ``tokenizers.Tokenizer`` (read its settings, do not change them)."""
        return self._backend

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(vocab_size={self.vocab_size}, "
            f"meta_token_id={self.meta_token_id}, eos_token_id={self.eos_token_id})"
        )

    # ------------------------------------------------------------------ internals

    @classmethod
    def _from_json(cls, text: str, *, source: Path | None) -> MetaTokenizer:
        if not text.strip():
            raise TokenizerError("tokenizer JSON is empty", source)
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TokenizerError(
                f"invalid tokenizer JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                "the file may be truncated or corrupt",
                source,
            ) from None
        except RecursionError:  # the parser recurses once per level: "[[[[..." exhausts the stack
            raise TokenizerError("invalid tokenizer JSON (nested too deeply); the file is corrupt, "
                                 "replace it with a good copy", source) from None
        if not isinstance(parsed, dict) or "model" not in parsed:
            raise TokenizerError("JSON is not a tokenizers tokenizer (no 'model' section)", source)
        try:
            backend = Tokenizer.from_str(text)
        except Exception as exc:  # tokenizers raises a bare Exception for schema errors
            raise TokenizerError(f"not a valid tokenizer JSON ({exc})", source) from None
        return cls(backend, source=source)

    @classmethod
    def _from_gpt2_folder(cls, folder: Path) -> MetaTokenizer:
        tokenizer_json = folder / "tokenizer.json"
        if tokenizer_json.is_file():
            # GPT-2's tokenizer.json already has <|endoftext|> as a special token.
            try:
                backend = Tokenizer.from_file(str(tokenizer_json))
            except Exception as exc:
                raise TokenizerError(f"cannot load GPT-2 tokenizer ({exc})", tokenizer_json) from None
            source = tokenizer_json
        else:
            backend = _gpt2_backend_from_vocab_merges(folder / "vocab.json", folder / "merges.txt")
            source = folder
        if backend.token_to_id(EOS_TOKEN) is None:
            raise TokenizerError(f"no {EOS_TOKEN} token; is this really GPT-2's tokenizer?", source)
        if backend.token_to_id(META_TOKEN) is None:
            # Appended after everything else, so GPT-2's own ids are unchanged.
            backend.add_special_tokens([AddedToken(META_TOKEN, special=True, normalized=False)])
        return cls(backend, source=source)

    def _self_check(self, source: str | os.PathLike[str] | None) -> None:
        # An empirical backstop for the static checks above, e.g. against a
        # tokenizers build that ignores encode_special_tokens.  Costs microseconds.
        probe = f"x{META_TOKEN} {EOS_TOKEN}{META_TOKEN}{EOS_TOKEN}\n{META_TOKEN}"
        if {self.meta_token_id, self.eos_token_id} & set(self.encode(probe)):
            raise TokenizerError(
                "tokenizer maps the literal special-token text to special ids; "
                "upgrade `tokenizers` (needs Tokenizer.encode_special_tokens)",
                source,
            )


# ---------------------------------------------------------------------- helpers


def _special_token_id(backend: Tokenizer, token: str, source: str | os.PathLike[str] | None) -> int:
    token_id = backend.token_to_id(token)
    if token_id is None:
        raise TokenizerError(f"tokenizer has no {token} token", source)
    added = backend.get_added_tokens_decoder().get(token_id)
    if added is None or not added.special or added.content != token:
        # Only special added tokens are affected by encode_special_tokens; anything
        # else would still be matched in raw text.
        raise TokenizerError(f"{token} is not registered as a special added token", source)
    return token_id


def _contiguous_vocab_size(backend: Tokenizer, source: str | os.PathLike[str] | None) -> int:
    # Model code sizes embeddings by vocab_size, so every id must lie below it.
    ids = set(backend.get_vocab(with_added_tokens=True).values())
    size = len(ids)
    if size == 0 or min(ids) != 0 or max(ids) != size - 1:
        highest = max(ids, default=-1)
        raise TokenizerError(f"token ids are not contiguous from 0 ({size} ids, max {highest})", source)
    return size


def _check_model_cannot_emit(
    backend: Tokenizer, tokens: Iterable[str], source: str | os.PathLike[str] | None
) -> None:
    """Make sure the BPE model itself cannot produce ``tokens`` from text.

    encode_special_tokens only stops the added-vocabulary pass.  Trained
    tokenizers (and GPT-2 for EOS) also keep the special strings in the model
    vocabulary, so we prove the model cannot reach them.  A BPE model emits a
    multi-character vocabulary entry only as the result of a merge (or, with
    ``ignore_merges``, by whole-word lookup).  The special spellings are plain
    ASCII, which byte-level BPE maps to itself, so comparing strings suffices.
    """
    model = backend.model
    if not isinstance(model, models.BPE):
        raise TokenizerError(f"expected a BPE model, got {type(model).__name__}", source)
    in_model: dict[str, int] = {}
    for token in tokens:
        added_id = backend.token_to_id(token)
        model_token = model.id_to_token(added_id)
        if model_token is not None and model_token != token:
            raise TokenizerError(f"id {added_id} of {token} is also the model token {model_token!r}", source)
        if model.token_to_id(token) is not None:
            in_model[token] = model.token_to_id(token)
    if not in_model:
        return
    config = json.loads(backend.to_str())["model"]
    if config.get("unk_token") in in_model:
        raise TokenizerError(f"the model's unk_token is {config['unk_token']}", source)
    if config.get("ignore_merges"):
        token = next(iter(in_model))
        raise TokenizerError(f"BPE ignore_merges=True could map a word straight to {token}", source)
    for merge in config.get("merges", []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        if left + right in in_model:
            raise TokenizerError(f"a BPE merge ({left!r}, {right!r}) produces {left + right}", source)


def _as_id_list(ids: Any) -> list[int]:
    if hasattr(ids, "tolist"):  # torch tensors, numpy arrays
        if getattr(ids, "ndim", 1) != 1:
            raise ValueError(f"decode expects a 1-D sequence of ids, got shape {tuple(ids.shape)}")
        ids = ids.tolist()
    if isinstance(ids, (str, bytes)):
        raise TypeError("decode expects token ids, not text")
    try:
        # operator.index accepts Python, numpy and torch integers but rejects floats.
        return [operator.index(i) for i in ids]
    except TypeError:
        raise TypeError("decode expects a 1-D sequence of integer token ids") from None



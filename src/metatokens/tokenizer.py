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

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from .fileio import atomic_write_text
from .errors import TokenizerError
from .errors import one_line

__all__ = ["EOS_TOKEN", "META_TOKEN", "SPECIAL_TOKENS", "MetaTokenizer", "TokenizerError"]

log = logging.getLogger(__name__)

META_TOKEN = "<|meta|>"
EOS_TOKEN = "<|endoftext|>"
# Order matters for trained tokenizers: the trainer assigns ids in this order
# (EOS -> 0, META -> 1).
SPECIAL_TOKENS = (EOS_TOKEN, META_TOKEN)

_BYTE_ALPHABET_SIZE = 256
# GPT-2 was moved to openai-community/gpt2 on the Hub; a cache may hold either name.
_GPT2_CACHE_REPOS = ("models--gpt2", "models--openai-community--gpt2")
_GPT2_FILES = "tokenizer.json or vocab.json + merges.txt"
_GPT2_DOWNLOAD_HINT = (
    f"pass from_gpt2(path=...) a folder holding {_GPT2_FILES}, "
    "or fetch them once where the network is reachable, e.g. "
    "`hf download gpt2 tokenizer.json vocab.json merges.txt`"
)
# Where from_gpt2() downloads from when the cache lacks the files (the old name "gpt2" redirects here).
_GPT2_HUB_REPO = "openai-community/gpt2"
# The variables that put huggingface_hub offline, in its order of precedence.
_HF_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")



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


def _new_byte_level_backend(model: models.Model) -> Tokenizer:
    backend = Tokenizer(model)
    # add_prefix_space=False keeps decode(encode(text)) == text exactly.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    return backend


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


def _gpt2_backend_from_vocab_merges(vocab_path: Path, merges_path: Path) -> Tokenizer:
    try:
        vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenizerError(f"cannot read GPT-2 vocab ({exc})", vocab_path) from None
    except json.JSONDecodeError as exc:
        problem = f"invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        raise TokenizerError(problem, vocab_path) from None
    if not isinstance(vocab, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in vocab.items()
    ):
        raise TokenizerError("vocab.json must map token strings to integer ids", vocab_path)
    try:
        lines = merges_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenizerError(f"cannot read GPT-2 merges ({exc})", merges_path) from None
    merges: list[tuple[str, str]] = []
    for lineno, line in enumerate(lines, start=1):
        # Only the first line may be the "#version: ..." header.
        if not line.strip() or (lineno == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise TokenizerError(f"line {lineno} is not a 'left right' merge: {line!r}", merges_path)
        merges.append((parts[0], parts[1]))
    try:
        model = models.BPE(vocab=vocab, merges=merges)
    except Exception as exc:
        problem = f"vocab.json and merges.txt do not form a valid BPE ({exc})"
        raise TokenizerError(problem, merges_path) from None
    backend = _new_byte_level_backend(model)
    if EOS_TOKEN in vocab:
        # Registers the existing id (50256 in GPT-2) as special; no new id.
        backend.add_special_tokens([AddedToken(EOS_TOKEN, special=True, normalized=False)])
    return backend


def _has_gpt2_files(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or (
        (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    )


def _hf_hub_cache() -> Path:
    # Same precedence as huggingface_hub, without importing it.
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(xdg).expanduser() / "huggingface" / "hub"


def _gpt2_in_hf_cache(hub: Path) -> Path | None:
    """The snapshot folder of the cache `hub` that holds GPT-2's tokenizer files, or None."""
    for repo in _GPT2_CACHE_REPOS:
        snapshots = hub / repo / "snapshots"
        if not snapshots.is_dir():
            continue
        candidates = sorted(
            (p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True
        )
        # Prefer the revision the cache calls "main", then the newest.
        ref_main = hub / repo / "refs" / "main"
        if ref_main.is_file():
            main = snapshots / ref_main.read_text(encoding="utf-8").strip()
            candidates.sort(key=lambda p: p != main)
        for snapshot in candidates:
            if _has_gpt2_files(snapshot):
                return snapshot
    return None


def _hf_offline_setting() -> str | None:
    """``"HF_HUB_OFFLINE=1"`` (or the TRANSFORMERS_OFFLINE one) when it puts the Hub offline, else None.

    huggingface_hub's rule (the first non-empty variable decides; 1/ON/YES/TRUE mean offline),
    read now: huggingface_hub.constants froze it when huggingface_hub was imported.
    """
    for var in _HF_OFFLINE_VARS:
        value = os.environ.get(var)
        if value:
            return f"{var}={value}" if value.upper() in {"1", "ON", "YES", "TRUE"} else None
    return None


def _missing_on_hub(exc: BaseException) -> bool:
    """True when the Hub answered that the file does not exist (not a network or offline failure)."""
    try:
        from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError
    except ImportError:
        return False
    return isinstance(exc, EntryNotFoundError) and not isinstance(exc, LocalEntryNotFoundError)


def _download_gpt2(hub: Path) -> Path:
    """Fetch GPT-2's tokenizer files from the Hub into the cache `hub`; returns their snapshot folder."""
    not_cached = f"GPT-2 tokenizer files not found in the local Hugging Face cache ({hub})"
    offline = _hf_offline_setting()
    if offline is not None:
        raise TokenizerError(
            f"{not_cached}, and {offline} forbids downloading them; unset {' and '.join(_HF_OFFLINE_VARS)} "
            f"to let from_gpt2() fetch them from the Hugging Face Hub ({_GPT2_HUB_REPO}), or {_GPT2_DOWNLOAD_HINT}"
        )
    try:
        import huggingface_hub
    except ImportError:
        raise TokenizerError(
            f"{not_cached}, and downloading them needs huggingface_hub: `pip install huggingface_hub` "
            f"(or metatokens[hf]) to let from_gpt2() fetch them, or {_GPT2_DOWNLOAD_HINT}"
        ) from None

    def fetch(filename: str, revision: str | None = None) -> Path:
        # cache_dir: the cache searched above, read from the environment now, not at import time.
        return Path(huggingface_hub.hf_hub_download(
            repo_id=_GPT2_HUB_REPO, filename=filename, revision=revision, cache_dir=str(hub)
        ))

    log.info("GPT-2 tokenizer files not in %s; downloading them from the Hugging Face Hub (%s)", hub, _GPT2_HUB_REPO)
    try:
        try:
            folder = fetch("tokenizer.json").parent
        except Exception as exc:
            if not _missing_on_hub(exc):
                raise
            # No tokenizer.json in the repository: the two files it is built from, of one revision.
            folder = fetch("vocab.json").parent
            fetch("merges.txt", revision=folder.name)
    except Exception as exc:  # noqa: BLE001 - network, proxy, repository: all end the same way for the user
        reason = one_line(f"{type(exc).__name__}: {exc}")[:300]
        raise TokenizerError(
            f"{not_cached}, and downloading them from the Hugging Face Hub ({_GPT2_HUB_REPO}) failed ({reason}); "
            f"check the network (or HF_ENDPOINT, for a mirror), or {_GPT2_DOWNLOAD_HINT}"
        ) from None
    if not _has_gpt2_files(folder):
        raise TokenizerError(f"downloaded from {_GPT2_HUB_REPO}, but {_GPT2_FILES} are not here", folder)
    return folder


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



"""GPT-2's byte-level BPE vocabulary for `MetaTokenizer.from_gpt2`: a local folder, the Hugging Face
cache, or (only when asked and allowed) a download.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, models

from ..errors import TokenizerError, one_line
from .backend import EOS_TOKEN, _new_byte_level_backend

log = logging.getLogger("metatokens.tokenizer")

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
        from huggingface_hub.utils import (  # optional dependency: huggingface_hub (comes with transformers, metatokens[hf])
            EntryNotFoundError,
            LocalEntryNotFoundError,
        )
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
        import huggingface_hub  # optional dependency: huggingface_hub (comes with transformers, metatokens[hf])
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

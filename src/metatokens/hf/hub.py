"""Hugging Face names and folders: resolving a hub name or local folder (offline unless asked), reading a
config.json with transformers' classes, and the output-folder rules shared by export and the imports
(an existing folder is replaced only when it is one of ours and overwrite was asked).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import HFInteropError
from ..fileio import read_json_object


def _require_transformers() -> None:
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise HFInteropError("this needs Hugging Face transformers: pip install 'metatokens[hf]'") from None


# Files an exported folder may hold; anything else (a pickle above all) is a bug.
EXPORT_SUFFIXES = (".json", ".safetensors", ".py", ".md")


# Written last into an exported folder: the files the export wrote (so that only such a folder is
# replaced) and the SHA-256 of its weights (checked when metatokens loads it).
EXPORT_MARKER = "metatokens_export.json"


EXPORT_FORMAT = "metatokens-export"


# What import-gpt2 writes: a model folder whose config.json records the import.
IMPORT_FILES = frozenset({"config.json", "model.safetensors", "tokenizer.json"})


def is_marked_output(folder: Path, marker: str, kind: str) -> bool:
    """An earlier output of a command that writes a `marker` file of format `kind` listing everything it
    wrote: every file and folder in `folder` (at any depth, as a relative path) is on that list."""
    try:
        data = json.loads((folder / marker).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    files = data.get("files") if isinstance(data, dict) and data.get("format") == kind else None
    found = {p.relative_to(folder).as_posix() for p in folder.rglob("*")}
    return isinstance(files, list) and found <= {*map(str, files), marker}


def _is_export(folder: Path) -> bool:
    """An earlier `metatokens export` output: its marker lists every file in the folder."""
    return is_marked_output(folder, EXPORT_MARKER, EXPORT_FORMAT)


def _is_import(folder: Path, key: str = "imported_from_gpt2") -> bool:
    """An earlier `metatokens import-gpt2` output (import-hf: key="imported_from_hf"): only its files,
    and a config.json that records the import under `key`."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(config, dict) and config.get("format") == "metatokens" and key in config
            and {p.name for p in folder.iterdir()} <= IMPORT_FILES)


def _check_out_dir(out: Path, *, command: str, overwrite: bool, sources: list[Path], ours) -> None:
    """Refuse an --out that holds anything but an earlier output of `command` (which --overwrite replaces),
    that is not a folder, or that is or holds one of `sources`. Nothing is written here."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise HFInteropError(f"{out}: exists and is not a folder; choose another --out")
    target = out.resolve()
    for source in sources:
        source = source.resolve()
        if source == target or target in source.parents:
            raise HFInteropError(f"{out}: is or holds the source {source}; writing there would delete it, choose another --out")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not ours(out):
        raise HFInteropError(f"{out}: exists, is not empty and is not the output of an earlier `metatokens {command}`; "
                             "choose another --out (nothing was changed)")
    if not overwrite:
        raise HFInteropError(f"{out}: holds an earlier `metatokens {command}` output; pass --overwrite to replace it")


def resolve_hub_folder(name_or_path: str | Path, *, patterns: list[str], error: type[Exception], what: str,
                       example: str) -> Path:
    """A local folder as is; otherwise a Hub model name, fetched with only the files in `patterns`.

    Every failure is one line raised as `error`: a file where a folder was expected, a path that
    does not exist, or a Hub fetch that failed (network, offline mode, unknown repo)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise error(f"{path}: is a file; expected {what}")
    text = str(name_or_path)
    looks_like_path = path.is_absolute() or text.startswith((".", "~")) or text.count("/") > 1 or "\\" in text
    if looks_like_path or not text:
        raise error(f"{text}: folder not found; pass {what} or a Hub name such as {example}")
    try:
        from huggingface_hub import (
            snapshot_download,  # optional dependency: huggingface_hub (comes with transformers, metatokens[hf])
        )

        return Path(snapshot_download(repo_id=text, allow_patterns=patterns))
    except Exception as err:  # network, offline mode, unknown repo: all end the same way for the user
        reason = " ".join(str(err).split())[:200]
        raise error(f"{text}: not a local folder, and fetching it from the Hugging Face Hub failed ({reason})") from None


def read_hf_config(folder: Path, config_classes: dict[str, Any], *, error: type[Exception], supported: str):
    """The transformers config of a folder, for a model_type of `config_classes` only (never remote
    code); every refusal is one line raised as `error`, naming what is `supported`."""
    file = folder / "config.json"
    if not file.is_file():
        raise error(f"{folder}: no config.json; not a Hugging Face model folder")
    data = read_json_object(file, error, missing="not a Hugging Face model folder", damaged="the folder is damaged")
    kind = data.get("model_type")
    if kind not in config_classes:
        raise error(f"{file}: model_type {kind!r} is not supported; {supported}")
    try:
        return config_classes[kind].from_dict(data)
    except Exception as err:
        raise error(f"{file}: not a valid {kind} config ({' '.join(str(err).split())[:200]})") from None

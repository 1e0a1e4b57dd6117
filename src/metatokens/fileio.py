"""Durable file writes shared by checkpoints, tokenizers and data caches, their cache keys, and the one
reader of a JSON settings file (run.json, config.json, trainer_state.json) with one-line refusals."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import one_line


def read_json_object(file: str | Path, error: type[Exception], *, missing: str, damaged: str) -> dict[str, Any]:
    """The JSON object in `file`. Every failure is one line raised as `error`: ``FILE: missing; {missing}``,
    ``FILE: unreadable, not valid JSON (why); {damaged}`` (also for bytes that are not UTF-8 and for
    nesting too deep to parse), or ``FILE: not a JSON object; {damaged}``."""
    try:
        data = json.loads(Path(file).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{file}: missing; {missing}") from None
    except RecursionError:
        raise error(f"{file}: unreadable, not valid JSON (nested too deeply); {damaged}") from None
    except (OSError, ValueError) as err:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise error(f"{file}: unreadable, not valid JSON ({one_line(err, 200)}); {damaged}") from None
    if not isinstance(data, dict):
        raise error(f"{file}: not a JSON object; {damaged}")
    return data


def json_sha256(obj) -> str:
    """A stable digest of JSON-able settings (keys sorted; other objects by str): the cache keys."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def fsync_dir(folder: str | Path) -> None:
    """Make renames inside `folder` durable; best effort, since not every platform can open a folder."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it: readers see old or new, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_path(path: str | Path) -> None:
    """fsync a file or folder (raises on failure, unlike fsync_dir)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a fully written folder into place; an existing folder is swapped out, then removed."""
    fsync_path(tmp)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_folder(final: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `final`; on success it replaces `final`, on error it is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

"""Durable file writes shared by checkpoints, tokenizers and data caches, their cache keys, and the one
reader of a JSON settings file (run.json, config.json, trainer_state.json) with one-line refusals."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import one_line

try:
    import fcntl
except ImportError:  # Windows: folders are not locked
    fcntl = None


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


def same_file(fd: int, path: str | Path) -> bool:
    """Whether the open file `fd` is the file at `path` (not one removed and made again meanwhile)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def lock_exclusively(lock: str | Path, refuse: Callable[[str], Exception]) -> int:
    """An exclusive flock on the file `lock` (made if missing), held by this process until
    `unlock(fd, lock)`; the kernel drops it when the process dies, so a killed command never leaves a
    stale lock. Another holder makes `refuse(who)` raise, `who` naming its pid when known. Where flock
    is missing (Windows, some network mounts) nothing is locked. Returns the open file."""
    if fcntl is None:
        return os.open(os.devnull, os.O_RDONLY)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            raise refuse(f" (pid {owner})" if owner.isdigit() else "") from None
        except OSError:  # a file system without flock: run unlocked
            return fd
        if same_file(fd, lock):
            break
        os.close(fd)  # a holder removed the file between our open and lock: lock the current one
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def unlock(fd: int, lock: str | Path) -> None:
    """Remove the lock file (when it is still the one `fd` holds) and drop the lock."""
    if fcntl is not None and same_file(fd, lock):
        with contextlib.suppress(OSError):
            os.unlink(lock)
    os.close(fd)


@contextmanager
def output_lock(out: str | Path, error: type[Exception]) -> Iterator[None]:
    """Hold the output folder `out` exclusively for a whole command, its creation included: a lock file
    beside it (``.NAME.lock`` in its parent, made if missing), so that it also covers a folder written
    under a temporary name and renamed into place. A second writer of the same folder is refused."""
    out = Path(out)
    made = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = out.parent / f".{out.name}.lock"
    try:
        fd = lock_exclusively(lock, lambda who: error(f"{out} is being written by another metatokens process{who}; "
                                                      "wait for it to end or choose another --out"))
        try:
            yield
        finally:
            unlock(fd, lock)
    finally:
        for folder in made:  # the parents made for the lock, when the command left nothing in them
            try:
                folder.rmdir()
            except OSError:
                break


def holds_output(error: type[Exception]):
    """Decorate a function with an `out` argument so that it holds `output_lock(out)` for its whole call."""

    def wrap(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def locked(*args, **kwargs):
            with output_lock(signature.bind(*args, **kwargs).arguments["out"], error):
                return fn(*args, **kwargs)

        return locked

    return wrap

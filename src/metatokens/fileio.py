"""Durable file writes shared by checkpoints, tokenizers and data caches, their cache keys, and the one
reader of a JSON settings file (run.json, config.json, trainer_state.json) with one-line refusals.

A write that runs out of room (a full disk, a used-up quota, the file-size limit of `ulimit -f`) is
reported in one place, `writing`: the atomic writers here use it, so a command that writes through them
ends with one `errors.DiskFullError` line naming what it was writing, and nothing half-written is left."""

from __future__ import annotations

import errno
import functools
import hashlib
import inspect
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from .errors import DiskFullError, one_line

try:
    import fcntl
except ImportError:  # Windows: folders are not locked
    fcntl = None
try:
    import resource
except ImportError:  # Windows: no file-size limit to read
    resource = None

_NO_ROOM = {errno.ENOSPC: "ENOSPC", getattr(errno, "EDQUOT", -1): "EDQUOT", errno.EFBIG: "EFBIG"}
_OS_ERROR = re.compile(r"\(os error ([0-9]+)\)")  # how safetensors (Rust) reports the OS error inside its own
_LOW_SPACE = 64 * 2**20  # bytes free below which torch.save's "file write failed" is read as a full disk


def _free_bytes(where: Path) -> int | None:
    for folder in (where, *where.parents):
        try:
            return shutil.disk_usage(folder).free
        except OSError:  # not made yet: ask its parent's file system
            continue
    return None


def _file_size_limited() -> bool:
    if resource is None:
        return False
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return soft != resource.RLIM_INFINITY


def no_room(err: BaseException, where: str | Path) -> str | None:
    """ENOSPC, EDQUOT or EFBIG when `err` (or an error it was raised from) is a write into `where` that ran
    out of room; None when it failed for another reason. Besides OSError's errno, reads safetensors'
    SafetensorError (the OS error is only in its message) and torch.save's RuntimeError, which says only
    "file write failed": a full disk when `where` has almost nothing free, else a file-size limit if one is set."""
    seen: list[BaseException] = []
    while err is not None and len(seen) < 8 and not any(err is e for e in seen):
        seen.append(err)
        if isinstance(err, DiskFullError):
            return err.kind
        if isinstance(err, OSError) and err.errno in _NO_ROOM:
            return _NO_ROOM[err.errno]
        found = _OS_ERROR.search(str(err)) if isinstance(err, SafetensorError) else None
        if found and int(found[1]) in _NO_ROOM:
            return _NO_ROOM[int(found[1])]
        if isinstance(err, RuntimeError) and "file write failed" in str(err):
            free = _free_bytes(Path(where))
            if free is not None and free < _LOW_SPACE:
                return "ENOSPC"
            return "EFBIG" if _file_size_limited() else None
        err = err.__cause__ or err.__context__
    return None


@contextmanager
def writing(path: str | Path, *, instead: str | None = "choose another --out",
            kept: str = "nothing was changed") -> Iterator[None]:
    """Raise a write inside the block that ran out of room (see `no_room`) as one DiskFullError naming
    `path`: ``no space left on the device while writing PATH: free some space or INSTEAD; KEPT``. An
    inner `writing` (a temporary file) is named again as the outer one's `path`. The block must leave
    nothing half-written behind, so that KEPT is true. Any other error passes through unchanged."""
    try:
        yield
    except Exception as err:
        kind = no_room(err, path)
        if kind is None:
            raise
        raise DiskFullError(kind, path, instead=instead, kept=kept) from None


def missing_folders(path: str | Path) -> list[Path]:
    """`path` and those of its parents that do not exist yet, deepest first: what making it will create."""
    path = Path(path)
    return [p for p in (path, *path.parents) if not p.exists()]


def remove_empty(folders: list[Path] | tuple[Path, ...]) -> None:
    """Remove `folders` (deepest first) that are still empty; stop at the first one that is not."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def check_out_folder(path: str | Path, error: type[Exception], name: str = "--out") -> Path:
    """`path` as an output folder (`name` says where it came from), refused in one line (as `error`) before
    any work when it, or a folder above it, is a file: making it would fail only at the end, with a bare
    [Errno 17] or [Errno 20]."""
    path = Path(path)
    for above in (path, *path.parents):
        if above.is_dir():
            break
        if above.exists() or above.is_symlink():
            what = "is a file, not a folder" if above.is_file() else "exists and is not a folder"
            where = what if above == path else f"cannot be made: {above} {what}"
            hint = "choose another --out" if name == "--out" else "choose a folder with --out"
            raise error(f"{name} {path} {where}; {hint}")
    return path


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
    with writing(path):
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
    """Yield an empty temporary folder beside `final`; on success it replaces `final`, on error it is removed
    (a write that ran out of room, in the block or while moving it into place, is a DiskFullError naming `final`)."""
    final = Path(final)
    made = missing_folders(final.parent)  # removed again on failure
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    with writing(final):
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            yield tmp
            replace_dir(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            remove_empty(made)
            raise


def same_file(fd: int, path: str | Path) -> bool:
    """Whether the open file `fd` is the file at `path` (not one removed and made again meanwhile)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def lock_exclusively(lock: str | Path, refuse: Callable[[str], Exception] | None) -> int:
    """An exclusive flock on the file `lock` (made if missing), held by this process until
    `unlock(fd, lock)`; the kernel drops it when the process dies, so a killed command never leaves a
    stale lock. Another holder makes `refuse(who)` raise, `who` naming its pid when known; with
    `refuse=None` this waits for it instead. Where flock is missing (Windows, some network mounts)
    nothing is locked. Returns the open file."""
    if fcntl is None:
        return os.open(os.devnull, os.O_RDONLY)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if refuse is None else fcntl.LOCK_NB))
        except BlockingIOError:
            owner = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            raise refuse(f" (pid {owner})" if owner.isdigit() else "") from None
        except OSError:  # a file system without flock: run unlocked
            return fd
        if same_file(fd, lock):
            break
        os.close(fd)  # a holder removed the file between our open and lock: lock the current one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # the pid a second process names when it is refused
    except BaseException:  # a full disk, most likely: no lock file is left behind
        unlock(fd, lock)
        raise
    return fd


def unlock(fd: int, lock: str | Path) -> None:
    """Remove the lock file (when it is still the one `fd` holds) and drop the lock."""
    if fcntl is not None and same_file(fd, lock):
        with suppress(OSError):
            os.unlink(lock)
    os.close(fd)


@contextmanager
def output_lock(out: str | Path, error: type[Exception]) -> Iterator[None]:
    """Hold the output folder `out` exclusively for a whole command, its creation included: a lock file
    beside it (``.NAME.lock`` in its parent, made if missing), so that it also covers a folder written
    under a temporary name and renamed into place. A second writer of the same folder is refused, and
    so is an `out` that is (or lies below) a file."""
    out = check_out_folder(out, error)  # before making its parents: a file in the way is one line
    made = missing_folders(out.parent)
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
        remove_empty(made)  # the parents made for the lock, when the command left nothing in them


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

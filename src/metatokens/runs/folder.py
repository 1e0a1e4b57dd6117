"""The run folder's lifecycle, one for every command that trains.

A run folder holds what pre-training and fine-tuning write (RUN_FILES): run.json, tokenizer.json,
metrics.jsonl, checkpoints/ (see `runs.checkpoints`), and `.lock` while a process works in it.
`RunFolder` is the lifecycle both use, and so the study's stages, which call them:

    with RunFolder(out, resume=resume) as folder:   # checked: new/empty, or a run to resume
        ...prepare (tokenizer, data, model): anything that can fail on bad input; nothing written...
        folder.create()                             # made, locked for this process, checked again
        ...write run.json, train (train_loop), checkpoints...
    # on any failure a new run that never trained is removed (only what this process wrote);
    # the lock is released in every case

The lock is an flock, dropped by the kernel when the process dies, so a killed run leaves no stale
lock; a second process on the folder is refused. `RunFolder` is re-entrant: `train_loop` opens one
on the folder its caller already holds and leaves the outer one in charge.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, RunDirError
from ..fileio import (
    atomic_write_text,
    lock_exclusively,
    missing_folders,
    read_json_object,
    remove_empty,
    same_file,
    unlock,
    writing,
)
from .checkpoints import STEP_NAME, latest_checkpoint

LOCK_FILE = ".lock"


# What pre-training and fine-tuning write in a run folder; a folder holding anything else is not a run's.
RUN_FILES = frozenset({"run.json", "tokenizer.json", "metrics.jsonl", "checkpoints", "tensorboard",
                       "resolved-config.yaml", LOCK_FILE})


# Left in checkpoints/ by a killed save (atomic_folder, atomic_write_text) or prune.
_TEMP_NAME = re.compile(r"\.(?:step-[0-9]{8,}|LATEST)\.(?:tmp|old|prune)-(?P<pid>[0-9]+)")


@dataclass
class _Claim:
    fd: int  # the open lock file, flock'ed by this process
    new: bool = False  # a new run (not --resume)
    created: tuple[Path, ...] = ()  # the folder and parents this process made, deepest first
    before: frozenset[str] = frozenset()  # what the folder held when this process locked it


_CLAIMS: dict[Path, _Claim] = {}  # run folders this process holds, by resolved path


def _lock_run_dir(run_dir: Path, error: type[Exception]) -> _Claim:
    """An exclusive flock on run_dir/.lock, held by this process until release_run_dir (the kernel drops
    it when the process dies, so a killed run never leaves a stale lock). Another holder is refused."""
    key = run_dir.resolve()
    held = _CLAIMS.get(key)
    if held is not None and same_file(held.fd, run_dir / LOCK_FILE):
        return held
    if held is not None:  # the folder was removed or replaced under a lock this process still held
        release_run_dir(run_dir)
    fd = lock_exclusively(run_dir / LOCK_FILE, lambda who: error(
        f"{run_dir} is in use by another metatokens process{who}; wait for it to end or choose another --out"))
    claim = _CLAIMS[key] = _Claim(fd, before=frozenset(p.name for p in run_dir.iterdir()) - {LOCK_FILE})
    return claim


def release_run_dir(run_dir: Path) -> None:
    """Drop this process's lock on a run folder, and its lock file; a no-op when it holds none."""
    run_dir = Path(run_dir)
    claim = _CLAIMS.pop(run_dir.resolve(), None)
    if claim is None:
        return
    unlock(claim.fd, run_dir / LOCK_FILE)


def _abandoned_start(run_dir: Path, names: list[str]) -> bool:
    """A run killed before its first checkpoint: run.json and other run files, no checkpoint."""
    if "run.json" not in names or not set(names) <= RUN_FILES:
        return False
    ckpts = run_dir / "checkpoints"
    return not ckpts.is_dir() or all(p.name == "LATEST" or STEP_NAME.fullmatch(p.name) or _TEMP_NAME.fullmatch(p.name)
                                     for p in ckpts.iterdir())


def _validate_run_dir(run_dir: Path, resume: bool, error: type[Exception]) -> None:
    has_ckpt = latest_checkpoint(run_dir) is not None if run_dir.is_dir() else False
    if has_ckpt and not resume:
        raise error(f"{run_dir} already holds a run with checkpoints; pass --resume to continue it or choose another --out")
    if resume and not has_ckpt:
        raise error(f"{run_dir}: nothing to resume (no checkpoints); drop --resume to start a new run")
    if not resume and run_dir.is_dir():
        names = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_FILE)
        if names and not _abandoned_start(run_dir, names):
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            raise error(f"{run_dir} is not empty ({shown}) and is not a metatokens run folder; choose a new or "
                        "empty --out (nothing in it was changed)")


class RunFolder:
    """The lifecycle of one run folder (see the module docstring); `error` is the class of its refusals."""

    def __init__(self, path: str | Path, *, resume: bool = False, error: type[Exception] = RunDirError):
        self.path, self.resume, self.error = Path(path), resume, error
        self._outer = False

    def __enter__(self) -> "RunFolder":
        self._outer = self.path.resolve() in _CLAIMS
        if not self._outer:
            check_run_dir(self.path, self.resume, self.error)
        return self

    def create(self) -> Path:
        """Make the folder (and its parents) and lock it for this process, right before its first write."""
        check_run_dir(self.path, self.resume, self.error, create=True)
        return self.path

    def __exit__(self, exc_type, exc, tb) -> bool:
        if not self._outer:  # a failure undoes a new run that never trained; either way the lock goes
            (abandon_run_dir if exc_type is not None else release_run_dir)(self.path)
        return False


def check_run_dir(run_dir: Path, resume: bool, error: type[Exception] = RunDirError, *, create: bool = False) -> None:
    """A new run needs a new or empty folder (or one left by a run killed before its first checkpoint);
    --resume needs a run folder with checkpoints.

    The folder is locked for this process (the main one under torchrun) as soon as it exists, until
    train_loop ends or release_run_dir; a second process on it is refused. create=True makes the folder
    (call it right before the run's first write) and checks again under the lock.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise error(f"{run_dir}: exists and is not a folder; choose another --out")
    if os.environ.get("RANK", "0") != "0":  # torchrun: the main process checks, locks and writes
        if create:
            run_dir.mkdir(parents=True, exist_ok=True)
        else:
            _validate_run_dir(run_dir, resume, error)
        return
    created: tuple[Path, ...] = ()
    if create:
        missing = tuple(missing_folders(run_dir))
        try:
            run_dir.mkdir(parents=True)
            created = missing
        except FileExistsError:
            pass
    if not run_dir.is_dir():
        _validate_run_dir(run_dir, resume, error)
        return
    held = run_dir.resolve() in _CLAIMS
    try:
        # Writing the lock is the run's first write: a full disk is refused here, before any work.
        with writing(run_dir / LOCK_FILE, instead=None if resume else "choose another --out"):
            claim = _lock_run_dir(run_dir, error)
    except BaseException:
        remove_empty(created)
        raise
    claim.new, claim.created = not resume, claim.created or created
    try:
        _validate_run_dir(run_dir, resume, error)
    except BaseException:
        if not held:
            release_run_dir(run_dir)
            remove_empty(created)
        raise


def abandon_run_dir(run_dir: Path) -> None:
    """Undo a new run that failed before it trained: remove the run files this process wrote (only names of
    RUN_FILES that were not there when it locked the folder), and the folder (and parents) when this
    process made it. A resumed run, one with a checkpoint, or one that logged a training step (its
    metrics.jsonl is the record of what happened; a new run in the folder replaces it) is left as it is.
    Releases the lock."""
    run_dir = Path(run_dir)
    claim = _CLAIMS.get(run_dir.resolve())
    try:
        keep = claim is None or not claim.new or latest_checkpoint(run_dir) is not None or _logged_training(run_dir)
    except CheckpointError:
        keep = True
    if not keep:
        for name in sorted(RUN_FILES - claim.before - {LOCK_FILE}):
            path = run_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            elif path.is_symlink() or path.exists():
                path.unlink(missing_ok=True)
    release_run_dir(run_dir)
    if not keep:
        remove_empty(claim.created)


def _logged_training(run_dir: Path) -> bool:
    """Whether metrics.jsonl holds a training step's row (a run that failed mid-way, not at its start)."""
    try:
        with open(run_dir / "metrics.jsonl", encoding="utf-8", errors="replace") as fh:
            return any('"train_loss"' in line for line in fh)
    except OSError:
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_temps(folder: Path) -> None:
    """Remove what killed saves and prunes left in a run's checkpoints/ folder (.step-N.tmp-PID, .old-PID,
    .prune-PID, .LATEST.tmp-PID) once the process that made it is gone (or is this one: it is not saving)."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        match = _TEMP_NAME.fullmatch(path.name)
        if match is None:
            continue
        pid = int(match["pid"])
        if pid != os.getpid() and pid > 0 and _pid_alive(pid):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def read_run_json(run_dir: str | Path, *keys: str) -> dict[str, Any]:
    """A run folder's run.json as a dict holding `keys`; anything else is a RunDirError naming the file."""
    file = Path(run_dir) / "run.json"
    info = read_json_object(file, RunDirError, missing=f"is {run_dir} a metatokens run folder?",
                            damaged="the run's settings are damaged")
    missing = [k for k in keys if not isinstance(info.get(k), (dict, str))]
    if missing:
        raise RunDirError(f"{file}: no {', '.join(missing)}; the run's settings are damaged")
    return info


def read_metrics(run_dir: str | Path, *, missing_ok: bool = False) -> list[dict[str, Any]]:
    """The rows of a run's metrics.jsonl, the one reader of that file. A last line cut off before its
    newline (a run killed while logging) is left out; any other row that is not a JSON object is a
    RunDirError naming its line. A missing file is one too, or no rows with missing_ok."""
    file = Path(run_dir) / "metrics.jsonl"
    try:
        text = file.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        if missing_ok:
            return []
        raise RunDirError(f"{file}: not found; is {run_dir} a run folder?") from None
    lines = text.split("\n")
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict):
            if n == len(lines):  # no newline after it: cut off mid-write
                break
            raise RunDirError(f"{file}:{n}: not a JSON row")
        rows.append(row)
    return rows


def truncate_metrics(file: Path, step: int) -> None:
    """Keep the rows of metrics.jsonl up to `step`, the step a run resumes from (the steps after it are
    logged again); a cut-off last line and unreadable rows are dropped. Rewritten atomically."""
    if not file.is_file():
        return
    text = file.read_text(encoding="utf-8", errors="replace")
    keep = []
    for line in text.split("\n")[:-1]:  # the last piece is "" or a line cut off before its newline
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            keep.append(line + "\n")
    if "".join(keep) != text:
        atomic_write_text(file, "".join(keep))

"""A run folder's checkpoints/: step-NNNNNNNN folders and the LATEST pointer, pruning to the newest few,
and the queries every command asks (the latest complete checkpoint, its step, a model folder from a
run folder).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from ..errors import CheckpointError, RunDirError

STEP_NAME = re.compile(r"step-[0-9]{8,}")  # checkpoint folders: step-NNNNNNNN


def _step_folders(folder: Path) -> list[Path]:
    """checkpoints/step-N folders, oldest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if STEP_NAME.fullmatch(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def _prune(folder: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints. Each is renamed away first, so a kill mid-delete
    leaves a hidden temporary folder (removed by the next run), never a step-N folder without weights."""
    for old in _step_folders(folder)[:-keep]:
        doomed = old.with_name(f".{old.name}.prune-{os.getpid()}")
        os.replace(old, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


def _is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint LATEST names, or the newest complete one when LATEST is missing or names an
    incomplete folder; None when the run has none. LATEST must be a plain step-N name."""
    folder = run_dir / "checkpoints"
    pointer = folder / "LATEST"
    named = None
    if pointer.is_dir() or (pointer.exists() and not pointer.is_file()):
        # A save would fail to replace it only after training, with a bare [Errno 21]: refuse it now.
        what = "a folder" if pointer.is_dir() else "not a regular file"
        raise CheckpointError(f"{pointer} is {what}, not the file naming the latest checkpoint; remove it "
                              "(the newest complete checkpoint is then used)")
    if pointer.is_file():
        name = pointer.read_text(encoding="utf-8", errors="replace").strip()
        if not STEP_NAME.fullmatch(name):
            raise CheckpointError(f"{pointer}: {name[:80]!r} is not a checkpoint name like step-00000010; refusing to follow it")
        named = folder / name
        if _is_complete(named):
            return named
    complete = [p for p in _step_folders(folder) if _is_complete(p)]
    if complete:
        return complete[-1]
    if named is not None:
        raise CheckpointError(f"{pointer}: names {named.name}, which is missing or incomplete, and no other checkpoint is complete")
    return None


def resolve_model_dir(path: str | Path) -> Path:
    """A model folder, or a run folder (its latest checkpoint)."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    latest = latest_checkpoint(path) if path.is_dir() else None
    if latest is None:
        raise CheckpointError(f"{path}: neither a model folder nor a run folder with checkpoints")
    return latest


def checkpoint_step(run_dir: str | Path) -> int | None:
    """The step of a run's latest checkpoint (from its trainer_state.json); None when it has none or
    the file cannot be read (resuming reports that)."""
    try:
        latest = latest_checkpoint(Path(run_dir))
        step = json.loads((latest / "trainer_state.json").read_text(encoding="utf-8"))["step"] if latest else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def check_resume_steps(run_dir: str | Path, max_steps: int, flag: str = "--max-steps", *, allow_equal: bool = False) -> None:
    """A resume that asks for `max_steps` must move the run forward: refuse (RunDirError, one line) when
    the latest checkpoint is already past it (or at it, unless allow_equal: a finished run resumed is a
    no-op), before any data or model is prepared."""
    step = checkpoint_step(run_dir)
    if step is not None and (max_steps < step or (max_steps == step and not allow_equal)):
        rule = "cannot be below it" if allow_equal else "must be above it"
        raise RunDirError(f"{run_dir}: the run is already at step {step}; {flag} {rule} (got {max_steps})")

"""A write that runs out of room (a full disk, a used-up quota, `ulimit -f`) ends a command with one line
naming what it was writing and what to do, exit status 2, no `.lock` and nothing half-written: every
file that existed before is byte-identical after.

The full disk is faked in this process: safetensors' writer raises its own SafetensorError (the OS error
only in its message), a lock file's write raises ENOSPC. The same commands under a real file-size limit
(RLIMIT_FSIZE in a subprocess), and a checkpoint that does not fit, are in
tests/integration/test_disk_full_processes.py.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import safetensors.torch
from safetensors import SafetensorError

import metatokens.fileio as fileio
import metatokens.runs.folder as folder_mod
from conftest import TOY_RUN_STEPS, run_cli, snapshot
from metatokens.errors import DiskFullError
from metatokens.fileio import atomic_folder, atomic_write_text, no_room, writing

ENOSPC_TEXT = "Error while serializing: I/O error: No space left on device (os error 28)"
EFBIG_TEXT = "Error while serializing: I/O error: File too large (os error 27)"
FULL = "no space left on the device while writing {out}: free some space or choose another --out; nothing was changed"


# ------------------------------------------------------------------------------------------ the decision


def test_no_room_reads_the_errno_safetensors_message_and_torch_save(tmp_path, monkeypatch):
    assert no_room(OSError(errno.ENOSPC, "No space left on device"), tmp_path) == "ENOSPC"
    assert no_room(OSError(errno.EDQUOT, "Disk quota exceeded"), tmp_path) == "EDQUOT"
    assert no_room(OSError(errno.EFBIG, "File too large"), tmp_path) == "EFBIG"
    assert no_room(SafetensorError(ENOSPC_TEXT), tmp_path) == "ENOSPC"
    assert no_room(SafetensorError(EFBIG_TEXT), tmp_path) == "EFBIG"
    wrapped = RuntimeError("saving failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert no_room(wrapped, tmp_path) == "ENOSPC"
    assert no_room(DiskFullError("EFBIG", tmp_path), tmp_path) == "EFBIG"
    # Not out of room: passed through untouched.
    assert no_room(OSError(errno.EACCES, "Permission denied"), tmp_path) is None
    assert no_room(SafetensorError("Error while serializing: I/O error: Permission denied (os error 13)"), tmp_path) is None
    assert no_room(ValueError("No space left on device (os error 28)"), tmp_path) is None
    assert no_room(KeyboardInterrupt(), tmp_path) is None
    # torch.save says only "file write failed": a full disk when almost nothing is free there.
    torch_full = RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 2**20, 2**20))
    assert no_room(torch_full, tmp_path / "not-made-yet" / "x") == "ENOSPC"
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**40, 0, 2**40))
    assert no_room(torch_full, tmp_path) in (None, "EFBIG")  # EFBIG only under a file-size limit


def test_writing_names_the_outer_target_and_lets_other_errors_through(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(DiskFullError) as caught:
        with writing(out):
            with writing(out / ".tmp-1" / "config.json", instead="somewhere else"):
                raise OSError(errno.ENOSPC, "No space left on device")
    assert str(caught.value) == FULL.format(out=out)
    with pytest.raises(DiskFullError) as caught:
        with writing(out, instead=None, kept="the run is as it was"):
            raise SafetensorError(EFBIG_TEXT)
    assert str(caught.value) == (f"a file grew past this process's file-size limit (ulimit -f) while writing {out}: "
                                 "raise the limit (ulimit -f unlimited); the run is as it was")
    with pytest.raises(PermissionError):
        with writing(out):
            raise PermissionError(errno.EACCES, "Permission denied")


def test_atomic_writers_leave_the_old_file_and_no_temporary_one(tmp_path, monkeypatch):
    target = tmp_path / "deeper" / "still" / "model"
    with pytest.raises(DiskFullError, match=f"while writing {target}: "):
        with atomic_folder(target) as tmp:
            (tmp / "half.bin").write_bytes(b"x" * 100)
            raise SafetensorError(ENOSPC_TEXT)
    assert list(tmp_path.iterdir()) == []  # the temporary folder and the parents it made are gone
    text = tmp_path / "run.json"
    text.write_text("old\n")

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(DiskFullError, match=f"while writing {text}: "):
        atomic_write_text(text, "new\n")
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"] and text.read_text() == "old\n"


# ------------------------------------------------------------------------------------------ the commands


def _full_safetensors(monkeypatch):
    """safetensors' writer on a full disk: part of the file written, then its own error."""
    def serialize_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 64)
        raise SafetensorError(ENOSPC_TEXT)
    monkeypatch.setattr(safetensors.torch, "serialize_file", serialize_file)


@pytest.mark.parametrize("command", ["export", "import-hf", "import-gpt2"])
def test_a_full_disk_while_writing_weights_is_one_line_and_leaves_nothing(toy_runs, hf_sources, tmp_path,
                                                                          monkeypatch, command):
    out = tmp_path / "out" / "model"
    source = {"export": ["--checkpoint", str(toy_runs / "run")],
              "import-hf": ["--from", str(hf_sources["llama"][0]), "--block-size", "64"],
              "import-gpt2": ["--from", str(hf_sources["gpt2"][0])]}[command]
    (tmp_path / "mine.txt").write_text("a file of the user's\n")
    before = snapshot(tmp_path, toy_runs, hf_sources["llama"][0], hf_sources["gpt2"][0])
    _full_safetensors(monkeypatch)
    code, err = run_cli(command, *source, "--out", str(out))
    assert code == 2, err
    assert err.splitlines()[-1] == f"metatokens {command}: error: " + FULL.format(out=out), err
    assert snapshot(tmp_path, toy_runs, hf_sources["llama"][0], hf_sources["gpt2"][0]) == before


class _NoSpaceOs:
    """`os` as fileio.lock_exclusively sees it on a disk with no space left: the lock file opens, its pid
    write fails."""

    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def write(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_at_the_lock_refuses_a_resume_and_leaves_no_lock(toy_runs, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(toy_runs / "run", run)
    before = snapshot(tmp_path, toy_runs)
    monkeypatch.setattr(fileio, "os", _NoSpaceOs())
    code, err = run_cli("pretrain", "--out", str(run), "--resume", "--max-steps", str(TOY_RUN_STEPS + 2),
                        "--no-progress")
    assert code == 2, err
    assert err.splitlines()[-1] == (f"metatokens pretrain: error: no space left on the device while writing "
                                    f"{run / '.lock'}: free some space; nothing was changed"), err
    assert snapshot(tmp_path, toy_runs) == before  # no .lock, every file as it was
    assert folder_mod._CLAIMS == {}


def test_a_full_disk_at_the_lock_of_a_new_run_removes_the_folders_it_made(toy_runs, tmp_path, monkeypatch):
    out = tmp_path / "new" / "ft"
    before = snapshot(tmp_path, toy_runs)
    monkeypatch.setattr(fileio, "os", _NoSpaceOs())
    code, err = run_cli("finetune", "--from-scratch", "toy", "--tokenizer", str(toy_runs / "run" / "tokenizer.json"),
                        "--set", "model.block_size=256", "--max-len", "160", "--steps", "2", "--batch-size", "2",
                        "--eval-n", "2", "--out", str(out), "--no-progress")
    assert code == 2, err
    assert err.splitlines()[-1] == "metatokens finetune: error: " + FULL.format(out=out / ".lock"), err
    assert snapshot(tmp_path, toy_runs) == before  # new/ft/.lock, new/ft and new are gone

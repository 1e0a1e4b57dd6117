"""The run folder's one lifecycle (`RunFolder`) and its one metrics reader, on hand-made folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from metatokens.errors import RunDirError
from metatokens.runs.folder import LOCK_FILE, RunFolder, read_metrics


def test_a_new_run_that_fails_before_training_leaves_nothing(tmp_path):
    out = tmp_path / "a" / "run"
    with pytest.raises(ZeroDivisionError):
        with RunFolder(out) as folder:
            folder.create()
            (out / "run.json").write_text("{}")
            (out / "tokenizer.json").write_text("{}")
            1 / 0
    assert not (tmp_path / "a").exists()  # the folder and the parent this run made are gone


def test_a_failure_keeps_what_the_user_had_and_a_run_that_logged_training(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with pytest.raises(ZeroDivisionError):
        with RunFolder(out) as folder:
            folder.create()
            (out / "run.json").write_text("{}")
            (out / "metrics.jsonl").write_text(json.dumps({"step": 1, "train_loss": 3.0}) + "\n")
            1 / 0
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl", "run.json"]  # the record stays; no lock


def test_the_folder_is_locked_while_held_and_released_after(tmp_path):
    out = tmp_path / "run"
    code = ("import sys; from metatokens.runs.folder import RunFolder\n"
            "try:\n    RunFolder(sys.argv[1]).__enter__()\nexcept Exception as e:\n    print(e); sys.exit(3)\n")
    with RunFolder(out) as folder:
        folder.create()
        assert (out / LOCK_FILE).is_file()
        other = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True,
                               env={**os.environ, "RANK": "0"})
        assert other.returncode == 3 and "in use by another metatokens process" in other.stdout
    assert not (out / LOCK_FILE).exists()
    again = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True)
    assert again.returncode == 0, again.stdout


def test_an_inner_run_folder_leaves_the_outer_in_charge(tmp_path):
    """train_loop opens a RunFolder inside run_pretrain's: its end must not release or clean up."""
    out = tmp_path / "run"
    with RunFolder(out) as outer:
        outer.create()
        (out / "run.json").write_text("{}")
        with pytest.raises(KeyError):
            with RunFolder(out) as inner:
                inner.create()
                raise KeyError("inner failure")
        assert (out / "run.json").is_file() and (out / LOCK_FILE).is_file()  # still held, nothing removed
    assert sorted(p.name for p in out.iterdir()) == ["run.json"]  # the outer ended well: kept, lock released


def test_a_folder_holding_the_users_files_is_refused_untouched(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not a metatokens run folder"):
        with RunFolder(out):
            pass
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_read_metrics_skips_only_a_line_cut_off_mid_write(tmp_path):
    rows = [{"step": 1, "train_loss": 2.0}, {"step": 2, "train_loss": 1.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "tra')
    assert read_metrics(tmp_path) == rows
    (tmp_path / "metrics.jsonl").write_text(json.dumps(rows[0]) + "\nnot json\n" + json.dumps(rows[1]) + "\n")
    with pytest.raises(RunDirError, match=r"metrics.jsonl:2: not a JSON row"):
        read_metrics(tmp_path)


def test_read_metrics_of_a_folder_without_metrics(tmp_path):
    with pytest.raises(RunDirError, match="not found; is .* a run folder"):
        read_metrics(tmp_path)
    assert read_metrics(tmp_path, missing_ok=True) == []

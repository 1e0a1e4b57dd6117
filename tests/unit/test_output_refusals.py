"""A command refuses an output that holds what it did not write, and flags that contradict each other,
in one line, before it writes anything; a second writer of the same output is refused."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import run_cli, snapshot, toy_data_args

from metatokens.errors import StudyError
from metatokens.fileio import output_lock
from metatokens.model.config import ConfigError
from metatokens.training.config import load_run_config


def one_line(err: str, command: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"metatokens {command}: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, err)


@pytest.mark.parametrize("text", ["", "train:\n  max_steps: 3\n", "model: {}\n"])
def test_a_yaml_config_without_model_settings_is_refused(tmp_path, text):
    """ModelConfig's defaults are GPT-2 small: an empty file used to build it silently."""
    cfg = tmp_path / "empty.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match="no model settings"):
        load_run_config(str(cfg))
    code, err = run_cli("pretrain", "--config", str(cfg), "--out", str(tmp_path / "run"), "--max-steps", "3")
    assert code == 2
    one_line(err, "pretrain", "no model settings", "model:")
    assert not (tmp_path / "run").exists()


def test_every_builtin_preset_still_loads():
    from metatokens.training.config import list_presets

    for name in list_presets():
        assert load_run_config(name).model.n_layer >= 1


def test_resume_with_init_is_refused_and_the_run_untouched(toy_runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(toy_runs / "run", run)
    before = snapshot(run)
    code, err = run_cli("pretrain", "--out", str(run), "--resume", "--init", str(toy_runs / "run"), "--max-steps", "8",
                        *toy_data_args(toy_runs))
    assert code == 2
    one_line(err, "pretrain", "--init", "--resume", "drop one of them")
    assert snapshot(run) == before


def test_finetune_resume_with_a_new_model_source_is_refused(toy_runs, tmp_path):
    ft = tmp_path / "ft"
    shutil.copytree(toy_runs / "ft", ft)
    before = snapshot(ft)
    for flags in (["--init", str(toy_runs / "run")], ["--from-scratch", "toy"]):
        code, err = run_cli("finetune", "--out", str(ft), "--resume", *flags, "--no-progress")
        assert code == 2
        one_line(err, "finetune", flags[0], "--resume")
    assert snapshot(ft) == before


def test_reproduce_refuses_a_folder_holding_the_users_files(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    before = snapshot(tmp_path)
    code, err = run_cli("reproduce", "--scale", "toy", "--out", str(out), "--device", "cpu", "--no-progress")
    assert code == 2
    one_line(err, "reproduce", "notes.txt", "did not write")
    assert snapshot(tmp_path) == before  # no stages/, no study.json, no lock beside it


@pytest.mark.parametrize("marked", [True, False], ids=["study.json", "REPORT.md-only"])
def test_reproduce_refuses_a_study_of_another_scale(tmp_path, marked):
    """A finished toy study given to --scale demo had 26 of its files replaced within 45 s."""
    out = tmp_path / "toy-study"
    (out / "stages" / "seed0" / "pretrain-meta-rope").mkdir(parents=True)
    (out / "stages" / "seed0" / "pretrain-meta-rope" / "stage.json").write_text('{"key": "k"}')
    if marked:
        (out / "study.json").write_text('{"format": "metatokens-study", "scale": "toy"}\n')
    else:  # written before study.json existed: the report says its scale
        (out / "REPORT.md").write_text("# Report\n\nScale `toy` (seconds), 1 seed(s)\n")
    before = snapshot(tmp_path)
    code, err = run_cli("reproduce", "--scale", "demo", "--out", str(out), "--device", "cpu", "--no-progress")
    assert code == 2
    one_line(err, "reproduce", "scale toy", "--scale toy")
    assert snapshot(tmp_path) == before


def test_report_only_accepts_committed_results_with_a_readme_but_needs_stages(tmp_path):
    """--report-only writes REPORT.md and figures/ only: a results folder may hold a README beside them."""
    from metatokens.study.output import claim_study_folder

    out = tmp_path / "results"
    (out / "stages").mkdir(parents=True)
    (out / "README.md").write_text("what these results are")
    (out / "REPORT.md").write_text("Scale `tiny` (about an hour per seed)\n")
    claim_study_folder(out, "tiny", report_only=True)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "REPORT.md", "stages"]  # no study.json added
    with pytest.raises(StudyError, match="scale tiny"):
        claim_study_folder(out, "toy", report_only=True)
    with pytest.raises(StudyError, match="no stages/"):
        claim_study_folder(tmp_path / "empty", "tiny", report_only=True)


def test_claiming_a_study_folder_records_its_scale_and_accepts_it_again(tmp_path):
    from metatokens.study.output import claim_study_folder, study_scale

    out = tmp_path / "a" / "study"
    claim_study_folder(out, "toy")
    assert study_scale(out) == "toy"
    claim_study_folder(out, "toy")  # its own work: continued
    with pytest.raises(StudyError, match="scale toy"):
        claim_study_folder(out, "tiny")
    (tmp_path / "file").write_text("x")
    with pytest.raises(StudyError, match="is a file, not a folder"):
        claim_study_folder(tmp_path / "file", "toy")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_reproduce_on_a_missing_device_writes_nothing(tmp_path):
    out = tmp_path / "new" / "study"
    code, err = run_cli("reproduce", "--scale", "toy", "--out", str(out), "--device", "cuda", "--no-progress")
    assert code == 2
    one_line(err, "reproduce", "no CUDA device")
    assert list(tmp_path.iterdir()) == []


def test_plot_refuses_to_overwrite_a_file_that_is_not_a_figure(toy_runs, tmp_path):
    mine = tmp_path / "notes.txt"
    mine.write_text("my notes")
    code, err = run_cli("plot", str(toy_runs / "run"), "--out", str(mine))
    assert code == 2
    one_line(err, "plot", "not a PNG figure")
    assert mine.read_text() == "my notes"


def test_plot_refuses_a_folder_and_leaves_no_temporary_file(toy_runs, tmp_path):
    folder = tmp_path / "figs"
    folder.mkdir()
    code, err = run_cli("plot", str(toy_runs / "run"), "--out", str(folder))
    assert code == 2
    one_line(err, "plot", "is a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figs"] and list(folder.iterdir()) == []


def test_plot_replaces_a_figure_it_drew_before(toy_runs, tmp_path):
    png = tmp_path / "loss.png"
    assert run_cli("plot", str(toy_runs / "run"), "--out", str(png))[0] == 0
    first = png.read_bytes()
    assert first.startswith(b"\x89PNG")
    assert run_cli("plot", str(toy_runs / "run"), "--out", str(png))[0] == 0
    assert png.read_bytes().startswith(b"\x89PNG")


def test_no_progress_also_hides_the_loading_bars_of_transformers():
    from transformers.utils import logging as hf_logging

    from metatokens.cli.common import hide_transformers_progress

    hf_logging.enable_progress_bar()
    try:
        hide_transformers_progress()
        assert not hf_logging.is_progress_bar_enabled()
    finally:
        hf_logging.enable_progress_bar()


def test_an_analysis_into_a_folder_another_command_is_writing_is_refused(toy_runs, tmp_path):
    """flock is per open file, so a lock held here stands for another process (tested with two in the
    integration layer): the analysis is refused before any work and writes nothing."""
    from metatokens.errors import AnalysisError

    out = tmp_path / "analysis"
    with output_lock(out, AnalysisError):
        code, err = run_cli("analyze", "entropy", "--checkpoint", str(toy_runs / "ft"), "--task", "list_recall",
                            "--length", "160", "--n", "2", "--out", str(out), "--no-progress")
    assert code == 2
    one_line(err, "analyze", "being written by another metatokens process")
    assert sorted(p.name for p in tmp_path.iterdir()) == []

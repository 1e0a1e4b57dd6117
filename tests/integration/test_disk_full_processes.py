"""Commands that run out of room under a real file-size limit: `python -m metatokens` subprocesses with
RLIMIT_FSIZE at 100 kB (and SIGXFSZ ignored, so that a write past it fails with EFBIG, as under
`ulimit -f 100`). Each ends with exit status 2 and one last stderr line naming what it was writing and
what to do; no `.lock` is left, nothing half-written, and what existed before is byte-identical after
(a resumed run's metrics.jsonl may only grow: the steps logged before the failed save).

The in-process cases (safetensors' own error on a full disk, ENOSPC at the lock) are in
tests/unit/test_disk_full.py.
"""

from __future__ import annotations

import resource
import shutil
import signal
import subprocess
import sys

import pytest

from conftest import TOY_RUN_STEPS, snapshot, subprocess_env

LIMIT = 100_000  # bytes: the toy model's weights (about 200 kB) do not fit, its settings do
# (the words corpus' token cache, about 25 kB, fits too: 10 kB stops it)
TOO_BIG = "a file grew past this process's file-size limit (ulimit -f)"


def metatokens_limited(*args, limit: int = LIMIT) -> tuple[int, str]:
    """`python -m metatokens ARGS` under a file-size limit: (exit status, its stderr's last line)."""
    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([sys.executable, "-m", "metatokens", *map(str, args)], env=subprocess_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300, preexec_fn=limited)
    lines = proc.stderr.strip().splitlines()
    return proc.returncode, lines[-1] if lines else ""


@pytest.mark.parametrize("command", ["export", "import-hf", "import-gpt2"])
def test_weights_past_the_file_size_limit_are_one_line_and_leave_nothing(toy_runs, hf_sources, tmp_path, command):
    out = tmp_path / "out"
    source = {"export": ["--checkpoint", toy_runs / "run"],
              "import-hf": ["--from", hf_sources["llama"][0], "--block-size", "64"],
              "import-gpt2": ["--from", hf_sources["gpt2"][0]]}[command]
    before = snapshot(tmp_path, toy_runs / "run", hf_sources["llama"][0], hf_sources["gpt2"][0])
    code, last = metatokens_limited(command, *source, "--out", out)
    assert code == 2, last
    assert last == (f"metatokens {command}: error: {TOO_BIG} while writing {out}: raise the limit "
                    "(ulimit -f unlimited); nothing was changed")
    assert snapshot(tmp_path, toy_runs / "run", hf_sources["llama"][0], hf_sources["gpt2"][0]) == before


def test_a_resume_whose_checkpoint_does_not_fit_keeps_the_last_good_one(toy_runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(toy_runs / "run", run)
    before = snapshot(tmp_path, toy_runs / "corpus", toy_runs / "cache")
    metrics = (run / "metrics.jsonl").read_bytes()
    code, last = metatokens_limited("pretrain", "--out", run, "--resume", "--max-steps", TOY_RUN_STEPS + 2,
                                    "--no-progress")
    assert code == 2, last
    good = run / "checkpoints" / f"step-{TOY_RUN_STEPS:08d}"
    assert last == (f"metatokens pretrain: error: {TOO_BIG} while saving step {TOY_RUN_STEPS + 2} in "
                    f"{run / 'checkpoints'}; nothing of it was kept (last good checkpoint: {good}); raise the limit "
                    "(ulimit -f unlimited), then --resume")
    after = snapshot(tmp_path, toy_runs / "corpus", toy_runs / "cache")
    grown = str(run / "metrics.jsonl")  # the steps trained before the save: cut again by the next resume
    assert (run / "metrics.jsonl").read_bytes().startswith(metrics)
    assert {k: v for k, v in after.items() if k != grown} == {k: v for k, v in before.items() if k != grown}


def test_a_resume_whose_token_cache_does_not_fit_changes_nothing(toy_runs, tmp_path):
    run, cache = tmp_path / "run", tmp_path / "cache"
    shutil.copytree(toy_runs / "run", run)
    cache.mkdir()
    before = snapshot(run, toy_runs / "corpus")
    code, last = metatokens_limited("pretrain", "--out", run, "--resume", "--max-steps", TOY_RUN_STEPS + 2,
                                    "--set", f"data.cache_dir={cache}", "--no-progress", limit=10_000)
    assert code == 2, last
    assert last.startswith(f"metatokens pretrain: error: {TOO_BIG} while writing {cache}/tokens-"), last
    assert last.endswith(": raise the limit (ulimit -f unlimited); nothing was changed"), last
    assert snapshot(run, toy_runs / "corpus") == before
    assert not [p for p in cache.rglob("*") if p.is_file() and p.name != ".lock"]  # no half-written token file


def test_a_new_finetune_whose_first_checkpoint_does_not_fit_says_to_start_again(toy_runs, tmp_path):
    out = tmp_path / "ft"
    before = snapshot(toy_runs / "run")
    code, last = metatokens_limited("finetune", "--from-scratch", "toy", "--tokenizer", toy_runs / "run" / "tokenizer.json",
                                    "--set", "model.block_size=256", "--max-len", "160", "--steps", "2",
                                    "--batch-size", "2", "--eval-n", "2", "--out", out, "--no-progress")
    assert code == 2, last
    assert last == (f"metatokens finetune: error: {TOO_BIG} while saving step 2 in {out / 'checkpoints'}; nothing of it "
                    "was kept (last good checkpoint: none); raise the limit (ulimit -f unlimited), then start the run "
                    "again (it has no checkpoint to resume from)")
    assert snapshot(toy_runs / "run") == before
    # The run's record (settings, tokenizer, the steps it logged), no lock and no half-written checkpoint:
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl", "run.json", "tokenizer.json"]

"""Runs stopped while they train (issue 13, item 8, the cases that need training steps): a SIGTERM
to a real process, a signal during a step of an in-process pre-training or fine-tuning, and a full
disk while saving. Each saves what it can and exits non-zero with exactly one line on stderr.

The unit layer's tests/unit/test_bad_inputs.py holds the bad inputs refused before any step.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TOY_RUN_STEPS, subprocess_env, toy_data_args
from metatokens import cli


def test_sigterm_saves_then_exits_143_with_one_line_saying_how_to_resume(toy_runs, tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "metatokens", "pretrain", "--config", "toy", "--out", str(out), "--no-progress",
            *toy_data_args(toy_runs), "--set", "train.max_steps=100000", "--set", "train.ckpt_interval=0"]
    proc = subprocess.Popen(args, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    step = int((out / "checkpoints" / "LATEST").read_text().strip().split("-")[1])
    assert 2 <= step < 100000
    assert err.count("\n") == 1, err
    assert err.startswith(f"metatokens pretrain: stopped by SIGTERM at step {step}; checkpoint saved in "), err
    assert f"continue with: metatokens pretrain --out {out} --resume" in err, err


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_a_stopped_run_saves_and_exits_128_plus_the_signal(toy_runs, tmp_path, monkeypatch, capsys, command):
    """In-process: the loop sends itself SIGTERM during step 3; the run saves step 3, then exits 143."""
    import metatokens.training.loop as train_mod

    real_lr_at = train_mod.lr_at

    def lr_at(step, cfg):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_lr_at(step, cfg)

    monkeypatch.setattr(train_mod, "lr_at", lr_at)
    out = tmp_path / "new"
    if command == "pretrain":
        argv = ["pretrain", "--config", "toy", "--out", str(out), "--no-progress", *toy_data_args(toy_runs),
                "--set", "train.max_steps=50", "--set", "train.ckpt_interval=0"]
    else:
        argv = ["finetune", "--from-scratch", "toy", "--tokenizer", str(toy_runs / "run" / "tokenizer.json"),
                "--set", "model.block_size=256", "--max-len", "160", "--steps", "50", "--batch-size", "4",
                "--eval-n", "4", "--set", "train.warmup_steps=1", "--set", "train.ckpt_interval=0", "--out", str(out),
                "--no-progress"]
    previous = signal.signal(signal.SIGTERM, lambda *_: pytest.fail("SIGTERM arrived outside the training loop"))
    try:
        code = cli.main(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)
    err = capsys.readouterr().err
    assert code == 143, err
    assert (out / "checkpoints" / "LATEST").read_text().strip() == "step-00000003"
    assert err == (f"metatokens {command}: stopped by SIGTERM at step 3; checkpoint saved in "
                   f"{out / 'checkpoints' / 'step-00000003'}; continue with: metatokens {command} --out {out} --resume\n")


def test_a_full_disk_while_saving_is_one_line_naming_it_and_keeps_the_last_good_checkpoint(toy_runs, tmp_path,
                                                                                           monkeypatch, capsys):
    """torch.save on a full disk raises RuntimeError('... file write failed'); faked at the second
    checkpoint (the first is saved), with the file system reporting 1 MiB free."""
    from collections import namedtuple

    import metatokens.training.checkpoints as train_mod

    real_save, calls = torch.save, {"n": 0}

    def save(obj, f, *args, **kwargs):
        if str(f).endswith("optimizer.pt"):
            calls["n"] += 1
            if calls["n"] == 2:
                usage = namedtuple("usage", "total used free")(10 * 2**30, 10 * 2**30 - 2**20, 2**20)
                monkeypatch.setattr(train_mod.shutil, "disk_usage", lambda path: usage)
                raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing "
                                   "file data/0: file write failed")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(train_mod.torch, "save", save)
    out = tmp_path / "new"
    code = cli.main(["pretrain", "--config", "toy", *toy_data_args(toy_runs), "--out", str(out), "--no-progress",
                     "--set", "train.max_steps=6", "--set", "train.ckpt_interval=2"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"metatokens pretrain: error: no space left on the device while saving step 4 in {out / 'checkpoints'} "
                          "(1 MiB free)"), err
    assert f"last good checkpoint: {out / 'checkpoints' / 'step-00000002'}" in err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["LATEST", "step-00000002"]  # no temp folder left


def test_a_full_disk_while_logging_is_one_line_and_keeps_the_checkpoints(toy_runs, tmp_path, monkeypatch, capsys):
    """The metrics.jsonl append of step 8 of a resumed run (step 6) meets a full disk."""
    import metatokens.training.loop as loop_mod

    run = tmp_path / "run"
    shutil.copytree(toy_runs / "run", run)
    checkpoints = {p: p.read_bytes() for p in (run / "checkpoints").rglob("*") if p.is_file()}
    logged = {"n": 0}

    def open_(file, mode="r", *args, **kwargs):
        if str(file).endswith("metrics.jsonl") and mode == "a":
            logged["n"] += 1
            if logged["n"] == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
        return open(file, mode, *args, **kwargs)

    monkeypatch.setattr(loop_mod, "open", open_, raising=False)
    code = cli.main(["pretrain", "--out", str(run), "--resume", "--max-steps", str(TOY_RUN_STEPS + 4), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.splitlines()[-1] == (f"metatokens pretrain: error: no space left on the device while writing "
                                    f"{run / 'metrics.jsonl'}: free some space; the run stopped; its checkpoints are kept")
    assert {p: p.read_bytes() for p in (run / "checkpoints").rglob("*") if p.is_file()} == checkpoints
    assert not (run / ".lock").exists()


# How torch.compile reports a compile that a Ctrl-C broke (its C++ compiler or worker process died of it).
FakeInductorError = type("InductorError", (RuntimeError,), {"__module__": "torch._inductor.exc"})


@pytest.mark.parametrize("signalled", [True, False])
def test_a_compile_broken_by_ctrl_c_is_a_stop_and_without_one_a_failure(toy_runs, tmp_path, monkeypatch, capsys,
                                                                       signalled):
    """The first step's compile fails the way inductor's does when a Ctrl-C killed its compiler: after the
    SIGINT, a stop (130, one line, the new run removed); with no signal, the error with its traceback."""
    import metatokens.training.loop as loop_mod

    def parallelize(model, cfg, d):
        def compiled(*args, **kwargs):
            if signalled:
                os.kill(os.getpid(), signal.SIGINT)
            raise FakeInductorError("CppCompileError: C++ compile error")
        return compiled

    monkeypatch.setattr(loop_mod, "parallelize", parallelize)
    out = tmp_path / "new"
    argv = ["pretrain", "--config", "toy", *toy_data_args(toy_runs), "--out", str(out), "--no-progress",
            "--set", "train.compile=true", "--set", "train.max_steps=4"]
    if not signalled:
        with pytest.raises(FakeInductorError):
            cli.main(argv)
        return
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 130, err
    assert err == ("metatokens pretrain: stopped by SIGINT while compiling the model for step 1 (train.compile); "
                   "nothing of it was saved (the run has no checkpoint yet); run the same command to start again\n")
    assert not out.exists()  # a new run that never trained: removed, lock and all


def _kernel_compilers(pgid: int) -> list[int]:
    """The C++ compilers of inductor's kernels (cc1plus on a .main.cpp) in process group `pgid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if text[text.index("(") + 1:text.rindex(")")] == "cc1plus" and b".main.cpp" in command \
                and int(text.rsplit(")", 1)[1].split()[3]) == pgid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow  # inductor compiles the toy model's kernels from scratch: about 30 s on 2 cores
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="watches the C++ compilers in /proc (Linux)")
def test_ctrl_c_while_compiling_exits_130_with_one_line(toy_runs, tmp_path):
    """A terminal's Ctrl-C (SIGINT to the process group) while inductor's C++ compiler builds the first
    step's kernels: the compiler dies of it, and the run must stop as on any Ctrl-C, not with InductorError."""
    out = tmp_path / "new"
    env = {**subprocess_env(), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}  # nothing compiled yet
    proc = subprocess.Popen([sys.executable, "-m", "metatokens", "pretrain", "--config", "toy", "--out", str(out),
                             "--no-progress", *toy_data_args(toy_runs), "--set", "train.compile=true",
                             "--set", "train.max_steps=4"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline and not _kernel_compilers(proc.pid):
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before inductor compiled a kernel"
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert err == ("metatokens pretrain: stopped by SIGINT while compiling the model for step 1 (train.compile); "
                   "nothing of it was saved (the run has no checkpoint yet); run the same command to start again\n")
    assert not out.exists()

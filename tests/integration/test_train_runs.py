"""Training runs of the toy model: the loss falls, exact resume, bf16 and compiled runs, clean stops
(NaN guard, SIGINT, failures before and after the first checkpoint), DDP/FSDP against one process,
one process per run folder."""

import json
import math
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import run_cli, subprocess_env, toy_run_config, train_losses
from metatokens import devices
from metatokens.errors import CheckpointError
from metatokens.devices import cpu_has_bf16
from metatokens.training.pretrain import run_pretrain
from metatokens.errors import TrainingError


def test_loss_falls_and_run_folder_is_complete(words_corpus, tmp_path):
    cfg = toy_run_config(words_corpus, tmp_path / "cache", "train.max_steps=25", "train.eval_interval=25")
    summary = run_pretrain(cfg, tmp_path / "run", progress=False)
    curve = train_losses(tmp_path / "run")
    assert sorted(curve) == list(range(1, 26))
    assert sum(list(curve.values())[-5:]) / 5 < sum(list(curve.values())[:5]) / 5 - 0.5
    assert math.isfinite(summary["val_loss"]) and summary["val_bpb"] > 0
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {"run.json", "tokenizer.json", "metrics.jsonl", "checkpoints"}
    assert (run / "checkpoints" / "LATEST").read_text().strip() == "step-00000025"
    assert len(list((run / "checkpoints").glob("step-*"))) == cfg.train.keep_last


def test_resume_reproduces_the_uninterrupted_run_exactly(words_corpus, tmp_path):
    extra = ["model.dropout=0.1", "train.ckpt_interval=4", "train.grad_accum=2"]  # dropout: RNG must be restored
    full = run_pretrain(toy_run_config(words_corpus, tmp_path / "c", "train.max_steps=12", *extra), tmp_path / "full",
                        progress=False)
    part = tmp_path / "part"
    # stop after 6 steps (the cosine schedule still spans 12), then resume to 12
    cfg = toy_run_config(words_corpus, tmp_path / "c", "train.max_steps=12", *extra)
    cfg.train.max_steps = 6
    run_pretrain(cfg, part, progress=False)
    cfg.train.max_steps = 12
    with pytest.raises(ValueError, match="--resume"):
        run_pretrain(cfg, part, progress=False)
    resumed = run_pretrain(cfg, part, resume=True, progress=False)
    assert resumed["start_step"] == 6
    for step in range(7, 13):
        assert abs(resumed["losses"][step] - full["losses"][step]) <= 1e-6, step


def _ten_steps(words_corpus, tmp_path, name, *extra):
    cfg = toy_run_config(words_corpus, tmp_path / "cache", "train.max_steps=10", "train.ckpt_interval=0", *extra)
    return run_pretrain(cfg, tmp_path / name, progress=False)["losses"]


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no bf16 units (the fallback test covers it)")
def test_bf16_autocast_run_stays_close_to_the_fp32_run(words_corpus, tmp_path):
    """train.dtype=bf16 on CPU really trains in bf16 (the losses differ from fp32's) and follows the
    same curve: every one of 10 steps within 0.03 nats of the fp32 run's (measured: at most ~0.005)."""
    fp32 = _ten_steps(words_corpus, tmp_path, "fp32", "train.dtype=fp32")
    bf16 = _ten_steps(words_corpus, tmp_path, "bf16", "train.dtype=bf16")
    gaps = [abs(bf16[s] - fp32[s]) for s in range(1, 11)]
    assert max(gaps) <= 0.03, gaps
    assert max(gaps) > 0, "identical losses: the bf16 autocast was not applied"
    assert fp32[10] < fp32[1] - 0.3 and bf16[10] < bf16[1] - 0.3


def test_bf16_on_a_cpu_without_bf16_units_trains_in_fp32_with_one_line(words_corpus, tmp_path, monkeypatch, capsys):
    fp32 = _ten_steps(words_corpus, tmp_path, "fp32", "train.dtype=fp32")
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: False)
    capsys.readouterr()
    fallback = _ten_steps(words_corpus, tmp_path, "fallback", "train.dtype=bf16")
    notes = [line for line in capsys.readouterr().out.splitlines() if "dtype" in line]
    assert len(notes) == 1 and "no bf16 units" in notes[0] and "fp32" in notes[0]
    assert fallback == fp32


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no bf16 units: a bf16 run would be fp32")
def test_auto_precision_is_printed_recorded_and_kept_by_a_resume_on_another_machine(words_corpus, tmp_path,
                                                                                     monkeypatch, capsys):
    """train.dtype=auto on a machine that reports AMX trains in bf16, says so in one line and records
    it in run.json; resumed on a machine without AMX (where auto alone means fp32) it goes on in bf16,
    and the resumed run's losses equal those of the same bf16 run left uninterrupted."""
    monkeypatch.setattr(devices, "cpu_has_amx", lambda: True)
    full = _ten_steps(words_corpus, tmp_path, "full")
    explicit = _ten_steps(words_corpus, tmp_path, "bf16", "train.dtype=bf16")
    assert full == explicit  # auto chose bf16
    info = json.loads((tmp_path / "full" / "run.json").read_text())
    assert info["precision"]["dtype"] == "bf16" and "AMX" in info["precision"]["reason"]
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("precision:")]
    assert lines == ["precision: bf16 (train.dtype=auto: this CPU has AMX tiles (bf16 matmuls about 2x fp32's speed))",
                     "precision: bf16 (train.dtype=bf16)"]

    cfg = toy_run_config(words_corpus, tmp_path / "cache", "train.max_steps=10", "train.ckpt_interval=5")
    cfg.train.max_steps = 5
    run_pretrain(cfg, tmp_path / "part", progress=False)
    monkeypatch.setattr(devices, "cpu_has_amx", lambda: False)
    cfg.train.max_steps = 10
    resumed = run_pretrain(cfg, tmp_path / "part", resume=True, progress=False)
    assert [x for x in capsys.readouterr().out.splitlines() if x.startswith("precision:")][-1].startswith(
        "precision: bf16 (as the run started: train.dtype=auto: this CPU has AMX")
    for step in range(6, 11):
        assert resumed["losses"][step] == full[step], step
    fresh_fp32 = _ten_steps(words_corpus, tmp_path, "fp32")  # and a new run on this machine is fp32
    assert json.loads((tmp_path / "fp32" / "run.json").read_text())["precision"]["dtype"] == "fp32"
    assert fresh_fp32 != full


@pytest.mark.slow  # inductor compiles the toy model in about a minute on 2 cores
def test_compiled_run_equals_the_eager_run(words_corpus, tmp_path):
    """train.compile=true (inductor on CPU) gives the eager run's losses over 10 steps within 1e-4."""
    eager = _ten_steps(words_corpus, tmp_path, "eager")
    compiled = _ten_steps(words_corpus, tmp_path, "compiled", "train.compile=true")
    for step in range(1, 11):
        assert compiled[step] == pytest.approx(eager[step], abs=1e-4), step
    assert eager[10] < eager[1] - 0.3


def test_resume_truncates_metrics_to_the_checkpoint_step(words_corpus, tmp_path):
    """Killed after logging steps 5-6 but before their checkpoint, mid-way through writing row 7."""
    import shutil

    cfg = toy_run_config(words_corpus, tmp_path / "c", "train.max_steps=8", "train.ckpt_interval=4", "train.eval_interval=4")
    cfg.train.max_steps = 6
    run = tmp_path / "run"
    run_pretrain(cfg, run, progress=False)
    shutil.rmtree(run / "checkpoints" / "step-00000006")
    (run / "checkpoints" / "LATEST").write_text("step-00000004\n")
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 7, "train_lo')
    cfg.train.max_steps = 8
    run_pretrain(cfg, run, resume=True, progress=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train_loss" in r] == list(range(1, 9))
    assert [r["step"] for r in rows if "val_loss" in r] == [4, 8]


def test_truncated_checkpoint_is_never_loaded(words_corpus, tmp_path):
    cfg = toy_run_config(words_corpus, tmp_path / "c", "train.max_steps=4", "train.ckpt_interval=2")
    run_pretrain(cfg, tmp_path / "run", progress=False)
    latest = tmp_path / "run" / "checkpoints" / "step-00000004"
    opt = latest / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[:100])
    cfg.train.max_steps = 6
    with pytest.raises(CheckpointError, match="optimizer.pt"):
        run_pretrain(cfg, tmp_path / "run", resume=True, progress=False)


def test_resume_with_other_model_shape_or_tokenizer_is_refused(words_corpus, tmp_path):
    cfg = toy_run_config(words_corpus, tmp_path / "c", "train.max_steps=2")
    run_pretrain(cfg, tmp_path / "run", progress=False)
    wider = toy_run_config(words_corpus, tmp_path / "c", "train.max_steps=4", "model.n_embd=48")
    with pytest.raises(TrainingError, match="n_embd"):
        run_pretrain(wider, tmp_path / "run", resume=True, progress=False)
    (tmp_path / "run" / "tokenizer.json").write_bytes(b"")  # a tokenizer file that is not the run's
    with pytest.raises(ValueError, match="tokenizer.json"):
        run_pretrain(toy_run_config(words_corpus, tmp_path / "c", "train.max_steps=4"), tmp_path / "run", resume=True,
                     progress=False)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(words_corpus, tmp_path, monkeypatch):
    import metatokens.model as model_mod

    cfg = toy_run_config(words_corpus, tmp_path / "c", "train.max_steps=8", "train.ckpt_interval=3")
    real_forward = model_mod.GPT.forward
    calls = {"n": 0}

    def flaky(self, idx, targets=None, **kw):
        logits, loss = real_forward(self, idx, targets, **kw)
        if targets is not None and self.training:
            calls["n"] += 1
            if calls["n"] == 5:
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(model_mod.GPT, "forward", flaky)
    with pytest.raises(TrainingError, match="step 5.*step-00000003"):
        run_pretrain(cfg, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "checkpoints" / "LATEST").read_text().strip() == "step-00000003"


def test_weights_made_non_finite_by_a_checkpoint_step_are_never_saved(words_corpus, tmp_path, monkeypatch):
    """The loss of step 3 is finite, but its optimizer step turns the weights NaN: step-3 must not be saved."""
    import metatokens.training.loop as train_mod
    from metatokens.runs.model_folder import load_pretrained

    real_build = train_mod.build_optimizer

    def poisoning_optimizer(model, cfg, device):
        opt = real_build(model, cfg, device)
        real_step, calls = opt.step, {"n": 0}

        def step(*args, **kwargs):
            out = real_step(*args, **kwargs)
            calls["n"] += 1
            if calls["n"] == 3:
                with torch.no_grad():
                    next(model.parameters()).fill_(float("nan"))
            return out

        opt.step = step
        return opt

    monkeypatch.setattr(train_mod, "build_optimizer", poisoning_optimizer)
    cfg = toy_run_config(words_corpus, tmp_path / "c", "train.max_steps=6", "train.ckpt_interval=1", "train.keep_last=5")
    with pytest.raises(TrainingError, match=r"non-finite.*step 3; .*last good checkpoint: .*step-00000002") as e:
        run_pretrain(cfg, tmp_path / "run", progress=False)
    assert "\n" not in str(e.value)
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step-*")) == ["step-00000001", "step-00000002"]
    assert (ckpts / "LATEST").read_text().strip() == "step-00000002"
    model, _, _ = load_pretrained(ckpts / "step-00000002")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_sigint_saves_a_checkpoint_and_exits_cleanly(words_corpus, tmp_path):
    args = [sys.executable, "-m", "metatokens", "pretrain", "--config", "toy", "--out", str(tmp_path / "run"),
            "--no-progress", "--set", f"data.source={words_corpus}", "--set", f"data.cache_dir={tmp_path / 'c'}",
            "--set", "data.vocab_size=300", "--set", "data.max_documents=null", "--set", "data.val_fraction=0.1",
            "--set", "train.max_steps=100000", "--set", "train.log_interval=1", "--set", "train.ckpt_interval=0",
            "--set", "train.eval_interval=0"]
    proc = subprocess.Popen(args, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err  # saved, not finished: 128 + SIGINT
    latest = (tmp_path / "run" / "checkpoints" / "LATEST").read_text().strip()
    step = int(latest.split("-")[1])
    assert 3 <= step < 100000
    assert "stopped by SIGINT" in err and "--resume" in err


@pytest.mark.parametrize("fsdp", [False, True])
def test_ddp_two_processes_equal_one_process(words_corpus, tmp_path, fsdp):
    common = ["--config", "toy", "--no-progress", "--set", f"data.source={words_corpus}",
              "--set", f"data.cache_dir={tmp_path / 'c'}", "--set", "data.vocab_size=300",
              "--set", "data.max_documents=null", "--set", "data.val_fraction=0.1", "--set", "train.max_steps=4",
              "--set", "train.log_interval=1", "--set", "train.eval_interval=0", "--set", "train.grad_accum=2",
              "--set", "train.batch_size=4", "--set", f"train.fsdp={str(fsdp).lower()}"]
    one = subprocess.run([sys.executable, "-m", "metatokens", "pretrain", "--out", str(tmp_path / "one"), *common],
                         env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "metatokens", "pretrain", "--out", str(tmp_path / "two"), *common],
                         env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-5, (step, a[step], b[step])
    assert json.loads((tmp_path / "two" / "run.json").read_text())["world_size"] == 2


def test_a_nan_stop_is_one_line_and_a_non_zero_exit(tmp_path):
    """The NaN guard's TrainingError reaches the user as one line (it was a traceback)."""
    code, err = run_cli("pretrain", "--config", "toy", "--out", str(tmp_path / "run"), "--no-progress", "--max-steps", "40",
                        "--set", "train.lr=30", "--set", "train.min_lr=0", "--set", "train.warmup_steps=0",
                        "--set", "train.ckpt_interval=1")
    assert code == 2 and err.count("\n") == 1 and "last good checkpoint" in err, err


# ----------------------------------------------------------------------------- run folders keep only good, complete state


@pytest.mark.parametrize("existing", [False, True])
def test_a_new_run_that_fails_before_its_first_checkpoint_leaves_nothing_behind(words_corpus, tmp_path, monkeypatch, existing):
    import metatokens.model as model_mod

    def broken(self, idx, targets=None, **kw):
        raise RuntimeError("boom")

    out = tmp_path / "runs" / "run"
    if existing:
        out.mkdir(parents=True)  # an empty folder the user made stays, empty
    monkeypatch.setattr(model_mod.GPT, "forward", broken)
    with pytest.raises(RuntimeError, match="boom"):
        run_pretrain(toy_run_config(words_corpus, tmp_path / "c", "train.max_steps=2"), out, progress=False)
    assert (sorted(out.iterdir()) == []) if existing else not (tmp_path / "runs").exists()
    monkeypatch.undo()
    run_pretrain(toy_run_config(words_corpus, tmp_path / "c", "train.max_steps=2"), out, progress=False)  # the folder is usable


def test_a_run_killed_before_its_first_checkpoint_can_be_started_again(words_corpus, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text("{}")
    (out / "tokenizer.json").write_text("{}")
    (out / "metrics.jsonl").write_text('{"step": 1, "train_loss": 9.0}\n{"step": 2, "tra')
    run_pretrain(toy_run_config(words_corpus, tmp_path / "c", "train.max_steps=3"), out, progress=False)
    assert sorted(train_losses(out)) == [1, 2, 3] and train_losses(out)[1] != 9.0
    assert json.loads((out / "run.json").read_text())["config"]["train"]["max_steps"] == 3


def test_stale_temporary_folders_of_killed_saves_are_removed_on_resume(words_corpus, tmp_path):
    cfg = toy_run_config(words_corpus, tmp_path / "c", "train.max_steps=2", "train.ckpt_interval=1")
    run = tmp_path / "run"
    run_pretrain(cfg, run, progress=False)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that is no longer alive
    ckpts = run / "checkpoints"
    stale = [f".step-00000003.tmp-{dead.pid}", f".step-00000001.prune-{dead.pid}", f".step-00000002.old-{dead.pid}"]
    for name in stale:
        (ckpts / name).mkdir()
        (ckpts / name / "model.safetensors").write_bytes(b"x" * 100)
    (ckpts / f".LATEST.tmp-{dead.pid}").write_text("step-00000003\n")
    alive = ckpts / ".step-00000003.tmp-1"  # pid 1 is alive: another process's save in progress
    alive.mkdir()
    others = [ckpts / f".notes.tmp-{dead.pid}", run / f".step-00000003.tmp-{dead.pid}"]  # not ours / not in checkpoints/
    others[0].write_text("x")
    others[1].mkdir()
    cfg.train.max_steps = 3
    run_pretrain(cfg, run, resume=True, progress=False)
    assert not any((ckpts / name).exists() for name in stale) and not (ckpts / f".LATEST.tmp-{dead.pid}").exists()
    assert alive.is_dir() and all(p.exists() for p in others)
    assert (ckpts / "LATEST").read_text().strip() == "step-00000003"


def test_one_process_at_a_time_per_run_folder(words_corpus, tmp_path):
    """While a pretrain runs, a second pretrain or a finetune on its folder is refused in one line; once
    the first is killed (SIGKILL), no stale lock is in the way."""
    run = tmp_path / "run"
    common = ["--config", "toy", "--no-progress", "--out", str(run), "--set", f"data.source={words_corpus}",
              "--set", f"data.cache_dir={tmp_path / 'c'}", "--set", "data.vocab_size=300",
              "--set", "data.max_documents=null", "--set", "data.val_fraction=0.1", "--set", "train.log_interval=1",
              "--set", "train.eval_interval=0", "--set", "train.ckpt_interval=0"]
    pretrain = [sys.executable, "-m", "metatokens", "pretrain", *common]
    first = subprocess.Popen([*pretrain, "--max-steps", "100000"], env=subprocess_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        metrics = run / "metrics.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
            time.sleep(0.2)
        assert first.poll() is None
        finetune = [sys.executable, "-m", "metatokens", "finetune", "--init", str(tmp_path / "any"), "--out", str(run)]
        for argv in ([*pretrain, "--max-steps", "3"], finetune):
            proc = subprocess.run(argv, env=subprocess_env(), capture_output=True, text=True, timeout=300)
            assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
            assert f"in use by another metatokens process (pid {first.pid})" in proc.stderr
    finally:
        first.kill()
        first.wait()
    summary = run_pretrain(toy_run_config(words_corpus, tmp_path / "c", "train.max_steps=2"), run, progress=False)
    assert summary["step"] == 2 and sorted(train_losses(run)) == [1, 2]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "metrics.jsonl", "run.json", "tokenizer.json"]


def test_a_run_that_fails_mid_way_keeps_its_log_and_one_that_fails_at_once_leaves_nothing(words_corpus, tmp_path, monkeypatch):
    """A new run that dies before its first checkpoint used to lose everything, its metrics.jsonl too (a
    fine-tune stopped at step 2,100 by a task error left no trace). Now the log of the steps it trained is
    kept, and a new run in the same folder replaces it; a run that fails before any step still leaves nothing."""
    from metatokens.training import loop as train

    real_write = train.MetricLog.write

    def write_then_fail(self, row):
        real_write(self, row)
        if row.get("step") == 3 and "train_loss" in row:
            raise RuntimeError("boom at step 3")

    monkeypatch.setattr(train.MetricLog, "write", write_then_fail)
    run = tmp_path / "run"
    cfg = toy_run_config(words_corpus, tmp_path / "c", "train.max_steps=6", "train.ckpt_interval=0")
    with pytest.raises(RuntimeError, match="boom"):
        run_pretrain(cfg, run, progress=False)
    assert sorted(train_losses(run)) == [1, 2, 3] and (run / "run.json").is_file()
    assert not (run / "checkpoints").exists() or not any((run / "checkpoints").iterdir())
    monkeypatch.setattr(train.MetricLog, "write", real_write)
    summary = run_pretrain(toy_run_config(words_corpus, tmp_path / "c", "train.max_steps=2"), run, progress=False)
    assert summary["step"] == 2 and sorted(train_losses(run)) == [1, 2]  # the new run's log, not the old one's

    def fail_at_once(self, row):
        raise RuntimeError("boom at the first row")

    monkeypatch.setattr(train.MetricLog, "write", fail_at_once)
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError, match="boom"):
        run_pretrain(toy_run_config(words_corpus, tmp_path / "c", "train.max_steps=6", "train.ckpt_interval=0"), fresh,
                     progress=False)
    assert not fresh.exists()

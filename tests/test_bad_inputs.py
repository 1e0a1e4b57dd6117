"""Bad inputs to the commands (issue 13, item 8): each one exits non-zero with exactly one line on
stderr naming the problem, and leaves nothing new on disk (the folders are listed before and after).

One toy pre-training run and one toy fine-tuning run are made once; every case works on its own
copy of them. A SIGTERM needs a real process, so that case runs the CLI in a subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from metatokens import cli

WORDS = ("meta token model text attention layer memory window list item count parity copy span the a of "
         "and to in is that for it as with was on be by this are from or at an which").split()
STEPS = 6  # the pre-training run's step


def _data_sets(root: Path) -> list[str]:
    sets = [f"data.source={root / 'corpus'}", f"data.cache_dir={root / 'cache'}", "data.vocab_size=300",
            "data.max_documents=null", "data.val_fraction=0.1", "train.log_interval=1", "train.eval_interval=0",
            "train.eval_batches=2", "train.batch_size=4"]
    return [arg for s in sets for arg in ("--set", s)]


def _quiet_main(argv: list[str]) -> int:
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        code = cli.main(argv)
    assert code == 0, err.getvalue()
    return code


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """corpus/, cache/, run/ (toy pre-training at step STEPS) and ft/ (toy fine-tuning at step 4)."""
    root = tmp_path_factory.mktemp("bad-inputs")
    (root / "corpus").mkdir()
    rng = random.Random(0)
    for i in range(20):
        sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 14))).capitalize() + "." for _ in range(60)]
        (root / "corpus" / f"doc{i:02d}.txt").write_text(" ".join(sentences), encoding="utf-8")
    _quiet_main(["pretrain", "--config", "toy", "--out", str(root / "run"), "--no-progress", *_data_sets(root),
                 "--set", f"train.max_steps={STEPS}"])
    _quiet_main(["finetune", "--from-scratch", "toy", "--tokenizer", str(root / "run" / "tokenizer.json"),
                 "--set", "model.block_size=256", "--max-len", "160", "--steps", "4", "--batch-size", "4",
                 "--eval-n", "4", "--set", "train.warmup_steps=1", "--out", str(root / "ft"), "--no-progress"])
    return root


def listing(*folders: Path) -> dict[str, int | None]:
    """Every file (with its size) and folder under `folders`."""
    found: dict[str, int | None] = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            found[str(path)] = path.stat().st_size if path.is_file() else None
    return found


def latest(run: Path) -> Path:
    return run / "checkpoints" / (run / "checkpoints" / "LATEST").read_text().strip()


def _rehash(run: Path, name: str) -> None:
    """Record the present bytes of `name` in trainer_state.json, as if the damage happened before the save."""
    folder = latest(run)
    state = json.loads((folder / "trainer_state.json").read_text())
    state["sha256"][name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    (folder / "trainer_state.json").write_text(json.dumps(state))


def _garbage(name: str):
    def damage(run: Path) -> None:
        (latest(run) / name).write_bytes(b"\x00\xffnot a " + name.encode() + b"\x00" * 50)
    return damage


def _edit_state(change):
    def damage(run: Path) -> None:
        file = latest(run) / "trainer_state.json"
        file.write_text(json.dumps(change(json.loads(file.read_text()))))
    return damage


def _optimizer_not_a_state(run: Path) -> None:
    torch.save({"hello": torch.zeros(3)}, latest(run) / "optimizer.pt")
    _rehash(run, "optimizer.pt")


def _optimizer_other_shape(run: Path) -> None:
    file = latest(run) / "optimizer.pt"
    state = torch.load(file, weights_only=True)
    state["param_groups"] = state["param_groups"][:1]
    torch.save(state, file)
    _rehash(run, "optimizer.pt")


def _rng_garbage_rehashed(run: Path) -> None:
    _garbage("rng.safetensors")(run)
    _rehash(run, "rng.safetensors")


def _rng_wrong_tensor(run: Path) -> None:
    from safetensors.torch import save_file

    save_file({"rank0.cpu": torch.zeros(3)}, str(latest(run) / "rng.safetensors"))
    _rehash(run, "rng.safetensors")


def _write(name: str, text: bytes):
    def damage(run: Path) -> None:
        (run / name).write_bytes(text)
    return damage


RESUME = ["pretrain", "--out", "{run}", "--resume", "--max-steps", str(STEPS + 2), "--no-progress"]
FT_RESUME = ["finetune", "--out", "{ft}", "--resume", "--no-progress"]
NEW = ["--out", "{new}", "--no-progress"]

CASES = [
    # --device, validated before any work
    ("pretrain-device", ["pretrain", "--config", "toy", *NEW, "--device", "banana"], None, "--device 'banana' is not a device"),
    ("pretrain-set-device", ["pretrain", "--config", "toy", *NEW, "--set", "train.device=banana"], None,
     "train.device 'banana' is not a device"),
    ("pretrain-device-cuda99", ["pretrain", "--config", "toy", *NEW, "--device", "cuda:99"], None, "cuda:99"),
    ("finetune-device", ["finetune", "--from-scratch", "toy", "--tokenizer", "{run}/tokenizer.json", *NEW,
                         "--device", "banana"], None, "--device 'banana' is not a device"),
    ("evaluate-device", ["evaluate", "--checkpoint", "{run}", "--task", "list_recall", *NEW, "--device", "banana"], None,
     "--device 'banana' is not a device"),
    ("generate-device", ["generate", "--checkpoint", "{run}", "--device", "banana"], None, "--device 'banana' is not a device"),
    ("generate-device-index", ["generate", "--checkpoint", "{run}", "--device", "cpu:1"], None, "--device 'cpu:1' is not a device"),
    # generate's sampling settings
    ("generate-temperature-nan", ["generate", "--checkpoint", "{run}", "--temperature", "nan"], None,
     "--temperature must be a finite number >= 0, got nan"),
    ("generate-temperature-inf", ["generate", "--checkpoint", "{run}", "--temperature", "inf"], None,
     "--temperature must be a finite number >= 0, got inf"),
    ("generate-temperature-negative", ["generate", "--checkpoint", "{run}", "--temperature", "-0.5"], None,
     "--temperature must be a finite number >= 0, got -0.5"),
    ("generate-max-new-tokens-huge", ["generate", "--checkpoint", "{run}", "--max-new-tokens", "1000000000"], None,
     "--max-new-tokens must be at most 100,000"),
    # evaluate's batch size
    ("evaluate-batch-size-0", ["evaluate", "--checkpoint", "{run}", "--task", "list_recall", *NEW, "--batch-size", "0"],
     None, "--batch-size must be a positive integer, got 0"),
    ("evaluate-batch-size-negative", ["evaluate", "--checkpoint", "{run}", "--perplexity", "builtin", *NEW,
                                      "--batch-size", "-4"], None, "--batch-size must be a positive integer, got -4"),
    # a resume that would not move the run forward
    ("pretrain-resume-max-steps-below", ["pretrain", "--out", "{run}", "--resume", "--max-steps", "3", "--no-progress"],
     None, f"the run is already at step {STEPS}; --max-steps must be above it"),
    ("pretrain-resume-max-steps-equal", ["pretrain", "--out", "{run}", "--resume", "--max-steps", str(STEPS),
                                         "--no-progress"], None, f"the run is already at step {STEPS}; --max-steps must be above it"),
    ("pretrain-resume-set-max-steps-below", ["pretrain", "--out", "{run}", "--resume", "--set", "train.max_steps=2",
                                             "--no-progress"], None,
     f"the run is already at step {STEPS}; train.max_steps cannot be below it (got 2)"),
    ("finetune-resume-max-steps-below", [*FT_RESUME, "--steps", "2"], None,
     "the run is already at step 4; --max-steps must be above it"),
    # damaged checkpoint files on resume
    ("optimizer-garbage", RESUME, _garbage("optimizer.pt"), "optimizer.pt"),
    ("optimizer-not-a-state", RESUME, _optimizer_not_a_state, "optimizer.pt: not an optimizer state"),
    ("optimizer-other-shape", RESUME, _optimizer_other_shape, "optimizer.pt: does not fit"),
    ("rng-garbage", RESUME, _garbage("rng.safetensors"), "rng.safetensors"),
    ("rng-garbage-rehashed", RESUME, _rng_garbage_rehashed, "rng.safetensors: cannot load the RNG state"),
    ("rng-wrong-tensor", RESUME, _rng_wrong_tensor, "rng.safetensors: not a valid RNG state"),
    ("trainer-state-garbage", RESUME, _garbage("trainer_state.json"), "trainer_state.json: unreadable"),
    ("trainer-state-truncated", RESUME, lambda run: (latest(run) / "trainer_state.json").write_text('{"step": 6, "da'),
     "trainer_state.json: unreadable"),
    ("trainer-state-list", RESUME, _edit_state(lambda s: [s]), "trainer_state.json: not a JSON object"),
    ("trainer-state-no-step", RESUME, _edit_state(lambda s: {k: v for k, v in s.items() if k != "step"}),
     "trainer_state.json: no valid step"),
    ("trainer-state-no-data", RESUME, _edit_state(lambda s: {k: v for k, v in s.items() if k != "data"}),
     "trainer_state.json: no data position"),
    ("trainer-state-no-checksums", RESUME, _edit_state(lambda s: {k: v for k, v in s.items() if k != "sha256"}),
     "trainer_state.json: no SHA-256"),
    ("finetune-optimizer-garbage", FT_RESUME, _garbage("optimizer.pt"), "optimizer.pt"),
    # a batch no machine holds: refused before data is generated or a run folder made (not the OOM killer)
    ("pretrain-batch-size-huge", ["pretrain", "--config", "toy", *NEW, "--set", "train.batch_size=100000000"], None,
     "train.batch_size=100000000 (6,400,000,000 tokens a step) needs about"),
    ("finetune-batch-size-huge", ["finetune", "--from-scratch", "toy", "--tokenizer", "{run}/tokenizer.json", *NEW,
                                  "--batch-size", "100000000"], None, "--batch-size=100000000"),
    # a damaged run.json
    ("run-json-garbage", RESUME, _write("run.json", b"{not json"), "run.json: unreadable, not valid JSON"),
    ("run-json-binary", RESUME, _write("run.json", b"\xff\xfe\x00garbage"), "run.json: unreadable"),
    ("run-json-list", RESUME, _write("run.json", b"[1, 2]"), "run.json: not a JSON object"),
    ("run-json-garbage-with-config", [*RESUME, "--config", "toy"], _write("run.json", b"{not json"),
     "run.json: unreadable, not valid JSON"),
    ("finetune-run-json-garbage", FT_RESUME, _write("run.json", b"{not json"), "run.json: unreadable, not valid JSON"),
]


@pytest.mark.parametrize("argv,damage,needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_nonzero_and_leaves_nothing(base, tmp_path, monkeypatch, capsys, argv, damage, needle):
    run, ft = tmp_path / "run", tmp_path / "ft"
    shutil.copytree(base / "run", run)
    shutil.copytree(base / "ft", ft)
    if damage is not None:
        damage(ft if "{ft}" in argv else run)  # the run the command resumes
    monkeypatch.chdir(tmp_path)  # outputs that default to the working directory (evaluate's eval/) show up too
    argv = [a.format(run=run, ft=ft, new=tmp_path / "new") for a in argv]
    if argv[0] == "pretrain":
        # the corpus settings first, so that a case's own --set (a later override) wins
        argv = argv[:1] + (_data_sets(base) if "--resume" not in argv or "--config" in argv else []) + argv[1:]
    before = listing(tmp_path, base)
    code = cli.main(argv)
    captured = capsys.readouterr()
    assert code != 0, captured
    assert captured.err.count("\n") == 1 and captured.err.endswith("\n"), captured.err
    assert captured.err.startswith(f"metatokens {argv[0]}: ") and needle in captured.err, captured.err
    assert listing(tmp_path, base) == before


# ----------------------------------------------------------------------------- SIGTERM


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_sigterm_saves_then_exits_143_with_one_line_saying_how_to_resume(base, tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "metatokens", "pretrain", "--config", "toy", "--out", str(out), "--no-progress",
            *_data_sets(base), "--set", "train.max_steps=100000", "--set", "train.ckpt_interval=0"]
    proc = subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
def test_a_stopped_run_saves_and_exits_128_plus_the_signal(base, tmp_path, monkeypatch, capsys, command):
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
        argv = ["pretrain", "--config", "toy", "--out", str(out), "--no-progress", *_data_sets(base),
                "--set", "train.max_steps=50", "--set", "train.ckpt_interval=0"]
    else:
        argv = ["finetune", "--from-scratch", "toy", "--tokenizer", str(base / "run" / "tokenizer.json"),
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


def test_a_full_disk_while_saving_is_one_line_naming_it_and_keeps_the_last_good_checkpoint(base, tmp_path, monkeypatch,
                                                                                           capsys):
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
    code = cli.main(["pretrain", "--config", "toy", *_data_sets(base), "--out", str(out), "--no-progress",
                     "--set", "train.max_steps=6", "--set", "train.ckpt_interval=2"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"metatokens pretrain: error: no space left on device while saving step 4 in {out / 'checkpoints'} "
                          "(1 MiB free)"), err
    assert f"last good checkpoint: {out / 'checkpoints' / 'step-00000002'}" in err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["LATEST", "step-00000002"]  # no temp folder left

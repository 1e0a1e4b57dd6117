"""Bad inputs to the commands (issue 13, item 8): each one exits non-zero with exactly one line on
stderr naming the problem, and leaves nothing new on disk (the folders are listed before and after).

Every case is refused before a training step. They work on copies of conftest's toy_runs (one toy
pre-training and one toy fine-tuning, made once per session). The stops that need training steps
(a SIGTERM, a full disk) are in tests/integration/test_stopped_runs.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import TOY_RUN_STEPS, toy_data_args
from metatokens import cli


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


def _latest_a_folder(run: Path) -> None:
    (run / "checkpoints" / "LATEST").unlink()
    (run / "checkpoints" / "LATEST").mkdir()


def _new_a_file(run: Path) -> None:
    """{new}, where a command is told to write, is a file of the user's."""
    (run.parent / "new").write_text("the user's notes\n")


RESUME = ["pretrain", "--out", "{run}", "--resume", "--max-steps", str(TOY_RUN_STEPS + 2), "--no-progress"]
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
     None, f"the run is already at step {TOY_RUN_STEPS}; --max-steps must be above it"),
    ("pretrain-resume-max-steps-equal", ["pretrain", "--out", "{run}", "--resume", "--max-steps", str(TOY_RUN_STEPS),
                                         "--no-progress"], None,
     f"the run is already at step {TOY_RUN_STEPS}; --max-steps must be above it"),
    ("pretrain-resume-set-max-steps-below", ["pretrain", "--out", "{run}", "--resume", "--set", "train.max_steps=2",
                                             "--no-progress"], None,
     f"the run is already at step {TOY_RUN_STEPS}; train.max_steps cannot be below it (got 2)"),
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
    # checkpoints/LATEST a folder: refused before any step, not after training at the save (a bare [Errno 21])
    ("latest-a-folder", RESUME, _latest_a_folder,
     "checkpoints/LATEST is a folder, not the file naming the latest checkpoint; remove it"),
    ("generate-latest-a-folder", ["generate", "--checkpoint", "{run}"], _latest_a_folder,
     "checkpoints/LATEST is a folder, not the file naming the latest checkpoint; remove it"),
    # --out a file: refused before any work, not with a bare [Errno 17] / [Errno 20] at the end
    ("analyze-out-a-file", ["analyze", "entropy", "--checkpoint", "{run}", "--out", "{new}", "--no-progress"],
     _new_a_file, "error: --out {new} is a file, not a folder; choose another --out"),
    ("analyze-out-below-a-file", ["analyze", "ablate", "--checkpoint", "{run}", "--out", "{new}/sub", "--no-progress"],
     _new_a_file, "error: --out {new}/sub cannot be made: {new} is a file, not a folder; choose another --out"),
    ("reproduce-out-a-file", ["reproduce", "--scale", "toy", "--out", "{new}", "--no-progress"], _new_a_file,
     "error: --out {new} is a file, not a folder; choose another --out"),
    ("reproduce-out-below-a-file", ["reproduce", "--scale", "toy", "--out", "{new}/report", "--no-progress"],
     _new_a_file, "error: --out {new}/report cannot be made: {new} is a file, not a folder; choose another --out"),
]


@pytest.mark.parametrize("argv,damage,needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_nonzero_and_leaves_nothing(toy_runs, tmp_path, monkeypatch, capsys, argv, damage,
                                                           needle):
    run, ft = tmp_path / "run", tmp_path / "ft"
    shutil.copytree(toy_runs / "run", run)
    shutil.copytree(toy_runs / "ft", ft)
    if damage is not None:
        damage(ft if "{ft}" in argv else run)  # the run the command resumes
    monkeypatch.chdir(tmp_path)  # outputs that default to the working directory (evaluate's eval/) show up too
    argv = [a.format(run=run, ft=ft, new=tmp_path / "new") for a in argv]
    needle = needle.format(new=tmp_path / "new")
    if argv[0] == "pretrain":
        # the corpus settings first, so that a case's own --set (a later override) wins
        argv = argv[:1] + (toy_data_args(toy_runs) if "--resume" not in argv or "--config" in argv else []) + argv[1:]
    before = listing(tmp_path, toy_runs)
    code = cli.main(argv)
    captured = capsys.readouterr()
    assert code != 0, captured
    assert captured.err.count("\n") == 1 and captured.err.endswith("\n"), captured.err
    assert captured.err.startswith(f"metatokens {argv[0]}: ") and needle in captured.err, captured.err
    assert listing(tmp_path, toy_runs) == before

"""The training set-up without training: the schedule, optimiser groups, run settings and presets,
the CLI's refusals before any step, and run folders' checkpoint pointers (made without training)."""

import signal
from pathlib import Path

import pytest
import torch

import metatokens.training.loop as loop_mod
from conftest import run_cli, toy_model
from metatokens.errors import CheckpointError, RunStopped, TrainingError
from metatokens.training.config import TrainConfig, load_run_config
from metatokens.training.setup import build_optimizer, lr_at


def test_lr_schedule_matches_formula():
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, max_steps=110)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.1 + 0.5 * 0.9)  # half-way down the cosine
    assert lr_at(110, cfg) == pytest.approx(0.1) and lr_at(500, cfg) == pytest.approx(0.1)
    xs = [lr_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(xs, xs[1:]))


def test_weight_decay_only_on_matrices():
    model = toy_model()
    opt = build_optimizer(model, TrainConfig(weight_decay=0.1), torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == model.num_params()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--set", "data.source=/no/such/corpus"], "/no/such/corpus"),
        (["--set", "train.batch_size=0"], "batch_size must be a positive integer"),
        (["--set", "train.max_steps=-3"], "max_steps must be a positive integer"),
        (["--set", "train.bogus=1"], "unknown key 'bogus'"),
        (["--set", "model.n_layers=2"], "unknown model key(s): n_layers"),
        (["--config", "no-such-preset"], "unknown preset 'no-such-preset'"),
        (["--set", "data.k=1.5"], "data.k must be in [0, 1)"),
        (["--set", "train.lr=abc"], "train.lr must be a number, got 'abc'"),
        (["--set", "data.k=abc"], "data.k must be a number, got 'abc'"),
        (["--set", "data.source=[1,2]"], "data.source must be a string, got [1, 2]"),
        (["--set", "train.seed=abc"], "train.seed must be an integer, got 'abc'"),
        (["--set", "model.dropout=abc"], "model.dropout must be a number, got 'abc'"),
        (["--set", "train.compile=maybe"], "train.compile must be true or false, got 'maybe'"),
        (["--set", "train.batch_size=2.5"], "train.batch_size must be an integer, got 2.5"),
        (["--set", "train.lr=nan"], "train.lr must be a number, got 'nan'"),
    ],
)
def test_cli_bad_input_one_line_and_nothing_written(tmp_path, args, needle):
    out = tmp_path / "run"
    base = ["pretrain", "--out", str(out), "--no-progress"]
    if "--config" not in args:
        base += ["--config", "toy"]
    code, err = run_cli(*base, *args)
    assert code == 2
    assert err.count("\n") == 1 and needle in err, err
    assert not out.exists()


@pytest.mark.parametrize("text,value", [("3e-4", 3e-4), ("1e6", 1e6), ("1.0e6", 1e6), ("-2E-3", -2e-3), ("7", 7),
                                        ("true", True), ("rope", "rope"), ("null", None), ("[1, 2]", [1, 2])])
def test_set_values_parse_numbers_in_every_usual_spelling(text, value):
    from metatokens.model.config import parse_value

    assert parse_value(text) == value and type(parse_value(text)) is type(value)


def test_set_numbers_become_the_fields_types():
    from metatokens.training.config import load_run_config

    cfg = load_run_config("toy", ["train.lr=3e-4", "train.max_steps=1e3", "data.k=1e-1", "train.grad_clip=1"])
    assert cfg.train.lr == 3e-4 and cfg.train.max_steps == 1000 and type(cfg.train.max_steps) is int
    assert cfg.data.k == 0.1 and type(cfg.train.grad_clip) is float


def test_cli_empty_corpus_fails_cleanly(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("   \n")
    code, err = run_cli("pretrain", "--config", "toy", "--out", str(tmp_path / "run"), "--no-progress",
                        "--set", f"data.source={empty}", "--set", f"data.cache_dir={tmp_path / 'c'}")
    assert code == 2 and err.count("\n") == 1 and str(empty) in err, err
    assert not (tmp_path / "run").exists()


def test_presets_load_and_paper_presets_match_the_paper():
    for name in ("tiny", "tiny-ape", "tiny-baseline", "gpt2-small-meta", "gpt2-small-meta-ape", "gpt2-small"):
        load_run_config(name)
    paper = load_run_config("gpt2-small-meta")
    m, t = paper.model, paper.train
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size, m.pos_encoding) == (12, 12, 768, 1024, "rope")
    assert (t.lr, t.min_lr, t.warmup_steps, t.weight_decay, t.grad_clip, t.beta1, t.beta2) == (6e-4, 6e-5, 2000, 0.1, 1.0, 0.9, 0.95)
    assert t.batch_size * t.grad_accum * m.block_size == 491520  # about 0.49M tokens per step
    assert paper.data.k == 0.1 and load_run_config("gpt2-small").data.k == 0.0
    assert not load_run_config("gpt2-small").model.meta_attention


# ----------------------------------------------------------------------------- run folders keep only good, complete state


def fake_run(root: Path, steps=(2, 4)) -> Path:
    """A run folder with model-folder checkpoints (no training) and LATEST naming the last."""
    from metatokens.runs.model_folder import save_pretrained

    run = root / "run"
    for step in steps:
        save_pretrained(run / "checkpoints" / f"step-{step:08d}", toy_model(), None, extra={"step": step})
    (run / "checkpoints" / "LATEST").write_text(f"step-{steps[-1]:08d}\n")
    return run


@pytest.mark.parametrize("pointer", ["../../outside", "../../..", "ABS", "", "step-00000004/../../../outside"])
def test_latest_must_name_a_checkpoint_inside_the_run(tmp_path, pointer):
    from metatokens.runs.model_folder import save_pretrained
    from metatokens.runs.checkpoints import latest_checkpoint, resolve_model_dir

    run = fake_run(tmp_path)
    save_pretrained(tmp_path / "outside", toy_model(), None)  # a loadable model folder the pointer could reach
    (run / "checkpoints" / "LATEST").write_text((str(tmp_path / "outside") if pointer == "ABS" else pointer) + "\n")
    for resolve in (latest_checkpoint, resolve_model_dir):
        with pytest.raises(CheckpointError, match="LATEST.*refusing to follow") as e:
            resolve(run)
        assert "\n" not in str(e.value)


def test_latest_skips_incomplete_checkpoints(tmp_path):
    import shutil

    from metatokens.runs.checkpoints import latest_checkpoint

    run = fake_run(tmp_path, steps=(2, 4))
    (run / "checkpoints" / "step-00000004" / "model.safetensors").unlink()
    assert latest_checkpoint(run).name == "step-00000002"
    (run / "checkpoints" / "LATEST").unlink()  # e.g. killed between moving a checkpoint into place and LATEST
    assert latest_checkpoint(run).name == "step-00000002"
    shutil.rmtree(run / "checkpoints" / "step-00000002")
    assert latest_checkpoint(run) is None
    (run / "checkpoints" / "LATEST").write_text("step-00000004\n")
    with pytest.raises(CheckpointError, match="incomplete"):
        latest_checkpoint(run)


def test_a_kill_during_pruning_leaves_no_checkpoint_without_weights(tmp_path, monkeypatch):
    import metatokens.runs.checkpoints as checkpoints_mod

    run = fake_run(tmp_path, steps=(2, 4, 6))

    def killed_mid_delete(path, ignore_errors=False):
        (Path(path) / "model.safetensors").unlink()
        raise KeyboardInterrupt  # the process dies with the folder half deleted

    monkeypatch.setattr(checkpoints_mod.shutil, "rmtree", killed_mid_delete)
    with pytest.raises(KeyboardInterrupt):
        checkpoints_mod._prune(run / "checkpoints", keep=2)
    monkeypatch.undo()
    steps = [p for p in (run / "checkpoints").iterdir() if p.name.startswith("step-")]
    assert sorted(p.name for p in steps) == ["step-00000004", "step-00000006"]
    assert all((p / "model.safetensors").is_file() for p in steps)
    assert checkpoints_mod.latest_checkpoint(run).name == "step-00000006"


def test_new_run_refuses_a_folder_that_is_not_a_run(words_corpus, tmp_path):
    base = ["pretrain", "--config", "toy", "--no-progress", "--set", f"data.source={words_corpus}",
            "--set", f"data.cache_dir={tmp_path / 'c'}", "--set", "data.vocab_size=300", "--set", "train.max_steps=2"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my own file\n")
    code, err = run_cli(*base, "--out", str(mine))
    assert code == 2 and err.count("\n") == 1 and "not empty (notes.txt)" in err, err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    code, err = run_cli(*base, "--out", str(mine), "--resume")
    assert code == 2 and err.count("\n") == 1 and "nothing to resume" in err, err
    (tmp_path / "file").write_text("x")
    code, err = run_cli(*base, "--out", str(tmp_path / "file"))
    assert code == 2 and err.count("\n") == 1 and "not a folder" in err, err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"] and (tmp_path / "file").read_text() == "x"


# ----------------------------------------------------------------------------- an error a signal caused


# How torch.compile reports a compile that a Ctrl-C broke (its C++ compiler or worker process died of it).
FakeInductorError = type("InductorError", (RuntimeError,), {"__module__": "torch._inductor.exc"})


def _flag(signum: int | None) -> loop_mod._StopFlag:
    flag = loop_mod._StopFlag()
    flag.stop, flag.signum = signum is not None, signum
    return flag


def _raised_through(flag, err: BaseException, run: Path, step: int = 4, compile_: bool = True) -> BaseException:
    with pytest.raises(BaseException) as caught:
        with loop_mod._stop_when_broken(flag, TrainConfig(compile=compile_), run, lambda: step):
            raise err
    return caught.value


def test_an_error_after_a_signal_is_a_stop_and_without_one_a_failure(tmp_path):
    broken = FakeInductorError("CppCompileError: C++ compile error")
    assert loop_mod.broken_by_signal(broken, _flag(signal.SIGINT))
    assert not loop_mod.broken_by_signal(broken, _flag(None))  # no signal: a real compile error
    assert not loop_mod.broken_by_signal(TrainingError("loss became nan"), _flag(signal.SIGINT))  # ours: kept
    assert not loop_mod.broken_by_signal(KeyboardInterrupt(), _flag(signal.SIGINT))  # a second Ctrl-C

    assert _raised_through(_flag(None), broken, tmp_path) is broken
    stop = _raised_through(_flag(signal.SIGINT), broken, tmp_path)
    assert isinstance(stop, RunStopped) and stop.exit_code == 130 and not stop.resumable
    assert str(stop) == ("stopped by SIGINT while compiling the model for step 5 (train.compile); nothing of it was "
                         "saved (the run has no checkpoint yet)")
    (tmp_path / "checkpoints" / "step-00000004").mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (tmp_path / "checkpoints" / "step-00000004" / name).write_text("{}")
    stop = _raised_through(_flag(signal.SIGTERM), RuntimeError("DataLoader worker exited unexpectedly"), tmp_path,
                           compile_=False)
    assert isinstance(stop, RunStopped) and stop.exit_code == 143 and stop.resumable
    assert str(stop) == (f"stopped by SIGTERM during step 5; nothing of it was saved (last checkpoint: "
                         f"{tmp_path / 'checkpoints' / 'step-00000004'})")

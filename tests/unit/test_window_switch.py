"""The switch on a trained model: `metatokens evaluate --set model.attn_window=W` evaluates a model trained
with full attention as if its self-attention saw only the last W positions and the meta-tokens. The window
must really be on (the scores are those of a model built with it), be recorded in the report, and every
other setting be refused in one line before any model loads. `finetune --init` takes the same switch.
"""

import json

import pytest
import torch
from conftest import task_model

from metatokens import cli
from metatokens.errors import EvaluationError
from metatokens.evaluation.loading import (
    LoadedModel,
    apply_settings,
    inference_settings,
    load_model,
)
from metatokens.evaluation.tasks import evaluate_task
from metatokens.runs.model_folder import save_pretrained

ARGS = ["evaluate", "--task", "list_recall", "--lengths", "64", "--n", "6", "--seed", "1", "--no-progress"]


def test_set_attn_window_evaluates_the_windowed_model_and_says_so(task_tokenizer, tmp_path, capsys):
    save_pretrained(tmp_path / "m", task_model(task_tokenizer), task_tokenizer)
    for name, extra in (("full", []), ("window", ["--set", "model.attn_window=8"])):
        assert cli.main([*ARGS, "--checkpoint", str(tmp_path / "m"), "--out", str(tmp_path / name), *extra]) == 0
    out = capsys.readouterr().out
    full, window = (json.loads((tmp_path / name / "list_recall.json").read_text())["models"][0] for name in ("full", "window"))
    assert full["attn_window"] is None and window["attn_window"] == 8
    assert "rope, window 8" in out
    # the scores are those of the same weights built with the window, and differ from full attention's
    built = LoadedModel("m", "m", task_model(task_tokenizer, attn_window=8), task_tokenizer, "metatokens")
    direct = evaluate_task([built], "list_recall", [64], n=6, seed=1, progress=False)["models"][0]["results"][0]
    assert window["results"][0]["answer_loss"] == pytest.approx(direct["answer_loss"], abs=1e-6)
    assert window["results"][0]["answer_loss"] != pytest.approx(full["results"][0]["answer_loss"], abs=1e-4)


def test_set_attn_sinks_evaluates_with_sinks_and_refuses_them_without_a_window(task_tokenizer, tmp_path, capsys):
    """model.attn_sinks beside model.attn_window (or on a model trained with a window): the scores of the same
    weights built with both; on a model with full attention, sinks alone are refused in one line."""
    save_pretrained(tmp_path / "m", task_model(task_tokenizer), task_tokenizer)
    extra = ["--set", "model.attn_window=8", "--set", "model.attn_sinks=4"]
    assert cli.main([*ARGS, "--checkpoint", str(tmp_path / "m"), "--out", str(tmp_path / "s"), *extra]) == 0
    assert "rope, window 8 + 4 sinks" in capsys.readouterr().out
    sinks = json.loads((tmp_path / "s" / "list_recall.json").read_text())["models"][0]
    assert sinks["attn_window"] == 8 and sinks["attn_sinks"] == 4
    built = LoadedModel("m", "m", task_model(task_tokenizer, attn_window=8, attn_sinks=4), task_tokenizer, "metatokens")
    direct = evaluate_task([built], "list_recall", [64], n=6, seed=1, progress=False)["models"][0]["results"][0]
    assert sinks["results"][0]["answer_loss"] == pytest.approx(direct["answer_loss"], abs=1e-6)
    code = cli.main([*ARGS, "--checkpoint", str(tmp_path / "m"), "--out", str(tmp_path / "x"), "--set",
                     "model.attn_sinks=4"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "set attn_window too" in err and not (tmp_path / "x").exists()
    windowed = LoadedModel("w", "w", task_model(task_tokenizer, attn_window=8), task_tokenizer, "metatokens")
    apply_settings(windowed, inference_settings(["model.attn_sinks=2"]))  # the model's own window takes them
    assert windowed.model.config.attn_sinks == 2


@pytest.mark.parametrize("item,needle", [
    ("model.n_layer=3", "cannot change on a trained model"),
    ("train.lr=0.1", "model.KEY=VALUE"),
    ("attn_window=8", "model.KEY=VALUE"),
    ("model.attn_window=0", "positive integer"),
    ("model.attn_window=wide", "must be an integer"),
])
def test_other_settings_are_refused_in_one_line_before_any_model_loads(tmp_path, capsys, item, needle):
    """The checkpoint does not exist: a refusal that named it would have come after a load was tried."""
    code = cli.main([*ARGS, "--checkpoint", str(tmp_path / "absent"), "--out", str(tmp_path / "e"), "--set", item])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and needle in err, err
    assert "attn_window" in err
    assert not (tmp_path / "e").exists()


def test_null_switches_a_trained_window_off_and_hugging_face_models_are_refused(task_tokenizer):
    loaded = LoadedModel("m", "m", task_model(task_tokenizer, attn_window=8), task_tokenizer, "metatokens")
    apply_settings(loaded, inference_settings(["model.attn_window=null"]))
    assert loaded.model.config.attn_window is None
    hf = LoadedModel("gpt2", "gpt2", torch.nn.Linear(2, 2), task_tokenizer, "hf")
    with pytest.raises(EvaluationError, match="Hugging Face model"):
        apply_settings(hf, {"attn_window": 8})


def test_finetune_init_takes_the_window_and_nothing_else_of_the_model(task_tokenizer, tmp_path, capsys):
    save_pretrained(tmp_path / "m", task_model(task_tokenizer), task_tokenizer)
    args = ["finetune", "--init", str(tmp_path / "m"), "--max-len", "64", "--steps", "2", "--batch-size", "2",
            "--eval-n", "2", "--no-progress"]
    assert cli.main([*args, "--set", "model.attn_window=8", "--out", str(tmp_path / "ft")]) == 0
    run = json.loads((tmp_path / "ft" / "run.json").read_text())
    assert run["model"]["attn_window"] == 8
    assert load_model(tmp_path / "ft").model.config.attn_window == 8  # the checkpoint carries it
    capsys.readouterr()
    assert cli.main([*args, "--set", "model.n_layer=3", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot change on a trained model" in err and not (tmp_path / "bad").exists()


def test_the_api_fine_tunes_from_a_trained_model_without_any_setting(task_tokenizer, tmp_path):
    """run_finetune(init=...) with no model_overrides at all (the study calls it so): no setting is applied
    and the model keeps its full attention (the overrides were once read as a list when they were None)."""
    from metatokens.training.finetune import make_train_config, run_finetune
    from metatokens.training.task_batches import TaskSpec

    save_pretrained(tmp_path / "m", task_model(task_tokenizer), task_tokenizer)
    train = make_train_config(max_steps=1, batch_size=2, lr=1e-3, min_lr=1e-4, warmup_steps=1, eval_interval=0,
                              ckpt_interval=1, seed=0, device="cpu", log_interval=1)
    run_finetune(TaskSpec(max_len=64, eval_n=2), train, tmp_path / "ft", init=str(tmp_path / "m"), progress=False)
    assert load_model(tmp_path / "ft").model.config.attn_window is None

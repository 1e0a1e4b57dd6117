"""Fine-tuning runs on the synthetic tasks: the answer loss falls and a run resumes exactly, task
mixtures log held-out metrics per task, the finetune -> evaluate round trip through the CLI, YaRN
fine-tuning past the pre-training window, and a Hugging Face GPT-Neo baseline.

The unit layer's tests/unit/test_finetune_evaluate.py holds scoring, intervals, batches and limits.
"""

import json
import math

import pytest
import torch

from conftest import task_model
from metatokens import cli
from metatokens.devices import cpu_has_bf16
from metatokens.runs.model_folder import save_pretrained
from metatokens.training.task_batches import TaskSpec
from metatokens.training.finetune import make_train_config, run_finetune
from metatokens.errors import EvaluationError
from metatokens.evaluation.loading import load_model
from metatokens.tasks import make_examples
from metatokens.model.yarn import apply_yarn

COMMANDS = ["metatokens.cli.finetune", "metatokens.cli.evaluate"]


@pytest.fixture
def commands(monkeypatch):
    assert set(COMMANDS) <= set(cli.COMMAND_MODULES)  # registered in the real CLI


def test_finetune_on_a_mixture_logs_held_out_metrics_per_task(task_tokenizer, tmp_path):
    spec = TaskSpec(task="list_recall,copying", weights=[1, 1], max_len=96, seed=0, eval_n=4)
    cfg = make_train_config(max_steps=4, batch_size=4, lr=1e-3, warmup_steps=1, eval_interval=2, log_interval=1,
                            seed=0, ckpt_interval=0)
    run_finetune(spec, cfg, tmp_path / "mix", from_scratch="toy", tokenizer_path=str(task_tokenizer.path), progress=False,
                 model_overrides=["model.block_size=128"])
    rows = [json.loads(x) for x in (tmp_path / "mix" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "val_exact_match" in r]
    assert [r["step"] for r in evals] == [2, 4]
    for r in evals:
        per_task = [r[f"val_loss/{t}"] for t in ("list_recall", "copying")]
        assert r["val_loss"] == pytest.approx(sum(per_task) / 2)
    info = json.loads((tmp_path / "mix" / "run.json").read_text())
    assert info["finetune"]["tasks"] == ["list_recall", "copying"] and info["finetune"]["weights"] == [1, 1]


def _scratch(task_tokenizer, out, steps, resume=False, **train):
    # warm-up until step 11: a run cut at 12 steps has the same schedule up to there as one of 24
    spec = TaskSpec(task="list_recall", max_len=64, seed=0, eval_n=16)
    cfg = make_train_config(max_steps=steps, batch_size=8, lr=3e-3, min_lr=3e-4, warmup_steps=11, eval_interval=0,
                            log_interval=1, seed=0, ckpt_interval=12, **train)
    return run_finetune(spec, cfg, out, from_scratch="toy", tokenizer_path=str(task_tokenizer.path), resume=resume,
                        resume_steps=steps if resume else None,
                        model_overrides=["model.block_size=128", "model.dropout=0.1"], progress=False)


def test_finetune_from_scratch_lowers_the_answer_loss_and_resumes_exactly(task_tokenizer, tmp_path):
    full = _scratch(task_tokenizer, tmp_path / "full", 24)
    early = sum(full["losses"][s] for s in range(1, 4)) / 3
    late = sum(full["losses"][s] for s in range(22, 25)) / 3
    assert late < early - 0.8  # nats per answer token
    assert full["val_loss"] < math.log(task_tokenizer.vocab_size) - 1.0  # held-out answers beat a uniform guess by far
    # dropout is on, so the RNG state must come back too
    _scratch(task_tokenizer, tmp_path / "part", 12)
    resumed = _scratch(task_tokenizer, tmp_path / "part", 24, resume=True)
    assert resumed["start_step"] == 12
    for step in range(13, 25):
        assert resumed["losses"][step] == pytest.approx(full["losses"][step], abs=1e-6), step


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no bf16 units: a bf16 run would be fp32")
def test_bf16_finetune_follows_the_fp32_curve_and_records_its_precision(task_tokenizer, tmp_path):
    """Fine-tuning in a bf16 autocast really runs in bf16 (its losses differ from fp32's) and follows
    the fp32 curve: every one of 24 steps within 0.02 nats per answer token, both learn; each run.json
    records its precision."""
    fp32 = _scratch(task_tokenizer, tmp_path / "fp32", 24, dtype="fp32")["losses"]
    bf16 = _scratch(task_tokenizer, tmp_path / "bf16", 24, dtype="bf16")["losses"]
    gaps = [abs(bf16[s] - fp32[s]) for s in range(1, 25)]
    assert 0 < max(gaps) <= 0.02, gaps  # measured: 8e-4
    for losses in (fp32, bf16):
        assert sum(losses[s] for s in range(22, 25)) < sum(losses[s] for s in range(1, 4)) - 2.4
    for name in ("fp32", "bf16"):
        assert json.loads((tmp_path / name / "run.json").read_text())["precision"] == {
            "dtype": name, "reason": f"train.dtype={name}"}


def test_a_resumed_finetune_records_the_training_prompts_of_the_whole_run(task_tokenizer, tmp_path):
    """run.json and the summary say, per task, how many prompts the run trained on, how many were distinct,
    and how many hash into the test and dev splits (none); a run that ended at step 3 and was resumed to
    step 6 from its checkpoint says what an uninterrupted 6-step run says."""
    spec = TaskSpec(task="list_recall,copying", weights=[3, 1], max_len=96, seed=0, eval_n=2)

    def run(out, steps, resume=False):
        cfg = make_train_config(max_steps=steps, batch_size=4, lr=1e-3, warmup_steps=1, eval_interval=0, log_interval=1,
                                seed=0, ckpt_interval=3)
        kwargs = {} if resume else {"from_scratch": "toy", "tokenizer_path": str(task_tokenizer.path),
                                    "model_overrides": ["model.block_size=128", "model.n_layer=1"]}
        return run_finetune(spec, cfg, out, resume=resume, resume_steps=steps if resume else None, progress=False, **kwargs)

    full = run(tmp_path / "full", 6)
    counts = {"list_recall": {"drawn": 18, "distinct": 18, "in_test": 0, "in_dev": 0},
              "copying": {"drawn": 6, "distinct": 6, "in_test": 0, "in_dev": 0}}
    assert full["training_prompts"] == counts
    assert json.loads((tmp_path / "full" / "run.json").read_text())["training_prompts"] == counts
    part = run(tmp_path / "part", 3)
    assert part["training_prompts"]["list_recall"]["drawn"] == 9
    resumed = run(tmp_path / "part", 6, resume=True)
    assert resumed["start_step"] == 3 and resumed["training_prompts"] == counts
    info = json.loads((tmp_path / "part" / "run.json").read_text())
    assert info["training_prompts"] == counts and info["train"]["max_steps"] == 6


def test_finetune_and_evaluate_round_trip_through_the_cli(task_tokenizer, tmp_path, commands, capsys):
    run = tmp_path / "run"
    code = cli.main(["finetune", "--from-scratch", "toy", "--tokenizer", str(task_tokenizer.path),
                     "--set", "model.block_size=128",
                     "--max-len", "64", "--steps", "4", "--batch-size", "4", "--eval-n", "8", "--out", str(run),
                     "--set", "train.warmup_steps=1", "--no-progress"])
    assert code == 0
    info = json.loads((run / "run.json").read_text())
    assert info["finetune"]["meta"] is True and info["finetune"]["plan"] == [[64, "medium"]]
    assert (run / "checkpoints" / "LATEST").is_file()
    assert cli.main(["finetune", "--from-scratch", "toy", "--tokenizer", str(task_tokenizer.path), "--out", str(run),
                     "--no-progress"]) == 2  # refuses to overwrite a run
    assert "--resume" in capsys.readouterr().err
    out = tmp_path / "eval"
    assert cli.main(["evaluate", "--checkpoint", str(run), str(run), "--task", "list_recall", "--lengths", "64,96",
                     "--n", "5", "--out", str(out), "--no-progress"]) == 0
    result = json.loads((out / "list_recall.json").read_text())
    assert [m["name"] for m in result["models"]] == ["run", "run (2)"]
    first, second = result["models"]
    assert first["results"] == second["results"]  # the same model on the same examples
    for r in first["results"]:
        assert r["n"] == 5 and 0 <= r["exact"] <= 5 and r["exact_match_ci95"][0] <= r["exact_match"] <= r["exact_match_ci95"][1]
    table = (out / "list_recall.md").read_text()
    assert "| run | rope | yes | 96 | 5 |" in table
    assert (out / "list_recall.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # perplexity by position on a local file, meta-tokens inserted as in pre-training (k=0.1) and not
    text = tmp_path / "docs.txt"
    prompts = make_examples("list_recall", task_tokenizer, length=200, n=30, seed=5, split="test", meta=False)
    text.write_text("\n".join(e.prompt_text + e.answer_text for e in prompts))
    assert cli.main(["evaluate", "--checkpoint", str(run), "--names", "meta", "--perplexity", str(text),
                     "--context", "64", "--buckets", "4", "--rows", "8", "--batch-size", "3", "--out", str(out),
                     "--no-progress"]) == 0
    (meta,) = json.loads((out / "perplexity.json").read_text())["models"]
    assert meta["meta_rate"] == 0.1 and meta["meta_per_row"] == 6 and meta["tokens"] == 8 * (64 - 6)
    assert sum(b["tokens"] for b in meta["buckets"]) == meta["tokens"] and len(meta["buckets"]) == 4
    assert meta["perplexity"] == pytest.approx(math.exp(meta["loss"]))
    assert (out / "perplexity.png").is_file() and "| meta |" in (out / "perplexity.md").read_text()
    assert cli.main(["evaluate", "--checkpoint", str(run), "--perplexity", str(text), "--meta-every", "none",
                     "--context", "64", "--rows", "4", "--out", str(tmp_path / "p2"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "p2" / "perplexity.json").read_text())["models"][0]["tokens"] == 4 * 64


def test_finetune_with_yarn_trains_past_the_pretraining_window_and_ape_cannot(task_tokenizer, tmp_path, commands, capsys):
    save_pretrained(tmp_path / "rope", task_model(task_tokenizer, block_size=64), task_tokenizer)
    save_pretrained(tmp_path / "ape", task_model(task_tokenizer, block_size=64, pos_encoding="ape"), task_tokenizer)
    args = ["finetune", "--max-len", "96", "--steps", "2", "--batch-size", "2", "--eval-n", "2", "--no-progress"]
    assert cli.main([*args, "--init", str(tmp_path / "rope"), "--yarn-scale", "2", "--out", str(tmp_path / "r")]) == 0
    loaded = load_model(tmp_path / "r")
    yarn = loaded.model.config.yarn
    assert (yarn.factor, yarn.original_max_position_embeddings, loaded.model.config.block_size) == (2, 64, 128)
    assert json.loads((tmp_path / "r" / "run.json").read_text())["finetune"]["yarn_scale"] == 2
    assert "beyond the model's" not in capsys.readouterr().err  # YaRN made the window 128
    # without YaRN, RoPE runs past its window, and says so (one line, with the flag that would extend it)
    assert cli.main([*args, "--init", str(tmp_path / "rope"), "--out", str(tmp_path / "plain")]) == 0
    err = capsys.readouterr().err
    assert (f"{tmp_path / 'plain'}: note: --max-len 96 is beyond the model's 64-token window (rope: positions past it "
            "were never trained); --yarn-scale 2 extends it with YaRN\n") in err
    assert cli.main([*args, "--init", str(tmp_path / "ape"), "--out", str(tmp_path / "a")]) == 2
    assert "64 learned positions" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert cli.main([*args, "--init", str(tmp_path / "ape"), "--yarn-scale", "2", "--out", str(tmp_path / "a")]) == 2
    assert "RoPE" in capsys.readouterr().err


def test_hugging_face_gpt_neo_baseline_fine_tunes_and_evaluates(task_tokenizer, tmp_path, commands):
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    torch.manual_seed(0)
    config = GPTNeoConfig(vocab_size=task_tokenizer.vocab_size, max_position_embeddings=96, hidden_size=32, num_layers=2,
                          num_heads=2, attention_types=[[["global", "local"], 1]], window_size=32, embed_dropout=0.0,
                          attention_dropout=0.0, resid_dropout=0.0, bos_token_id=task_tokenizer.eos_token_id,
                          eos_token_id=task_tokenizer.eos_token_id)
    folder = tmp_path / "neo"
    GPTNeoForCausalLM(config).save_pretrained(folder)
    task_tokenizer.save(folder / "tokenizer.json")
    run = tmp_path / "neo-run"
    args = ["finetune", "--hf-model", str(folder), "--max-len", "64", "--steps", "12", "--batch-size", "8",
            "--lr", "3e-3", "--set", "train.warmup_steps=2", "--set", "train.log_interval=1", "--eval-n", "8",
            "--out", str(run), "--no-progress"]
    assert cli.main(args) == 0
    info = json.loads((run / "run.json").read_text())
    assert info["finetune"]["meta"] is False and info["finetune"]["hf_model"] == str(folder)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in rows if "train_loss" in r]
    assert losses[-1] < losses[0] - 0.5
    loaded = load_model(run)
    assert loaded.kind == "hf" and loaded.max_positions == 96
    out = tmp_path / "eval"
    assert cli.main(["evaluate", "--checkpoint", str(run), "--task", "list_recall", "--lengths", "64", "--n", "6",
                     "--out", str(out), "--no-progress"]) == 0
    model = json.loads((out / "list_recall.json").read_text())["models"][0]
    assert model["kind"] == "hf" and model["meta"] is False and model["results"][0]["n"] == 6
    # GPT-Neo's learned positions end at 96: a longer bin is refused like any APE model's
    assert cli.main(["evaluate", "--checkpoint", str(run), "--task", "list_recall", "--lengths", "128", "--n", "2",
                     "--out", str(out), "--no-progress"]) == 2
    with pytest.raises(EvaluationError, match="RoPE"):
        apply_yarn(loaded.model, 2)

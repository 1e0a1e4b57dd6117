"""Imported Hugging Face checkpoints at work: a few training steps lower the loss and train the new
meta-attention, the imported model goes through pretrain --init, resume, finetune and evaluate, and
its exports load through their own remote code in a fresh process. The checkpoints and their
imports are conftest's hf_sources and hf_imported; the in-process parity tests are in
tests/unit/test_import_hf.py."""

import json
import random
import subprocess
import sys

import pytest
import torch

from conftest import HF_FAMILIES, add_meta_tokens, export_model, randomise_meta_attention
from metatokens import cli
from metatokens.runs.model_folder import load_pretrained
from metatokens.generation.decode import generate_ids
from metatokens.model.family import FamilyModel


@pytest.mark.parametrize("family", HF_FAMILIES)
def test_a_few_training_steps_lower_the_loss_and_train_the_meta_attention(family, hf_imported):
    model, tok, _ = load_pretrained(hf_imported[family])
    model.train()
    torch.manual_seed(3)
    ids = add_meta_tokens(torch.randint(0, tok.vocab_size - 1, (2, 25)), tok.meta_token_id)
    x, y = ids[:, :-1], ids[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses
    block = model.h[0]
    out = block.meta_attn.o_proj if family != "gpt2" else block.meta_attn.c_proj
    assert out.weight.abs().max() > 0  # the zero-initialised projection learns


def test_pretrain_init_finetune_and_evaluate_take_an_imported_model(hf_imported, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = random.Random(0)
    words = "the quick brown fox jumps over lazy dog hello world meta tokens numbers".split()
    for i in range(6):
        (corpus / f"d{i}.txt").write_text(" ".join(rng.choice(words) for _ in range(400)), encoding="utf-8")
    pre = tmp_path / "pre"
    sets = [f"data.source={corpus}", f"data.cache_dir={tmp_path / 'cache'}", "data.max_documents=null",
            "train.eval_interval=0", "train.batch_size=2", "train.max_steps=3", "train.warmup_steps=1"]
    argv = ["pretrain", "--config", "toy", "--init", str(hf_imported["neox"]), "--out", str(pre), "--no-progress"]
    assert cli.main([*argv, *(a for s in sets for a in ("--set", s))]) == 0
    model, _, info = load_pretrained(pre / "checkpoints" / "step-00000003")
    assert isinstance(model, FamilyModel) and model.config.family == "neox" and info["step"] == 3
    run = json.loads((pre / "run.json").read_text())
    assert run["config"]["model"]["family"] == "neox" and run["config"]["data"]["k"] == 0.1
    resume = ["pretrain", "--out", str(pre), "--resume", "--max-steps", "4", "--no-progress"]
    assert cli.main(resume) == 0  # the run's saved settings (a family model) are read back
    ft = tmp_path / "ft"
    assert cli.main(["finetune", "--init", str(pre), "--task", "list_recall,segment_counting,parity,copying",
                     "--max-len", "192", "--steps", "2", "--batch-size", "2", "--eval-n", "2",
                     "--set", "train.warmup_steps=1", "--out", str(ft), "--no-progress"]) == 0
    assert json.loads((ft / "run.json").read_text())["finetune"]["meta"] is True
    for task in ("list_recall", "segment_counting", "parity", "copying"):
        assert cli.main(["evaluate", "--checkpoint", str(ft), "--task", task, "--lengths", "192", "--n", "2",
                         "--out", str(tmp_path / f"eval-{task}"), "--no-progress"]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", "--checkpoint", str(ft), "--task", "parity", "--lengths", "192", "--n", "2",
                     "--yarn-scale", "2", "--out", str(tmp_path / "yarn"), "--no-progress"]) == 2
    assert "YaRN is not supported for imported neox models" in capsys.readouterr().err


def test_exports_load_with_remote_code_in_a_fresh_process(hf_imported, tmp_path):
    """The exported folders carry their model code (family.py included); metatokens is never imported."""
    expected = {}
    for family in ("llama", "neox"):
        model, tok, _ = load_pretrained(hf_imported[family])
        randomise_meta_attention(model).eval()
        out = export_model(model, tok, tmp_path, family)
        prompt = add_meta_tokens(torch.randint(0, tok.vocab_size - 1, (2, 24)), tok.meta_token_id)[1:]
        ours = generate_ids(model, prompt, 8, temperature=0.0, vocab_limit=tok.vocab_size)
        expected[family] = (str(out), prompt[0].tolist(), ours[0].tolist())
    script = (
        "import json, sys, torch\n"
        "from transformers import AutoModelForCausalLM\n"
        "for family, (folder, prompt, _) in json.loads(sys.argv[1]).items():\n"
        "    m = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()\n"
        "    out = m.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, pad_token_id=0)\n"
        "    assert not any(k.startswith('metatokens') for k in sys.modules)\n"
        "    print(family, json.dumps(out[0].tolist()))\n"
    )
    env = {"PATH": "", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script, json.dumps(expected)], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = dict(line.split(" ", 1) for line in done.stdout.strip().splitlines())
    for family, (_, _, ours) in expected.items():
        assert json.loads(got[family]) == ours

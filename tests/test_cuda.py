"""Checks that need a CUDA GPU (benchmarks/gpu_check.sh runs them); each skips cleanly without one.

    python -m pytest -q -m cuda tests/test_cuda.py
"""

import copy
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import META, mixed_batch, toy_model
from metatokens.generation.decode import generate_ids
from metatokens.model.cache import KVCache
from metatokens.model.config import model_shape
from metatokens.model.gpt import GPT

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]
WORDS = "meta token model text attention layer memory window list item count parity copy span the a of and".split()


def set_impl(model: GPT, impl: str) -> GPT:
    for block in model.h:
        block.meta_attn.impl = impl
    return model


@pytest.mark.parametrize("pos_encoding", ["ape", "rope"])
def test_sparse_equals_dense_meta_attention_in_bf16(pos_encoding):
    """The sparse path (gathered meta rows, SDPA kernels) against the dense masked formula, both
    under a bf16 autocast on the GPU: logits within bf16 precision, gradients likewise."""
    torch.manual_seed(0)
    cfg = model_shape("small", meta_token_id=META, vocab_size=512, pos_encoding=pos_encoding, block_size=256)
    sparse = GPT(cfg).cuda().train()
    with torch.no_grad():  # a trained model's meta sublayers are not zero: make them count
        for block in sparse.h:
            block.meta_attn.c_proj.weight.normal_(0, 0.05)
    dense = set_impl(copy.deepcopy(sparse), "dense")
    idx = torch.randint(8, 512, (4, 256), device="cuda")
    idx[torch.rand(idx.shape, device="cuda") < 0.1] = META
    targets = torch.roll(idx, -1, 1)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out_s, loss_s = sparse(idx, targets)
        out_d, loss_d = dense(idx, targets)
    scale = out_d.float().abs().max()
    assert (out_s.float() - out_d.float()).abs().max() <= 2e-2 * scale
    assert abs(loss_s.item() - loss_d.item()) <= 1e-2
    loss_s.backward()
    loss_d.backward()
    for (name, a), b in zip(sparse.named_parameters(), dense.parameters()):
        assert (a.grad.float() - b.grad.float()).abs().max() <= 5e-2 * b.grad.float().abs().max() + 1e-6, name


@pytest.mark.parametrize("policy", ["none", "every:3"])
def test_cached_generation_equals_recomputation_on_the_gpu(policy):
    model = toy_model(pos_encoding="rope").cuda()
    prompt = mixed_batch(T=20).cuda()
    prompt = prompt if policy == "none" else prompt[:1]  # every:N needs rows that end alike
    cached = generate_ids(model, prompt, 24, policy=policy, temperature=0, use_cache=True)
    recomputed = generate_ids(model, prompt, 24, policy=policy, temperature=0, use_cache=False)
    assert torch.equal(cached, recomputed)


def test_windowed_attention_blocked_equals_dense_in_bf16_and_cached_decoding_equals_it_in_fp32():
    """attn_window on the GPU: the blocked path (SDPA over chunks, with a mask) against the dense mask of the
    definition under a bf16 autocast, within bf16 precision; then cached greedy decoding through the bounded
    cache against the dense windowed forward in fp32 (1e-4: GPU kernels sum in other orders)."""
    torch.manual_seed(0)
    cfg = model_shape("small", meta_token_id=META, vocab_size=512, pos_encoding="rope", block_size=512, attn_window=32)
    blocked = GPT(cfg).cuda().train()
    dense = copy.deepcopy(blocked)
    dense.window_impl = "dense"
    idx = torch.randint(8, 512, (3, 512), device="cuda")
    idx[torch.rand(idx.shape, device="cuda") < 0.1] = META
    idx[0, 300:] = torch.randint(8, 512, (212,), device="cuda")  # a row whose last meta-token is far behind
    targets = torch.roll(idx, -1, 1)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out_b, loss_b = blocked(idx, targets)
        out_d, loss_d = dense(idx, targets)
    assert (out_b.float() - out_d.float()).abs().max() <= 2e-2 * out_d.float().abs().max()
    loss_b.backward()
    loss_d.backward()
    for (name, a), b in zip(blocked.named_parameters(), dense.parameters()):
        assert (a.grad.float() - b.grad.float()).abs().max() <= 5e-2 * b.grad.float().abs().max() + 1e-6, name
    blocked.eval(), dense.eval()
    seq = idx[:, :100]
    cache = KVCache.empty(cfg.n_layer)
    pending = seq
    with torch.no_grad():
        for _ in range(40):
            logits = blocked(pending, cache=cache)[0][:, -1]
            assert (logits - dense(seq)[0][:, -1]).abs().max() <= 1e-4
            pending = logits.argmax(-1, keepdim=True)
            seq = torch.cat((seq, pending), 1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    import random

    folder = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    for i in range(20):
        text = " ".join(" ".join(rng.choice(WORDS) for _ in range(10)).capitalize() + "." for _ in range(60))
        (folder / f"doc{i:02d}.txt").write_text(text, encoding="utf-8")
    return folder


def _common(corpus, cache, steps):
    return ["--config", "toy", "--no-progress", "--set", f"data.source={corpus}", "--set", f"data.cache_dir={cache}",
            "--set", "data.vocab_size=300", "--set", "data.max_documents=null", "--set", "data.val_fraction=0.1",
            "--set", f"train.max_steps={steps}", "--set", "train.log_interval=1", "--set", "train.eval_interval=0",
            "--set", "train.device=cuda", "--set", "train.batch_size=8"]


def _losses(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train_loss"] for r in rows if "train_loss" in r}


def test_compiled_bf16_training_run_on_the_gpu_lowers_the_loss(corpus, tmp_path):
    """50 steps with train.compile=true and train.dtype=auto, which on a GPU with native bf16 (Ampere
    and later) is a bf16 autocast: printed, recorded in run.json, and the loss falls."""
    from metatokens.devices import cuda_has_bf16

    run = tmp_path / "run"
    args = [sys.executable, "-m", "metatokens", "pretrain", "--out", str(run), *_common(corpus, tmp_path / "c", 50),
            "--set", "train.compile=true", "--set", "train.dtype=auto"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    want = "bf16" if cuda_has_bf16() else "fp32"
    assert json.loads((run / "run.json").read_text())["precision"]["dtype"] == want
    assert f"precision: {want} (train.dtype=auto: this CUDA device" in done.stdout
    curve = _losses(run)
    assert sorted(curve) == list(range(1, 51))
    assert sum(curve[s] for s in range(46, 51)) / 5 < sum(curve[s] for s in range(1, 6)) / 5 - 0.5


@pytest.mark.parametrize("fsdp", [False, True])
def test_torchrun_one_gpu_with_ddp_and_fsdp_equals_a_plain_run(corpus, tmp_path, fsdp):
    """torchrun --nproc_per_node=1 (NCCL process group, DDP or FSDP2 set-up, its checkpoint path)
    trains exactly like the same run started without torchrun."""
    common = [*_common(corpus, tmp_path / "c", 6), "--set", f"train.fsdp={str(fsdp).lower()}", "--set", "train.ckpt_interval=3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    plain = subprocess.run([sys.executable, "-m", "metatokens", "pretrain", "--out", str(tmp_path / "plain"), *common],
                           env=env, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr[-3000:]
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                               "-m", "metatokens", "pretrain", "--out", str(tmp_path / "torchrun"), *common],
                              env=env, capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    a, b = _losses(tmp_path / "plain"), _losses(tmp_path / "torchrun")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-3, (step, a[step], b[step])
    assert (tmp_path / "torchrun" / "checkpoints" / "LATEST").read_text().strip() == "step-00000006"

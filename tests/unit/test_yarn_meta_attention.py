"""YaRN with meta-attention: sparse and dense meta-attention both equal a dense reference model written here."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import mixed_batch, toy_model
from metatokens.model import GPT
from metatokens.model.yarn import apply_yarn

SCALE = 4.0  # toy window 64 -> 256
T = 96  # past the pre-training window of 64


def randomized(model: GPT, seed: int = 5) -> GPT:
    """Weights far from initialisation (biases, LayerNorms included), so attention is sharp and a wrong
    temperature or rotation moves the logits well past float rounding."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if ".ln_" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_((0.3 if p.dim() > 1 else 0.1) * noise)
    return model


def yarn_frequencies(head_dim: int, theta: float, window: int, s: float) -> torch.Tensor:
    """YaRN "NTK-by-parts" as in the YaRN reference code and Hugging Face rope_type="yarn" (beta_fast 32,
    beta_slow 1): frequency i keeps theta^(-2i/d) below the ramp, is divided by s above it, and is blended
    linearly in between; the ramp runs over the dimension indices whose wavelength fits 32 resp. 1 times
    into the window, rounded outwards."""
    def index_for(turns):
        return head_dim * math.log(window / (turns * 2 * math.pi)) / (2 * math.log(theta))

    low, high = max(math.floor(index_for(32.0)), 0), min(math.ceil(index_for(1.0)), head_dim - 1)
    out = []
    for i in range(head_dim // 2):
        base = theta ** (-2 * i / head_dim)
        ramp = min(max((i - low) / (high - low), 0.0), 1.0)  # 0: keep, 1: interpolate
        out.append(base * (1 - ramp) + base / s * ramp)
    return torch.tensor(out, dtype=torch.float64)


def reference_logits(model: GPT, idx: torch.Tensor, window: int, s: float) -> torch.Tensor:
    """The whole forward pass from the method's equations, with (B, T, T) masks: RoPE with YaRN frequencies
    at absolute positions (angle 0 at meta positions when meta_pos is "zero"), attention logits times
    mscale^2 / sqrt(d_head) with mscale = 0.1 ln s + 1, meta-attention among the meta positions j <= i of a
    row, added at meta positions only."""
    cfg = model.config
    B, T_ = idx.shape
    C, nh = cfg.n_embd, cfg.n_head
    hd = C // nh
    is_meta = idx == cfg.meta_token_id
    angle = torch.arange(T_, dtype=torch.float64)[:, None] * yarn_frequencies(hd, cfg.rope_theta, window, s)
    angle = angle.float().expand(B, T_, hd // 2)
    if cfg.meta_pos == "zero":
        angle = angle.masked_fill(is_meta[..., None], 0.0)
    cos, sin = angle.cos()[:, :, None], angle.sin()[:, :, None]  # (B, T, 1, hd/2)
    temperature = (0.1 * math.log(s) + 1.0) ** 2 / math.sqrt(hd)

    def rotate(t):  # pairs (i, i + hd/2)
        a, b = t[..., : hd // 2], t[..., hd // 2 :]
        return torch.cat((a * cos - b * sin, b * cos + a * sin), -1)

    def attention(qkv, proj, h, allowed):
        q, k, v = (t.view(B, T_, nh, hd) for t in qkv(h).split(C, -1))
        scores = torch.einsum("bind,bjnd->bnij", rotate(q), rotate(k)) * temperature
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        weights = torch.where(allowed[:, None], scores.softmax(-1), 0.0)  # a row with no key: all zero
        return proj(torch.einsum("bnij,bjnd->bind", weights.nan_to_num(0.0), v).reshape(B, T_, C))

    def norm(ln, h):
        return F.layer_norm(h, (C,), ln.weight, ln.bias, cfg.layer_norm_eps)

    causal = torch.ones(T_, T_, dtype=torch.bool).tril().expand(B, T_, T_)
    among_meta = causal & is_meta[:, :, None] & is_meta[:, None, :]
    x = model.wte.weight[idx]
    for block in model.h:
        x = x + attention(block.attn.c_attn, block.attn.c_proj, norm(block.ln_1, x), causal)
        x = x + attention(block.meta_attn.c_attn, block.meta_attn.c_proj, norm(block.ln_meta, x), among_meta) * is_meta[..., None]
        h = norm(block.ln_2, x)
        x = x + block.mlp.c_proj(F.gelu(block.mlp.c_fc(h), approximate="tanh"))
    return norm(model.ln_f, x) @ model.lm_head.weight.T


@pytest.mark.parametrize("meta_pos", ["keep", "zero"])
def test_sparse_and_dense_meta_attention_equal_the_reference_with_yarn(meta_pos):
    sparse = randomized(toy_model(pos_encoding="rope", meta_pos=meta_pos))
    window = sparse.config.block_size
    apply_yarn(sparse, SCALE)
    assert sparse.config.yarn is not None and sparse.config.yarn.factor == SCALE
    dense = copy.deepcopy(sparse)
    for block in dense.h:
        block.meta_attn.impl = "dense"
    idx = mixed_batch(T=T, seed=3)
    with torch.no_grad():
        ref = reference_logits(sparse, idx, window, SCALE)
        got_sparse, _ = sparse(idx)
        got_dense, _ = dense(idx)
    tol = 1e-5 * max(1.0, ref.abs().max().item())
    assert (got_dense - ref).abs().max().item() <= tol, "dense meta-attention path differs from the reference"
    assert (got_sparse - ref).abs().max().item() <= tol, "sparse meta-attention path differs from the reference"
    assert (got_sparse - got_dense).abs().max().item() <= tol
    # the meta sublayers and YaRN both matter here: without either, the logits move far more than the tolerance
    no_meta, no_yarn = copy.deepcopy(sparse), apply_yarn(copy.deepcopy(sparse), 1.0)
    with torch.no_grad():
        for block in no_meta.h:
            block.meta_attn.c_proj.weight.zero_()
            block.meta_attn.c_proj.bias.zero_()
        for other in (no_meta, no_yarn):
            assert (other(idx)[0] - ref).abs().max().item() > 100 * tol

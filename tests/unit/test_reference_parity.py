"""Parity with Hugging Face transformers: GPT-2 logits and YaRN frequencies / attention scale."""

import math

import pytest
import torch
import torch.nn.functional as F

import transformers  # a declared test dependency: missing, these tests fail (never skip)
from transformers.modeling_rope_utils import _compute_yarn_parameters

from metatokens.model.config import YarnConfig, model_shape
from metatokens.hf.gpt2 import config_from_hf_gpt2, state_dict_from_hf_gpt2
from metatokens.model import GPT
from metatokens.model.positions import yarn_inv_freq


def tiny_hf_gpt2(act="gelu_new"):
    cfg = transformers.GPT2Config(
        vocab_size=101, n_positions=48, n_embd=48, n_layer=3, n_head=4, activation_function=act,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )
    torch.manual_seed(3)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # make biases and LayerNorms non-trivial so a wrong mapping shows
        for name, p in hf.named_parameters():
            if name.endswith("bias") or "ln" in name:
                p.add_(0.1 * torch.randn_like(p))
    return hf


@pytest.mark.parametrize("act", ["gelu_new", "relu"])
def test_logits_equal_hf_gpt2(act):
    hf = tiny_hf_gpt2(act)
    ours = GPT(config_from_hf_gpt2(hf.config)).eval()
    ours.load_state_dict(state_dict_from_hf_gpt2(hf.state_dict()), strict=True)
    idx = torch.randint(0, 101, (3, 48))
    with torch.no_grad():
        ref = hf(idx).logits
        got, _ = ours(idx)
    assert (got - ref).abs().max() <= 1e-5


def hf_yarn(head_dim, base, L, s, **extra):
    cfg = transformers.LlamaConfig(
        hidden_size=head_dim * 2, num_attention_heads=2, max_position_embeddings=int(L * s),
        rope_parameters={"rope_type": "yarn", "factor": s, "original_max_position_embeddings": L,
                         "rope_theta": base, "beta_fast": 32.0, "beta_slow": 1.0, **extra},
    )
    return _compute_yarn_parameters(cfg)


@pytest.mark.parametrize("head_dim,base,L,s", [(16, 10000.0, 64, 2.0), (64, 10000.0, 1024, 4.0), (64, 10000.0, 1024, 8.0), (128, 500000.0, 4096, 2.0), (32, 10000.0, 256, 16.0)])
def test_yarn_frequencies_and_temperature_equal_transformers(head_dim, base, L, s):
    inv_ref, attn_factor = hf_yarn(head_dim, base, L, s)
    yarn = YarnConfig(factor=s, original_max_position_embeddings=L)
    assert torch.allclose(yarn_inv_freq(head_dim, base, yarn), inv_ref, rtol=1e-6, atol=0)
    assert yarn.mscale == pytest.approx(attn_factor, rel=1e-12)
    assert yarn.mscale == pytest.approx(0.1 * math.log(s) + 1)  # the YaRN paper's sqrt(1/t)


def test_yarn_attention_scale_is_applied_exactly_once():
    """Our self-attention vs an independent Llama-style computation with HF's cos/sin * attention_factor."""
    s, L = 4.0, 16
    model = GPT(model_shape("toy", pos_encoding="rope", meta_attention=False,
                            yarn=YarnConfig(factor=s, original_max_position_embeddings=L))).eval()
    attn, hd, nh = model.h[0].attn, model.config.head_dim, model.config.n_head
    inv_freq, attention_factor = hf_yarn(hd, 10000.0, L, s)
    T = 40  # beyond the original window
    x = torch.randn(2, T, model.config.n_embd)
    ang = torch.arange(T)[:, None].float() * inv_freq
    emb = torch.cat((ang, ang), -1)
    cos, sin = emb.cos() * attention_factor, emb.sin() * attention_factor  # how HF scales

    def rot(t):
        half = t.size(-1) // 2
        return t * cos + torch.cat((-t[..., half:], t[..., :half]), -1) * sin

    C = model.config.n_embd

    def reference(x):
        B = x.size(0)
        q, k, v = (t.view(B, T, nh, hd).transpose(1, 2) for t in attn.c_attn(x).split(C, 2))
        ref = F.scaled_dot_product_attention(rot(q), rot(k), v, is_causal=True)  # default 1/sqrt(hd)
        return attn.c_proj(ref.transpose(1, 2).reshape(B, T, C))

    with torch.no_grad():
        ref = reference(x)
        from metatokens.model.gpt import PosInfo

        pos = PosInfo(torch.arange(T), model.rotary, True, model.rotary.logit_scale / math.sqrt(hd))
        c, s_ = model.rotary(pos.positions)
        pos.cos, pos.sin = c.unsqueeze(-3), s_.unsqueeze(-3)
        got = attn(x, pos)
    assert model.rotary.logit_scale == pytest.approx(attention_factor**2)
    assert (got - ref).abs().max() <= 1e-5
    # the same through the model's own forward pass, which sets up the positions and the scale itself
    seen = {}
    hook = attn.register_forward_hook(lambda mod, args, out: seen.update(x=args[0], out=out))
    with torch.no_grad():
        model(torch.randint(0, 512, (2, T)))
        hook.remove()
        assert (seen["out"] - reference(seen["x"])).abs().max() <= 1e-5
    # and the whole model runs out to s * L positions
    logits, _ = model(torch.randint(0, 512, (1, int(s * L))))
    assert torch.isfinite(logits).all()

"""Meta-attention in the decoders of other model families: Llama (Qwen2, Mistral) and GPT-NeoX.

These are the networks `metatokens import-hf` builds from a pretrained checkpoint; GPT-2 itself is
`gpt.GPT`. One block serves both families, in each family's own style:

    Llama:         x = x + Attn(RMS1 x);  x = x + MetaAttn(RMSm x);  x = x + MLP(RMS2 x)   (SwiGLU MLP)
    GPT-NeoX:      a = x + Attn(LN1 x);   a = a + MetaAttn(LNm a);   x = a + MLP(LN2 x)    (parallel residual:
                   the MLP reads the block input, as in the original; sequential NeoX reads `a`)

Both attentions project q/k/v separately with the family's head layout: grouped-query attention
(n_kv_head key/value heads), rotary embedding on the first `rotary_dim` channels of each head
(NeoX's partial rotary), the family's biases. Meta-attention keeps the semantics of
`gpt.MetaAttention`: meta-tokens attend to earlier meta-tokens only, computed on the gathered
meta positions, exactly zero elsewhere; meta_pos="zero" leaves meta q/k unrotated.

`FamilyModel` is a `GPT` (same forward, hidden states, KV cache and generation) whose blocks are
these; the rest of metatokens (training, fine-tuning, evaluation, export) uses it as it uses GPT.
This file is shipped inside exported folders with gpt.py, config.py and positions.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .cache import LayerCache, extend_cache
from .config import FamilyConfig, ModelConfig
from .gpt import GPT, MetaIndex, PosInfo, add_at_meta
from .gpt import MetaAttention as _GPTMetaAttention
from .positions import Rotary, apply_rotary, rope_inv_freq


def family_inv_freq(cfg: FamilyConfig) -> torch.Tensor:
    """The rotary frequencies Hugging Face computes for the checkpoint's rope_type."""
    dim = cfg.rotary_dim or cfg.head_dim
    inv = rope_inv_freq(dim, cfg.rope_theta)
    if cfg.rope_type == "linear":
        return inv / cfg.rope_factor
    if cfg.rope_type == "llama3":  # transformers' _compute_llama3_parameters
        low = cfg.rope_original_max_positions / cfg.rope_low_freq_factor  # wavelengths
        high = cfg.rope_original_max_positions / cfg.rope_high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low, inv / cfg.rope_factor, inv)
        smooth = (cfg.rope_original_max_positions / wavelen - cfg.rope_low_freq_factor) / (
            cfg.rope_high_freq_factor - cfg.rope_low_freq_factor)
        smoothed = (1 - smooth) * scaled / cfg.rope_factor + smooth * scaled
        medium = (wavelen >= high) & (wavelen <= low)
        return torch.where(medium, smoothed, scaled)
    return inv


class FamilyRotary(Rotary):
    """`Rotary` over the rotating channels, with the checkpoint's frequencies."""

    def __init__(self, cfg: FamilyConfig):
        super().__init__(cfg.rotary_dim or cfg.head_dim, cfg.rope_theta)
        self.cfg = cfg
        self.inv_freq.copy_(family_inv_freq(cfg))

    def fresh_inv_freq(self) -> torch.Tensor:
        return family_inv_freq(self.cfg)


def rotate(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """apply_rotary on the first 2 * cos.size(-1) channels (all of them but for partial rotary)."""
    d = 2 * cos.size(-1)
    if d == t.size(-1):
        return apply_rotary(t, cos, sin)
    return torch.cat((apply_rotary(t[..., :d], cos, sin), t[..., d:]), -1)


class RMSNorm(nn.Module):
    """Llama's RMSNorm: computed in fp32, scaled by a learned weight (no bias)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def make_norm(cfg: FamilyConfig) -> nn.Module:
    return RMSNorm(cfg.n_embd, cfg.layer_norm_eps) if cfg.norm == "rms" else nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)


class Projections(nn.Module):
    """q/k/v/o of one attention in the family's layout: n_head query heads, n_kv_head key/value heads."""

    def __init__(self, cfg: FamilyConfig):
        super().__init__()
        hs, self.n_head, self.n_kv = cfg.head_dim, cfg.n_head, cfg.kv_heads
        self.q_proj = nn.Linear(cfg.n_embd, self.n_head * hs, bias=cfg.attn_bias)
        self.k_proj = nn.Linear(cfg.n_embd, self.n_kv * hs, bias=cfg.attn_bias)
        self.v_proj = nn.Linear(cfg.n_embd, self.n_kv * hs, bias=cfg.attn_bias)
        self.o_proj = nn.Linear(self.n_head * hs, cfg.n_embd, bias=cfg.attn_out_bias)
        self.dropout = cfg.dropout

    def qkv(self, x: torch.Tensor):
        """(..., C) -> q (..., nh, hs), k and v (..., nkv, hs)."""
        shape = x.shape[:-1]
        return (self.q_proj(x).view(*shape, self.n_head, -1), self.k_proj(x).view(*shape, self.n_kv, -1),
                self.v_proj(x).view(*shape, self.n_kv, -1))

    def sdpa(self, q, k, v, **kwargs) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                              enable_gqa=self.n_kv != self.n_head, **kwargs)


class Attention(Projections):
    """Causal self-attention over every token (GQA, partial rotary, KV cache)."""

    def forward(self, x: torch.Tensor, pos: PosInfo, cache: LayerCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = (t.transpose(1, 2) for t in self.qkv(x))  # (B, heads, T, hs)
        if pos.cos is not None:
            q, k = rotate(q, pos.cos, pos.sin), rotate(k, pos.cos, pos.sin)
        if pos.window is not None:  # attn_window: the last W positions and every earlier meta-token
            y = pos.window.attend(q, k, v, cache, self.dropout if self.training else 0.0, pos.logit_scale)
            return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))
        k, v, mask, causal = extend_cache(cache, k, v)
        y = self.sdpa(q, k, v, attn_mask=mask, is_causal=causal, scale=pos.logit_scale)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MetaAttention(Projections):
    """`gpt.MetaAttention` (sparse path) in the family's head layout: meta-tokens attend to earlier
    meta-tokens only; only the meta positions are normalised, projected and written back."""

    def add_to(self, residual, x, is_meta, pos: PosInfo, cache: LayerCache | None = None, norm=None):
        """residual + MetaAttn(norm(x)); `residual` itself when the batch holds no meta-token."""
        return add_at_meta(self.attend, residual, x, is_meta, pos, cache, norm)

    def forward(self, x, is_meta, pos: PosInfo, cache: LayerCache | None = None) -> torch.Tensor:
        return self.add_to(x.new_zeros(x.shape), x, is_meta, pos, cache)

    def attend(self, xm: torch.Tensor, index: MetaIndex, pos: PosInfo, cache: LayerCache | None = None):
        """(N, C) inputs at the meta positions of `index` -> their (N, C) outputs."""
        B, M = index.counts.size(0), index.width
        q, k, v = self.qkv(xm)  # (N, heads, hs)
        if pos.rotary is not None and pos.rotate_meta:
            if index.rotary_tables is None:  # the same for every block of this forward pass
                cos, sin = pos.rotary(index.positions)
                index.rotary_tables = cos.unsqueeze(-2), sin.unsqueeze(-2)
            q, k = rotate(q, *index.rotary_tables), rotate(k, *index.rotary_tables)
        packed = index.flat.numel() == B * M  # every row has M meta-tokens: no padding needed

        def padded(t):  # (N, heads, hs) -> (B, heads, M, hs), each row's meta-tokens first
            t = t if packed else t.new_zeros(B * M, *t.shape[1:]).index_copy(0, index.slot, t)
            return t.view(B, M, *t.shape[1:]).transpose(1, 2)

        if cache is None:  # valid entries are a prefix of each row: causality never shows padding
            y = self.sdpa(padded(q), padded(k), padded(v), is_causal=True, scale=pos.logit_scale)
        else:
            keys, values, before = _GPTMetaAttention._append(cache, k, v, index)
            slot = torch.arange(keys.size(2), device=xm.device)
            limit = before[:, None] + torch.arange(M, device=xm.device)  # (B, M): last visible slot
            mask = slot[None, None, :] <= limit[:, :, None]
            y = self.sdpa(padded(q), keys, values, attn_mask=mask[:, None], scale=pos.logit_scale)
        y = y.transpose(1, 2).reshape(B * M, -1)
        return self.o_proj(y if packed else y.index_select(0, index.slot))


class MLP(nn.Module):
    ACT = {"silu": F.silu, "gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "relu": F.relu}

    def __init__(self, cfg: FamilyConfig):
        super().__init__()
        width = cfg.intermediate_size or 4 * cfg.n_embd
        if cfg.gated_mlp:
            self.gate_proj = nn.Linear(cfg.n_embd, width, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.n_embd, width, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(width, cfg.n_embd, bias=cfg.mlp_bias)
        self.act = self.ACT[cfg.hidden_act]

    def forward(self, x):
        if hasattr(self, "gate_proj"):
            return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(self.act(self.up_proj(x)))


class FamilyBlock(nn.Module):
    def __init__(self, cfg: FamilyConfig):
        super().__init__()
        self.parallel = cfg.parallel_residual
        self.input_layernorm = make_norm(cfg)
        self.self_attn = Attention(cfg)
        if cfg.meta_attention:
            self.meta_layernorm = make_norm(cfg)
            self.meta_attn = MetaAttention(cfg)
        self.post_attention_layernorm = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x, is_meta, pos: PosInfo, cache: LayerCache | None = None):
        h = x + self.self_attn(self.input_layernorm(x), pos, cache)
        if hasattr(self, "meta_attn"):
            h = self.meta_attn.add_to(h, h, is_meta, pos, cache, norm=self.meta_layernorm)  # h + MetaAttn(LNm h)
        return h + self.mlp(self.post_attention_layernorm(x if self.parallel else h))


class FamilyModel(GPT):
    """A GPT whose blocks are a Llama or GPT-NeoX decoder's. Forward, `hidden_states`, the KV cache,
    `meta_mask` and `num_params` are GPT's own: only the modules differ (no APE table)."""

    def __init__(self, cfg: FamilyConfig):
        nn.Module.__init__(self)  # not GPT.__init__, which builds GPT-2 blocks
        self.config = cfg.validate()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = None
        self.rotary = FamilyRotary(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(FamilyBlock(cfg) for _ in range(cfg.n_layer))
        self.ln_f = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=cfg.init_std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for block in self.h if cfg.meta_attention else ():  # new sublayers start as the identity
            nn.init.zeros_(block.meta_attn.o_proj.weight)
            if block.meta_attn.o_proj.bias is not None:
                nn.init.zeros_(block.meta_attn.o_proj.bias)


def build_model(cfg: ModelConfig) -> GPT:
    """The network a config describes: `FamilyModel` for a FamilyConfig, else GPT."""
    return FamilyModel(cfg) if isinstance(cfg, FamilyConfig) else GPT(cfg)

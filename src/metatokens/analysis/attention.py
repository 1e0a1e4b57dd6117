"""Attention probabilities recomputed from a Trace, exactly as the model's attention forms them.

For layer l, the sublayer's input x (the LayerNorm output) goes through the layer's own `c_attn`
to q, k, v; RoPE models rotate q and k with the model's `rotary` tables (meta rows stay
unrotated when meta_pos == "zero"); the logits are q.k scaled by rotary.logit_scale / sqrt(hs)
(YaRN's temperature times the usual 1/sqrt(hs)); then the mask and a softmax:

    self-attention:  key j admissible for query i  iff  j <= i
    meta-attention:  key j admissible for query i  iff  j <= i and both i and j are meta-tokens

c_proj(probs @ v) reproduces the sublayer's output (tests/unit/test_analysis.py checks it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..model.gpt import GPT
from ..model.positions import apply_rotary
from .trace import Trace


@dataclass
class Attention:
    logits: torch.Tensor  # (B, nh, T, T) scaled scores; -inf where the key is not admissible
    probs: torch.Tensor  # (B, nh, T, T); a query without an admissible key has an all-zero row
    values: torch.Tensor  # (B, nh, T, hs)
    query_mask: torch.Tensor  # (B, T) bool: queries that have at least one admissible key


def attention_entropy(probs: torch.Tensor) -> torch.Tensor:
    """H_i = -sum_j a_ij ln a_ij in nats over the last dimension, with 0 ln 0 = 0."""
    return torch.special.entr(probs).sum(-1)


def _heads(t: torch.Tensor, n_head: int) -> torch.Tensor:
    B, T, C = t.shape
    return t.view(B, T, n_head, C // n_head).transpose(1, 2)  # (B, nh, T, hs)


def _logit_scale(model: GPT) -> float:
    scale = 1.0 / math.sqrt(model.config.head_dim)
    return scale * model.rotary.logit_scale if model.rotary is not None else scale


def _attend(q, k, v, allowed: torch.Tensor, scale: float) -> Attention:
    """allowed: (B, T, T) bool, broadcast over heads."""
    logits = (q @ k.transpose(-2, -1)) * scale
    logits = logits.masked_fill(~allowed[:, None], float("-inf"))
    has_key = allowed.any(-1)  # (B, T)
    # softmax of an all -inf row is NaN; such rows get zero probability (no key, no output).
    probs = torch.where(has_key[:, None, :, None], logits, 0.0).softmax(-1) * has_key[:, None, :, None]
    return Attention(logits, probs, v, has_key)


@torch.no_grad()
def self_attention(model: GPT, tr: Trace, layer: int) -> Attention:
    """Causal self-attention of block `layer` over the whole traced batch."""
    x = tr.ln_1[layer]
    B, T, C = x.shape
    nh = model.config.n_head
    q, k, v = (_heads(t, nh) for t in model.h[layer].attn.c_attn(x).split(C, 2))
    if model.rotary is not None:
        positions = torch.arange(T, device=x.device)
        unrotated = tr.is_meta if model.config.meta_pos == "zero" else None
        cos, sin = model.rotary(positions, unrotated)  # (T | B, T, hs/2)
        cos, sin = cos.unsqueeze(-3), sin.unsqueeze(-3)  # broadcast over heads
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril().expand(B, T, T)
    return _attend(q, k, v, causal, _logit_scale(model))


@torch.no_grad()
def meta_attention(model: GPT, tr: Trace, layer: int) -> Attention | None:
    """Meta-attention of block `layer`; None when the model has none or the batch has no meta-token."""
    x = tr.ln_meta[layer]
    if x is None:
        return None
    B, T, C = x.shape
    nh = model.config.n_head
    q, k, v = (_heads(t, nh) for t in model.h[layer].meta_attn.c_attn(x).split(C, 2))
    if model.rotary is not None and model.config.meta_pos != "zero":
        cos, sin = model.rotary(torch.arange(T, device=x.device))  # (T, hs/2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
    allowed = causal & tr.is_meta[:, :, None] & tr.is_meta[:, None, :]
    return _attend(q, k, v, allowed, _logit_scale(model))


def attention_output(proj: nn.Linear, att: Attention) -> torch.Tensor:
    """c_proj(probs @ v): the sublayer output (B, T, C); exactly zero at queries without a key."""
    B, nh, T, hs = att.values.shape
    y = (att.probs @ att.values).transpose(1, 2).reshape(B, T, nh * hs)
    return proj(y) * att.query_mask[..., None].to(y.dtype)

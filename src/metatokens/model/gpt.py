"""GPT-2 with meta-attention (Shah et al., "Language Modeling with Learned Meta-Tokens", 2025).

Each block is pre-LayerNorm GPT-2 with one extra sublayer between attention and MLP:

    x = x + Attn(LN1 x)          causal self-attention over all tokens
    x = x + MetaAttn(LNm x)      meta-tokens attend to earlier meta-tokens only
    x = x + MLP(LN2 x)

MetaAttn has no admissible key for a non-meta query, so its output there is exactly zero.
The model knows nothing of training, files or parallelism; see train.py for those.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .cache import KVCache, LayerCache, extend_cache
from .config import IGNORE_INDEX, ModelConfig
from .positions import Rotary, apply_rotary
from .window import WindowLayout


@dataclass
class MetaIndex:
    """Where the meta-tokens of a (B, T) batch are; found once per forward, shared by all blocks."""

    flat: torch.Tensor  # (N,) b * T + t of each meta-token, in row-major order
    batch: torch.Tensor  # (N,) its row b
    rank: torch.Tensor  # (N,) its index among the meta-tokens of its row
    counts: torch.Tensor  # (B,) meta-tokens per row
    width: int  # M = max(counts): meta-tokens are padded to (B, M) for attention
    positions: torch.Tensor  # (N,) absolute positions
    cache_slots: int = 0  # with a KV cache: the most meta-tokens a row holds once this step is cached
    rotary_tables: tuple[torch.Tensor, torch.Tensor] | None = None  # (N, 1, hs/2) cos, sin; made by the first block

    @classmethod
    def of(cls, is_meta: torch.Tensor, positions: torch.Tensor, cached: torch.Tensor | None = None) -> "MetaIndex":
        """`cached`: (B,) meta-tokens a KV cache already holds per row. Every layer caches the same
        meta positions, so the size their meta caches need is found here, once per step."""
        T = is_meta.size(1)
        flat = is_meta.flatten().nonzero().squeeze(1)  # host sync: the number of meta-tokens
        if not flat.numel():  # most decode steps: nothing else to compute
            return cls(flat, flat, flat, flat, 0, flat)
        counts = is_meta.sum(1)
        rank = is_meta.cumsum(1).flatten().index_select(0, flat) - 1
        after = counts if cached is None else cached + counts
        width, cache_slots = torch.stack((counts.max(), after.max())).tolist()  # the other host sync
        return cls(flat, flat // T, rank, counts, width, positions.index_select(0, flat % T), cache_slots)

    @property
    def slot(self) -> torch.Tensor:  # (N,) row of each meta-token in the padded (B * M) layout
        return self.batch * self.width + self.rank


@dataclass
class PosInfo:
    """What both attentions need to place tokens: absolute positions and the rotary tables."""

    positions: torch.Tensor  # (T,) absolute positions of the current tokens
    rotary: Rotary | None  # None for APE / NoPE
    rotate_meta: bool  # False when meta_pos == "zero": meta q/k stay unrotated
    logit_scale: float  # 1/sqrt(hs) times YaRN's temperature, applied once
    cos: torch.Tensor | None = field(default=None)  # self-attention tables, (B|1, 1, T, hs/2)
    sin: torch.Tensor | None = field(default=None)
    meta: MetaIndex | None = field(default=None)  # set by GPT.hidden_states; a sublayer called alone finds it
    window: WindowLayout | None = field(default=None)  # attn_window: the windowed self-attention's layout


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_embd = cfg.n_head, cfg.n_embd
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, pos: PosInfo, cache: LayerCache | None = None) -> torch.Tensor:
        B, T, C = x.shape
        nh, hs = self.n_head, C // self.n_head
        qkv = self.c_attn(x)
        if pos.cos is not None:  # q and k rotated in one pass over (B, 2 nh, T, hs): half the small kernels
            qk, v = qkv.split((2 * C, C), 2)
            q, k = apply_rotary(qk.view(B, T, 2 * nh, hs).transpose(1, 2), pos.cos, pos.sin).split(nh, 1)
            v = v.view(B, T, nh, hs).transpose(1, 2)
        else:
            q, k, v = (t.view(B, T, nh, hs).transpose(1, 2) for t in qkv.split(C, 2))  # (B, nh, T, hs)
        if pos.window is not None:  # attn_window: the last W positions and every earlier meta-token
            y = pos.window.attend(q, k, v, cache, self.dropout if self.training else 0.0, pos.logit_scale)
            return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, C)))
        k, v, mask, causal = extend_cache(cache, k, v)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal,
            dropout_p=self.dropout if self.training else 0.0, scale=pos.logit_scale,
        )
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, C)))


def add_at_meta(attend, residual, x, is_meta, pos: PosInfo, cache: LayerCache | None = None, norm=None):
    """The sparse path around a sublayer's `attend((N, C) inputs, index, pos, cache) -> (N, C)`:
    gather the meta rows of x, normalise and attend them, add the result into `residual` at those
    rows; `residual` itself when the batch holds no meta-token."""
    index = pos.meta or MetaIndex.of(is_meta, pos.positions, None if cache is None else cache.meta_count)
    if not index.width:
        return residual
    xm = x.flatten(0, 1).index_select(0, index.flat)  # (N, C)
    y = attend(xm if norm is None else norm(xm), index, pos, cache)
    # autocast may give a bf16 y
    return residual.flatten(0, 1).index_add(0, index.flat, y.to(residual.dtype)).view_as(residual)


class MetaAttention(nn.Module):
    """softmax(QK^T/sqrt(d) + M_causal + P) V with P = 0 only between two meta positions.

    `sparse` works on the m gathered meta positions of each row: it projects only those, attends
    among them (m x m) and scatters back, so it costs O(m) projections and O(m^2) attention instead
    of O(T) and O(T^2). `dense` is the paper's form with a materialised (B, T, T) mask and serves as
    the reference. Both give exactly zero at non-meta positions.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_embd, self.impl = cfg.n_head, cfg.n_embd, cfg.meta_impl
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def _rotate(self, t: torch.Tensor, positions: torch.Tensor, pos: PosInfo) -> torch.Tensor:
        if pos.rotary is None or not pos.rotate_meta:
            return t
        cos, sin = pos.rotary(positions)  # (..., hs/2), broadcast over the head dimension
        return apply_rotary(t, cos.unsqueeze(-2), sin.unsqueeze(-2))

    def forward(self, x, is_meta, pos: PosInfo, cache: LayerCache | None = None) -> torch.Tensor:
        """The sublayer on its own: (B, T, C) -> (B, T, C), exactly zero at non-meta positions."""
        return self.add_to(x.new_zeros(x.shape), x, is_meta, pos, cache)

    def add_to(self, residual, x, is_meta, pos: PosInfo, cache: LayerCache | None = None, norm=None):
        """residual + MetaAttn(norm(x)), with `norm` (the block's LayerNorm) applied first if given.

        This is where the dense or the sparse path is chosen; a KV cache always takes the sparse
        one. The sublayer is zero off meta positions, so the sparse path normalises, projects and
        adds only at the meta rows, and returns `residual` itself for a batch without any.
        """
        if self.impl == "dense" and cache is None:
            return residual + self._dense(x if norm is None else norm(x), is_meta, pos)
        return add_at_meta(self.attend, residual, x, is_meta, pos, cache, norm)

    def _dense(self, x, is_meta, pos: PosInfo) -> torch.Tensor:
        B, T, C = x.shape
        nh, hs = self.n_head, C // self.n_head
        q, k, v = (t.view(B, T, nh, hs) for t in self.c_attn(x).split(C, 2))  # (B, T, nh, hs)
        q, k = self._rotate(q, pos.positions, pos), self._rotate(k, pos.positions, pos)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        allowed = causal & is_meta[:, :, None] & is_meta[:, None, :]  # (B, T, T): the paper's P + M
        scores = torch.einsum("bind,bjnd->bnij", q, k) * pos.logit_scale
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        # A query with no admissible key gets a finite dummy row (its output is zeroed below).
        scores = scores.masked_fill(~allowed.any(-1)[:, None, :, None], 0.0)
        att = F.dropout(scores.softmax(-1), self.dropout, self.training)
        y = torch.einsum("bnij,bjnd->bind", att, v).reshape(B, T, C)
        return self.resid_dropout(self.c_proj(y)) * is_meta[..., None].to(x.dtype)

    def attend(self, xm: torch.Tensor, index: MetaIndex, pos: PosInfo, cache: LayerCache | None = None):
        """Sparse path: the (N, C) inputs at the meta positions of `index` -> their (N, C) outputs."""
        C, nh, B, M = self.n_embd, self.n_head, index.counts.size(0), index.width
        hs = C // nh
        qkv = self.c_attn(xm)  # (N, 3C): only meta positions are projected
        # Rows are "packed" when each holds M meta-tokens (inject_meta's training rows, batch-1 decoding):
        # then (N, ...) is (B, M, ...) as it is. Otherwise each row's meta-tokens go first into a zero
        # padded (B, M) layout, one scatter for q, k and v.
        packed = index.flat.numel() == B * M
        rotate = pos.rotary is not None and pos.rotate_meta
        new_kv = None  # what a KV cache stores: the rotated keys with the values, else qkv's own
        if rotate:
            if index.rotary_tables is None:  # the same for every block of this forward pass
                cos, sin = pos.rotary(index.positions)
                index.rotary_tables = cos.unsqueeze(-2), sin.unsqueeze(-2)  # broadcast over heads
            qk, v = qkv.split((2 * C, C), 1)
            qk = apply_rotary(qk.view(-1, 2 * nh, hs), *index.rotary_tables)  # q and k in one pass
            new_kv = qk[:, nh:], v
        if rotate and packed:  # straight into the (B, nh, M, hs) layout, no concatenation
            q, k = (t.transpose(1, 2) for t in qk.view(B, M, 2, nh, hs).unbind(2))
            v = v.view(B, M, nh, hs).transpose(1, 2)
        else:
            rows = torch.cat((qk.flatten(1), v), 1) if rotate else qkv
            padded = rows if packed else rows.new_zeros(B * M, 3 * C).index_copy(0, index.slot, rows)
            q, k, v = (t.transpose(1, 2) for t in padded.view(B, M, 3, nh, hs).unbind(2))  # (B, nh, M, hs)
        if cache is None:
            # Valid entries form a prefix of each row, so plain causality never lets a real query
            # see padding; padded queries see at least key 0 (no NaN) and are dropped below.
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0, scale=pos.logit_scale
            )
        else:
            if new_kv is None:
                new_kv = qkv[:, C:].split(C, 1)
            keys, values, before = self._append(cache, *(t.reshape(-1, nh, hs) for t in new_kv), index)
            slot = torch.arange(keys.size(2), device=xm.device)
            limit = before[:, None] + torch.arange(M, device=xm.device)  # (B, M): last visible slot
            mask = slot[None, None, :] <= limit[:, :, None]  # (B, M, capacity)
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask[:, None], scale=pos.logit_scale)
        y = y.transpose(1, 2).reshape(B * M, C)
        y = y if packed else y.index_select(0, index.slot)  # back to (N, C)
        return self.resid_dropout(self.c_proj(y))

    @staticmethod
    def _append(cache: LayerCache, k, v, index: MetaIndex):
        """Write the new meta keys/values after each row's cached ones; return all and old counts."""
        B, nh, hs = index.counts.size(0), k.size(1), k.size(2)
        if cache.meta_count is None:
            cache.meta_count = index.counts.new_zeros(B)
            cache.meta_k = k.new_zeros(B, nh, 0, hs)
            cache.meta_v = v.new_zeros(B, nh, 0, hs)
        before = cache.meta_count.clone()
        need = index.cache_slots  # the same for every layer: found once per step, no host sync here
        if need > cache.meta_k.size(2):  # grow geometrically so decoding stays amortised O(1)
            extra = max(need, 2 * cache.meta_k.size(2)) - cache.meta_k.size(2)
            cache.meta_k = torch.cat((cache.meta_k, k.new_zeros(B, nh, extra, hs)), 2)
            cache.meta_v = torch.cat((cache.meta_v, v.new_zeros(B, nh, extra, hs)), 2)
        slot = before[index.batch] + index.rank
        cache.meta_k[index.batch, :, slot] = k
        cache.meta_v[index.batch, :, slot] = v
        cache.meta_count = before + index.counts
        return cache.meta_k, cache.meta_v, before


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.act = nn.GELU(approximate="tanh") if cfg.mlp_act == "gelu" else nn.ReLU()
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        if cfg.meta_attention:
            self.ln_meta = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
            self.meta_attn = MetaAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x, is_meta, pos: PosInfo, cache: LayerCache | None = None):
        x = x + self.attn(self.ln_1(x), pos, cache)
        if hasattr(self, "meta_attn"):
            x = self.meta_attn.add_to(x, x, is_meta, pos, cache, norm=self.ln_meta)  # x + MetaAttn(LNm x)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    # With attn_window: "blocked" (O(T (W + m)), window.py) or "dense", the (B, T, T) mask of the
    # definition; the reference that tests and benchmarks set on an instance. A KV cache is always blocked.
    window_impl = "blocked"

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg.validate()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos_encoding == "ape" else None
        self.rotary = Rotary(cfg.head_dim, cfg.rope_theta, cfg.yarn) if cfg.pos_encoding == "rope" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        std = self.residual_proj_std(cfg)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=std)

    @staticmethod
    def residual_proj_std(cfg: ModelConfig) -> float:
        """GPT-2's init std of the residual projections (c_proj): 0.02 / sqrt(residual branches)."""
        return 0.02 / math.sqrt(cfg.n_layer * (3 if cfg.meta_attention else 2))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, exclude_positions: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())  # tied weights are counted once
        return n - self.wpe.weight.numel() if exclude_positions and self.wpe is not None else n

    def meta_mask(self, idx: torch.Tensor, meta_mask: torch.Tensor | None = None) -> torch.Tensor:
        if meta_mask is not None:
            if meta_mask.shape != idx.shape or meta_mask.dtype != torch.bool:
                raise ValueError(f"meta_mask must be a bool tensor of shape {tuple(idx.shape)}")
            return meta_mask
        if self.config.meta_token_id is None:
            return torch.zeros_like(idx, dtype=torch.bool)
        return idx == self.config.meta_token_id

    def hidden_states(self, idx, meta_mask=None, cache: KVCache | None = None) -> torch.Tensor:
        """Final-LayerNorm hidden states (B, T, C) of token ids idx (B, T)."""
        cfg, T = self.config, idx.size(1)
        start = cache.length if cache is not None else 0
        if cfg.max_positions is not None and start + T > cfg.max_positions:
            raise ValueError(
                f"sequence reaches position {start + T} but the learned absolute position table has "
                f"{cfg.max_positions} rows; use a RoPE/NoPE model (with YaRN) for longer inputs"
            )
        is_meta = self.meta_mask(idx, meta_mask)
        positions = torch.arange(start, start + T, device=idx.device)
        zero_meta_pos = cfg.meta_pos == "zero"
        x = self.wte(idx)
        if cfg.meta_embed == "zero":
            x = x.masked_fill(is_meta[..., None], 0.0)
        if self.wpe is not None:
            pe = self.wpe(positions)[None]  # (1, T, C)
            x = x + (pe.masked_fill(is_meta[..., None], 0.0) if zero_meta_pos else pe)
        pos = PosInfo(positions, self.rotary, not zero_meta_pos, 1.0 / math.sqrt(cfg.head_dim))
        # where the meta-tokens are (and the meta caches' size), once for all blocks; the dense path
        # needs no index, so without a cache it runs without a host sync (one compiled graph)
        if cfg.meta_attention and (cfg.meta_impl != "dense" or cache is not None):
            pos.meta = MetaIndex.of(is_meta, positions, None if cache is None else cache.meta_count)
        if cfg.attn_window is not None:  # where the window and the kept meta keys are, once for all blocks
            # the keys kept past the window: the meta-tokens, and with attn_sinks the first positions
            kept = is_meta | (positions < cfg.attn_sinks)[None] if cfg.attn_sinks else is_meta
            pos.window = WindowLayout.of(kept, cfg.attn_window, cache, dense=self.window_impl == "dense")
        if self.rotary is not None:
            pos.logit_scale *= self.rotary.logit_scale
            cos, sin = self.rotary(positions, is_meta if zero_meta_pos else None)
            pos.cos, pos.sin = cos.unsqueeze(-3), sin.unsqueeze(-3)  # add the head dimension
        x = self.drop(x)
        for i, block in enumerate(self.h):
            x = block(x, is_meta, pos, cache.layers[i] if cache is not None else None)
        if cache is not None:
            if pos.window is not None:
                pos.window.commit(cache)
            cache.length += T
        return self.ln_f(x)

    # train.py may call forward(x, y, logits=False): the loss alone, from the scored positions only
    loss_only_forward = True

    def forward(self, idx, targets=None, *, meta_mask=None, cache: KVCache | None = None, logits: bool = True):
        """Returns (logits (B, T, V), loss or None).

        Targets equal to IGNORE_INDEX (-100) or to the meta-token id carry no loss: the model learns to use
        meta-tokens, never to emit them. With ``logits=False`` (and targets) the LM head runs only
        at the scored positions and the logits returned are None: the same loss and gradients,
        without a (B, T, V) head where most targets are -100 (a fine-tuning row scores only its
        answer).
        """
        h = self.hidden_states(idx, meta_mask, cache)
        if targets is None:
            return self.lm_head(h), None
        if self.config.meta_token_id is not None:
            targets = targets.masked_fill(targets == self.config.meta_token_id, IGNORE_INDEX)
        if logits:
            out = self.lm_head(h)
            return out, F.cross_entropy(out.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)
        keep = (targets != IGNORE_INDEX).flatten().nonzero().squeeze(1)  # host sync, like MetaIndex
        scored = self.lm_head(h.flatten(0, 1).index_select(0, keep))
        return None, F.cross_entropy(scored.float(), targets.flatten().index_select(0, keep))

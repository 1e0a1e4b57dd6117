"""Windowed self-attention with meta-tokens as its long-range memory (`ModelConfig.attn_window`).

With attn_window = W the query at position i sees the key at position j iff

    j <= i  and  (i - j < W  or  position j holds a meta-token)

its last W positions (itself included, meta or text alike) and every meta-token before them, however
far back. `window_mask` writes this definition as a (B, T, T) boolean mask; `GPT.window_impl =
"dense"` runs the model on it, and it is the reference the tests hold the blocked path to.

The blocked path (`WindowLayout.attend`) costs O(T (C + W + S)) instead of O(T^2):
- queries go in chunks of C = max(W, 64) (T when shorter); chunk c reads its band, the C + W - 1
  keys that end at its last query, under a positional mask that every row shares;
- the meta-tokens that have left the window by the end of the step are gathered per row (S of them
  at most, padded) and appended to every chunk's keys; a gathered meta key at position p is visible
  to query i iff p <= i - W, so a meta-token still inside a query's window is seen once, in the band;
- one `scaled_dot_product_attention` over the (B * T / C) chunks, so a fused kernel runs where the
  device has one (CPU: flash attention with a mask).
With m meta-tokens in a row S <= m, so the cost is O(T (W + m)). When every key is inside every
window (T <= W and nothing gathered) it is plain causal attention.

With `attn_sinks` = n the first n positions of the sequence are kept like meta-tokens (StreamingLLM's
attention sinks): the model passes `is_meta | position < n` as the flags below, so the mask, the blocked
path and the cache treat a sink exactly as a meta-token, and meta-attention never sees it.

Generation keeps a bounded cache (`cache.WindowState`): after each step, each row's last
min(length, W - 1) positions (the next token makes W) and every meta-token before them, which is
exactly what any later query can still see: memory O(W + m) per layer. A step is the same blocked
attention over the cached window followed by the new tokens, with the kept meta-tokens as the
gathered keys; meta-tokens leaving the window join the store, text tokens are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .cache import EMPTY_SLOT, KVCache, LayerCache, WindowState

MIN_CHUNK = 64  # queries per chunk at least: fewer, larger chunks repeat the gathered meta keys less often


def window_mask(is_meta: torch.Tensor, window: int) -> torch.Tensor:
    """(B, T, T) bool of a (B, T) meta mask: query i sees key j iff j <= i and (i - j < window or
    is_meta[:, j]). The definition of attn_window, written as plainly as possible."""
    T = is_meta.size(1)
    i = torch.arange(T, device=is_meta.device)[:, None]
    j = torch.arange(T, device=is_meta.device)[None, :]
    return (j <= i) & ((i - j < window) | is_meta[:, None, :])


def _repeat_heads(t: torch.Tensor, groups: int, dim: int) -> torch.Tensor:
    """Grouped-query attention: each key/value head serves `groups` query heads."""
    return t if groups == 1 else t.repeat_interleave(groups, dim)


@dataclass
class WindowLayout:
    """Where the window and the meta keys of one forward pass are: found once, used by every block."""

    window: int  # W
    start: int  # position of the first new token (the cache's length)
    new: int  # T, new tokens
    prefix: int  # P, cached window positions before them (0 without a cache)
    chunk: int  # C, queries per chunk
    dense_mask: torch.Tensor | None  # (B, T, T): the reference path
    causal: bool  # every key is inside every query's window and no meta-token was stored before: plain causal
    mask: torch.Tensor | None  # (B * chunks, 1, C, C + W - 1 + S) for the blocked path
    leave_batch: torch.Tensor  # (N,) row of each meta-token leaving the window in this step
    leave_index: torch.Tensor  # (N,) its index among this step's keys (the cached window, then the new tokens)
    leave_slot: torch.Tensor  # (N,) its slot in the row's meta store
    stored: int  # S: store slots the attention reads (the most meta-tokens a row keeps)
    capacity: int  # store slots every layer's cache must have
    seq_meta: torch.Tensor  # (B, P + T) meta flags of this step's keys
    store_count: torch.Tensor  # (B,) meta-tokens kept per row after this step
    store_pos: torch.Tensor  # (B, capacity) their positions; EMPTY_SLOT in unused slots

    @property
    def chunks(self) -> int:
        return -(-self.new // self.chunk)

    @classmethod
    def of(cls, is_meta: torch.Tensor, window: int, cache: KVCache | None = None, dense: bool = False) -> WindowLayout:
        """The layout of new tokens with meta flags `is_meta` (B, T), after what `cache` holds."""
        B, T = is_meta.shape
        device = is_meta.device
        state, start = None, 0
        if cache is not None:
            start = cache.length
            if cache.window is None:
                if start:
                    raise ValueError("this KV cache was filled with full attention; start a new cache for attn_window")
                cache.window = WindowState(window, B, device)
            elif cache.window.window != window:
                raise ValueError(f"this KV cache was filled with attn_window={cache.window.window}, not {window}")
            state = cache.window
        P = 0 if state is None else state.win_meta.size(1)
        seq_meta = is_meta if not P else torch.cat((state.win_meta, is_meta), 1)
        Tk = P + T
        before = torch.zeros(B, dtype=torch.long, device=device) if state is None else state.store_count
        store_pos = torch.zeros(B, 0, dtype=torch.long, device=device) if state is None else state.store_pos
        stored_before = 0 if state is None else state.stored
        # keys at index < Tk - (W - 1) are outside the window of every later query; meta ones are kept
        leaving = seq_meta[:, : max(0, Tk - window + 1)]
        if leaving.size(1):  # host sync: how many of the keys leaving the window are meta-tokens
            found = leaving.flatten().nonzero().squeeze(1)
        else:  # none leaves yet (a short prompt, the first W - 1 decoding steps): no sync
            found = torch.zeros(0, dtype=torch.long, device=device)
        leave_batch = leave_index = leave_slot = found[:0]
        after, stored = before, stored_before
        if found.numel():
            leave_batch, leave_index = found // leaving.size(1), found % leaving.size(1)
            leave_slot = before[leave_batch] + leaving.cumsum(1).flatten().index_select(0, found) - 1
            after = before + leaving.sum(1)
            stored = int(after.max())  # host sync
        capacity = store_pos.size(1)
        if stored > capacity:  # grow geometrically, so decoding stays amortised O(1) per meta-token
            capacity = max(stored, 2 * capacity)
            store_pos = torch.cat((store_pos, store_pos.new_full((B, capacity - store_pos.size(1)), EMPTY_SLOT)), 1)
        if found.numel():
            store_pos = store_pos.index_put((leave_batch, leave_slot), start - P + leave_index)
        # All keys inside every window and no stored meta-token (those leaving now are seen in the band):
        # plain causal attention. SDPA's is_causal aligns the top-left corner, so only without a prefix.
        causal = Tk <= window and not stored_before and (P == 0 or T == 1)
        chunk = T if T <= window else min(T, max(window, MIN_CHUNK))
        layout = cls(window, start, T, P, chunk, None, causal, None, leave_batch, leave_index, leave_slot, stored,
                     capacity, seq_meta, after, store_pos)
        if dense and cache is None:
            layout.dense_mask = window_mask(is_meta, window)
        elif not causal:
            layout.mask = layout._blocked_mask()
        return layout

    def _blocked_mask(self) -> torch.Tensor:
        """(B * chunks, 1, C, C + W - 1 + S): band keys by position, gathered meta keys by p <= i - W."""
        W, C, n, P = self.window, self.chunk, self.chunks, self.prefix
        device = self.store_pos.device
        a = torch.arange(C, device=device)[:, None]  # query within its chunk
        b = torch.arange(C + W - 1, device=device)[None, :]  # key within the chunk's band
        near = (b >= a) & (b <= a + W - 1)  # 0 <= query - key < W
        first = P - (W - 1) + C * torch.arange(n, device=device)  # index of each band's first key
        exists = (first[:, None] + b) >= 0  # (n, C + W - 1): the band of an early chunk starts before the keys
        band = (near[None] & exists[:, None, :]).expand(self.store_pos.size(0), n, C, C + W - 1)
        if self.stored:
            query = self.start + torch.arange(n * C, device=device).view(1, n, C, 1)
            meta = self.store_pos[:, None, None, : self.stored] <= query - W  # (B, n, C, S)
            band = torch.cat((band, meta), -1)
        return band.reshape(-1, 1, C, band.size(-1))

    def commit(self, cache: KVCache) -> None:
        """After every block has run: what the cache's bookkeeping holds for the next step."""
        state = cache.window
        keep = min(self.seq_meta.size(1), self.window - 1)
        state.win_meta = self.seq_meta[:, self.seq_meta.size(1) - keep:].clone()
        state.store_count, state.store_pos, state.stored = self.store_count, self.store_pos, self.stored

    # ----------------------------------------------------------------- one block's attention

    def attend(self, q, k, v, cache: LayerCache | None, dropout_p: float, scale: float) -> torch.Tensor:
        """q (B, heads, T, hs), k and v (B, kv_heads, T, hs) of the new tokens -> (B, heads, T, hs)."""
        groups = q.size(1) // k.size(1)
        if self.dense_mask is not None:  # the reference: SDPA's own grouped-query attention, not _repeat_heads
            return F.scaled_dot_product_attention(q, k, v, attn_mask=self.dense_mask[:, None], dropout_p=dropout_p,
                                                  scale=scale, enable_gqa=groups > 1)
        if cache is not None and cache.win_k is not None:
            k, v = torch.cat((cache.win_k, k), 2), torch.cat((cache.win_v, v), 2)
        meta_k, meta_v = self._meta_keys(k, v, cache)
        if cache is not None:  # keep what a later query's window can reach: the last W - 1 positions
            keep = min(k.size(2), self.window - 1)
            cache.win_k, cache.win_v = (t[:, :, t.size(2) - keep:].clone() for t in (k, v))
        k, v = _repeat_heads(k, groups, 1), _repeat_heads(v, groups, 1)
        if self.causal:
            return F.scaled_dot_product_attention(q, k, v, is_causal=self.new > 1, dropout_p=dropout_p, scale=scale)
        return self._blocked(q, k, v, meta_k, meta_v, groups, dropout_p, scale)

    def _meta_keys(self, k, v, cache: LayerCache | None):
        """The keys/values of the meta-tokens that have left the window, (B, kv_heads, S, hs) each,
        after storing those leaving in this step in the cache; (None, None) when there are none."""
        B, heads, _, hs = k.shape
        leaving = [t[self.leave_batch, :, self.leave_index] for t in (k, v)]  # (N, kv_heads, hs)
        if cache is None:
            if not self.stored:
                return None, None
            slots = self.leave_batch * self.stored + self.leave_slot
            return tuple(k.new_zeros(B * self.stored, heads, hs).index_copy(0, slots, t)
                         .view(B, self.stored, heads, hs).transpose(1, 2) for t in leaving)
        if cache.store_k is None or cache.store_k.size(2) < self.capacity:
            grown = [k.new_zeros(B, heads, self.capacity, hs) for _ in range(2)]
            if cache.store_k is not None:
                used = cache.store_k.size(2)
                grown[0][:, :, :used], grown[1][:, :, :used] = cache.store_k, cache.store_v
            cache.store_k, cache.store_v = grown
        if self.leave_index.numel():
            cache.store_k[self.leave_batch, :, self.leave_slot] = leaving[0]
            cache.store_v[self.leave_batch, :, self.leave_slot] = leaving[1]
        if not self.stored:
            return None, None
        return cache.store_k[:, :, : self.stored], cache.store_v[:, :, : self.stored]

    def _blocked(self, q, k, v, meta_k, meta_v, groups: int, dropout_p: float, scale: float) -> torch.Tensor:
        """Chunked attention: each chunk of C queries over its band of C + W - 1 keys and the gathered meta keys."""
        B, heads, T, hs = q.shape
        W, C, n = self.window, self.chunk, self.chunks
        P = k.size(2) - T
        front, back = max(0, W - 1 - P), n * C - T  # zero keys before the first and after the last one

        def bands(t):  # (B, heads, P + T, hs) -> (B, n, heads, C + W - 1, hs)
            t = F.pad(t, (0, 0, front, back)).narrow(2, P + front - (W - 1), n * C + W - 1)
            t = t.unfold(2, C + W - 1, C).permute(0, 2, 1, 4, 3)
            return t

        keys, values = bands(k), bands(v)
        if meta_k is not None:
            S = meta_k.size(2)
            extra = [_repeat_heads(t, groups, 1)[:, None].expand(B, n, heads, S, hs) for t in (meta_k, meta_v)]
            keys, values = torch.cat((keys, extra[0]), 3), torch.cat((values, extra[1]), 3)
        width = keys.size(3)
        queries = F.pad(q, (0, 0, 0, back)).view(B, heads, n, C, hs).transpose(1, 2)
        y = F.scaled_dot_product_attention(
            queries.reshape(B * n, heads, C, hs), keys.reshape(B * n, heads, width, hs),
            values.reshape(B * n, heads, width, hs), attn_mask=self.mask, dropout_p=dropout_p, scale=scale,
        )
        return y.view(B, n, heads, C, hs).transpose(1, 2).reshape(B, heads, n * C, hs)[:, :, :T]

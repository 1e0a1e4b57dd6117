"""The key/value cache of both attentions for generation: every position for self-attention, the meta
positions only for meta-attention. With `attn_window` = W the self-attention part is bounded: the last
W - 1 positions and every meta-token before them (`WindowState`; window.py fills it). Shipped in
exported folders with gpt.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


class LayerCache:
    """Keys and values of one block. Self-attention: every position. Meta-attention: meta only.

    Both live in buffers with spare capacity that grow geometrically, so a decode step writes one
    slot instead of copying the whole cache (torch.cat) every step.
    """

    def __init__(self):
        self._k = self._v = None  # (B, nh, capacity, hs); the first `size` slots are valid
        self.size = 0
        self.meta_k: torch.Tensor | None = None  # (B, nh, capacity, hs); row b holds meta_count[b] entries
        self.meta_v: torch.Tensor | None = None
        self.meta_count: torch.Tensor | None = None  # (B,) long
        # attn_window only (window.py): K/V of the window, its last min(length, W - 1) positions in order,
        # and of the meta-tokens that have left it, row b's first WindowState.store_count[b] slots
        self.win_k = self.win_v = self.store_k = self.store_v = None  # (B, heads, n, hs)

    @property
    def k(self) -> torch.Tensor | None:  # (B, nh, T_past, hs)
        return None if self._k is None else self._k.narrow(2, 0, self.size)

    @property
    def v(self) -> torch.Tensor | None:
        return None if self._v is None else self._v.narrow(2, 0, self.size)

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep (and repeat) batch rows `rows`, in that order, as beam search does after every step."""
        if self._k is not None:
            self._k, self._v = (t.index_select(0, rows.to(t.device)) for t in (self.k, self.v))
        for name in ("meta_k", "meta_v", "meta_count", "win_k", "win_v", "store_k", "store_v"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.index_select(0, rows.to(t.device)))

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new keys/values (B, nh, T, hs) after the cached ones; return all of them."""
        need = self.size + k.size(2)
        if self._k is None or need > self._k.size(2):
            capacity = max(need, 2 * self.size, 64)
            B, nh, _, hs = k.shape
            grown = [k.new_empty(B, nh, capacity, hs) for _ in range(2)]
            if self.size:
                grown[0].narrow(2, 0, self.size).copy_(self.k)
                grown[1].narrow(2, 0, self.size).copy_(self.v)
            self._k, self._v = grown
        self._k.narrow(2, self.size, k.size(2)).copy_(k)
        self._v.narrow(2, self.size, v.size(2)).copy_(v)
        first, self.size = self.size == 0, need
        return (k, v) if first else (self.k, self.v)  # a fresh k is contiguous; prefill reads it


# Position of an empty slot of the meta store: later than any query, so no query ever sees it.
EMPTY_SLOT = 2**62


class WindowState:
    """The bookkeeping of a bounded (attn_window = W) self-attention cache, the same for every layer:
    which of the cached window's positions are meta-tokens, and where the meta-tokens that have
    left the window sat. Each layer's keys and values are in its LayerCache (win_k, store_k, ...)."""

    def __init__(self, window: int, batch: int, device: torch.device):
        self.window = window
        self.win_meta = torch.zeros(batch, 0, dtype=torch.bool, device=device)  # (B, n): the window's meta flags
        self.store_count = torch.zeros(batch, dtype=torch.long, device=device)  # (B,) meta-tokens kept per row
        self.store_pos = torch.zeros(batch, 0, dtype=torch.long, device=device)  # (B, capacity); EMPTY_SLOT if unused
        self.stored = 0  # max(store_count), kept on the host so that a step needs no sync to know it

    def select_rows(self, rows: torch.Tensor) -> None:
        for name in ("win_meta", "store_count", "store_pos"):
            t = getattr(self, name)
            setattr(self, name, t.index_select(0, rows.to(t.device)))
        self.stored = int(self.store_count.max()) if self.store_count.numel() else 0

    def held_positions(self, length: int) -> list[list[int]]:
        """Per row, the positions whose self-attention keys/values the cache holds, in increasing order."""
        window = list(range(length - self.win_meta.size(1), length))
        return [sorted(row[:count]) + window for row, count in zip(self.store_pos.tolist(), self.store_count.tolist())]


@dataclass
class KVCache:
    layers: list[LayerCache]
    length: int = 0  # positions already processed; new tokens start at this position
    window: WindowState | None = None  # set by the first step of a model with attn_window

    @classmethod
    def empty(cls, n_layer: int) -> "KVCache":
        return cls([LayerCache() for _ in range(n_layer)])

    @property
    def meta_count(self) -> torch.Tensor | None:
        """(B,) meta-tokens cached per row so far: the same in every layer, which all cache them."""
        return self.layers[0].meta_count

    def select_rows(self, rows: torch.Tensor) -> None:
        """Reorder the batch rows of every layer (beam search); positions stay as they are."""
        for layer in self.layers:
            layer.select_rows(rows)
        if self.window is not None:
            self.window.select_rows(rows)

    def nbytes(self) -> int:
        """Bytes of every tensor the cache holds, spare capacity included: its real memory."""
        tensors = [getattr(layer, name) for layer in self.layers for name in
                   ("_k", "_v", "meta_k", "meta_v", "meta_count", "win_k", "win_v", "store_k", "store_v")]
        if self.window is not None:
            tensors += [self.window.win_meta, self.window.store_count, self.window.store_pos]
        return sum(t.untyped_storage().nbytes() for t in tensors if t is not None)


def extend_cache(cache: LayerCache | None, k: torch.Tensor, v: torch.Tensor):
    """Append the new (B, nh, T, hs) keys/values to `cache` (if any); return all keys, values and
    the SDPA mask arguments: (k, v, attn_mask, is_causal). New queries see the whole past and the
    causal part of their own chunk."""
    T, past = k.size(2), 0
    if cache is not None:
        past = cache.size
        k, v = cache.append(k, v)
    if past and T > 1:
        mask = torch.arange(T, device=k.device)[:, None] + past >= torch.arange(past + T, device=k.device)
        return k, v, mask, False
    return k, v, None, past == 0 and T > 1

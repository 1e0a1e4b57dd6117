"""Meta-token injection into training rows (arXiv 2509.16278, section 3.1).

Row layout
----------
With block size ``n`` and rate ``k``, every row holds ``M = round(k * n)`` meta tokens (Python's
round: halves go to the even number). A row is a sequence ``seq`` of ``n + 1`` tokens and the
model sees ``x = seq[:-1]`` and predicts ``y = seq[1:]``, as in nanoGPT.

* Eligible meta positions are ``0 .. n - 1``: exactly the input positions. The last position
  ``n`` only ever appears as a target, so a meta token there would never be read by the model and
  would only waste a target; it always holds text. Position 0 is eligible, so a row may start
  with a meta token (its target is then the row's first text token).
* The ``M`` positions are a uniformly random subset (no repeats) drawn from a generator seeded by
  ``(seed, global row index)`` only, so they do not depend on rank, world size or batch size.
* The other ``n + 1 - M`` positions take the next text tokens of the stream in order: inserting
  meta tokens shifts text right, and what no longer fits flows into the next row. Row ``r``
  starts at text offset ``r * (n - M)``; its last text token (the final target) is also the first
  text token of row ``r + 1``. So concatenating the non-meta inputs ``x`` of successive rows
  reproduces the stream exactly - no text token is lost or repeated among inputs; only that one
  final target overlaps, exactly like nanoGPT's x/y shift.
* Targets that are meta tokens are set to ``ignore_index`` (no loss for predicting a meta token);
  targets after a meta token are ordinary text and keep their loss.
* ``k = 0`` gives plain consecutive nanoGPT windows: row ``r`` is ``tokens[r*n : r*n + n + 1]``.

One epoch has ``(len(tokens) - 1) // (n - M)`` rows; the tail too short for a full row is
dropped. After that the stream starts over (the same text windows, new meta positions, since
the global row index keeps growing).

Distributed: global batch ``s`` is rows ``[s*G, (s+1)*G)`` with ``G = batch_size * world_size``;
rank ``r`` takes ``[s*G + r*batch_size, s*G + (r+1)*batch_size)``. Two ranks with batch ``b`` thus
see exactly the rows of one rank with batch ``2b``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ..model.config import IGNORE_INDEX

__all__ = ["MetaBlockLoader", "inject_meta", "meta_positions", "num_meta", "row_rng", "val_batches"]

_STATE_VERSION = 1


def num_meta(block_size: int, k: float) -> int:
    """M = round(k * block_size): meta tokens per row. Needs 0 <= M < block_size."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    if not 0.0 <= k < 1.0:
        raise ValueError(f"k (meta tokens per text token) must be in [0, 1), got {k!r}")
    m = int(round(k * block_size))
    if m >= block_size:
        # A row of only meta tokens would consume no text: the stream would never advance.
        raise ValueError(f"k={k} puts {m} meta tokens in a block of {block_size}; leave room for text")
    return m


def row_rng(seed: int, row: int) -> np.random.Generator:
    """The generator behind the meta positions of global row `row` (seed and row must be >= 0)."""
    return np.random.default_rng([int(seed), int(row)])


def _draw_positions(block_size: int, m: int, rng: np.random.Generator) -> np.ndarray:
    # The m smallest of block_size i.i.d. uniform keys form a uniformly random m-subset. Only
    # `random` is used, whose stream NumPy keeps stable across versions (unlike `choice`).
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    keys = rng.random(block_size)
    return np.sort(np.argpartition(keys, m - 1)[:m]).astype(np.int64)


def meta_positions(block_size: int, k: float, seed: int, row: int) -> np.ndarray:
    """Sorted positions (in ``0 .. block_size - 1``) of the meta tokens of global row `row`."""
    return _draw_positions(block_size, num_meta(block_size, k), row_rng(seed, row))


def inject_meta(text_tokens, n: int, k: float, meta_id: int, rng) -> np.ndarray | torch.Tensor:
    """Build one row: ``n + 1`` tokens with ``round(k*n)`` meta tokens at random input positions.

    `text_tokens` (1-D array or tensor) must hold at least ``n - M + 1`` tokens; exactly that many
    are used, in order, around the meta tokens (the layout in the module docstring). `rng` is a
    ``numpy.random.Generator`` or an int seed. Returns int64, as a tensor if given a tensor.
    The caller advances its stream by ``n - M`` tokens (the last used token is the next row's first).
    """
    m = num_meta(n, k)
    as_tensor = isinstance(text_tokens, torch.Tensor)
    text = text_tokens.detach().cpu().numpy() if as_tensor else np.asarray(text_tokens)
    if text.ndim != 1:
        raise ValueError(f"text_tokens must be 1-D, got shape {text.shape}")
    needed = n - m + 1
    if text.shape[0] < needed:
        raise ValueError(f"a row of {n} with {m} meta tokens needs {needed} text tokens, got {text.shape[0]}")
    generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    is_meta = np.zeros(n + 1, dtype=bool)
    is_meta[_draw_positions(n, m, generator)] = True
    row = _interleave(is_meta, text[:needed], meta_id)
    return torch.from_numpy(row) if as_tensor else row


def _interleave(is_meta: np.ndarray, text: np.ndarray, meta_id: int) -> np.ndarray:
    """Rows shaped like `is_meta`: meta_id where it is True, the text tokens in order elsewhere
    (row-major, so each row takes its own share of `text`)."""
    seq = np.empty(is_meta.shape, dtype=np.int64)
    seq[is_meta] = meta_id
    seq[~is_meta] = text.reshape(-1)
    return seq


class _RowBuilder:
    """Builds (x, y) for any set of global row indices of one token stream."""

    def __init__(self, tokens, block_size: int, k: float, meta_id: int, seed: int, ignore_index: int) -> None:
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.detach().cpu().numpy()
        if getattr(tokens, "ndim", None) != 1:
            raise ValueError(f"tokens must be a 1-D array, got shape {getattr(tokens, 'shape', None)}")
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.tokens = tokens
        self.block_size = block_size
        self.m = num_meta(block_size, k)
        self.stride = block_size - self.m  # text tokens consumed per row
        self.k, self.meta_id, self.seed, self.ignore_index = k, int(meta_id), int(seed), int(ignore_index)
        self.rows_per_epoch = (len(tokens) - 1) // self.stride
        if self.rows_per_epoch < 1:
            raise ValueError(
                f"{len(tokens)} tokens are too few for one row of block_size={block_size} "
                f"with {self.m} meta tokens (need {self.stride + 1})"
            )

    def build(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        n, width = self.block_size, self.stride + 1
        starts = (rows % self.rows_per_epoch) * self.stride
        # Slicing per row reads only the needed pages of a memmap, unlike one fancy index.
        text = np.stack([np.asarray(self.tokens[s : s + width]) for s in starts]).astype(np.int64)
        if self.m == 0:
            seq = text
        else:
            is_meta = np.zeros((len(rows), n + 1), dtype=bool)
            for i, row in enumerate(rows):
                is_meta[i, _draw_positions(n, self.m, row_rng(self.seed, row))] = True
            seq = _interleave(is_meta, text, self.meta_id)
        x = np.ascontiguousarray(seq[:, :-1])
        y = seq[:, 1:].copy()
        y[y == self.meta_id] = self.ignore_index
        return torch.from_numpy(x), torch.from_numpy(y)


class MetaBlockLoader:
    """Endless, resumable, rank-sharded stream of (x, y) training batches with meta tokens.

    `tokens` is the flat training stream (e.g. `PackedData.train`); `batch_size` is per rank.
    Each `next_batch` returns int64 CPU tensors of shape (batch_size, block_size). The whole
    data position is one integer (the next global row), saved by `state_dict`.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        *,
        block_size: int,
        batch_size: int,
        k: float,
        meta_id: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self._rows = _RowBuilder(tokens, block_size, k, meta_id, seed, ignore_index)
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.row = 0  # global index of the first row of the next global batch

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    @property
    def rows_per_epoch(self) -> int:
        return self._rows.rows_per_epoch

    @property
    def epoch(self) -> float:
        """Passes over the data so far (fractional), for logging."""
        return self.row / self._rows.rows_per_epoch

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        first = self.row + self.rank * self.batch_size
        batch = self._rows.build(np.arange(first, first + self.batch_size, dtype=np.int64))
        self.row += self.global_batch_size
        return batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "row": self.row,
            "seed": self._rows.seed,
            "block_size": self._rows.block_size,
            "k": self._rows.k,
            "meta_id": self._rows.meta_id,
            "num_tokens": int(len(self._rows.tokens)),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at the saved position. The batch size and world size may differ; the stream not."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unknown loader state version {state.get('version')!r}")
        mine = self.state_dict()
        changed = [name for name in ("seed", "block_size", "k", "meta_id", "num_tokens") if state[name] != mine[name]]
        if changed:
            detail = ", ".join(f"{name}: saved {state[name]!r}, now {mine[name]!r}" for name in changed)
            raise ValueError(f"loader state is for a different data stream ({detail})")
        self.row = int(state["row"])


def val_batches(
    tokens: np.ndarray,
    block_size: int,
    batch_size: int,
    k: float,
    meta_id: int,
    seed: int = 0,
    max_batches: int | None = None,
    *,
    ignore_index: int = IGNORE_INDEX,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield a fixed, deterministic set of validation batches (the last one may be smaller).

    Rows follow the training layout (meta positions keyed by ``(seed, row)``, none for k=0) over
    one pass of `tokens`. With `max_batches`, ``C = max_batches * batch_size`` rows evenly spaced
    over the split are used: the j-th starts near text offset ``j * len(tokens) / C`` whatever k
    is, so baseline and meta models are scored on (almost) the same text. Compare them on the
    loss over targets that are not ``ignore_index`` - exactly the text tokens.
    Arguments are checked at the call, not at the first batch.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be a positive integer or None, got {max_batches!r}")
    rows = _RowBuilder(tokens, block_size, k, meta_id, seed, ignore_index)
    total = rows.rows_per_epoch
    count = total if max_batches is None else min(total, max_batches * batch_size)
    picked = np.arange(count, dtype=np.int64)
    if count < total:
        picked = picked * total // count  # strictly increasing, since total / count > 1
    return (rows.build(picked[first : first + batch_size]) for first in range(0, count, batch_size))

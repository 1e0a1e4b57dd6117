"""Meta-tokens per block: M = round(k * n), rounded to nearest (not truncated), in num_meta and in the loader's rows."""

import numpy as np
import pytest

from metatokens.data.inject import MetaBlockLoader, inject_meta, num_meta, val_batches

META = 1

# (n, k, M): M worked out by hand from k * n
CASES = [
    (1024, 0.15, 154),  # 153.6 -> 154 (truncation would give 153)
    (128, 0.2, 26),  # 25.6 -> 26
    (64, 0.1, 6),  # 6.4 -> 6
    (100, 0.37, 37),  # 37.0
    (1024, 0.1, 102),  # 102.4 -> 102
]


@pytest.mark.parametrize("n,k,m", CASES)
def test_meta_count_is_k_times_n_rounded_to_nearest(n, k, m):
    assert m == round(k * n)  # the table above agrees with the formula
    assert num_meta(n, k) == m


@pytest.mark.parametrize("n,k,m", [(1024, 0.15, 154), (128, 0.2, 26)])
def test_every_loader_and_validation_row_holds_round_k_n_meta_tokens(n, k, m):
    tokens = np.arange(2, 2 + 4 * n, dtype=np.int64)  # never META
    x, y = MetaBlockLoader(tokens, block_size=n, batch_size=2, k=k, meta_id=META, seed=3).next_batch()
    assert x.shape == (2, n)
    assert (x == META).sum(1).tolist() == [m, m]
    vx, _ = next(iter(val_batches(tokens, n, 2, k, META, seed=3)))
    assert (vx == META).sum(1).tolist() == [m, m]
    row = inject_meta(tokens, n, k, META, 0)
    assert (row == META).sum() == m and len(row) == n + 1

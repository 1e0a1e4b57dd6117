"""Meta-token injection: row layout, text conservation, loss masking, seeding, sharding, resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metatokens.data.inject import MetaBlockLoader, inject_meta, meta_positions, num_meta, val_batches

META = 1
IGNORE_INDEX = -100


def stream(length: int) -> np.ndarray:
    """A text stream whose tokens are all distinct and never META, so positions are traceable."""
    return np.arange(2, length + 2, dtype=np.uint32)


def loader(tokens, **overrides) -> MetaBlockLoader:
    options = dict(block_size=32, batch_size=4, k=0.25, meta_id=META, seed=7)
    options.update(overrides)
    return MetaBlockLoader(tokens, **options)


def batches(dl: MetaBlockLoader, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [dl.next_batch() for _ in range(count)]


def test_num_meta():
    assert num_meta(1024, 0.1) == 102
    assert num_meta(1024, 0.0) == 0
    assert num_meta(32, 0.25) == 8
    assert num_meta(10, 0.05) == 0  # round(0.5) -> 0 (Python rounds halves to even)
    for bad_k in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError):
            num_meta(32, bad_k)
    with pytest.raises(ValueError):
        num_meta(2, 0.9)  # round(1.8) = 2 meta tokens would leave no text


def test_inject_meta_single_row():
    text = np.arange(100, 200)
    row = inject_meta(text, 20, 0.2, META, np.random.default_rng(0))
    assert row.shape == (21,) and row.dtype == np.int64
    assert (row == META).sum() == 4
    assert row[-1] != META  # the final position is only a target: never a meta token
    assert row[row != META].tolist() == list(range(100, 117))  # next n - M + 1 text tokens, in order
    assert np.array_equal(inject_meta(text, 20, 0.2, META, 0), inject_meta(text, 20, 0.2, META, 0))
    as_tensor = inject_meta(torch.arange(100, 200), 20, 0.2, META, np.random.default_rng(0))
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.tolist() == row.tolist()
    with pytest.raises(ValueError, match="needs 17 text tokens"):
        inject_meta(text[:16], 20, 0.2, META, 0)


def test_every_row_has_exactly_m_meta_tokens_in_input_positions():
    dl = loader(stream(5000), block_size=64, k=0.1)
    m = round(0.1 * 64)
    for x, y in batches(dl, 10):
        assert x.shape == y.shape == (4, 64) and x.dtype == y.dtype == torch.int64
        assert ((x == META).sum(dim=1) == m).all()
        # The last target is always text: the final position is not eligible for meta tokens.
        assert (y[:, -1] != IGNORE_INDEX).all()


def expected_row(tokens: np.ndarray, row: int, n: int, k: float, seed: int) -> tuple[list[int], list[int]]:
    """Row `row` built from the module docstring's layout alone: n + 1 slots, META at the row's
    meta positions, the text from offset row * (n - M) in the other slots; x = seq[:-1] and
    y = seq[1:] with META targets ignored."""
    meta = set(meta_positions(n, k, seed, row).tolist())
    text = iter(tokens[row * (n - len(meta)) :].tolist())
    seq = [META if slot in meta else next(text) for slot in range(n + 1)]
    return seq[:-1], [IGNORE_INDEX if t == META else t for t in seq[1:]]


def test_no_text_token_lost_or_repeated_and_targets_are_next_tokens():
    tokens = stream(3000)
    dl = loader(tokens, block_size=32, k=0.25, batch_size=3)
    inputs = []
    for step, (x, y) in enumerate(batches(dl, 12)):
        for b, (row_x, row_y) in enumerate(zip(x.tolist(), y.tolist())):
            inputs.extend(t for t in row_x if t != META)
            want_x, want_y = expected_row(tokens, step * 3 + b, 32, 0.25, seed=7)
            assert row_x == want_x
            assert row_y == want_y  # every target, the final one (the next row's first text) included
    # Concatenated non-meta inputs are exactly the stream: nothing skipped, nothing repeated.
    assert inputs == tokens[: len(inputs)].tolist()
    assert len(inputs) == 12 * 3 * (32 - 8)


def test_final_target_is_next_rows_first_text_token():
    tokens = stream(1000)
    x, y = loader(tokens, batch_size=2).next_batch()
    first_text_of_row_1 = next(t for t in x[1].tolist() if t != META)
    assert y[0, -1].item() == first_text_of_row_1


def test_k_zero_is_plain_nanogpt_windows():
    tokens = stream(1000)
    dl = loader(tokens, k=0.0, block_size=16, batch_size=2)
    for step in range(3):
        x, y = dl.next_batch()
        for b in range(2):
            start = (step * 2 + b) * 16
            assert x[b].tolist() == tokens[start : start + 16].tolist()
            assert y[b].tolist() == tokens[start + 1 : start + 17].tolist()
        assert not (x == META).any() and not (y == IGNORE_INDEX).any()


def test_same_seed_same_batches_other_seed_differs():
    tokens = stream(4000)
    first = batches(loader(tokens, seed=3), 5)
    second = batches(loader(tokens, seed=3), 5)
    other = batches(loader(tokens, seed=4), 5)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, second))
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(first, other))


def test_positions_depend_only_on_seed_and_global_row():
    tokens = stream(4000)
    (x_big, _), = batches(loader(tokens, batch_size=6), 1)
    small = loader(tokens, batch_size=2)
    x_small = torch.cat([x for x, _ in batches(small, 3)])
    assert torch.equal(x_big, x_small)
    for row in range(6):
        assert (x_big[row] == META).nonzero().flatten().tolist() == meta_positions(32, 0.25, 7, row).tolist()


def test_positions_are_roughly_uniform():
    n, k, rows = 64, 0.25, 4000
    counts = np.zeros(n)
    for row in range(rows):
        positions = meta_positions(n, k, seed=11, row=row)
        assert len(set(positions.tolist())) == len(positions) == 16
        assert positions.min() >= 0 and positions.max() < n
        counts[positions] += 1
    expected = rows * 16 / n  # 1000 per position
    chi_square = ((counts - expected) ** 2 / expected).sum()
    # 63 degrees of freedom: mean 63, sd ~11; allow a wide margin (and the upper bound fails for
    # any systematic bias such as never using position 0 or n - 1).
    assert chi_square < 140, chi_square
    assert counts.min() > 0.85 * expected and counts.max() < 1.15 * expected


def test_positions_are_random_not_periodic():
    """A randomly shifted periodic grid passes the uniformity test above; its gaps do not. The gap
    between consecutive positions of a uniformly random m-subset of 0..n-1 has
    P(gap >= g) = C(n - g + 1, m) / C(n, m) (take g - 1 slots out of that gap), close to a
    geometric law with p = m / n; a periodic row has a single gap value."""
    n, k, rows = 64, 0.25, 2000
    m = round(k * n)
    gaps = np.concatenate([np.diff(meta_positions(n, k, seed=5, row=row)) for row in range(rows)])
    distinct_per_row = [len(set(np.diff(meta_positions(n, k, seed=5, row=row)).tolist())) for row in range(200)]
    assert min(distinct_per_row) >= 3 and np.mean(distinct_per_row) > 5
    assert len(set(gaps.tolist())) >= 12
    at_least = np.array([math.comb(n - g + 1, m) / math.comb(n, m) for g in range(1, 15)])
    expected = len(gaps) * np.append(at_least[:-1] - at_least[1:], at_least[-1])  # gaps 1..13, then >= 14
    observed = np.append(np.bincount(gaps, minlength=14)[1:14], (gaps >= 14).sum())
    assert observed[0] == pytest.approx(len(gaps) * m / n, rel=0.05)  # P(gap = 1) = m / n exactly
    chi_square = ((observed - expected) ** 2 / expected).sum()
    # 13 degrees of freedom: mean 13, sd ~5 (a periodic grid puts every gap in one bin)
    assert chi_square < 40, (chi_square, observed.tolist(), expected.round().tolist())


def test_two_ranks_reproduce_the_one_rank_global_batch():
    tokens = stream(6000)
    single = loader(tokens, batch_size=8)
    ranks = [loader(tokens, batch_size=4, rank=r, world_size=2) for r in range(2)]
    for _ in range(4):
        x, y = single.next_batch()
        parts = [dl.next_batch() for dl in ranks]
        assert torch.equal(x, torch.cat([p[0] for p in parts]))
        assert torch.equal(y, torch.cat([p[1] for p in parts]))


def test_state_dict_resumes_exactly():
    tokens = stream(3000)
    dl = loader(tokens)
    batches(dl, 3)
    state = dl.state_dict()
    expected = batches(dl, 4)
    resumed = loader(tokens)
    resumed.load_state_dict(state)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(expected, batches(resumed, 4)))
    with pytest.raises(ValueError, match="seed"):
        loader(tokens, seed=8).load_state_dict(state)
    with pytest.raises(ValueError, match="num_tokens"):
        loader(stream(2000)).load_state_dict(state)


def test_resume_across_world_sizes():
    tokens = stream(6000)
    single = loader(tokens, batch_size=8)
    batches(single, 2)
    state = single.state_dict()
    x, _ = single.next_batch()
    ranks = [loader(tokens, batch_size=4, rank=r, world_size=2) for r in range(2)]
    for dl in ranks:
        dl.load_state_dict(state)
    assert torch.equal(x, torch.cat([dl.next_batch()[0] for dl in ranks]))


def test_loops_over_epochs():
    tokens = stream(200)
    dl = loader(tokens, block_size=16, k=0.25, batch_size=5)
    stride = 16 - 4
    assert dl.rows_per_epoch == (200 - 1) // stride == 16
    rows = torch.cat([x for x, _ in batches(dl, 8)])  # 40 rows: two and a half epochs
    text = [[t for t in row.tolist() if t != META] for row in rows]
    for r in range(40):
        start = (r % 16) * stride
        assert text[r] == tokens[start : start + stride].tolist()
    # Same text windows in the next epoch, but fresh meta positions.
    assert not torch.equal(rows[0], rows[16])
    assert dl.epoch == pytest.approx(40 / 16)


def test_memmap_uint16_input(tmp_path):
    path = tmp_path / "t.bin"
    stream(500).astype(np.uint16).tofile(path)
    tokens = np.memmap(path, dtype=np.uint16, mode="r")
    x, y = loader(tokens).next_batch()
    assert x.dtype == torch.int64
    assert [t for t in x[0].tolist() if t != META] == list(range(2, 26))


def test_too_few_tokens_and_bad_arguments():
    with pytest.raises(ValueError, match="too few"):
        loader(stream(20), block_size=32)
    with pytest.raises(ValueError):
        loader(stream(100), rank=2, world_size=2)
    with pytest.raises(ValueError):
        loader(stream(100), batch_size=0)


def test_val_batches_are_fixed_and_cover_the_split():
    tokens = stream(2000)
    first = list(val_batches(tokens, 32, 4, 0.25, META, 0))
    second = list(val_batches(tokens, 32, 4, 0.25, META, 0))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, second))
    rows = (2000 - 1) // 24
    assert sum(len(x) for x, _ in first) == rows and len(first[-1][0]) == rows % 4
    assert all(((x == META).sum(dim=1) == 8).all() for x, _ in first)
    text = [t for x, _ in first for row in x.tolist() for t in row if t != META]
    assert text == tokens[: len(text)].tolist()


def test_val_batches_max_batches_spreads_rows_alike_for_baseline_and_meta():
    tokens = stream(5000)
    meta_rows = torch.cat([x for x, _ in val_batches(tokens, 32, 4, 0.25, META, 0, max_batches=2)])
    base_rows = torch.cat([x for x, _ in val_batches(tokens, 32, 4, 0.0, META, 0, max_batches=2)])
    assert meta_rows.shape == base_rows.shape == (8, 32)
    assert not (base_rows == META).any()
    meta_starts = [next(t for t in row.tolist() if t != META) - 2 for row in meta_rows]
    base_starts = [row[0].item() - 2 for row in base_rows]
    for j, (a, b) in enumerate(zip(meta_starts, base_starts)):
        # Both spread evenly over the split: the j-th row starts near j * len / 8 either way.
        assert abs(a - j * 5000 / 8) <= 32 and abs(b - j * 5000 / 8) <= 32
    with pytest.raises(ValueError):
        val_batches(stream(10), 32, 4, 0.25, META, 0)  # checked at the call, not at first batch

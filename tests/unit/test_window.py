"""Windowed self-attention (`ModelConfig.attn_window`): its definition on a hand-made mask, the blocked
path against the dense mask of that definition, and the option off changing nothing.

The definition: the query at position i sees the key at position j iff j <= i and (i - j < W or j is
a meta-token). Tolerances: logits 1e-5 absolute; gradients 1e-4 of each gradient's largest entry.
"""

import copy

import pytest
import torch
from conftest import META, mixed_batch, toy_model
from test_model import assert_close_to_scale, randomize

from metatokens.generation import generate
from metatokens.model import window as window_module
from metatokens.model.config import ConfigError, FamilyConfig, ModelConfig, model_shape
from metatokens.model.family import build_model
from metatokens.model.window import window_mask

# Rows of the hand-made case: T = 7, W = 2, meta-tokens at positions 1 and 4 of row 0, none in row 1.
# Row i, column j: does query i see key j.
HAND_META_ROW = [
    "1000000",
    "1100000",
    "0110000",  # key 0 is two back and text: out of the window
    "0111000",  # key 1 is a meta-token: seen however far back
    "0101100",
    "0100110",
    "0100111",
]
HAND_TEXT_ROW = ["1000000", "1100000", "0110000", "0011000", "0001100", "0000110", "0000011"]


def as_rows(mask: torch.Tensor) -> list[str]:
    return ["".join("1" if v else "0" for v in row) for row in mask.tolist()]


def test_window_mask_matches_a_hand_made_case():
    is_meta = torch.zeros(2, 7, dtype=torch.bool)
    is_meta[0, [1, 4]] = True
    mask = window_mask(is_meta, 2)
    assert as_rows(mask[0]) == HAND_META_ROW
    assert as_rows(mask[1]) == HAND_TEXT_ROW
    # W = 1: each token itself and the meta-tokens before it; W >= T: plain causal attention
    assert as_rows(window_mask(is_meta, 1)[0])[5] == "0100110"
    assert torch.equal(window_mask(is_meta, 7), torch.ones(7, 7, dtype=torch.bool).tril().expand(2, 7, 7))


# attn_sinks = 2 on the same rows: the first two positions stay in every window, as meta-tokens do.
HAND_SINK_META_ROW = ["1000000", "1100000", "1110000", "1111000", "1101100", "1100110", "1100111"]
HAND_SINK_TEXT_ROW = ["1000000", "1100000", "1110000", "1111000", "1101100", "1100110", "1100011"]


def test_sinks_keep_the_first_positions_in_every_window_as_a_hand_made_case(monkeypatch):
    """The mask the model itself builds with attn_window = 2 and attn_sinks = 2 (the dense path's), read off
    its layout: the hand-made rows above."""
    layouts = []
    build = window_module.WindowLayout.of.__func__

    def record(cls, *args, **kwargs):
        layouts.append(build(cls, *args, **kwargs))
        return layouts[-1]

    monkeypatch.setattr(window_module.WindowLayout, "of", classmethod(record))
    model = toy_model(pos_encoding="rope", attn_window=2, attn_sinks=2)
    model.window_impl = "dense"
    idx = torch.randint(8, 97, (2, 7), generator=torch.Generator().manual_seed(0))
    idx[0, [1, 4]] = META
    model(idx)
    assert as_rows(layouts[-1].dense_mask[0]) == HAND_SINK_META_ROW
    assert as_rows(layouts[-1].dense_mask[1]) == HAND_SINK_TEXT_ROW


def meta_rich_batch(T: int, seed: int = 0) -> torch.Tensor:
    """mixed_batch's rows (no meta-token, one, many, only meta, the first only) plus one with a meta-token
    every 10 positions: rows with different meta counts, some far behind every window."""
    idx = mixed_batch(T, seed)
    every = torch.randint(8, 97, (1, T), generator=torch.Generator().manual_seed(seed + 1))
    every[0, ::10] = META
    return torch.cat((idx, every))


def blocked_and_dense(**overrides):
    blocked = randomize(toy_model(**overrides))
    dense = copy.deepcopy(blocked)
    dense.window_impl = "dense"
    return blocked, dense


def assert_same_logits_and_gradients(blocked, dense, idx):
    targets = torch.roll(idx, -1, 1)
    out_b, loss_b = blocked(idx, targets)
    out_d, loss_d = dense(idx, targets)
    assert torch.isfinite(out_b).all()
    assert (out_b - out_d).abs().max() <= 1e-5
    loss_b.backward()
    loss_d.backward()
    for (name, p_b), p_d in zip(blocked.named_parameters(), dense.parameters()):
        if p_d.grad is None:  # meta-attention's weights, in a batch without a meta-token
            assert p_b.grad is None, name
            continue
        assert torch.isfinite(p_b.grad).all(), name
        assert_close_to_scale(p_b.grad, p_d.grad, 1e-4, name)


@pytest.mark.parametrize("pos_encoding,meta_pos", [("ape", "keep"), ("ape", "zero"), ("rope", "keep"), ("rope", "zero"),
                                                   ("none", "keep")])
@pytest.mark.parametrize("window", [1, 3, 8])
def test_blocked_path_equals_the_dense_reference(pos_encoding, meta_pos, window):
    """T = 50: several chunks with W = 1, 3 or 8 (chunks of 64 would hold all 50; MIN_CHUNK is lowered so that
    the band, the padding of the last chunk and the gathered meta keys all come into play)."""
    blocked, dense = blocked_and_dense(pos_encoding=pos_encoding, meta_pos=meta_pos, attn_window=window)
    idx = meta_rich_batch(50)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(window_module, "MIN_CHUNK", 16)
        assert_same_logits_and_gradients(blocked, dense, idx)


@pytest.mark.parametrize("window,T", [(5, 150), (70, 200), (8, 64)])
def test_blocked_path_equals_the_dense_reference_with_the_real_chunk_size(window, T):
    """Chunks of max(W, 64): a last chunk that is partly padding (150, 200) and one chunk exactly (64)."""
    blocked, dense = blocked_and_dense(pos_encoding="rope", attn_window=window, block_size=T)
    assert_same_logits_and_gradients(blocked, dense, meta_rich_batch(T))


@pytest.mark.parametrize("window,sinks", [(1, 1), (3, 4), (8, 4), (5, 30)])
def test_blocked_path_with_sinks_equals_the_dense_reference(window, sinks):
    """Sinks go through the blocked path's gathered keys like meta-tokens: several chunks (MIN_CHUNK 16), sinks
    fewer than, as many as, and more than the window."""
    blocked, dense = blocked_and_dense(pos_encoding="rope", attn_window=window, attn_sinks=sinks)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(window_module, "MIN_CHUNK", 16)
        assert_same_logits_and_gradients(blocked, dense, meta_rich_batch(50))


def test_sinks_carry_the_first_tokens_and_never_enter_meta_attention():
    """Causal reach with W = 4 and 2 sinks: a token at position 1 still reaches position 15, one at position 2
    does not. And a window wider than the sequence with sinks is full attention: the sink flags change the
    self-attention's mask alone, never which positions meta-attention reads."""
    model = randomize(toy_model(pos_encoding="rope", attn_window=4, attn_sinks=2, meta_attention=False, n_layer=1))
    idx = torch.randint(10, 97, (1, 20), generator=torch.Generator().manual_seed(3))
    base = model(idx)[0][0, 15]
    for where, reaches in ((1, True), (2, False)):
        changed = idx.clone()
        changed[0, where] = 8
        assert torch.allclose(model(changed)[0][0, 15], base) is not reaches, where
    wide = randomize(toy_model(pos_encoding="rope", attn_window=30, attn_sinks=3))
    full = copy.deepcopy(wide)
    full.config = full.config.replace(attn_window=None, attn_sinks=0)
    batch = meta_rich_batch(30)
    assert torch.equal(wide(batch)[0], full(batch)[0])


def test_blocked_path_without_any_meta_token_is_a_sliding_window():
    blocked, dense = blocked_and_dense(pos_encoding="none", attn_window=4)
    idx = torch.randint(8, 97, (3, 40), generator=torch.Generator().manual_seed(2))
    assert_same_logits_and_gradients(blocked, dense, idx)


@pytest.mark.parametrize("pos_encoding", ["ape", "rope", "none"])
def test_a_window_at_least_the_length_is_full_attention(pos_encoding):
    windowed = toy_model(pos_encoding=pos_encoding, attn_window=30)
    full = copy.deepcopy(windowed)
    full.config = full.config.replace(attn_window=None)
    idx = meta_rich_batch(30)
    assert torch.equal(windowed(idx)[0], full(idx)[0])
    windowed.config = windowed.config.replace(attn_window=29)  # one position short: the first key drops out
    assert not torch.allclose(windowed(idx)[0], full(idx)[0])


def test_the_window_changes_what_text_far_back_can_do_and_meta_tokens_carry_it():
    """Causal reach: with W = 4, changing a text token 10 positions back leaves a logit unchanged, changing a
    meta-token there does not (through self-attention alone: no meta-attention)."""
    model = randomize(toy_model(pos_encoding="rope", attn_window=4, meta_attention=False, n_layer=1))
    idx = torch.randint(8, 97, (1, 20), generator=torch.Generator().manual_seed(3))
    idx[0, 5] = META
    base = model(idx)[0][0, 15]
    text = idx.clone()
    text[0, 6] = 8 if idx[0, 6] != 8 else 9
    assert torch.equal(model(text)[0][0, 15], base)
    later = idx.clone()
    later[0, 5] = 9  # the meta-token becomes text: position 15 no longer sees it
    assert not torch.allclose(model(later)[0][0, 15], base)


def test_grouped_query_family_model_equals_the_dense_reference():
    cfg = FamilyConfig(vocab_size=97, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, meta_token_id=META,
                       pos_encoding="rope", attn_window=5)
    torch.manual_seed(0)
    blocked = build_model(cfg).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in blocked.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    dense = copy.deepcopy(blocked)
    dense.window_impl = "dense"
    assert_same_logits_and_gradients(blocked, dense, meta_rich_batch(40))


def test_the_option_off_never_enters_the_window_code(monkeypatch):
    """attn_window None (every existing model and checkpoint): the forward, the cache and generation run the
    code they ran before the option existed (tests/integration/test_golden_loss.py holds the losses)."""
    def refuse(*args, **kwargs):
        raise AssertionError("the windowed layout was built for a model without attn_window")

    monkeypatch.setattr(window_module.WindowLayout, "of", refuse)
    model = toy_model(pos_encoding="rope")
    model(meta_rich_batch(20))
    generate(model, meta_rich_batch(8), 4, temperature=0)
    saved = model.config.to_dict()
    saved.pop("attn_window")  # a config.json written before the option existed
    saved.pop("attn_sinks")
    loaded = ModelConfig.from_dict(saved)
    assert loaded.attn_window is None and loaded.attn_sinks == 0


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "wide"])
def test_bad_windows_are_refused(bad):
    with pytest.raises(ConfigError, match="attn_window"):
        model_shape("toy", attn_window=bad)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "four"])
def test_bad_sinks_are_refused(bad):
    with pytest.raises(ConfigError, match="attn_sinks must be"):
        model_shape("toy", attn_window=8, attn_sinks=bad)


def test_sinks_without_a_window_are_refused():
    with pytest.raises(ConfigError, match="attn_sinks keeps the first positions inside a window: set attn_window"):
        model_shape("toy", attn_sinks=4)

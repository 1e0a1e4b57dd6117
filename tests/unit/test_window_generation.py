"""The bounded KV cache of a model with attn_window = W: after each step it holds each row's last
min(length, W - 1) positions (the next token makes W) and every meta-token before them, nothing else;
cached generation equals the dense windowed forward over the whole sequence at every step (logits
1e-5); an exported model carries the option.
"""

import copy
import json

import pytest
import torch
from conftest import HF_TEXTS, META, load_hf, toy_model
from test_model import randomize

from metatokens.generation import generate
from metatokens.generation.decode import generate_ids
from metatokens.hf.export import export_hf
from metatokens.model import GPT
from metatokens.model.cache import KVCache
from metatokens.model.config import model_shape
from metatokens.runs.model_folder import save_pretrained
from metatokens.tokenizer import MetaTokenizer

W = 5


def windowed(pos_encoding="rope", window=W, **overrides):
    """(blocked model, its dense-mask twin) with random weights far from uniform attention."""
    model = randomize(toy_model(pos_encoding=pos_encoding, attn_window=window, **overrides))
    dense = copy.deepcopy(model)
    dense.window_impl = "dense"
    return model, dense


def prompt_batch(T: int, seed: int = 0) -> torch.Tensor:
    """Three rows: no meta-token, one at the start, one every third position."""
    idx = torch.randint(8, 97, (3, T), generator=torch.Generator().manual_seed(seed))
    idx[1, 0] = META
    idx[2, ::3] = META
    return idx


def expected_positions(seq: torch.Tensor, window: int, sinks: int = 0) -> list[list[int]]:
    """What a later query can still see: the last window - 1 positions, every meta-token before them and the
    first `sinks` positions."""
    L = seq.size(1)
    return [[j for j in range(L) if j >= L - (window - 1) or row[j] == META or j < sinks] for row in seq.tolist()]


def layer_keys(model: GPT, seq: torch.Tensor) -> torch.Tensor:
    """Block 0's self-attention keys (B, heads, T, hs) of an APE model, computed from the weights."""
    x = model.wte(seq) + model.wpe(torch.arange(seq.size(1)))
    C = model.config.n_embd
    k = model.h[0].attn.c_attn(model.h[0].ln_1(x)).split(C, 2)[1]
    return k.view(*seq.shape, model.config.n_head, -1).transpose(1, 2)


@torch.no_grad()
def test_eviction_keeps_exactly_the_window_and_the_meta_tokens():
    """Counts and contents at every step: a prefill of 7 (longer than W), single tokens, a chunk of 3,
    meta-tokens fed while decoding in one row only. Block 0's cached keys are checked against the keys
    computed from the weights at exactly the positions kept."""
    model, _ = windowed("ape")
    seq = prompt_batch(7)
    cache = KVCache.empty(model.config.n_layer)
    pending = seq
    for step in range(14):
        model(pending, cache=cache)
        want = expected_positions(seq, W)
        assert cache.length == seq.size(1)
        assert cache.window.held_positions(cache.length) == want, step
        keys = layer_keys(model, seq)
        window = min(seq.size(1), W - 1)
        for layer in cache.layers:
            assert layer.win_k.size(2) == layer.win_v.size(2) == window
        stored = cache.window.store_count.tolist()
        assert stored == [len(w) - window for w in want]
        assert torch.allclose(cache.layers[0].win_k, keys[:, :, seq.size(1) - window:], atol=1e-6)
        for b, count in enumerate(stored):
            where = cache.window.store_pos[b, :count]
            assert torch.allclose(cache.layers[0].store_k[b, :, :count], keys[b, :, where], atol=1e-6)
        size = 3 if step == 6 else 1
        pending = torch.randint(8, 97, (3, size), generator=torch.Generator().manual_seed(step))
        if step % 3 == 1:
            pending[0, -1] = META  # meta-tokens join row 0 while decoding
        seq = torch.cat((seq, pending), 1)


@torch.no_grad()
def test_cache_memory_stops_growing_once_the_window_is_full_and_only_meta_tokens_add_to_it():
    model, _ = windowed("rope", meta_attention=False)
    cache = KVCache.empty(model.config.n_layer)
    model(torch.randint(8, 97, (2, 3)), cache=cache)
    sizes = []
    for _ in range(60):
        model(torch.randint(8, 97, (2, 1)), cache=cache)
        sizes.append(cache.nbytes())
    assert len(set(sizes[W:])) == 1  # text tokens only: constant once the window is full
    for _ in range(3):  # every meta-token is kept: the cache grows by them alone
        model(torch.full((2, 1), META), cache=cache)
        model(torch.randint(8, 97, (2, W)), cache=cache)
    assert cache.window.store_count.tolist() == [3, 3] and cache.nbytes() > sizes[-1]
    full = KVCache.empty(model.config.n_layer)  # the same steps with full attention hold every position
    plain = toy_model(pos_encoding="rope", meta_attention=False)
    plain(torch.randint(8, 97, (2, 63 + 3 * (W + 1))), cache=full)
    assert full.layers[0].k.size(2) == cache.length and cache.nbytes() < full.nbytes()


@pytest.mark.parametrize("pos_encoding", ["ape", "rope", "none"])
@pytest.mark.parametrize("prompt", [1, W - 1, W, 2 * W + 3])
@pytest.mark.parametrize("window", [1, W])
@torch.no_grad()
def test_generate_with_eviction_equals_the_windowed_full_forward(pos_encoding, prompt, window):
    """Greedy decoding through the bounded cache; at every step its logits against the dense windowed
    forward over the whole sequence so far. Rows differ in meta-tokens; row 0 is fed one every 4 steps.
    W = 1 keeps no window at all: only the meta-tokens."""
    model, dense = windowed(pos_encoding, window)
    seq = prompt_batch(prompt, seed=prompt)
    cache = KVCache.empty(model.config.n_layer)
    pending = seq
    for step in range(24):
        logits = model(pending, cache=cache)[0][:, -1]
        reference = dense(seq)[0][:, -1]
        assert (logits - reference).abs().max() <= 1e-5, step
        pending = logits.argmax(-1, keepdim=True)
        if step % 4 == 3:
            pending[0] = META
        seq = torch.cat((seq, pending), 1)
    assert cache.window.held_positions(cache.length) == expected_positions(seq[:, :-1], window)


@pytest.mark.parametrize("prompt,sinks", [(1, 3), (2, 1), (9, 3)])
@torch.no_grad()
def test_generation_keeps_the_sinks_beside_the_window_and_the_meta_tokens(prompt, sinks):
    """attn_sinks: the first positions are kept like meta-tokens (some arrive while decoding when the prompt is
    shorter than the sinks); at every step the logits equal the dense windowed forward and the cache holds
    exactly the window, the meta-tokens and the sinks."""
    model, dense = windowed("rope", attn_sinks=sinks)
    seq = prompt_batch(prompt, seed=prompt)
    cache = KVCache.empty(model.config.n_layer)
    pending = seq
    for step in range(16):
        logits = model(pending, cache=cache)[0][:, -1]
        assert (logits - dense(seq)[0][:, -1]).abs().max() <= 1e-5, step
        assert cache.window.held_positions(cache.length) == expected_positions(seq, W, sinks), step
        pending = logits.argmax(-1, keepdim=True)
        if step % 5 == 4:
            pending[1] = META
        seq = torch.cat((seq, pending), 1)


@pytest.mark.parametrize("policy", ["none", "every:3"])
def test_cached_generation_equals_recomputation_under_the_meta_policies(policy):
    """stream_tokens with and without the cache (every:3 feeds two tokens in one step)."""
    model, _ = windowed("rope")
    idx = prompt_batch(9)[1:]
    idx[0, 6] = META  # both rows end with two text tokens after a meta-token, as every:N asks
    cached = generate_ids(model, idx, 20, policy=policy, temperature=0)
    recomputed = generate_ids(model, idx, 20, policy=policy, temperature=0, use_cache=False)
    assert torch.equal(cached, recomputed)


@torch.no_grad()
def test_reordered_rows_continue_as_the_reordered_sequences():
    """Beam search's select_rows: the window bookkeeping follows the rows."""
    model, dense = windowed("rope")
    seq = prompt_batch(12)
    cache = KVCache.empty(model.config.n_layer)
    model(seq, cache=cache)
    rows = torch.tensor([2, 2, 0])
    cache.select_rows(rows)
    seq = seq[rows]
    nxt = torch.tensor([[META], [9], [10]])
    logits = model(nxt, cache=cache)[0][:, -1]
    seq = torch.cat((seq, nxt), 1)
    assert (logits - dense(seq)[0][:, -1]).abs().max() <= 1e-5
    assert cache.window.held_positions(cache.length) == expected_positions(seq, W)


def test_a_cache_filled_with_full_attention_is_refused_by_a_windowed_model():
    model, _ = windowed("rope")
    cache = KVCache.empty(model.config.n_layer)
    toy_model(pos_encoding="rope")(prompt_batch(4), cache=cache)
    with pytest.raises(ValueError, match="full attention"):
        model(prompt_batch(1), cache=cache)


def test_an_export_carries_the_window(tmp_path):
    """config.json holds attn_window and attn_sinks and the folder carries window.py; the loaded model's
    logits, cached greedy generation and beam search equal ours."""
    tok = MetaTokenizer.train(HF_TEXTS, 300)
    torch.manual_seed(0)
    model = GPT(model_shape("toy", vocab_size=320, meta_token_id=tok.meta_token_id, pos_encoding="rope", attn_window=4,
                          attn_sinks=2))
    randomize(model.eval())
    save_pretrained(tmp_path / "run", model, tok)
    folder = export_hf(tmp_path / "run", tmp_path / "hf")
    saved = json.loads((folder / "config.json").read_text())
    assert saved["attn_window"] == 4 and saved["attn_sinks"] == 2
    assert (folder / "window.py").is_file() and "first 2 positions (attn_sinks)" in (folder / "README.md").read_text()
    hf = load_hf(folder)
    assert hf.model.config.attn_window == 4 and hf.model.config.attn_sinks == 2
    idx = torch.randint(2, 300, (2, 30), generator=torch.Generator().manual_seed(1))
    idx[0, [2, 9, 17]] = tok.meta_token_id
    with torch.no_grad():
        assert (hf(idx).logits - model(idx)[0]).abs().max() <= 1e-5
    prompt = idx[:, :12]
    ours = generate(model, prompt, 10, temperature=0, vocab_limit=tok.vocab_size)
    assert hf.generate(prompt, max_new_tokens=10, do_sample=False, use_cache=True).tolist() == ours.tolist()
    beams = {"max_new_tokens": 6, "do_sample": False, "num_beams": 3, "num_return_sequences": 2}
    assert hf.generate(prompt, use_cache=True, **beams).tolist() == hf.generate(prompt, use_cache=False, **beams).tolist()

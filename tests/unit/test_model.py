"""Model behaviour against independent references: a dense mask, hand-made cases, formulas."""

import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import META, mixed_batch, toy_model
from metatokens.model.config import ConfigError, ModelConfig, model_shape
from metatokens.model.gpt import GPT, Block, PosInfo
from metatokens.model.cache import KVCache

POS_VARIANTS = list(itertools.product(["ape", "rope", "none"], ["keep", "zero"]))


def set_impl(model: GPT, impl: str) -> GPT:
    for block in model.h:
        block.meta_attn.impl = impl
    return model


@pytest.mark.parametrize("pos_encoding,meta_pos", POS_VARIANTS)
def test_sparse_equals_dense_outputs_and_gradients(pos_encoding, meta_pos):
    sparse = toy_model(pos_encoding=pos_encoding, meta_pos=meta_pos)
    dense = set_impl(copy.deepcopy(sparse), "dense")
    idx = mixed_batch()
    targets = torch.roll(idx, -1, 1)
    out_s, loss_s = sparse(idx, targets)
    out_d, loss_d = dense(idx, targets)
    assert torch.isfinite(out_s).all() and torch.isfinite(out_d).all()
    assert (out_s - out_d).abs().max() <= 1e-5
    loss_s.backward()
    loss_d.backward()
    for (name, p_s), p_d in zip(sparse.named_parameters(), dense.parameters()):
        assert torch.isfinite(p_s.grad).all(), name
        assert_close_to_scale(p_s.grad, p_d.grad, 2e-5, name)
    # the meta sublayers really were exercised: their weights received gradient
    assert sparse.h[0].meta_attn.c_attn.weight.grad.abs().sum() > 0


def assert_close_to_scale(got: torch.Tensor, want: torch.Tensor, rtol: float, what: str = "") -> None:
    """|got - want| <= rtol * max |want| everywhere. A tolerance that follows the tensor's size:
    meta-attention gradients can be 1e-4 in size, where an absolute 1e-5 would pass a 10% error."""
    error, size = (got - want).abs().max().item(), want.abs().max().item()
    assert error <= rtol * size, f"{what}: max error {error:.3g} against max size {size:.3g} (rtol {rtol})"


def randomize(model: GPT, seed: int = 1) -> GPT:
    """Random values for every parameter, biases and LayerNorms included, large enough that attention
    is far from uniform. At initialisation biases are zero and q.k is near 0, so a bias leaking to
    non-meta positions, a wrong mask or a missing rotation would change almost nothing."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if ".ln_" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)  # LayerNorm gains
            else:
                p.copy_((0.2 if p.dim() > 1 else 0.1) * noise)  # matrices and embeddings; biases
    return model


def loop_meta_attention(layer, x, is_meta, scale, theta=None):
    """MetaAttn(x) written from the method's equations, one query at a time, with no mask tensor:
    at a meta position i, y_i = c_proj(sum_j softmax_j(q_i . k_j * scale) v_j) over the meta
    positions j <= i of its row (causal, meta-tokens only); at a non-meta position, nothing (0).
    With `theta`, q_i and k_j are first rotated by RoPE at their absolute positions i and j
    (meta_pos=keep); without it they stay as projected (NoPE, APE, or RoPE with meta_pos=zero)."""
    B, T, C = x.shape
    nh = layer.n_head
    q, k, v = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in layer.c_attn(x).split(C, 2))  # (B, nh, T, hs)
    if theta is not None:
        q, k = (torch.stack([torch.stack([reference_rotate(t[b, h], torch.arange(T), theta) for h in range(nh)])
                             for b in range(B)]) for t in (q, k))
    rows = []
    for b in range(B):
        row = []
        for i in range(T):
            keys = [j for j in range(i + 1) if is_meta[b, j]] if is_meta[b, i] else []
            if not keys:
                row.append(torch.zeros(C))  # no admissible key: the sublayer contributes nothing here
                continue
            s = (q[b, :, i : i + 1] @ k[b, :, keys].transpose(-1, -2)) * scale  # (nh, 1, keys)
            row.append(layer.c_proj((s.softmax(-1) @ v[b, :, keys]).transpose(0, 1).reshape(C)))
        rows.append(torch.stack(row))
    return torch.stack(rows)


# NoPE, and RoPE whose meta q/k are rotated (keep) or not (zero). APE's meta-attention is NoPE's:
# its positions enter with the embeddings only, which test_ape_meta_input_position_follows_meta_pos checks.
REFERENCE_CASES = [("none", "keep"), ("rope", "keep"), ("rope", "zero")]


def reference_theta(model: GPT):
    cfg = model.config
    return cfg.rope_theta if cfg.pos_encoding == "rope" and cfg.meta_pos == "keep" else None


@pytest.mark.parametrize("impl", ["sparse", "dense"])
@pytest.mark.parametrize("pos_encoding,meta_pos", REFERENCE_CASES)
def test_meta_attention_matches_loop_reference_and_is_zero_off_meta(pos_encoding, meta_pos, impl):
    model = set_impl(randomize(toy_model(pos_encoding=pos_encoding, meta_pos=meta_pos)), impl)
    layer = model.h[0].meta_attn
    assert layer.c_proj.bias.abs().min() > 0.001  # a bias that reached non-meta positions would show
    idx = mixed_batch()
    is_meta = idx == META
    x = torch.randn(*idx.shape, model.config.n_embd, requires_grad=True)
    scale = 1 / math.sqrt(model.config.head_dim)
    pos = PosInfo(torch.arange(idx.size(1)), model.rotary, meta_pos == "keep", scale)
    got = layer(x, is_meta, pos)
    ref = loop_meta_attention(layer, x, is_meta, scale, reference_theta(model))
    assert_close_to_scale(got, ref, 1e-5, "output")
    assert torch.equal(got[~is_meta], torch.zeros_like(got[~is_meta]))  # exactly zero, bias included
    assert ref[is_meta].abs().min(-1).values.min() > 0  # ... while every meta position gets something
    # gradients of a random function of the output, for the input and every weight of the sublayer
    cotangent = torch.randn_like(ref)
    inputs = [x, *layer.parameters()]
    grads = torch.autograd.grad(got, inputs, cotangent)
    ref_grads = torch.autograd.grad(ref, inputs, cotangent)
    for name, g, r in zip(["x", *(n for n, _ in layer.named_parameters())], grads, ref_grads):
        assert_close_to_scale(g, r, 1e-5, name)


@pytest.mark.parametrize("impl", ["sparse", "dense"])
@pytest.mark.parametrize("pos_encoding,meta_pos", REFERENCE_CASES)
def test_model_equals_blocks_with_loop_reference_meta_attention(pos_encoding, meta_pos, impl, monkeypatch):
    """The whole model against the same model whose blocks add the loop reference as their meta
    sublayer (x + MetaAttn(LN x), added at meta positions only): logits, loss and every gradient."""
    model = set_impl(randomize(toy_model(pos_encoding=pos_encoding, meta_pos=meta_pos)), impl)
    reference = copy.deepcopy(model)
    idx = mixed_batch()
    targets = torch.roll(idx, -1, 1)
    logits, loss = model(idx, targets)
    loss.backward()
    scale, theta = 1 / math.sqrt(model.config.head_dim), reference_theta(model)

    def reference_block(block, x, is_meta, pos, cache=None):
        x = x + block.attn(block.ln_1(x), pos)
        x = x + loop_meta_attention(block.meta_attn, block.ln_meta(x), is_meta, scale, theta)
        return x + block.mlp(block.ln_2(x))

    monkeypatch.setattr(Block, "forward", reference_block)
    ref_logits, ref_loss = reference(idx, targets)
    ref_loss.backward()
    assert_close_to_scale(logits, ref_logits, 1e-5, "logits")
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
    for (name, p), r in zip(model.named_parameters(), reference.parameters()):
        assert_close_to_scale(p.grad, r.grad, 2e-5, name)
    for block in model.h:  # the meta sublayers mattered: their gradients are of the self-attention's size
        assert block.meta_attn.c_attn.weight.grad.abs().max() > 0.1 * block.attn.c_attn.weight.grad.abs().max()


def test_loss_only_forward_equals_the_full_head_loss_and_gradients():
    """forward(x, y, logits=False) (the training loop's call) runs the LM head at scored positions
    only; its loss and every gradient must be those of the dense formula: cross-entropy of the
    full (B, T, V) logits, averaged over the targets that are neither -100 nor the meta id."""
    model = randomize(toy_model(pos_encoding="rope"))
    reference = copy.deepcopy(model)
    idx = mixed_batch()
    targets = torch.roll(idx, -1, 1)
    targets[:, : idx.size(1) // 2] = -100  # a fine-tuning row: only the end is scored
    assert (targets == META).any()  # and some scored slots hold the meta id, which carries no loss
    logits, loss = model(idx, targets, logits=False)
    assert logits is None
    full = reference.lm_head(reference.hidden_states(idx))  # the dense formula, by hand
    keep = (targets != -100) & (targets != META)
    ref_loss = -full.log_softmax(-1)[keep].gather(1, targets[keep][:, None]).mean()
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
    loss.backward()
    ref_loss.backward()
    for (name, p), r in zip(model.named_parameters(), reference.parameters()):
        assert_close_to_scale(p.grad, r.grad, 1e-5, name)
    _, none_scored = model(idx, torch.full_like(idx, -100), logits=False)
    assert torch.isnan(none_scored)  # as the full path: the loop turns it into 0 for an empty batch


def test_graph_breaks_of_a_training_forward_are_only_the_documented_host_syncs():
    """BENCHMARKS.md section 7: the dense meta-attention compiles to one graph; the sparse path
    breaks only where it counts the meta-tokens (MetaIndex.of), the scored head only where it
    finds the scored positions."""
    idx = mixed_batch()
    targets = torch.roll(idx, -1, 1)
    dense = toy_model(pos_encoding="rope", meta_impl="dense").train()
    torch._dynamo.reset()
    assert torch._dynamo.explain(dense)(idx, targets).graph_break_count == 0
    sparse = toy_model(pos_encoding="rope").train()
    torch._dynamo.reset()
    explained = torch._dynamo.explain(sparse)(idx, targets, logits=False)
    lines = {b.user_stack[-1].line for b in explained.break_reasons}
    assert explained.graph_break_count > 0
    assert all("nonzero()" in line or ".tolist()" in line for line in lines), lines
    torch._dynamo.reset()


def test_no_nan_in_gradients_for_rows_without_meta():
    for impl in ("sparse", "dense"):
        model = set_impl(toy_model(pos_encoding="rope"), impl).train()
        idx = torch.randint(8, 97, (3, 16))  # no meta-token anywhere in the batch
        _, loss = model(idx, torch.roll(idx, -1, 1))
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("pos_encoding,impl", list(itertools.product(["ape", "rope", "none"], ["sparse", "dense"])))
def test_causality_for_both_attentions(pos_encoding, impl):
    model = set_impl(toy_model(pos_encoding=pos_encoding), impl)
    idx = mixed_batch(T=20)
    t = 9
    changed = idx.clone()
    g = torch.Generator().manual_seed(1)
    changed[:, t + 1 :] = torch.randint(8, 97, changed[:, t + 1 :].shape, generator=g)
    changed[:, t + 1 :: 2] = META  # also move meta-tokens around after t
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    assert torch.allclose(a[:, : t + 1], b[:, : t + 1], atol=1e-6)
    assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :], atol=1e-3)  # the change did reach later positions


def test_meta_attention_sublayer_is_causal_on_its_own():
    model = toy_model(pos_encoding="none")
    layer = model.h[0].meta_attn
    T = 12
    is_meta = torch.ones(1, T, dtype=torch.bool)
    x = torch.randn(1, T, model.config.n_embd)
    x2 = x.clone()
    x2[:, 6:] += torch.randn(1, T - 6, model.config.n_embd)
    pos = PosInfo(torch.arange(T), None, True, 0.25)
    with torch.no_grad():
        assert torch.allclose(layer(x, is_meta, pos)[:, :6], layer(x2, is_meta, pos)[:, :6], atol=1e-6)


def test_meta_attention_off_adds_no_parameters_and_changes_nothing_without_meta():
    on = toy_model(meta_attention=True)
    off = GPT(on.config.replace(meta_attention=False)).eval()
    plain = GPT(ModelConfig(**{**on.config.to_dict(), "meta_attention": False, "yarn": None})).eval()
    cfg = on.config  # GPT-2 without meta-attention, counted by hand: tied wte, wpe (APE), per block 2 LNs, qkv, proj, MLP
    C, wpe = cfg.n_embd, cfg.block_size * cfg.n_embd if cfg.pos_encoding == "ape" else 0
    gpt2 = cfg.vocab_size * C + wpe + cfg.n_layer * (12 * C * C + 13 * C) + 2 * C
    assert off.num_params() == plain.num_params() == gpt2
    extra = on.num_params() - off.num_params()
    C = on.config.n_embd
    assert extra == on.config.n_layer * (3 * C * C + 3 * C + C * C + C + 2 * C)  # qkv, proj, LayerNorm
    missing = off.load_state_dict(on.state_dict(), strict=False)
    assert not missing.missing_keys
    assert all(".meta_attn." in k or ".ln_meta." in k for k in missing.unexpected_keys)
    idx = torch.randint(8, 97, (2, 30))
    with torch.no_grad():
        assert torch.equal(on(idx)[0], off(idx)[0])


def test_loss_ignores_meta_targets():
    model = toy_model()
    idx = mixed_batch()
    targets = torch.roll(idx, -1, 1)
    targets[0, :3] = -100
    logits, loss = model(idx, targets)
    keep = (targets != META) & (targets != -100)
    expected = F.cross_entropy(logits[keep], targets[keep])
    assert torch.allclose(loss, expected, atol=1e-6)


@pytest.mark.parametrize("meta_pos", ["keep", "zero"])
def test_ape_meta_input_position_follows_meta_pos(meta_pos):
    """The model's input vectors (seen where they leave the embedding), against wte + wpe by hand:
    a meta-token gets its position vector with keep and none with zero; text always gets it."""
    model = toy_model(pos_encoding="ape", meta_pos=meta_pos)
    seen = []
    handle = model.drop.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    a = torch.tensor([[10, 11, META, 12, 13, 14]])
    b = torch.tensor([[10, 11, 12, 13, META, 14]])
    with torch.no_grad():
        model(a), model(b)
    handle.remove()
    wte, wpe = model.wte.weight.detach(), model.wpe.weight.detach()
    if meta_pos == "keep":
        assert torch.equal(seen[0][0, 2], wte[META] + wpe[2])
        assert torch.equal(seen[1][0, 4], wte[META] + wpe[4])
    else:
        assert torch.equal(seen[0][0, 2], wte[META]) and torch.equal(seen[1][0, 4], wte[META])
    for x, ids in zip(seen, (a, b)):
        for t, token in enumerate(ids[0].tolist()):
            if token != META:
                assert torch.equal(x[0, t], wte[token] + wpe[t])


def reference_rotate(x, positions, theta):
    """RoPE as complex multiplication of (x_i, x_{i+d/2}) by exp(i * pos * theta^(-2i/d))."""
    d = x.size(-1)
    freqs = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    z = torch.complex(x[..., : d // 2].double(), x[..., d // 2 :].double())
    z = z * torch.polar(torch.ones_like(freqs), positions.double()[:, None] * freqs)
    return torch.cat((z.real, z.imag), -1).float()


def test_meta_pos_zero_rope_leaves_meta_q_k_unrotated(monkeypatch):
    model = toy_model(pos_encoding="rope", meta_pos="zero")
    calls = []
    real_sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        calls.append((q.detach(), k.detach()))
        return real_sdpa(q, k, v, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    idx = torch.tensor([[10, META, 11, 12, META, 13]])
    is_meta = (idx == META)[0]
    with torch.no_grad():
        model(idx)
        x = model.h[0].ln_1(model.wte(idx))
        C, nh = model.config.n_embd, model.config.n_head
        q_raw = model.h[0].attn.c_attn(x).split(C, 2)[0].view(1, 6, nh, C // nh).transpose(1, 2)[0]
    q_self, _ = calls[0]  # first call: layer 0 self-attention, (1, nh, T, hs)
    expected = torch.stack([reference_rotate(q_raw[h], torch.arange(6), 10000.0) for h in range(nh)])
    expected[:, is_meta] = q_raw[:, is_meta]
    assert torch.allclose(q_self[0], expected, atol=1e-5)
    assert not torch.allclose(q_raw[:, ~is_meta], q_self[0][:, ~is_meta], atol=1e-3)  # text is rotated
    # layer 0 meta-attention: gathered q of the two meta-tokens, unrotated
    q_meta, _ = calls[1]
    with torch.no_grad():
        xm = model.h[0].ln_meta(model.h[0].attn(x, *_pos_args(model, idx)) + model.wte(idx))
        qm = model.h[0].meta_attn.c_attn(xm).split(C, 2)[0].view(1, 6, nh, C // nh).transpose(1, 2)[0]
    assert torch.allclose(q_meta[0], qm[:, is_meta], atol=1e-5)


def _pos_args(model, idx):
    """Rebuild the PosInfo the model uses, to call a sublayer directly."""
    T = idx.size(1)
    is_meta = idx == META
    pos = PosInfo(torch.arange(T), model.rotary, model.config.meta_pos == "keep", 1 / math.sqrt(model.config.head_dim))
    cos, sin = model.rotary(pos.positions, is_meta if model.config.meta_pos == "zero" else None)
    pos.cos, pos.sin = cos.unsqueeze(-3), sin.unsqueeze(-3)
    return (pos,)


def test_meta_embed_zero_removes_token_embedding_at_meta_positions():
    model = toy_model(pos_encoding="none", meta_embed="zero")
    seen = []
    model.drop.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    model(torch.tensor([[10, META, 11]]))
    assert torch.equal(seen[0][0, 1], torch.zeros(model.config.n_embd))
    assert torch.equal(seen[0][0, 0], model.wte.weight[10].detach())


def test_ape_refuses_positions_beyond_table_and_rope_runs_beyond():
    ape = toy_model(pos_encoding="ape")
    with pytest.raises(ValueError, match="learned absolute position table has 64 rows"):
        ape(torch.randint(8, 97, (1, 65)))
    rope = toy_model(pos_encoding="rope")
    logits, _ = rope(torch.randint(8, 97, (1, 150)))
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("pos_encoding,meta_pos", POS_VARIANTS)
def test_kv_cache_chunks_equal_full_forward(pos_encoding, meta_pos):
    model = toy_model(pos_encoding=pos_encoding, meta_pos=meta_pos)
    idx = mixed_batch(T=30)
    with torch.no_grad():
        full, _ = model(idx)
        cache = KVCache.empty(model.config.n_layer)
        pieces = [model(idx[:, a:b], cache=cache)[0] for a, b in [(0, 11), (11, 12), (12, 20), (20, 21), (21, 30)]]
    assert (torch.cat(pieces, 1) - full).abs().max() <= 1e-5
    assert cache.length == 30
    # the meta cache holds exactly the meta positions of each row
    assert cache.layers[0].meta_count.tolist() == (idx == META).sum(1).tolist()


def test_kv_cache_step_reads_meta_counts_once_not_in_every_layer(monkeypatch):
    """A cached step with a meta-token reads tensor values on the host once (the meta counts, for
    every layer's cache size), not once per layer: on a GPU each read waits for the device."""
    model = toy_model(pos_encoding="rope", n_layer=4)
    idx = mixed_batch(T=12)
    cache = KVCache.empty(model.config.n_layer)
    with torch.no_grad():
        model(idx, cache=cache)
        reads = []
        for name in ("__int__", "__bool__", "__float__", "__index__", "item", "tolist"):
            def counted(t, *args, _real=getattr(torch.Tensor, name), _name=name):
                reads.append(_name)
                return _real(t, *args)

            monkeypatch.setattr(torch.Tensor, name, counted)
        step = torch.full((idx.size(0), 1), META)
        logits, _ = model(step, cache=cache)
        monkeypatch.undo()
    assert reads == ["tolist"]
    full, _ = model(torch.cat((idx, step), 1))
    assert (logits[:, 0] - full[:, -1]).abs().max() <= 1e-5
    assert cache.layers[-1].meta_count.tolist() == ((idx == META).sum(1) + 1).tolist()


@pytest.mark.parametrize(
    "bad",
    [dict(n_head=3), dict(dropout=1.5), dict(pos_encoding="alibi"), dict(meta_token_id=10_000), dict(n_layer=0), dict(mlp_act="swish")],
)
def test_bad_config_values_are_refused(bad):
    with pytest.raises(ConfigError):
        model_shape("toy", **bad)


def test_unknown_config_key_is_refused():
    with pytest.raises(ConfigError, match="unknown model key.*n_layers"):
        ModelConfig.from_dict({"n_layers": 2})


def test_gpt2_small_parameter_counts():
    with torch.device("meta"):
        meta = GPT(model_shape("gpt2-small", vocab_size=50258, meta_token_id=50257))
        base = GPT(model_shape("gpt2-small", vocab_size=50257, meta_attention=False))
    assert base.num_params() == 124_439_808  # GPT-2 small as published by OpenAI / Hugging Face
    assert 152e6 <= meta.num_params() <= 153e6  # the paper: "about 152M"

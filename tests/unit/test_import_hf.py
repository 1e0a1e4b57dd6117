"""`metatokens import-hf`: meta-attention added to Llama-family, GPT-NeoX and GPT-2 checkpoints.

Every checkpoint is a tiny random transformers model built from a config (no network): conftest's
hf_sources, imported once through the CLI as hf_imported. The references are Hugging Face's own
implementations: their logits (fed the meta-token's embedding through inputs_embeds where the
imported model sees a meta-token) and their generate(); our cache is checked against recomputing,
and our sparse meta-attention against a dense masked reference. Training steps, the
pretrain/finetune/evaluate workflow and remote code in a fresh process are in
tests/integration/test_import_hf_workflows.py.
"""

import json
import math

import pytest
import torch

import transformers  # noqa: F401  (a declared test dependency: missing, these tests fail, never skip)
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

import metatokens.model.hf_model  # noqa: F401  (registers the Auto classes)
from conftest import HF_FAMILIES, add_meta_tokens, export_model, hf_bpe, hf_checkpoint, randomise_meta_attention
from metatokens import cli
from metatokens.runs.model_folder import load_pretrained
from metatokens.hf.families import import_hf
from metatokens.generation.decode import generate_ids
from metatokens.model import GPT, KVCache
from metatokens.model.family import FamilyModel
from metatokens.model.gpt import PosInfo
from metatokens.tokenizer import EOS_TOKEN, META_TOKEN


def reference_logits(hf, ids, meta_row, meta):
    """The checkpoint's logits where the meta-token is fed as its embedding row (inputs_embeds)."""
    emb = hf.get_input_embeddings()(ids.masked_fill(ids == meta, 0)).detach()
    emb[ids == meta] = meta_row
    return hf(inputs_embeds=emb).logits


# ------------------------------------------------------------------------------------ import


@pytest.mark.parametrize("family", HF_FAMILIES)
def test_imported_logits_equal_the_checkpoints_with_and_without_meta_tokens(family, hf_sources, hf_imported):
    _, hf = hf_sources[family]
    model, tok, info = load_pretrained(hf_imported[family])
    model.eval()
    assert info["imported_from_hf"]["family"] == ("gpt2" if family == "gpt2" else "neox" if family == "neox" else "llama")
    assert isinstance(model, GPT) and isinstance(model, FamilyModel) == (family != "gpt2")
    V, meta = hf.config.vocab_size, tok.meta_token_id
    assert meta == tok.vocab_size - 1 and model.config.meta_token_id == meta
    keep = torch.arange(V) != meta  # every id of the checkpoint but the meta-token (never scored nor generated)
    torch.manual_seed(0)
    ids = torch.randint(0, tok.vocab_size - 1, (2, 24))
    with torch.no_grad():
        plain = (model(ids)[0][..., :V] - hf(ids).logits)[..., keep].abs().max().item()
        mixed = add_meta_tokens(ids, meta)
        ref = reference_logits(hf, mixed, model.wte.weight[meta], meta)
        metas = (model(mixed)[0][..., :V] - ref)[..., keep].abs().max().item()
    print(f"{family}: max |logit error| {plain:.2e} without, {metas:.2e} with meta-tokens")
    assert plain <= 1e-5 and metas <= 1e-5
    # the meta row (and new padding rows) start as the mean of the token rows, in both matrices if untied
    text_rows = [i for i in range(tok.vocab_size) if i != meta]
    mats = [model.wte.weight] + ([] if model.config.tie_embeddings else [model.lm_head.weight])
    for w in mats:
        torch.testing.assert_close(w[meta], w[text_rows].mean(0))
        if model.config.vocab_size > V:  # rows beyond the checkpoint's
            torch.testing.assert_close(w[-1], w[text_rows].mean(0))


@pytest.mark.parametrize("family", HF_FAMILIES)
def test_the_meta_token_is_special_and_text_never_produces_it(family, hf_imported, hf_sources):
    _, tok, _ = load_pretrained(hf_imported[family])
    ids = tok.encode(f"hello {META_TOKEN} world {EOS_TOKEN} </s>")
    assert tok.meta_token_id not in ids and tok.eos_token_id not in ids
    assert tok.eos_token_id == 0  # the checkpoint's own eos id, whatever its spelling (</s> for llama)
    original = hf_bpe(hf_checkpoint(family, 1)[1])
    assert tok.encode("hello world, the lazy dog") == original.encode("hello world, the lazy dog").ids


def dense_meta_attention(attn, x, is_meta, rotary, rotate_meta):
    """The paper's form: softmax(QK^T/sqrt(d) + M_causal + P) V with repeated k/v heads, zero at non-meta rows."""
    B, T, _ = x.shape
    q, k, v = attn.qkv(x)  # (B, T, heads, hs)
    if rotate_meta:
        cos, sin = rotary(torch.arange(T))
        d = 2 * cos.size(-1)

        def rot(t):
            t1, t2 = t[..., : d // 2], t[..., d // 2: d]
            c, s = cos[None, :, None], sin[None, :, None]
            return torch.cat((t1 * c - t2 * s, t2 * c + t1 * s, t[..., d:]), -1)

        q, k = rot(q), rot(k)
    rep = q.size(2) // k.size(2)
    k, v = k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)
    scores = torch.einsum("bind,bjnd->bnij", q, k) / math.sqrt(q.size(-1))
    allowed = torch.ones(T, T, dtype=torch.bool).tril() & is_meta[:, :, None] & is_meta[:, None, :]
    att = scores.masked_fill(~allowed[:, None], float("-inf")).softmax(-1).nan_to_num(0.0)
    y = torch.einsum("bnij,bjnd->bind", att, v).reshape(B, T, -1)
    return attn.o_proj(y) * is_meta[..., None]


@pytest.mark.parametrize("family", ["llama", "neox"])
@pytest.mark.parametrize("meta_pos", ["keep", "zero"])
def test_family_meta_attention_equals_the_dense_masked_reference(family, meta_pos, hf_imported):
    model, _, _ = load_pretrained(hf_imported[family])
    randomise_meta_attention(model)
    attn = model.h[1].meta_attn
    torch.manual_seed(1)
    x = torch.randn(2, 20, model.config.n_embd)
    is_meta = torch.rand(2, 20) < 0.3
    is_meta[1] = False
    is_meta[1, [2, 19]] = True
    pos = PosInfo(torch.arange(20), model.rotary, meta_pos == "keep", 1 / math.sqrt(model.config.head_dim))
    with torch.no_grad():
        ours = attn(x, is_meta, pos)
        ref = dense_meta_attention(attn, x, is_meta, model.rotary, meta_pos == "keep")
    assert ours[~is_meta].abs().max() == 0  # exactly zero off meta positions
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
    assert ref[is_meta].abs().max() > 1e-2  # not a vacuous comparison


@pytest.mark.parametrize("family", HF_FAMILIES)
def test_cached_decoding_equals_recomputing_with_meta_tokens(family, hf_imported):
    model, tok, _ = load_pretrained(hf_imported[family])
    randomise_meta_attention(model).eval()
    torch.manual_seed(2)
    ids = add_meta_tokens(torch.randint(0, tok.vocab_size - 1, (2, 24)), tok.meta_token_id)
    with torch.no_grad():
        full, _ = model(ids)
        cache = KVCache.empty(model.config.n_layer)
        steps = [model(ids[:, a:b], cache=cache)[0] for a, b in [(0, 4), (4, 5), (5, 6), (6, 13), (13, 14), (14, 24)]]
        without_meta_attention, _ = model(ids.masked_fill(ids == tok.meta_token_id, 1))
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)
    assert (full - without_meta_attention).abs().max() > 1e-2  # the meta-attention is active here
    prompt = ids[:1, :10]
    kw = dict(temperature=0.0, vocab_limit=tok.vocab_size, policy="every:3")  # meta-tokens also enter while decoding
    cached = generate_ids(model, prompt, 12, use_cache=True, **kw)
    assert torch.equal(cached, generate_ids(model, prompt, 12, use_cache=False, **kw))
    assert (cached[0, 10:] == tok.meta_token_id).sum() >= 3


def test_a_loaded_transformers_model_imports_like_its_folder(hf_sources, hf_imported, tmp_path):
    folder, hf = hf_sources["llama"]
    fast = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), eos_token="</s>")
    out = import_hf(hf, tmp_path / "run", tokenizer=fast, block_size=64)
    ours, tok, _ = load_pretrained(out)
    theirs, tok2, _ = load_pretrained(hf_imported["llama"])
    assert tok.to_json_str() == tok2.to_json_str()
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert fast.backend_tokenizer.token_to_id(META_TOKEN) is None  # the caller's tokenizer is left as it was


def test_meta_pos_zero_keeps_text_logits_and_unrotates_meta_tokens(hf_sources, hf_imported, tmp_path):
    _, hf = hf_sources["llama"]
    run = tmp_path / "zero"
    assert cli.main(["import-hf", "--from", str(hf_sources["llama"][0]), "--out", str(run), "--meta-pos", "zero"]) == 0
    zero, tok, _ = load_pretrained(run)
    keep, _, _ = load_pretrained(hf_imported["llama"])
    assert zero.config.meta_pos == "zero"
    ids = torch.randint(0, tok.vocab_size - 1, (2, 24))
    mixed = add_meta_tokens(ids, tok.meta_token_id)
    with torch.no_grad():
        V, meta = hf.config.vocab_size, tok.meta_token_id
        cols = torch.arange(V) != meta
        assert (zero(ids)[0][..., :V] - hf(ids).logits)[..., cols].abs().max() <= 1e-5
        assert (zero(mixed)[0] - keep(mixed)[0]).abs().max() > 1e-3  # meta-tokens are placed differently


# ------------------------------------------------------------------------------------ export


@pytest.mark.parametrize("family", HF_FAMILIES)
def test_export_loads_in_transformers_and_generates_the_same_greedy_tokens(family, hf_imported, tmp_path):
    model, tok, _ = load_pretrained(hf_imported[family])
    randomise_meta_attention(model).eval()
    out = export_model(model, tok, tmp_path, "export")
    assert sorted(p.name for p in out.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")) == []
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    prompt = add_meta_tokens(torch.randint(0, tok.vocab_size - 1, (2, 24)), tok.meta_token_id)[1:]
    with torch.no_grad():
        torch.testing.assert_close(hf(prompt).logits, model(prompt)[0], atol=1e-5, rtol=1e-4)
        theirs = hf.generate(prompt, max_new_tokens=10, do_sample=False, pad_token_id=tok.eos_token_id)
    ours = generate_ids(model, prompt, 10, temperature=0.0, vocab_limit=tok.vocab_size)
    assert torch.equal(theirs, ours)


# ------------------------------------------------------------------------------------ refusals


def test_unsupported_families_and_pickles_are_refused_in_one_line(hf_sources, tmp_path, capsys):
    folder = tmp_path / "neo"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt_neo"}), encoding="utf-8")
    assert cli.main(["import-hf", "--from", str(folder), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'gpt_neo' is not supported" in err and "GPT-NeoX (gpt_neox)" in err
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    src = hf_sources["qwen2"][0]
    for name in ("config.json", "tokenizer.json"):
        (pickled / name).write_bytes((src / name).read_bytes())
    torch.save({}, pickled / "pytorch_model.bin")
    assert cli.main(["import-hf", "--from", str(pickled), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "only safetensors" in err
    assert not (tmp_path / "o").exists()


def test_import_replaces_only_an_earlier_import_and_never_its_source(hf_sources, hf_imported, tmp_path, capsys):
    src = hf_sources["qwen2"][0]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me", encoding="utf-8")
    for out, extra in ((mine, []), (src, []), (hf_imported["qwen2"], [])):
        assert cli.main(["import-hf", "--from", str(src), "--out", str(out), *extra]) == 2
        capsys.readouterr()
    assert (mine / "notes.txt").read_text() == "keep me"
    run = tmp_path / "run"
    assert cli.main(["import-hf", "--from", str(src), "--out", str(run)]) == 0
    assert cli.main(["import-hf", "--from", str(src), "--out", str(run)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(["import-hf", "--from", str(src), "--out", str(run), "--overwrite", "--no-meta"]) == 0
    model, _, _ = load_pretrained(run)
    assert not model.config.meta_attention


def test_the_dense_meta_attention_is_refused_for_imported_families(hf_imported):
    """The family blocks have the sparse path only: meta_impl='dense' is refused in one line, not
    silently run sparse (with the meta index rebuilt in every block)."""
    import dataclasses

    from metatokens.runs.model_folder import read_config
    from metatokens.model.config import ConfigError

    cfg = read_config(hf_imported["neox"])["model"]
    assert cfg.meta_impl == "sparse"
    with pytest.raises(ConfigError, match="sparse meta-attention only"):
        dataclasses.replace(cfg, meta_impl="dense").validate()

"""`metatokens import-hf`: meta-attention added to Llama-family, GPT-NeoX and GPT-2 checkpoints.

Every checkpoint is a tiny random transformers model built here from a config (no network). The
references are Hugging Face's own implementations: their logits (fed the meta-token's embedding
through inputs_embeds where the imported model sees a meta-token) and their generate(); our cache
is checked against recomputing, and our sparse meta-attention against a dense masked reference.
"""

import json
import math
import random
import subprocess
import sys

import pytest
import torch

import transformers  # noqa: F401  (a declared test dependency: missing, these tests fail, never skip)
from tokenizers import ByteLevelBPETokenizer
from transformers import (AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, GPTNeoXConfig,
                          GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config,
                          Qwen2ForCausalLM)

import metatokens.model.hf_model  # noqa: F401  (registers the Auto classes)
from metatokens import cli
from metatokens.checkpoint import load_pretrained, save_pretrained
from metatokens.families import import_hf
from metatokens.inference import generate_ids
from metatokens.model import GPT, KVCache
from metatokens.model.family import FamilyModel
from metatokens.model.gpt import PosInfo
from metatokens.tokenizer import EOS_TOKEN, META_TOKEN

TEXTS = [
    "the quick brown fox jumps over the lazy dog. " * 3,
    "hello world, hello meta tokens! numbers 12 345 and symbols #$%",
    "a b c d e f g h i j k\nnew lines\ttabs  double  spaces",
] * 10
FAMILIES = ["llama", "qwen2", "neox", "gpt2"]


def hf_checkpoint(family: str, vocab: int):
    """(model, eos spelling) of a tiny random checkpoint; each family exercises its own corner."""
    if family == "llama":  # GQA, llama3 rope scaling, untied head, padded vocab, eos spelled </s>
        rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
        cfg = LlamaConfig(vocab_size=vocab + 20, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, rope_parameters=rope, eos_token_id=0,
                          bos_token_id=0, max_position_embeddings=128)
        return LlamaForCausalLM(cfg), "</s>"
    if family == "qwen2":  # one key/value head, biased q/k/v, tied embeddings
        cfg = Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True, eos_token_id=0,
                          bos_token_id=0, max_position_embeddings=128)
        return Qwen2ForCausalLM(cfg), EOS_TOKEN
    if family == "neox":  # partial rotary (half of each head), parallel residual, untied, padded vocab
        cfg = GPTNeoXConfig(vocab_size=vocab + 20, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                            num_attention_heads=4, rotary_pct=0.5, eos_token_id=0, bos_token_id=0,
                            max_position_embeddings=128)
        return GPTNeoXForCausalLM(cfg), EOS_TOKEN
    cfg = GPT2Config(vocab_size=vocab, n_positions=128, n_embd=32, n_layer=2, n_head=4, eos_token_id=0, bos_token_id=0)
    return GPT2LMHeadModel(cfg), EOS_TOKEN


def bpe(eos: str):
    tok = ByteLevelBPETokenizer(add_prefix_space=False)
    tok.train_from_iterator(TEXTS, vocab_size=300, min_frequency=2, special_tokens=[eos], show_progress=False)
    return tok


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """family -> (folder with config.json + model.safetensors + tokenizer files, the HF model)."""
    found = {}
    for i, family in enumerate(FAMILIES):
        folder = tmp_path_factory.mktemp(family)
        probe, eos = hf_checkpoint(family, 1)
        tok = bpe(eos)
        torch.manual_seed(i)
        hf, _ = hf_checkpoint(family, tok.get_vocab_size())
        with torch.no_grad():  # non-trivial norms and biases, weights large enough to vary the outputs
            for name, p in hf.named_parameters():
                p.add_(0.2 * torch.randn_like(p)) if p.dim() == 1 else p.mul_(3)
        hf.eval().save_pretrained(folder)
        tok.save(str(folder / "tokenizer.json"))
        (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": eos}), encoding="utf-8")
        found[family] = folder, hf
    return found


@pytest.fixture(scope="module")
def imported(sources, tmp_path_factory):
    """family -> an import-hf model folder of that family's checkpoint (through the CLI)."""
    runs = {}
    for family, (folder, _) in sources.items():
        run = tmp_path_factory.mktemp(f"{family}-run") / "run"
        assert cli.main(["import-hf", "--from", str(folder), "--out", str(run), "--block-size", "64"]) == 0
        runs[family] = run
    return runs


def with_meta(ids: torch.Tensor, meta: int) -> torch.Tensor:
    """Rows with different numbers of meta-tokens (3 and 5), one at position 0 of row 1."""
    out = ids.clone()
    out[0, [3, 9, 16]] = meta
    out[1, [0, 4, 5, 12, 20]] = meta
    return out


def reference_logits(hf, ids, meta_row, meta):
    """The checkpoint's logits where the meta-token is fed as its embedding row (inputs_embeds)."""
    emb = hf.get_input_embeddings()(ids.masked_fill(ids == meta, 0)).detach()
    emb[ids == meta] = meta_row
    return hf(inputs_embeds=emb).logits


def randomise_meta_attention(model, seed=0):
    """Non-zero output projections: the sublayers then change the logits (as after training)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in model.h:
            out = block.meta_attn.o_proj if isinstance(model, FamilyModel) else block.meta_attn.c_proj
            out.weight.copy_(torch.randn(out.weight.shape, generator=g) * 0.3)
    return model


# ------------------------------------------------------------------------------------ import


@pytest.mark.parametrize("family", FAMILIES)
def test_imported_logits_equal_the_checkpoints_with_and_without_meta_tokens(family, sources, imported):
    _, hf = sources[family]
    model, tok, info = load_pretrained(imported[family])
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
        mixed = with_meta(ids, meta)
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


@pytest.mark.parametrize("family", FAMILIES)
def test_the_meta_token_is_special_and_text_never_produces_it(family, imported, sources):
    _, tok, _ = load_pretrained(imported[family])
    ids = tok.encode(f"hello {META_TOKEN} world {EOS_TOKEN} </s>")
    assert tok.meta_token_id not in ids and tok.eos_token_id not in ids
    assert tok.eos_token_id == 0  # the checkpoint's own eos id, whatever its spelling (</s> for llama)
    original = bpe(hf_checkpoint(family, 1)[1])
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
def test_family_meta_attention_equals_the_dense_masked_reference(family, meta_pos, imported):
    model, _, _ = load_pretrained(imported[family])
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


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_decoding_equals_recomputing_with_meta_tokens(family, imported):
    model, tok, _ = load_pretrained(imported[family])
    randomise_meta_attention(model).eval()
    torch.manual_seed(2)
    ids = with_meta(torch.randint(0, tok.vocab_size - 1, (2, 24)), tok.meta_token_id)
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


@pytest.mark.parametrize("family", FAMILIES)
def test_a_few_training_steps_lower_the_loss_and_train_the_meta_attention(family, imported):
    model, tok, _ = load_pretrained(imported[family])
    model.train()
    torch.manual_seed(3)
    ids = with_meta(torch.randint(0, tok.vocab_size - 1, (2, 25)), tok.meta_token_id)
    x, y = ids[:, :-1], ids[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses
    block = model.h[0]
    out = block.meta_attn.o_proj if family != "gpt2" else block.meta_attn.c_proj
    assert out.weight.abs().max() > 0  # the zero-initialised projection learns


def test_a_loaded_transformers_model_imports_like_its_folder(sources, imported, tmp_path):
    folder, hf = sources["llama"]
    fast = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), eos_token="</s>")
    out = import_hf(hf, tmp_path / "run", tokenizer=fast, block_size=64)
    ours, tok, _ = load_pretrained(out)
    theirs, tok2, _ = load_pretrained(imported["llama"])
    assert tok.to_json_str() == tok2.to_json_str()
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert fast.backend_tokenizer.token_to_id(META_TOKEN) is None  # the caller's tokenizer is left as it was


def test_meta_pos_zero_keeps_text_logits_and_unrotates_meta_tokens(sources, imported, tmp_path):
    _, hf = sources["llama"]
    run = tmp_path / "zero"
    assert cli.main(["import-hf", "--from", str(sources["llama"][0]), "--out", str(run), "--meta-pos", "zero"]) == 0
    zero, tok, _ = load_pretrained(run)
    keep, _, _ = load_pretrained(imported["llama"])
    assert zero.config.meta_pos == "zero"
    ids = torch.randint(0, tok.vocab_size - 1, (2, 24))
    mixed = with_meta(ids, tok.meta_token_id)
    with torch.no_grad():
        V, meta = hf.config.vocab_size, tok.meta_token_id
        cols = torch.arange(V) != meta
        assert (zero(ids)[0][..., :V] - hf(ids).logits)[..., cols].abs().max() <= 1e-5
        assert (zero(mixed)[0] - keep(mixed)[0]).abs().max() > 1e-3  # meta-tokens are placed differently


# ------------------------------------------------------------------------------------ workflows


def test_pretrain_init_finetune_and_evaluate_take_an_imported_model(imported, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = random.Random(0)
    words = "the quick brown fox jumps over lazy dog hello world meta tokens numbers".split()
    for i in range(6):
        (corpus / f"d{i}.txt").write_text(" ".join(rng.choice(words) for _ in range(400)), encoding="utf-8")
    pre = tmp_path / "pre"
    sets = [f"data.source={corpus}", f"data.cache_dir={tmp_path / 'cache'}", "data.max_documents=null",
            "train.eval_interval=0", "train.batch_size=2", "train.max_steps=3", "train.warmup_steps=1"]
    argv = ["pretrain", "--config", "toy", "--init", str(imported["neox"]), "--out", str(pre), "--no-progress"]
    assert cli.main([*argv, *(a for s in sets for a in ("--set", s))]) == 0
    model, _, info = load_pretrained(pre / "checkpoints" / "step-00000003")
    assert isinstance(model, FamilyModel) and model.config.family == "neox" and info["step"] == 3
    run = json.loads((pre / "run.json").read_text())
    assert run["config"]["model"]["family"] == "neox" and run["config"]["data"]["k"] == 0.1
    resume = ["pretrain", "--out", str(pre), "--resume", "--max-steps", "4", "--no-progress"]
    assert cli.main(resume) == 0  # the run's saved settings (a family model) are read back
    ft = tmp_path / "ft"
    assert cli.main(["finetune", "--init", str(pre), "--task", "list_recall,segment_counting,parity,copying",
                     "--max-len", "192", "--steps", "2", "--batch-size", "2", "--eval-n", "2",
                     "--set", "train.warmup_steps=1", "--out", str(ft), "--no-progress"]) == 0
    assert json.loads((ft / "run.json").read_text())["finetune"]["meta"] is True
    for task in ("list_recall", "segment_counting", "parity", "copying"):
        assert cli.main(["evaluate", "--checkpoint", str(ft), "--task", task, "--lengths", "192", "--n", "2",
                         "--out", str(tmp_path / f"eval-{task}"), "--no-progress"]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", "--checkpoint", str(ft), "--task", "parity", "--lengths", "192", "--n", "2",
                     "--yarn-scale", "2", "--out", str(tmp_path / "yarn"), "--no-progress"]) == 2
    assert "YaRN is not supported for imported neox models" in capsys.readouterr().err


def _export(model, tok, tmp_path, name):
    folder = save_pretrained(tmp_path / f"{name}-model", model, tok)
    assert cli.main(["export", "--checkpoint", str(folder), "--out", str(tmp_path / name)]) == 0
    return tmp_path / name


@pytest.mark.parametrize("family", FAMILIES)
def test_export_loads_in_transformers_and_generates_the_same_greedy_tokens(family, imported, tmp_path):
    model, tok, _ = load_pretrained(imported[family])
    randomise_meta_attention(model).eval()
    out = _export(model, tok, tmp_path, "export")
    assert sorted(p.name for p in out.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")) == []
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    prompt = with_meta(torch.randint(0, tok.vocab_size - 1, (2, 24)), tok.meta_token_id)[1:]
    with torch.no_grad():
        torch.testing.assert_close(hf(prompt).logits, model(prompt)[0], atol=1e-5, rtol=1e-4)
        theirs = hf.generate(prompt, max_new_tokens=10, do_sample=False, pad_token_id=tok.eos_token_id)
    ours = generate_ids(model, prompt, 10, temperature=0.0, vocab_limit=tok.vocab_size)
    assert torch.equal(theirs, ours)


def test_exports_load_with_remote_code_in_a_fresh_process(imported, tmp_path):
    """The exported folders carry their model code (family.py included); metatokens is never imported."""
    expected = {}
    for family in ("llama", "neox"):
        model, tok, _ = load_pretrained(imported[family])
        randomise_meta_attention(model).eval()
        out = _export(model, tok, tmp_path, family)
        prompt = with_meta(torch.randint(0, tok.vocab_size - 1, (2, 24)), tok.meta_token_id)[1:]
        ours = generate_ids(model, prompt, 8, temperature=0.0, vocab_limit=tok.vocab_size)
        expected[family] = (str(out), prompt[0].tolist(), ours[0].tolist())
    script = (
        "import json, sys, torch\n"
        "from transformers import AutoModelForCausalLM\n"
        "for family, (folder, prompt, _) in json.loads(sys.argv[1]).items():\n"
        "    m = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()\n"
        "    out = m.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, pad_token_id=0)\n"
        "    assert not any(k.startswith('metatokens') for k in sys.modules)\n"
        "    print(family, json.dumps(out[0].tolist()))\n"
    )
    env = {"PATH": "", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script, json.dumps(expected)], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = dict(line.split(" ", 1) for line in done.stdout.strip().splitlines())
    for family, (_, _, ours) in expected.items():
        assert json.loads(got[family]) == ours


# ------------------------------------------------------------------------------------ refusals


def test_unsupported_families_and_pickles_are_refused_in_one_line(sources, tmp_path, capsys):
    folder = tmp_path / "neo"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt_neo"}), encoding="utf-8")
    assert cli.main(["import-hf", "--from", str(folder), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'gpt_neo' is not supported" in err and "GPT-NeoX (gpt_neox)" in err
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    src = sources["qwen2"][0]
    for name in ("config.json", "tokenizer.json"):
        (pickled / name).write_bytes((src / name).read_bytes())
    torch.save({}, pickled / "pytorch_model.bin")
    assert cli.main(["import-hf", "--from", str(pickled), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "only safetensors" in err
    assert not (tmp_path / "o").exists()


def test_import_replaces_only_an_earlier_import_and_never_its_source(sources, imported, tmp_path, capsys):
    src = sources["qwen2"][0]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me", encoding="utf-8")
    for out, extra in ((mine, []), (src, []), (imported["qwen2"], [])):
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


def test_the_dense_meta_attention_is_refused_for_imported_families(imported):
    """The family blocks have the sparse path only: meta_impl='dense' is refused in one line, not
    silently run sparse (with the meta index rebuilt in every block)."""
    import dataclasses

    from metatokens.checkpoint import read_config
    from metatokens.model.config import ConfigError

    cfg = read_config(imported["neox"])["model"]
    assert cfg.meta_impl == "sparse"
    with pytest.raises(ConfigError, match="sparse meta-attention only"):
        dataclasses.replace(cfg, meta_impl="dense").validate()

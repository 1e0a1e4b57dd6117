"""Hugging Face interoperability: `metatokens export` and `metatokens import-gpt2`.

References are independent of the code under test where possible: Hugging Face's own GPT-2
(logits, greedy generation), transformers' generate without a cache, and hand-rigged weights whose
argmax is known. The export loaded in fresh Python processes (remote code) is tested in
tests/integration/test_hf_interop_processes.py; the export fixtures are conftest's hf_meta_run and hf_export.
"""

import json

import pytest
import torch

import transformers  # noqa: F401  (a declared test dependency: missing, these tests fail, never skip)
from tokenizers import ByteLevelBPETokenizer
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

import metatokens.model.hf_model  # noqa: F401  (registers the Auto classes)
from conftest import HF_TEXTS, hf_prompts, load_hf
from metatokens import cli
from metatokens.runs.model_folder import load_pretrained, save_pretrained
from metatokens.model.config import YarnConfig, model_shape
from metatokens.generation import generate
from metatokens.hf.export import export_hf
from metatokens.model import GPT
from metatokens.tokenizer import META_TOKEN, MetaTokenizer

COMMANDS = ["metatokens.cli.export", "metatokens.cli.import_gpt2"]


@pytest.fixture
def run_cli(capsys):
    assert all(name in cli.COMMAND_MODULES for name in COMMANDS)  # registered in the real CLI

    def call(*argv):
        code = cli.main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return call


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """A tiny random Hugging Face GPT-2 with its own GPT-2-format tokenizer (vocab.json + merges.txt)."""
    folder = tmp_path_factory.mktemp("gpt2")
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(HF_TEXTS, vocab_size=300, min_frequency=2, special_tokens=["<|endoftext|>"], show_progress=False)
    bpe.save_model(str(folder))
    cfg = GPT2Config(
        vocab_size=bpe.get_vocab_size(), n_positions=64, n_embd=48, n_layer=2, n_head=4,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )
    torch.manual_seed(3)
    hf = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # non-trivial biases and LayerNorms; larger projections give varied greedy outputs
        for name, p in hf.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
            elif p.dim() == 2 and ".h." in name:
                p.mul_(5)
    hf.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gpt2_model(gpt2_dir):
    return GPT2LMHeadModel.from_pretrained(gpt2_dir).eval()


# ------------------------------------------------------------------------------------ export


def test_export_folder_is_safetensors_json_and_code_only(hf_export):
    names = sorted(p.name for p in hf_export.iterdir())
    assert "model.safetensors" in names and "tokenizer.json" in names and "hf_model.py" in names
    assert all(n.endswith((".json", ".safetensors", ".py", ".md")) for n in names), names
    config = json.loads((hf_export / "config.json").read_text())
    assert config["model_type"] == "metatokens"
    assert config["auto_map"]["AutoModelForCausalLM"] == "hf_model.MetaTokensForCausalLM"
    assert config["vocab_limit"] == 300 and config["vocab_size"] == 320


@pytest.mark.parametrize("with_meta", [False, True])
def test_export_greedy_generate_equals_ours_with_cache(hf_export, hf_meta_run, with_meta):
    _, model, tok = hf_meta_run
    hf = load_hf(hf_export)
    assert type(hf).__module__ == "metatokens.model.hf_model"  # the registered class, no remote code
    idx = hf_prompts(tok, with_meta)
    ours = generate(model, idx, 16, temperature=0, vocab_limit=tok.vocab_size)
    cached = hf.generate(idx, max_new_tokens=16, do_sample=False, use_cache=True)
    recomputed = hf.generate(idx, max_new_tokens=16, do_sample=False, use_cache=False)
    assert cached.tolist() == ours.tolist()
    assert recomputed.tolist() == ours.tolist()
    assert len(set(ours[:, idx.size(1):].flatten().tolist())) > 3  # the comparison is not trivial


def test_export_logits_and_loss_equal_ours(hf_export, hf_meta_run):
    _, model, tok = hf_meta_run
    hf = load_hf(hf_export)
    idx = torch.randint(2, tok.vocab_size, (3, 20), generator=torch.Generator().manual_seed(1))
    idx[1, [3, 9, 10]] = tok.meta_token_id
    with torch.no_grad():
        out = hf(idx, labels=idx)
        logits, _ = model(idx)
    assert (out.logits - logits).abs().max() <= 1e-6
    # transformers' convention: labels are shifted inside; meta targets carry no loss
    targets = idx[:, 1:].masked_fill(idx[:, 1:] == tok.meta_token_id, -100)
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=-100)
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-6)


def test_returned_cache_continues_a_sequence(hf_export, hf_meta_run):
    """Two forward calls through the returned cache give the logits of one pass over everything."""
    _, _, tok = hf_meta_run
    hf = load_hf(hf_export)
    idx = torch.randint(2, tok.vocab_size, (2, 24), generator=torch.Generator().manual_seed(4))
    idx[:, [2, 7, 15, 20]] = tok.meta_token_id  # meta-tokens on both sides of the split
    with torch.no_grad():
        full = hf(idx).logits
        first = hf(idx[:, :10], use_cache=True)
        assert first.cache.get_seq_length() == 10
        rest = hf(idx[:, 10:], cache=first.cache).logits
    assert (torch.cat((first.logits, rest), 1) - full).abs().max() <= 1e-5


def test_export_rope_yarn_model_recomputes_its_frequencies(tmp_path):
    """RoPE tables are not stored in the weights; the loaded model must rebuild the same ones."""
    tok = MetaTokenizer.train(HF_TEXTS, 300)
    torch.manual_seed(1)
    cfg = model_shape("toy", vocab_size=320, meta_token_id=tok.meta_token_id, pos_encoding="rope",
                      meta_pos="zero", yarn=YarnConfig(factor=2.0, original_max_position_embeddings=32))
    model = GPT(cfg).eval()
    save_pretrained(tmp_path / "run", model, tok)
    hf = load_hf(export_hf(tmp_path / "run", tmp_path / "hf"))
    assert torch.equal(hf.model.rotary.inv_freq, model.rotary.inv_freq)
    idx = torch.randint(2, 300, (2, 80), generator=torch.Generator().manual_seed(0))  # beyond the original window
    idx[0, [5, 40, 41]] = tok.meta_token_id
    with torch.no_grad():
        assert (hf(idx).logits - model(idx)[0]).abs().max() <= 1e-5


def test_autotokenizer_matches_meta_tokenizer(hf_export, hf_meta_run):
    _, _, tok = hf_meta_run
    hft = AutoTokenizer.from_pretrained(hf_export)
    for text in ["the quick brown fox", "hello  world,\n\ttabs 12345 #$%", "unicode: héllo wörld ✓ 日本", " leading space"]:
        ids = hft(text)["input_ids"]
        assert ids == tok.encode(text)
        assert hft.decode(ids) == tok.decode(ids) == text
    assert hft.convert_tokens_to_ids(META_TOKEN) == tok.meta_token_id
    assert META_TOKEN in hft.all_special_tokens
    assert hft.eos_token_id == tok.eos_token_id
    # In transformers the literal <|meta|> places a meta-token (MetaTokenizer never does that)
    ids = hft("the fox" + META_TOKEN + " jumps")["input_ids"]
    assert ids == tok.encode("the fox") + [tok.meta_token_id] + tok.encode(" jumps")
    assert hft.decode(ids, skip_special_tokens=True) == tok.decode(ids) == "the fox jumps"


def test_meta_and_padding_ids_are_never_generated(hf_meta_run, tmp_path):
    """Rig the head so that the meta-token, then the padding rows, have the largest logits."""
    _, model, tok = hf_meta_run
    rigged = GPT(model.config).eval()
    rigged.load_state_dict(model.state_dict())
    with torch.no_grad():
        direction = torch.randn(model.config.n_embd)
        rigged.ln_f.weight.zero_()
        rigged.ln_f.bias.copy_(direction)  # every position's final hidden state is `direction`
        rigged.wte.weight[tok.meta_token_id] = 10 * direction
        rigged.wte.weight[tok.vocab_size:] = 5 * direction
    save_pretrained(tmp_path / "run", rigged, tok)
    hf = load_hf(export_hf(tmp_path / "run", tmp_path / "hf"))
    idx = hf_prompts(tok, with_meta=True)
    with torch.no_grad():
        assert hf(idx).logits[:, -1].argmax(-1).eq(tok.meta_token_id).all()  # the rig works
    runs = {
        "greedy": hf.generate(idx, max_new_tokens=6, do_sample=False),
        "sample": hf.generate(idx, max_new_tokens=6, do_sample=True, top_k=3, temperature=1.0),
        "beam": hf.generate(idx, max_new_tokens=6, do_sample=False, num_beams=3),
    }
    for name, out in runs.items():
        new = out[:, idx.size(1):]
        assert not ((new == tok.meta_token_id) | (new >= tok.vocab_size)).any(), name


def test_beam_search_with_cache_equals_without(hf_export, hf_meta_run):
    _, _, tok = hf_meta_run
    hf = load_hf(hf_export)
    idx = hf_prompts(tok, with_meta=True)
    kw = dict(max_new_tokens=6, do_sample=False, num_beams=3, num_return_sequences=2)
    assert hf.generate(idx, use_cache=True, **kw).tolist() == hf.generate(idx, use_cache=False, **kw).tolist()


def test_loaded_model_saves_a_loadable_folder(hf_export, hf_meta_run, tmp_path):
    """save_pretrained of a loaded model (what push_to_hub uploads) carries code, weights and config."""
    _, model, tok = hf_meta_run
    hf = load_hf(hf_export)
    hf.save_pretrained(tmp_path / "again")
    names = {p.name for p in (tmp_path / "again").iterdir()}
    assert {"hf_model.py", "gpt.py", "config.py", "positions.py", "model.safetensors"} <= names
    again = load_hf(tmp_path / "again")
    idx = hf_prompts(tok, with_meta=True)
    assert again.generate(idx, max_new_tokens=8, do_sample=False).tolist() == \
        generate(model, idx, 8, temperature=0, vocab_limit=tok.vocab_size).tolist()


# ------------------------------------------------------------------------------------ import


def test_import_logits_equal_hf_gpt2(run_cli, gpt2_dir, gpt2_model, tmp_path):
    code, out, err = run_cli("import-gpt2", "--from", gpt2_dir, "--out", tmp_path / "run")
    assert code == 0, err
    model, tok, _ = load_pretrained(tmp_path / "run")
    V = gpt2_model.config.vocab_size
    assert tok.meta_token_id == V and tok.vocab_size == V + 1  # <|meta|> appended after GPT-2's ids
    assert model.config.meta_token_id == V and model.config.vocab_size == 320  # padded to a multiple of 64
    assert model.config.pos_encoding == "ape" and model.config.meta_attention
    idx = torch.randint(0, V, (3, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = gpt2_model(idx).logits
        got, _ = model(idx)
    assert (got[..., :V] - ref).abs().max() <= 1e-5
    for block in model.h:  # fresh meta-attention whose output projection starts at zero
        assert block.meta_attn.c_attn.weight.abs().sum() > 0
        assert torch.count_nonzero(block.meta_attn.c_proj.weight) == 0
        assert torch.count_nonzero(block.meta_attn.c_proj.bias) == 0
    mean = gpt2_model.transformer.wte.weight.mean(0)
    assert torch.allclose(model.wte.weight[V:], mean.expand(320 - V, -1), atol=1e-6)


def test_imported_then_exported_generates_like_hf_gpt2(run_cli, gpt2_dir, gpt2_model, tmp_path):
    """GPT-2 -> import -> export -> transformers generate: the same greedy tokens as GPT-2 itself."""
    assert run_cli("import-gpt2", "--from", gpt2_dir, "--out", tmp_path / "run")[0] == 0
    assert run_cli("export", "--checkpoint", tmp_path / "run", "--out", tmp_path / "hf")[0] == 0
    hf = load_hf(tmp_path / "hf")
    idx = torch.randint(1, gpt2_model.config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(2))
    gpt2_model.generation_config.eos_token_id = None
    ref = gpt2_model.generate(idx, max_new_tokens=20, do_sample=False, pad_token_id=0)
    assert hf.generate(idx, max_new_tokens=20, do_sample=False).tolist() == ref.tolist()
    assert len(set(ref[:, 10:].flatten().tolist())) > 3


def test_import_no_meta_is_plain_gpt2(run_cli, gpt2_dir, gpt2_model, tmp_path):
    code, _, err = run_cli("import-gpt2", "--from", gpt2_dir, "--out", tmp_path / "run", "--no-meta", "--vocab-multiple", "1")
    assert code == 0, err
    model, _, _ = load_pretrained(tmp_path / "run")
    assert not model.config.meta_attention and model.config.vocab_size == gpt2_model.config.vocab_size + 1
    assert not any("meta" in name for name, _ in model.named_parameters())
    idx = torch.randint(0, gpt2_model.config.vocab_size, (2, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model(idx)[0][..., :-1] - gpt2_model(idx).logits).abs().max() <= 1e-5


def test_import_rope_warns_and_drops_learned_positions(run_cli, gpt2_dir, tmp_path):
    code, out, err = run_cli("import-gpt2", "--from", gpt2_dir, "--out", tmp_path / "run", "--pos-encoding", "rope")
    assert code == 0
    warning = [line for line in err.splitlines() if "warning" in line]
    assert len(warning) == 1 and "position" in warning[0]
    model, _, _ = load_pretrained(tmp_path / "run")
    assert model.config.pos_encoding == "rope" and model.wpe is None
    # APE keeps quiet
    assert "warning" not in run_cli("import-gpt2", "--from", gpt2_dir, "--out", tmp_path / "ape")[2]


def test_bad_inputs_give_one_line_errors(run_cli, gpt2_dir, tmp_path):
    not_gpt2 = tmp_path / "llama"
    not_gpt2.mkdir()
    (not_gpt2 / "config.json").write_text(json.dumps({"model_type": "llama"}))
    no_config = tmp_path / "empty"
    no_config.mkdir()
    no_weights = tmp_path / "noweights"
    no_weights.mkdir()
    for name in ("config.json", "vocab.json", "merges.txt"):
        (no_weights / name).write_bytes((gpt2_dir / name).read_bytes())
    cases = [
        (("import-gpt2", "--from", tmp_path / "missing", "--out", tmp_path / "o1"), "not found"),
        (("import-gpt2", "--from", not_gpt2, "--out", tmp_path / "o2"), "gpt2"),
        (("import-gpt2", "--from", no_config, "--out", tmp_path / "o3"), "config.json"),
        (("import-gpt2", "--from", no_weights, "--out", tmp_path / "o4"), "safetensors"),
        (("export", "--checkpoint", tmp_path / "missing", "--out", tmp_path / "o5"), "missing"),
        (("export", "--checkpoint", not_gpt2, "--out", tmp_path / "o6"), "config"),
    ]
    for argv, needle in cases:
        code, out, err = run_cli(*argv)
        assert code == 2, (argv, err)
        assert len(err.strip().splitlines()) == 1 and needle in err, (argv, err)
        assert not (tmp_path / argv[-1]).exists()


# ------------------------------------------------------------------------------------ never write over what is not ours


def refused(run_cli, argv, needle):
    code, _, err = run_cli(*argv)
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, (argv, err)


def test_export_replaces_only_an_earlier_export_and_never_its_source(run_cli, hf_meta_run, tmp_path):
    import shutil

    source = tmp_path / "run" / "checkpoints" / "step-00000001"  # a run folder, as training leaves it
    shutil.copytree(hf_meta_run[0], source)
    (tmp_path / "run" / "checkpoints" / "LATEST").write_text("step-00000001\n")
    (tmp_path / "run" / "run.json").write_text("{}")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    (tmp_path / "file").write_text("keep me too")
    for flags in ([], ["--overwrite"]):
        refused(run_cli, ["export", "--checkpoint", tmp_path / "run", "--out", mine, *flags], "not the output of an earlier")
        refused(run_cli, ["export", "--checkpoint", tmp_path / "run", "--out", tmp_path / "file", *flags], "not a folder")
        for out in (tmp_path / "run", source, tmp_path / "run" / "checkpoints"):
            refused(run_cli, ["export", "--checkpoint", tmp_path / "run", "--out", out, *flags], "is or holds the source")
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"] and (tmp_path / "file").read_text() == "keep me too"
    load_pretrained(source)  # the source is untouched
    hf = tmp_path / "hf"
    assert run_cli("export", "--checkpoint", tmp_path / "run", "--out", hf)[0] == 0
    refused(run_cli, ["export", "--checkpoint", tmp_path / "run", "--out", hf], "pass --overwrite")
    assert run_cli("export", "--checkpoint", tmp_path / "run", "--out", hf, "--overwrite")[0] == 0
    (hf / "my_notes.txt").write_text("added by the user")
    refused(run_cli, ["export", "--checkpoint", tmp_path / "run", "--out", hf, "--overwrite"], "not the output of an earlier")
    assert (hf / "my_notes.txt").is_file() and (hf / "model.safetensors").is_file()


def test_import_replaces_only_an_earlier_import_and_never_its_source(run_cli, gpt2_dir, hf_meta_run, tmp_path):
    import shutil

    source = tmp_path / "gpt2"
    shutil.copytree(gpt2_dir, source)
    before = sorted(p.name for p in source.iterdir())
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    other_model = tmp_path / "model"  # a metatokens model folder that import-gpt2 did not write
    shutil.copytree(hf_meta_run[0], other_model)
    for flags in ([], ["--overwrite"]):
        for out in (mine, other_model):
            refused(run_cli, ["import-gpt2", "--from", source, "--out", out, *flags], "not the output of an earlier")
        refused(run_cli, ["import-gpt2", "--from", source, "--out", source, *flags], "is or holds the source")
        refused(run_cli, ["import-gpt2", "--from", source, "--out", tmp_path, *flags], "is or holds the source")
    assert sorted(p.name for p in source.iterdir()) == before and (mine / "notes.txt").read_text() == "keep me"
    load_pretrained(other_model)
    out = tmp_path / "imported"
    assert run_cli("import-gpt2", "--from", source, "--out", out)[0] == 0
    refused(run_cli, ["import-gpt2", "--from", source, "--out", out], "pass --overwrite")
    assert run_cli("import-gpt2", "--from", source, "--out", out, "--overwrite", "--no-meta")[0] == 0
    assert not load_pretrained(out)[0].config.meta_attention


def test_an_exports_weights_are_checked_against_its_marker(hf_export, tmp_path):
    import shutil

    from metatokens.errors import CheckpointError
    from metatokens.evaluation.loading import load_model
    from metatokens.hf.hub import EXPORT_MARKER

    folder = tmp_path / "hf"
    shutil.copytree(hf_export, folder)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum differs"):
        load_model(folder)
    shutil.copy(hf_export / "model.safetensors", weights)
    marker = json.loads((folder / EXPORT_MARKER).read_text())
    marker.pop("sha256")
    (folder / EXPORT_MARKER).write_text(json.dumps(marker))
    with pytest.raises(CheckpointError, match="no sha256"):
        load_model(folder)
    (folder / EXPORT_MARKER).unlink()  # as in a transformers save of a loaded export: nothing to check against
    assert load_model(folder).kind == "metatokens"


def test_the_exported_model_card_runs_as_written_and_asks_about_remote_code_only_where_it_says_so(hf_export, monkeypatch,
                                                                                                    capsys):
    """The card's Python block, run as written (THIS_FOLDER replaced): transformers' remote-code
    question (`resolve_trust_remote_code`) must only come up where the card passes
    trust_remote_code=True, since in an interactive session it stops and asks (a bare
    AutoTokenizer line did: it reads config.json and its auto_map)."""
    import re

    import transformers.dynamic_module_utils as dyn
    import transformers.models.auto.configuration_auto as conf_auto
    import transformers.models.auto.tokenization_auto as tok_auto

    card = (hf_export / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1).replace("THIS_FOLDER", str(hf_export))
    asked = []
    real = dyn.resolve_trust_remote_code

    def resolve(trust_remote_code, model_name, has_local_code, has_remote_code, *args, **kwargs):
        if has_remote_code and trust_remote_code is not True:
            asked.append(model_name)
        return real(trust_remote_code, model_name, has_local_code, has_remote_code, *args, **kwargs)

    for module in (dyn, conf_auto, tok_auto):
        monkeypatch.setattr(module, "resolve_trust_remote_code", resolve, raising=False)
    exec(compile(code, "README.md", "exec"), {})
    assert asked == []
    assert capsys.readouterr().out.strip()  # the card prints the generated text
    assert "pip install metatokens`" not in card  # not published: the card says how to install from source


def test_an_export_whose_config_the_weights_do_not_hold_is_refused_before_the_model_is_built(hf_export, tmp_path):
    """config.json edited to n_embd=65536 (a 51 GB model): refused from the weights' shapes."""
    import resource
    import shutil

    from metatokens.errors import CheckpointError
    from metatokens.evaluation.loading import load_model

    folder = tmp_path / "hf"
    shutil.copytree(hf_export, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(n_embd=65536, n_head=1)
    (folder / "config.json").write_text(json.dumps(config))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match="its model does not match the weights"):
        load_model(folder)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000  # KiB: far below 51 GB

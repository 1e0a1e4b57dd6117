"""Cached generation vs recomputation, the meta-token never sampled, and model folders on disk."""

import json

import pytest
import torch

from conftest import META, meta_favourite_model, small_model, toy_model
from metatokens.model.config import model_shape
from metatokens.errors import CheckpointError
from metatokens.runs.model_folder import load_pretrained, save_pretrained
from metatokens.generation import generate


@pytest.mark.parametrize("pos_encoding,meta_pos", [("ape", "keep"), ("rope", "keep"), ("rope", "zero"), ("none", "keep")])
@pytest.mark.parametrize("with_meta", [False, True])
def test_cached_generation_equals_recomputation(pos_encoding, meta_pos, with_meta):
    model = toy_model(pos_encoding=pos_encoding, meta_pos=meta_pos)
    prompt = torch.randint(8, 97, (2, 12))
    if with_meta:
        prompt[0, [2, 5, 11]] = META
        prompt[1, 7] = META
    greedy = [generate(model, prompt, 20, temperature=0, use_cache=c) for c in (True, False)]
    assert torch.equal(greedy[0], greedy[1])
    sampled = [
        generate(model, prompt, 20, temperature=1.3, top_k=20, use_cache=c, generator=torch.Generator().manual_seed(5))
        for c in (True, False)
    ]
    assert torch.equal(sampled[0], sampled[1])
    assert torch.equal(sampled[0][:, :12], prompt)


def test_meta_token_is_never_sampled_even_when_it_is_the_favourite():
    model = meta_favourite_model()
    prompt = torch.randint(8, 97, (1, 5))
    logits, _ = model(prompt)
    assert logits[0, -1].argmax() == META  # without the rule, greedy decoding would emit <meta>
    out = generate(model, prompt, 30, temperature=0)
    assert (out[:, 5:] != META).all()
    out = generate(model, prompt, 200, temperature=5.0, generator=torch.Generator().manual_seed(0))
    assert (out[:, 5:] != META).all()
    out = generate(model, prompt, 50, temperature=5.0, vocab_limit=50, generator=torch.Generator().manual_seed(0))
    assert (out[:, 5:] < 50).all()


def test_top_k_one_is_greedy():
    model = toy_model()
    prompt = torch.randint(8, 97, (2, 6))
    a = generate(model, prompt, 10, temperature=0.7, top_k=1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, generate(model, prompt, 10, temperature=0))


def test_generation_beyond_ape_table_is_refused():
    model = toy_model(pos_encoding="ape")
    with pytest.raises(ValueError, match="exceed the 64 learned positions"):
        generate(model, torch.randint(8, 97, (1, 60)), 10)


@pytest.mark.parametrize("pos_encoding", ["ape", "rope"])
def test_save_load_round_trip_gives_identical_logits(tmp_path, small_tokenizer, pos_encoding):
    from metatokens.model import GPT

    torch.manual_seed(0)
    cfg = model_shape("toy", vocab_size=320, meta_token_id=small_tokenizer.meta_token_id, pos_encoding=pos_encoding)
    model = GPT(cfg).eval()
    save_pretrained(tmp_path / "m", model, small_tokenizer, extra={"note": "hello"})
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    loaded, tok, cfg = load_pretrained(tmp_path / "m")
    assert cfg["note"] == "hello" and cfg["model"] == model.config
    assert tok.encode("the meta token") == small_tokenizer.encode("the meta token")
    idx = torch.tensor([small_tokenizer.encode("the meta token marks") + [small_tokenizer.meta_token_id]])
    with torch.no_grad():
        assert torch.equal(model(idx)[0], loaded.eval()(idx)[0])
    assert loaded.lm_head.weight.data_ptr() == loaded.wte.weight.data_ptr()  # still tied
    # overwriting an existing folder leaves one complete folder and no temporary ones behind
    save_pretrained(tmp_path / "m", model, small_tokenizer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def one_line_error(exc_info, *needles):
    msg = str(exc_info.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg


def test_truncated_or_corrupted_weights_fail_clearly(tmp_path, small_tokenizer):
    folder = save_pretrained(tmp_path / "m", small_model(small_tokenizer), small_tokenizer)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as e:
        load_pretrained(folder)
    one_line_error(e, str(weights), "truncated or corrupted")
    with pytest.raises(CheckpointError) as e:  # without the checksum, safetensors itself must refuse
        load_pretrained(folder, verify=False)
    one_line_error(e, str(weights))
    flipped = bytearray(data)
    flipped[-10] ^= 0xFF
    weights.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError) as e:
        load_pretrained(folder)
    one_line_error(e, "checksum")


def test_bad_config_files_fail_clearly(tmp_path, small_tokenizer):
    folder = save_pretrained(tmp_path / "m", small_model(small_tokenizer), small_tokenizer)
    cfg_file = folder / "config.json"
    good = json.loads(cfg_file.read_text())

    cfg_file.write_text(cfg_file.read_text()[:40])
    with pytest.raises(CheckpointError) as e:
        load_pretrained(folder)
    one_line_error(e, str(cfg_file), "not valid JSON")

    for change, needle in [
        ({"n_layerz": 3}, "unknown model key(s): n_layerz"),
        ({"n_head": 5}, "divisible"),
        ({"pos_encoding": "sinusoid"}, "pos_encoding"),
        ({"vocab_size": -4}, "vocab_size"),
    ]:
        bad = json.loads(json.dumps(good))
        bad["model"].update(change)
        cfg_file.write_text(json.dumps(bad))
        with pytest.raises(CheckpointError) as e:
            load_pretrained(folder)
        one_line_error(e, str(cfg_file), needle)

    bad = json.loads(json.dumps(good))
    bad["model"]["n_embd"] = 64  # valid on its own, but the weights have another shape
    cfg_file.write_text(json.dumps(bad))
    with pytest.raises(CheckpointError) as e:
        load_pretrained(folder, verify=False)
    one_line_error(e, str(cfg_file), "does not match the weights", "wte.weight: config (320, 64), weights (320, 32)")

    # an absurd model (51 GB at n_embd=65536) is refused from the file's header, before any allocation
    import resource

    bad["model"].update(n_embd=65536, n_head=1)
    cfg_file.write_text(json.dumps(bad))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError) as e:
        load_pretrained(folder, verify=False)
    one_line_error(e, str(cfg_file), "does not match the weights")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000  # KiB: far below 51 GB

    cfg_file.write_text("[" * 100_000 + "]" * 100_000)  # deeper than Python's JSON parser goes
    with pytest.raises(CheckpointError) as e:
        load_pretrained(folder)
    one_line_error(e, str(cfg_file), "nested too deeply")


@pytest.mark.parametrize("value", [None, "", 0])
def test_removing_the_weights_checksum_does_not_switch_verification_off(tmp_path, small_tokenizer, value):
    folder = save_pretrained(tmp_path / "m", small_model(small_tokenizer), small_tokenizer)
    cfg_file = folder / "config.json"
    config = json.loads(cfg_file.read_text())
    if value is None:
        config.pop("weights_sha256")
    else:
        config["weights_sha256"] = value
    cfg_file.write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as e:
        load_pretrained(folder)
    one_line_error(e, str(cfg_file), "weights_sha256")
    load_pretrained(folder, verify=False)  # an explicit opt-out still reads the weights


def test_missing_folder_and_broken_tokenizer_fail_clearly(tmp_path, small_tokenizer):
    with pytest.raises(CheckpointError) as e:
        load_pretrained(tmp_path / "nowhere")
    one_line_error(e, "not a model folder")
    folder = save_pretrained(tmp_path / "m", small_model(small_tokenizer), small_tokenizer)
    (folder / "tokenizer.json").write_text("{ not json")
    with pytest.raises(CheckpointError) as e:
        load_pretrained(folder)
    one_line_error(e, "tokenizer.json")


def test_tokenizer_and_model_must_agree(tmp_path, small_tokenizer):
    model = toy_model(vocab_size=320, meta_token_id=small_tokenizer.meta_token_id + 1)
    folder = save_pretrained(tmp_path / "m", model, small_tokenizer)
    with pytest.raises(CheckpointError) as e:
        load_pretrained(folder)
    one_line_error(e, "meta_token_id")

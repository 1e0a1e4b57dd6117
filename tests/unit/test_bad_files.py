"""Bad files and bytes given to the commands: a prompt that is not UTF-8, a damaged config.json or
tokenizer.json in a run folder, NaN weights behind a matching checksum, a Hugging Face folder whose
weights are a pickle. Each one exits with status 2 and exactly one line on stderr naming the file or
the problem, and leaves every folder as it was (no .lock, no new or changed file).

Like tests/unit/test_bad_inputs.py, they work on copies of conftest's toy_runs; none reaches a
training step. The last test checks that a corpus with undecodable bytes is reported once per file,
although a pre-training reads its corpus twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from conftest import quiet_main
from test_bad_inputs import RESUME, latest, listing
from transformers import GPT2Config, GPT2LMHeadModel

from metatokens import cli
from metatokens.errors import CheckpointError
from metatokens.hf.baseline import load_hf_model


def _edit_config(change):
    """Change the latest checkpoint's config.json (it stays valid JSON)."""
    def damage(run: Path) -> None:
        file = latest(run) / "config.json"
        file.write_text(json.dumps(change(json.loads(file.read_text())), indent=2))
    return damage


def _nest_tokenizer(*where: str):
    """tokenizer.json 200,000 levels deep: in the run folder ("run") and/or the latest checkpoint ("checkpoint")."""
    def damage(run: Path) -> None:
        for place in where:
            folder = run if place == "run" else latest(run)
            (folder / "tokenizer.json").write_text("[" * 200_000 + "]" * 200_000)
    return damage


def _nan_weights(run: Path) -> None:
    """NaN in ln_f.weight, re-saved with safetensors, its SHA-256 recorded in config.json: only the values are bad."""
    folder = latest(run)
    weights = load_file(str(folder / "model.safetensors"))
    weights["ln_f.weight"][:] = float("nan")
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    _edit_config(lambda config: {**config, "weights_sha256": digest})(run)


def _nan_export(run: Path) -> None:
    """A `metatokens export` of the run (beside it, in hf/) with NaN weights whose SHA-256 its marker records."""
    folder = run.parent / "hf"
    quiet_main(["export", "--checkpoint", str(run), "--out", str(folder)])
    weights = load_file(str(folder / "model.safetensors"))
    weights["model.ln_f.weight"][:] = float("nan")
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    marker = json.loads((folder / "metatokens_export.json").read_text())
    marker["sha256"]["model.safetensors"] = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    (folder / "metatokens_export.json").write_text(json.dumps(marker))


def _hf_pickle(whole_module: bool):
    """A Hugging Face GPT-2 folder (config.json) whose only weights are pytorch_model.bin: the state dict
    (what save_pretrained(safe_serialization=False) wrote) or the whole pickled module."""
    def damage(run: Path) -> None:
        folder = run.parent / "hf"
        model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=64, vocab_size=300))
        model.config.save_pretrained(folder)
        torch.save(model if whole_module else model.state_dict(), folder / "pytorch_model.bin")
    return damage


NEW = ["--out", "{new}", "--no-progress"]
GENERATE = ["generate", "--checkpoint", "{run}", "--max-new-tokens", "4", "--seed", "0"]
PERPLEXITY = ["evaluate", "--checkpoint", "{run}", "--perplexity", "builtin", *NEW]
TOKENIZER_ENTRY = 'config.json: "tokenizer" must be an object naming a file in the folder'
NESTED = "tokenizer.json: invalid tokenizer JSON (nested too deeply); the file is corrupt"
NAN = "model.safetensors: ln_f.weight holds NaN or inf values, so the model cannot be used"
PICKLE = "hf: holds pytorch_model.bin but no model.safetensors; metatokens loads only safetensors weights"

CASES = [
    # bytes that are not UTF-8 on the command line reach Python as surrogate escapes
    ("generate-prompt-not-utf8", [*GENERATE, "--prompt", b"caf\xe9 \xff".decode("utf-8", "surrogateescape")], None,
     "--prompt is not valid UTF-8 text (byte 0xe9 at character 3)"),
    ("generate-prompt-lone-surrogate", [*GENERATE, "--prompt", "a\ud800b"], None,
     "--prompt is not valid UTF-8 text (lone surrogate U+D800 at character 1)"),
    # config.json's tokenizer entry is not an object naming a file
    ("config-tokenizer-string-generate", GENERATE, _edit_config(lambda c: {**c, "tokenizer": "x"}), TOKENIZER_ENTRY),
    ("config-tokenizer-string-resume", RESUME, _edit_config(lambda c: {**c, "tokenizer": "x"}), TOKENIZER_ENTRY),
    ("config-tokenizer-file-list", GENERATE, _edit_config(lambda c: {**c, "tokenizer": {"file": [1]}}), TOKENIZER_ENTRY),
    ("config-tokenizer-file-outside", GENERATE, _edit_config(lambda c: {**c, "tokenizer": {"file": "../../run.json"}}),
     TOKENIZER_ENTRY),
    # evaluate reads config.json first, to tell a Hugging Face folder from ours
    ("config-nested-evaluate", PERPLEXITY, lambda run: (latest(run) / "config.json").write_text("[" * 200_000),
     "config.json: unreadable, not valid JSON (nested too deeply)"),
    ("config-list-evaluate", PERPLEXITY, lambda run: (latest(run) / "config.json").write_text("[1]"),
     "config.json: not a JSON object"),
    # a tokenizer.json nested too deeply for the JSON parser
    ("tokenizer-nested-checkpoint-generate", GENERATE, _nest_tokenizer("checkpoint"), NESTED),
    ("tokenizer-nested-run-resume", RESUME, _nest_tokenizer("run"), NESTED),
    ("tokenizer-nested-checkpoint-resume", RESUME, _nest_tokenizer("checkpoint"), NESTED),
    # NaN weights with a matching checksum: refused wherever a model folder is loaded
    ("nan-weights-generate", GENERATE, _nan_weights, NAN),
    ("nan-weights-evaluate", PERPLEXITY, _nan_weights, NAN),
    ("nan-weights-export", ["export", "--checkpoint", "{run}", "--out", "{new}"], _nan_weights, NAN),
    ("nan-weights-resume", RESUME, _nan_weights, NAN),
    ("nan-weights-export-folder-evaluate", ["evaluate", "--checkpoint", "{hf}", "--perplexity", "builtin", *NEW],
     _nan_export, "hf: ln_f.weight holds NaN or inf values"),
    # a Hugging Face folder whose weights are only a pickle
    ("hf-pickle-finetune", ["finetune", "--hf-model", "{hf}", *NEW], _hf_pickle(True), PICKLE),
    ("hf-pickle-evaluate", ["evaluate", "--checkpoint", "{hf}", "--task", "list_recall", *NEW], _hf_pickle(True), PICKLE),
    ("hf-pickle-perplexity", ["evaluate", "--perplexity", "builtin", "--checkpoint", "{hf}", *NEW], _hf_pickle(True),
     PICKLE),
    ("hf-state-dict-pickle-finetune", ["finetune", "--hf-model", "{hf}", *NEW],
     _hf_pickle(False), PICKLE),
]


@pytest.mark.parametrize("argv,damage,needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_file_is_one_line_status_2_and_changes_nothing(toy_runs, tmp_path, monkeypatch, capsys, argv, damage,
                                                           needle):
    run = tmp_path / "run"
    shutil.copytree(toy_runs / "run", run)
    if damage is not None:
        damage(run)
    monkeypatch.chdir(tmp_path)  # outputs that default to the working directory (evaluate's eval/) show up too
    argv = [a.format(run=run, new=tmp_path / "new", hf=tmp_path / "hf") for a in argv]
    before = listing(tmp_path, toy_runs)
    capsys.readouterr()  # what making the damage printed
    code = cli.main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured
    assert captured.err.count("\n") == 1 and captured.err.endswith("\n"), captured.err
    assert captured.err.startswith(f"metatokens {argv[0]}: error: ") and needle in captured.err, captured.err
    assert not (run / ".lock").exists()
    assert listing(tmp_path, toy_runs) == before


def test_a_hugging_face_model_with_nan_weights_is_refused(tmp_path):
    """Hugging Face folders do not go through load_pretrained; load_hf_model checks their weights too.
    (Not through the command line: transformers draws its own progress bar on stderr while it loads.)"""
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=64, vocab_size=300))
    with torch.no_grad():
        model.transformer.ln_f.weight.fill_(float("nan"))
    model.save_pretrained(tmp_path / "hf")
    with pytest.raises(CheckpointError, match=r"hf: transformer\.ln_f\.weight holds NaN or inf values"):
        load_hf_model(tmp_path / "hf")


def test_undecodable_bytes_are_reported_once_per_file(tmp_path, capsys, caplog):
    """A pre-training reads its corpus twice (tokenizer, then tokens); each warning comes once. The corpus
    is too small for one row, so the run is refused after both reads, before a step or a run folder.
    (The command line prints each warning record as one line on stderr; under pytest caplog holds them.)"""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_bytes(b"alpha beta gamma delta " * 300 + b"caf\xe9 \xff end")
    (corpus / "b.txt").write_bytes(b"short \xff.")
    (corpus / "c.jsonl").write_bytes(b'{"text": "one"}\n{"text": "tw\xff"}\n')
    code = cli.main(["pretrain", "--config", "toy", "--set", f"data.source={corpus}", "--set",
                     f"data.cache_dir={tmp_path / 'cache'}", "--set", "data.val_fraction=0.4",
                     "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("metatokens pretrain: error: "), err
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"2 .txt document(s) had undecodable bytes, replaced by U+FFFD (first: {corpus / 'a.txt'})",
        f"{corpus / 'c.jsonl'}: 1 line(s) had undecodable bytes, replaced by U+FFFD",
    ], caplog.text
    assert not (tmp_path / "run").exists()

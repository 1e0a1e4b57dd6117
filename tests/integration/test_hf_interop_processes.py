"""Exports in other Python processes: transformers loads an export through its own remote code
(trust_remote_code=True) without ever importing metatokens, and `metatokens evaluate`'s loader
never runs an export's code, in this process or a fresh one. The in-process export and import tests
are in tests/unit/test_hf_interop.py."""

import json
import os
import subprocess
import sys

import torch

import metatokens.model.hf_model  # noqa: F401  (registers the Auto classes; its MODEL_TYPE is checked below)
from conftest import hf_prompts
from metatokens.generation import generate
from metatokens.hf.export import export_hf
from metatokens.model import GPT
from metatokens.runs.model_folder import save_pretrained


def remote_generate(folder, idx: torch.Tensor, tmp_path, new: int = 12) -> dict:
    """Greedy ids of `idx` from `folder` loaded by transformers' remote code in a fresh process, with the
    module the class came from and the metatokens modules that process imported."""
    script = f"""
import json, sys, torch
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
m.generation_config.eos_token_id = None
out = m.generate(torch.tensor({idx.tolist()}), max_new_tokens={new}, do_sample=False)
print(json.dumps({{"ids": out.tolist(), "module": type(m).__module__,
                  "imported": sorted(k for k in sys.modules if k.split(".")[0] == "metatokens")}}))
"""
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    # Run outside the source tree so an editable install is the only way to find metatokens.
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["module"].startswith("transformers_modules.")
    assert result["imported"] == []
    return result


def test_remote_code_route_in_a_fresh_process(hf_export, hf_meta_run, tmp_path):
    """trust_remote_code=True loads from the folder's own code; metatokens is never imported."""
    _, model, tok = hf_meta_run
    idx = hf_prompts(tok, with_meta=True)
    result = remote_generate(hf_export, idx, tmp_path)
    assert result["ids"] == generate(model, idx, 12, temperature=0, vocab_limit=tok.vocab_size).tolist()


def test_remote_code_of_a_windowed_export_generates_with_the_bounded_cache(hf_meta_run, tmp_path):
    """attn_window travels in config.json and window.py with the model code: the folder's own code, in a
    fresh process, generates what our windowed model does (prompt longer than the window, meta-tokens in it)."""
    _, model, tok = hf_meta_run
    windowed = GPT(model.config.replace(attn_window=3)).eval()
    windowed.load_state_dict(model.state_dict())
    save_pretrained(tmp_path / "run", windowed, tok)
    export = export_hf(tmp_path / "run", tmp_path / "hf")
    idx = hf_prompts(tok, with_meta=True)
    result = remote_generate(export, idx, tmp_path)
    ours = generate(windowed, idx, 12, temperature=0, vocab_limit=tok.vocab_size)
    assert result["ids"] == ours.tolist()
    assert ours.tolist() != generate(model, idx, 12, temperature=0, vocab_limit=tok.vocab_size).tolist()


def test_evaluate_loads_an_export_with_our_classes_and_never_runs_its_code(hf_export, hf_meta_run, tmp_path):
    """An exported folder's Python files are never imported: not even when they were tampered with."""
    import shutil

    from metatokens.evaluation.loading import EXPORT_MODEL_TYPE, load_model

    assert EXPORT_MODEL_TYPE == metatokens.model.hf_model.MODEL_TYPE
    _, model, tok = hf_meta_run
    folder = tmp_path / "hf"
    shutil.copytree(hf_export, folder)
    sentinel = tmp_path / "remote-code-ran"
    for name in ("hf_model.py", "gpt.py", "config.py", "positions.py"):
        code = (folder / name).read_text()
        (folder / name).write_text(f"open({str(sentinel)!r}, 'w').close()\n" + code)
    loaded = load_model(folder)
    assert isinstance(loaded.model, GPT) and loaded.kind == "metatokens" and loaded.tokenizer.vocab_size == tok.vocab_size
    idx = hf_prompts(tok, with_meta=True)
    with torch.no_grad():
        assert torch.equal(loaded.model(idx)[0], model(idx)[0])
    script = ("import sys; from metatokens.evaluation.loading import load_model; m = load_model(sys.argv[1]); "
              "print(type(m.model).__name__, m.kind, 'transformers' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", script, str(folder)], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["GPT", "metatokens", "False"]
    assert not sentinel.exists()

"""`metatokens export`: a model folder as a transformers folder that `AutoModelForCausalLM` loads,
with its tokenizer and a model card.

transformers is optional: it is imported only by the functions that need it. The transformers
classes themselves live in model/hf_model.py, which exported folders carry as their model code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import HFInteropError
from ..fileio import atomic_folder, holds_output
from ..model.config import ModelConfig
from ..runs.checkpoints import resolve_model_dir
from ..runs.model_folder import load_pretrained, sha256_file
from ..tokenizer.backend import EOS_TOKEN, META_TOKEN
from .hub import (
    EXPORT_FORMAT,
    EXPORT_MARKER,
    EXPORT_SUFFIXES,
    _check_out_dir,
    _is_export,
    _require_transformers,
)

# ---------------------------------------------------------------------------------------------
# Export to a transformers folder, import of a Hugging Face GPT-2 checkpoint.
# transformers is imported inside the functions, so `import metatokens.hf` stays light.


@holds_output(HFInteropError)  # two writers of one folder at once: the second is refused
def export_hf(checkpoint: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write a transformers folder for a metatokens model folder (or run folder: its latest checkpoint).

    The folder loads with `AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)` (the
    model code travels in it), or without remote code once `metatokens.model.hf_model` is imported; and
    with `AutoTokenizer.from_pretrained(out)` when the checkpoint has a tokenizer. Weights are
    safetensors. The folder is written under a temporary name and renamed into place. An existing
    `out` must be empty, or an earlier export, replaced only with overwrite=True (never the checkpoint).
    """
    _require_transformers()
    from transformers import (
        GenerationConfig,  # optional dependency: transformers (pip install "metatokens[hf]")
    )

    from metatokens.model.hf_model import (
        MetaTokensForCausalLM,  # optional dependency: transformers (pip install "metatokens[hf]")
    )

    out = Path(out)
    source = resolve_model_dir(checkpoint)
    _check_out_dir(out, command="export", overwrite=overwrite, sources=[Path(checkpoint), source], ours=_is_export)
    model, tokenizer, _ = load_pretrained(source, "cpu")
    model.eval()
    vocab_limit = tokenizer.vocab_size if tokenizer is not None else None
    hf = MetaTokensForCausalLM.from_gpt(model, vocab_limit=vocab_limit)
    hf.config.metatokens_version = __version__
    if tokenizer is not None:
        eos = tokenizer.eos_token_id
        # pad = eos so that finished rows of a batch are filled, as for GPT-2.
        hf.generation_config = GenerationConfig(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)

    with atomic_folder(out) as tmp:
        hf.save_pretrained(tmp)
        if tokenizer is not None:
            save_hf_tokenizer(tokenizer, tmp, model_max_length=model.config.max_positions)
        _write_model_card(tmp, model.config, has_tokenizer=tokenizer is not None)
        stray = sorted(p.name for p in tmp.iterdir() if not p.name.endswith(EXPORT_SUFFIXES))
        if stray:
            raise HFInteropError(f"export produced unexpected files {stray}; refusing to write non-safetensors weights")
        files = sorted(p.name for p in tmp.iterdir()) + [EXPORT_MARKER]
        digests = {p.name: sha256_file(p) for p in sorted(tmp.glob("*.safetensors"))}
        marker = {"format": EXPORT_FORMAT, "metatokens_version": __version__, "files": files, "sha256": digests}
        (tmp / EXPORT_MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
    return out


def save_hf_tokenizer(tokenizer, folder: str | Path, *, model_max_length: int | None = None) -> None:
    """tokenizer.json + tokenizer_config.json that `AutoTokenizer.from_pretrained(folder)` loads.

    The tokenizer is our byte-level BPE unchanged, so ordinary text gets the ids MetaTokenizer
    gives. `<|meta|>` is an additional special token: unlike MetaTokenizer, which never maps text
    to the meta id, a transformers tokenizer turns the literal `<|meta|>` in a prompt into it
    (that is how users place meta-tokens), and `skip_special_tokens=True` drops it when decoding.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(folder / "tokenizer.json")
    settings: dict[str, Any] = {
        # PreTrainedTokenizerFast reads tokenizer.json as it is (no GPT-2-specific rebuilding);
        # transformers 5 maps the name to its TokenizersBackend.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "additional_special_tokens": [META_TOKEN],
        "clean_up_tokenization_spaces": False,
    }
    if model_max_length is not None:
        settings["model_max_length"] = model_max_length
    text = json.dumps(settings, indent=2) + "\n"
    (folder / "tokenizer_config.json").write_text(text, encoding="utf-8")


def _card_style(cfg: ModelConfig) -> str:
    """GPT-2, or the family of a model `metatokens import-hf` built (model/family.py)."""
    return {"llama": "Llama-style", "neox": "GPT-NeoX-style"}.get(getattr(cfg, "family", None), "GPT-2 style")


def _write_model_card(folder: Path, cfg: ModelConfig, *, has_tokenizer: bool) -> None:
    meta = f"meta-token id {cfg.meta_token_id}" if cfg.meta_token_id is not None else "no meta-token"
    lines = [
        "---",
        "library_name: transformers",
        "tags: [metatokens, meta-attention]",
        "---",
        "",
        "# metatokens model",
        "",
        f"{_card_style(cfg)} language model with learned meta-tokens and meta-attention",
        "(Shah et al., \"Language Modeling with Learned Meta-Tokens\", arXiv 2509.16278), exported by `metatokens export`.",
        "",
        f"{cfg.n_layer} layers x {cfg.n_head} heads x {cfg.n_embd}, positions: {cfg.pos_encoding}, "
        f"meta-attention: {'yes' if cfg.meta_attention else 'no'}, {meta}"
        + (f"; self-attention sees the last {cfg.attn_window} positions and every earlier meta-token (attn_window)"
           + (f" and the first {cfg.attn_sinks} positions (attn_sinks)" if cfg.attn_sinks else "") + "."
           if cfg.attn_window else "."),
        "",
        "```python",
        "from transformers import AutoModelForCausalLM" + (", PreTrainedTokenizerFast" if has_tokenizer else ""),
        "",
        'model = AutoModelForCausalLM.from_pretrained("THIS_FOLDER", trust_remote_code=True)',
    ]
    if has_tokenizer:
        lines += [
            # the tokenizer class by name: AutoTokenizer would read config.json and ask about its remote code
            'tok = PreTrainedTokenizerFast.from_pretrained("THIS_FOLDER")',
            'ids = tok("Some text <|meta|> more text", return_tensors="pt").input_ids',
            "print(tok.decode(model.generate(ids, max_new_tokens=20)[0]))",
        ]
    lines += ["```", "",
              "Without remote code: install metatokens from its source (it is not on PyPI yet: `pip install -e .` in a "
              "checkout), `import metatokens.model.hf_model`, then the same calls without `trust_remote_code=True`.", ""]
    (folder / "README.md").write_text("\n".join(lines), encoding="utf-8")

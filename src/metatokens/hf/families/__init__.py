"""Meta-tokens for pretrained checkpoints of other families: `metatokens import-hf`.

Supported: the Llama family (model_type llama, mistral, qwen2), GPT-NeoX (gpt_neox) and GPT-2
(gpt2). The networks live in `metatokens.model.family` (Llama, NeoX) and `metatokens.model.gpt`
(GPT-2); this package turns a Hugging Face checkpoint into one of them:

- every weight of the checkpoint, renamed (NeoX's fused q/k/v split per head);
- `<|meta|>` appended to the tokenizer as a special token no text produces, and an embedding row
  for it (and for padding rows) equal to the mean of the token rows, in the input embedding and in
  an untied output head alike;
- after each self-attention a meta-attention sublayer in the family's style (its norm, rotary
  embedding and head layout, GQA included) whose output projection is zero: at import the model's
  logits are the checkpoint's on every input, with or without meta-tokens (up to float rounding;
  the meta-token's own logit excepted, an id that is never scored nor generated).

The result is a metatokens model folder that `pretrain --init`, `finetune`, `evaluate`,
`generate` and `export` take as they take any other.

May import: what hf may (errors, fileio, model, tokenizer, runs), and hf.hub / hf.gpt2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ...errors import HFInteropError, ImportRefused
from ...fileio import holds_output
from ...model.config import ConfigError, FamilyConfig
from ...model.family import FamilyModel
from ...model.gpt import GPT
from ...runs.model_folder import save_pretrained
from ...tokenizer.meta import MetaTokenizer
from ..families import llama, neox
from ..families.common import SUPPORTED, meta_tokenizer, read_hf_config, resolve_source
from ..gpt2 import _read_safetensors_weights, gpt2_to_meta_model
from ..hub import _check_out_dir, _require_transformers
from ..hub import _is_import as is_hub_import

__all__ = ["SUPPORTED", "ImportRefused", "convert", "from_transformers", "import_hf"]

_FAMILIES = {**{t: llama for t in llama.MODEL_TYPES}, **{t: neox for t in neox.MODEL_TYPES}}
MODEL_TYPES = (*_FAMILIES, "gpt2")
IMPORT_KEY = "imported_from_hf"  # config.json of an import-hf folder records the import under this key


def _config_classes() -> dict[str, Any]:
    import transformers  # optional dependency: transformers (pip install "metatokens[hf]")

    names = {"llama": "LlamaConfig", "mistral": "MistralConfig", "qwen2": "Qwen2Config",
             "gpt_neox": "GPTNeoXConfig", "gpt2": "GPT2Config"}
    return {kind: getattr(transformers, name) for kind, name in names.items()}


def _build_family(module, hf_config, hf_state, rows: int, meta_token_id: int, *, meta_attention: bool,
                  meta_pos: str, block_size: int, seed: int) -> GPT:

    fields = module.config_fields(hf_config)
    window = getattr(hf_config, "max_position_embeddings", None) or block_size
    try:
        cfg = FamilyConfig.from_dict(dict(
            fields, vocab_size=rows, block_size=min(block_size, window), meta_token_id=meta_token_id,
            meta_attention=meta_attention, meta_pos=meta_pos, pos_encoding="rope", bias=False, dropout=0.0,
        ), source=f"{hf_config.model_type} config")
    except ConfigError as err:
        raise ImportRefused(str(err)) from None
    state = module.rename(hf_state, cfg)
    for name in ("wte.weight", "lm_head.weight"):  # rows for the meta-token and padding: filled below
        if name in state and state[name].size(0) < rows:
            w = state[name]
            state[name] = torch.cat((w, w.new_zeros(rows - w.size(0), w.size(1))))
    if cfg.tie_embeddings:
        state.pop("lm_head.weight", None)  # the same tensor as wte.weight
    with torch.random.fork_rng(devices=[]):  # seeded new weights without touching the caller's RNG
        torch.manual_seed(seed)
        model = FamilyModel(cfg)  # meta-attention output projections are zero
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise ImportRefused(f"the {hf_config.model_type} weights do not fit its config ({' '.join(str(err).split())[:300]})") from None
    new = (".meta_layernorm.", ".meta_attn.")
    missing = [k for k in missing if not any(s in k for s in new) and not (cfg.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ImportRefused(f"the {hf_config.model_type} weights do not match: missing {sorted(missing)[:5]}, "
                            f"unexpected {sorted(unexpected)[:5]}")
    return model


def _build_gpt2(hf_config, hf_state, rows: int, meta_token_id: int, *, meta_attention: bool, meta_pos: str,
                block_size: int, seed: int) -> GPT:

    model = gpt2_to_meta_model(hf_config, hf_state, meta_token_id, rows, meta_attention=meta_attention, seed=seed)
    model.config = model.config.replace(meta_pos=meta_pos)  # GPT-2 keeps its learned position table (block_size)
    return model


@torch.no_grad()
def _fill_new_rows(model: GPT, hf_rows: int, tokenizer: MetaTokenizer) -> None:
    """The meta row and the rows beyond the checkpoint's: the mean of the token rows (both matrices if untied)."""
    meta = tokenizer.meta_token_id
    tokens = torch.zeros(model.config.vocab_size, dtype=torch.bool)
    tokens[: min(hf_rows, tokenizer.vocab_size)] = True
    tokens[meta] = False
    mats = [model.wte.weight] + ([] if model.lm_head.weight is model.wte.weight else [model.lm_head.weight])
    for w in mats:
        mean = w[tokens].mean(0)
        w[hf_rows:] = mean
        w[meta] = mean


def convert(hf_config: Any, hf_state: dict[str, torch.Tensor], tokenizer: Any, *, meta_attention: bool = True,
            meta_pos: str = "keep", block_size: int = 1024, vocab_multiple: int = 64, seed: int = 0,
            folder: Path | None = None) -> tuple[GPT, MetaTokenizer]:
    """(our model in eval mode, its tokenizer) for a transformers config and Hugging Face state dict."""
    kind = getattr(hf_config, "model_type", None)
    if kind not in MODEL_TYPES:
        raise ImportRefused(f"model_type {kind!r} is not supported; import-hf supports {SUPPORTED}")
    if meta_pos not in ("keep", "zero"):
        raise ImportRefused(f"meta_pos must be keep or zero, got {meta_pos!r}")
    for name, value in (("vocab_multiple", vocab_multiple), ("block_size", block_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ImportRefused(f"{name} must be a positive integer, got {value!r}")
    tok = meta_tokenizer(tokenizer, hf_config, folder)
    hf_rows = hf_config.vocab_size
    text_top = max(i for i in range(tok.vocab_size) if i != tok.meta_token_id)
    if text_top >= hf_rows:
        raise ImportRefused(f"the tokenizer has ids up to {text_top} but the model only {hf_rows} embeddings; "
                            "is the tokenizer from this checkpoint?")
    rows = -(-max(hf_rows, tok.vocab_size) // vocab_multiple) * vocab_multiple
    build = _build_gpt2 if kind == "gpt2" else lambda *a, **k: _build_family(_FAMILIES[kind], *a, **k)
    model = build(hf_config, hf_state, rows, tok.meta_token_id, meta_attention=meta_attention, meta_pos=meta_pos,
                  block_size=block_size, seed=seed)
    _fill_new_rows(model, hf_rows, tok)
    return model.eval(), tok


def from_transformers(hf_model: torch.nn.Module, tokenizer: Any, **options: Any) -> tuple[GPT, MetaTokenizer]:
    """`convert` for a loaded transformers model (LlamaForCausalLM, GPTNeoXForCausalLM, ...) and its tokenizer."""
    state = {k: v.detach().float().cpu() for k, v in hf_model.state_dict().items()}
    return convert(hf_model.config, state, tokenizer, **options)


def _is_import(folder: Path) -> bool:
    return is_hub_import(folder, key=IMPORT_KEY)


@holds_output(HFInteropError)  # two writers of one folder at once: the second is refused
def import_hf(source: Any, out: str | Path, *, tokenizer: Any = None, meta_attention: bool = True,
              meta_pos: str = "keep", block_size: int = 1024, vocab_multiple: int = 64, seed: int = 0,
              overwrite: bool = False) -> Path:
    """Write a metatokens model folder (config.json, model.safetensors, tokenizer.json) for a checkpoint.

    `source`: a Hugging Face model folder, a Hub name, or a loaded transformers model (then
    `tokenizer` is required: a transformers fast tokenizer, a `tokenizers.Tokenizer` or a folder).
    Weights are read from safetensors only. `block_size` is the training window recorded for
    `pretrain --init` (at most the checkpoint's max_position_embeddings; GPT-2 keeps n_positions).
    An existing `out` must be empty, or an earlier import-hf output, replaced only with overwrite=True.
    """
    _require_transformers()
    out = Path(out)
    check = dict(command="import-hf", overwrite=overwrite, ours=_is_import)
    if isinstance(source, torch.nn.Module):
        if tokenizer is None:
            raise ImportRefused("a loaded model needs its tokenizer: import_hf(model, out, tokenizer=...)")
        _check_out_dir(out, sources=[], **check)
        model, tok = from_transformers(source, tokenizer, meta_attention=meta_attention, meta_pos=meta_pos,
                                       block_size=block_size, vocab_multiple=vocab_multiple, seed=seed)
        where, kind = f"<loaded {type(source).__name__}>", source.config.model_type
    else:
        _check_out_dir(out, sources=[Path(source).expanduser()], **check)
        folder = resolve_source(source)
        _check_out_dir(out, sources=[folder], **check)
        hf_config = read_hf_config(folder, _config_classes())
        hf_state = _read_safetensors_weights(folder)
        model, tok = convert(hf_config, hf_state, tokenizer if tokenizer is not None else folder,
                             meta_attention=meta_attention, meta_pos=meta_pos, block_size=block_size,
                             vocab_multiple=vocab_multiple, seed=seed, folder=folder)
        where, kind = str(source), hf_config.model_type
    info = {"source": where, "model_type": kind, "family": getattr(model.config, "family", "gpt2"),
            "meta_attention": meta_attention, "meta_pos": meta_pos, "seed": seed}
    return save_pretrained(out, model, tok, extra={IMPORT_KEY: info})


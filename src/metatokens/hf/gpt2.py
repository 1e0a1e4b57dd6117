"""GPT-2 from Hugging Face into our GPT: config and weights (Conv1D -> Linear), and `import-gpt2`,
which adds fresh meta-attention sublayers (starting as the identity) and the meta-token.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..errors import GPT2ImportWarning, HFInteropError
from ..fileio import holds_output
from ..model.config import ModelConfig
from ..model.gpt import GPT
from ..runs.model_folder import save_pretrained
from ..tokenizer.meta import MetaTokenizer
from .hub import (
    _check_out_dir,
    _is_import,
    _require_transformers,
    read_hf_config,
    resolve_hub_folder,
)


def config_from_hf_gpt2(hf_config: Any, **overrides: Any) -> ModelConfig:
    """The ModelConfig that reproduces a `transformers.GPT2Config` (APE, no meta unless overridden)."""
    act = hf_config.activation_function
    if act not in ("gelu_new", "gelu_pytorch_tanh", "relu"):
        raise ValueError(f"GPT-2 activation {act!r} is not supported (expected gelu_new or relu)")
    base = dict(
        vocab_size=hf_config.vocab_size,
        block_size=hf_config.n_positions,
        n_layer=hf_config.n_layer,
        n_head=hf_config.n_head,
        n_embd=hf_config.n_embd,
        layer_norm_eps=hf_config.layer_norm_epsilon,
        mlp_act="relu" if act == "relu" else "gelu",
        bias=True,
        tie_embeddings=True,
        pos_encoding="ape",
        meta_attention=False,
    )
    return ModelConfig.from_dict({**base, **overrides}, source="GPT-2 config")


def state_dict_from_hf_gpt2(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename (and transpose Conv1D weights of) a GPT2LMHeadModel state dict to our names."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in hf_state.items():
        if name.endswith(".attn.bias") or name.endswith(".attn.masked_bias"):
            continue  # causal-mask buffers of old transformers versions, not weights
        key = name.removeprefix("transformer.")
        if key.endswith(_CONV1D):
            tensor = tensor.t()
        out[key] = tensor.contiguous()
    out.setdefault("lm_head.weight", out["wte.weight"])
    return out


def resolve_gpt2_source(name_or_path: str | Path) -> Path:
    """A local GPT-2 folder as is; otherwise a Hub model name, fetched (only the files an import needs)."""
    return resolve_hub_folder(name_or_path, patterns=_GPT2_PATTERNS, error=HFInteropError,
                              what="a Hugging Face GPT-2 model folder", example="gpt2")


def _read_gpt2_config(folder: Path):
    from transformers import (
        GPT2Config,  # optional dependency: transformers (pip install "metatokens[hf]")
    )

    return read_hf_config(folder, {"gpt2": GPT2Config}, error=HFInteropError,
                          supported="import-gpt2 takes GPT-2 checkpoints only (other families: metatokens import-hf)")


def _read_safetensors_weights(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").is_file():
        files = [folder / "model.safetensors"]
    elif index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise HFInteropError(f"{index}: not a safetensors index ({err})") from None
        files = [folder / name for name in sorted(set(weight_map.values()))]
    else:
        raise HFInteropError(
            f"{folder}: no model.safetensors; only safetensors weights are read (never pickles). "
            "Convert with transformers: AutoModelForCausalLM.from_pretrained(folder).save_pretrained(folder)"
        )
    state: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            state.update(load_file(str(file)))
        except Exception as err:
            raise HFInteropError(f"{file}: cannot read weights ({' '.join(str(err).split())[:200]})") from None
    return state


def _pad_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """Append rows equal to the mean of the existing ones.

    A new token starts as an "average" token. Zero rows would be worse: with a tied head a zero
    row scores logit 0, far above GPT-2's typical (large negative) logits, and would soak up
    probability before any training.
    """
    extra = rows - weight.size(0)
    if extra <= 0:
        return weight
    return torch.cat((weight, weight.mean(0, keepdim=True).expand(extra, -1)), 0)


def gpt2_to_meta_model(
    hf_config: Any,
    hf_state: dict[str, torch.Tensor],
    meta_token_id: int,
    vocab_rows: int,
    *,
    pos_encoding: str = "ape",
    meta_attention: bool = True,
    seed: int = 0,
):
    """Our GPT holding every GPT-2 weight, plus meta-attention sublayers and embedding rows.

    New embedding rows (the meta-token, padding) are the mean of GPT-2's rows. Meta-attention
    gets GPT's usual initialisation except its output projection (c_proj weight and bias), which
    is zero: the new sublayers add nothing until trained, so on text without meta-tokens the
    logits are GPT-2's. pos_encoding "rope"/"none" drops GPT-2's learned position table.
    """
    tied = bool(getattr(hf_config, "tie_word_embeddings", True))
    cfg = config_from_hf_gpt2(
        hf_config, vocab_size=vocab_rows, meta_token_id=meta_token_id, meta_attention=meta_attention,
        pos_encoding=pos_encoding, tie_embeddings=tied,
    )
    state = state_dict_from_hf_gpt2(hf_state)
    if tied:
        state.pop("lm_head.weight", None)  # the same tensor as wte.weight in GPT
    for name in ("wte.weight", "lm_head.weight"):
        if name in state:
            state[name] = _pad_rows(state[name], vocab_rows)
    if pos_encoding != "ape":
        state.pop("wpe.weight", None)
    with torch.random.fork_rng(devices=[]):  # seeded meta-attention init without touching the caller's RNG
        torch.manual_seed(seed)
        model = GPT(cfg)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise HFInteropError(f"GPT-2 weights do not fit its config ({' '.join(str(err).split())[:300]})") from None
    new = (".ln_meta.", ".meta_attn.")
    missing = [k for k in missing if not any(s in k for s in new) and not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise HFInteropError(
            f"GPT-2 weights do not match: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    with torch.no_grad():
        for block in model.h if meta_attention else ():
            block.meta_attn.c_proj.weight.zero_()
            if block.meta_attn.c_proj.bias is not None:
                block.meta_attn.c_proj.bias.zero_()
    return model.eval()


@holds_output(HFInteropError)  # two writers of one folder at once: the second is refused
def import_gpt2(
    source: str | Path,
    out: str | Path,
    *,
    pos_encoding: str = "ape",
    meta_attention: bool = True,
    vocab_multiple: int = 64,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Build a metatokens model folder from a Hugging Face GPT-2 checkpoint (folder or Hub name).

    Tokenizer: GPT-2's BPE plus `<|meta|>` appended (id 50257 for GPT-2 itself). The embedding is
    padded to a multiple of `vocab_multiple` rows (50304 for GPT-2); generation must not sample
    ids at or above the tokenizer size (metatokens.generation's vocab_limit). With pos_encoding
    other than "ape" a GPT2ImportWarning says that the learned positions are discarded. An existing
    `out` must be empty, or an earlier import, replaced only with overwrite=True (never the source).
    """
    _require_transformers()
    if pos_encoding not in ("ape", "rope", "none"):
        raise HFInteropError(f"pos_encoding must be ape, rope or none; got {pos_encoding!r}")
    if not isinstance(vocab_multiple, int) or vocab_multiple < 1:
        raise HFInteropError(f"vocab_multiple must be a positive integer, got {vocab_multiple!r}")
    out = Path(out)
    check = dict(command="import-gpt2", overwrite=overwrite, ours=_is_import)
    _check_out_dir(out, sources=[Path(source).expanduser()], **check)
    folder = resolve_gpt2_source(source)
    _check_out_dir(out, sources=[folder], **check)
    hf_config = _read_gpt2_config(folder)
    tokenizer = MetaTokenizer.from_gpt2(folder)
    # Every id but the meta-token's must have a GPT-2 embedding row.
    top = tokenizer.vocab_size - 1
    last_text_id = top - 1 if tokenizer.meta_token_id == top else top
    if last_text_id >= hf_config.vocab_size:
        raise HFInteropError(
            f"{folder}: the tokenizer has ids up to {last_text_id} but the model only {hf_config.vocab_size} embeddings; "
            "are the tokenizer files from this checkpoint?"
        )
    hf_state = _read_safetensors_weights(folder)
    if pos_encoding != "ape":
        warnings.warn(
            f"pos_encoding={pos_encoding} discards GPT-2's learned position embeddings; "
            "the model needs continued pre-training before it is useful",
            GPT2ImportWarning, stacklevel=2,
        )
    rows = max(hf_config.vocab_size, tokenizer.vocab_size)
    rows = -(-rows // vocab_multiple) * vocab_multiple
    model = gpt2_to_meta_model(
        hf_config, hf_state, tokenizer.meta_token_id, rows,
        pos_encoding=pos_encoding, meta_attention=meta_attention, seed=seed,
    )
    info = {"source": str(source), "pos_encoding": pos_encoding, "meta_attention": meta_attention, "seed": seed}
    return save_pretrained(out, model, tokenizer, extra={"imported_from_gpt2": info})


# GPT-2 stores these projections as Conv1D with (in, out) weights; ours are Linear (out, in).
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


# Hub files worth fetching for an import: settings, safetensors weights, tokenizer.
_GPT2_PATTERNS = ["config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json", "vocab.json", "merges.txt"]

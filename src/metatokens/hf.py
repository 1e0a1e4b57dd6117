"""Weight conversion between Hugging Face GPT-2 and our model (transformers is optional)."""

from __future__ import annotations

from typing import Any

import torch

from .config import ModelConfig

# GPT-2 stores these projections as Conv1D with (in, out) weights; ours are Linear (out, in).
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


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

"""Llama-family checkpoints (model_type llama, mistral, qwen2) -> `FamilyConfig` and our weight names.

Hugging Face names under `model.` map one to one (`model.layers.3.self_attn.q_proj.weight` ->
`h.3.self_attn.q_proj.weight`), except the embedding (`wte`), the final norm (`ln_f`) and the head.
"""

from __future__ import annotations

from typing import Any

import torch

from ...errors import ImportRefused
from ..families.common import activation, rope_settings

MODEL_TYPES = ("llama", "mistral", "qwen2")


def config_fields(hf: Any) -> dict[str, Any]:
    C, nh = hf.hidden_size, hf.num_attention_heads
    head_dim = getattr(hf, "head_dim", None) or C // nh
    if head_dim * nh != C:
        raise ImportRefused(f"head_dim {head_dim} x {nh} heads != hidden_size {C}; such {hf.model_type} checkpoints are not supported")
    rope = rope_settings(hf)
    if rope.pop("partial_rotary_factor", 1.0) != 1.0:
        raise ImportRefused(f"{hf.model_type}: partial rotary embeddings are not supported for this family")
    bias = bool(getattr(hf, "attention_bias", False))
    fields = dict(family="llama", norm="rms", gated_mlp=True, parallel_residual=False,
                  attn_bias=bias, attn_out_bias=bias, mlp_bias=bool(getattr(hf, "mlp_bias", False)))
    window = None
    if hf.model_type == "qwen2":
        fields.update(attn_bias=True, attn_out_bias=False, mlp_bias=False)  # Qwen2: biased q/k/v only
        if getattr(hf, "use_sliding_window", False) or "sliding_attention" in (getattr(hf, "layer_types", None) or ()):
            raise ImportRefused("qwen2 with sliding-window attention (use_sliding_window) is not supported")
    elif hf.model_type == "mistral":
        fields.update(attn_bias=False, attn_out_bias=False, mlp_bias=False)
        window = getattr(hf, "sliding_window", None)
    return dict(
        n_layer=hf.num_hidden_layers, n_head=nh, n_kv_head=getattr(hf, "num_key_value_heads", None) or nh, n_embd=C,
        intermediate_size=hf.intermediate_size, hidden_act=activation(hf.hidden_act), layer_norm_eps=hf.rms_norm_eps,
        tie_embeddings=bool(getattr(hf, "tie_word_embeddings", False)), attention_window=window,
        init_std=float(getattr(hf, "initializer_range", 0.02)), **fields, **rope,
    )


def rename(hf_state: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    out = {}
    for name, tensor in hf_state.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue  # a buffer of old checkpoints, recomputed from the settings
        key = name.removeprefix("model.")
        if key == "embed_tokens.weight":
            key = "wte.weight"
        elif key.startswith("norm."):
            key = "ln_f." + key.removeprefix("norm.")
        elif key.startswith("layers."):
            key = "h." + key.removeprefix("layers.")
        out[key] = tensor
    return out

"""GPT-NeoX checkpoints (model_type gpt_neox: Pythia, GPT-NeoX-20B) -> `FamilyConfig` and our names.

NeoX fuses q/k/v into one `query_key_value` matrix laid out per head ([q_h, k_h, v_h] for each
head h); it is split here into our q_proj / k_proj / v_proj, so both families share one attention.
"""

from __future__ import annotations

from typing import Any

import torch

from ...errors import ImportRefused
from ..families.common import activation, rope_settings

MODEL_TYPES = ("gpt_neox",)
_RENAMES = {"attention.dense.": "self_attn.o_proj.", "mlp.dense_h_to_4h.": "mlp.up_proj.",
            "mlp.dense_4h_to_h.": "mlp.down_proj."}


def config_fields(hf: Any) -> dict[str, Any]:
    C, nh = hf.hidden_size, hf.num_attention_heads
    head_dim = C // nh
    rope = rope_settings(hf)
    rotary_dim = int(head_dim * rope.pop("partial_rotary_factor", 1.0))
    if rotary_dim % 2:
        raise ImportRefused(f"gpt_neox: {rotary_dim} rotary channels per head (odd) are not supported")
    bias = bool(getattr(hf, "attention_bias", True))
    return dict(
        family="neox", norm="layer", gated_mlp=False, parallel_residual=bool(hf.use_parallel_residual),
        attn_bias=bias, attn_out_bias=bias, mlp_bias=True, rotary_dim=0 if rotary_dim == head_dim else rotary_dim,
        n_layer=hf.num_hidden_layers, n_head=nh, n_kv_head=nh, n_embd=C, intermediate_size=hf.intermediate_size,
        hidden_act=activation(hf.hidden_act), layer_norm_eps=hf.layer_norm_eps,
        tie_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
        init_std=float(getattr(hf, "initializer_range", 0.02)), **rope,
    )


def rename(hf_state: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    nh, hs = cfg.n_head, cfg.head_dim
    out = {}
    for name, tensor in hf_state.items():
        key = name.removeprefix("gpt_neox.")
        if key.endswith(("attention.bias", "attention.masked_bias", "inv_freq")):
            continue  # causal-mask and rotary buffers of old checkpoints, not weights
        if key == "embed_in.weight":
            out["wte.weight"] = tensor
        elif key == "embed_out.weight":
            out["lm_head.weight"] = tensor
        elif key.startswith("final_layer_norm."):
            out["ln_f." + key.removeprefix("final_layer_norm.")] = tensor
        elif key.startswith("layers."):
            layer, _, rest = key.removeprefix("layers.").partition(".")
            prefix = f"h.{layer}."
            if rest.startswith("attention.query_key_value."):
                kind = rest.rsplit(".", 1)[1]  # weight (3C, C) or bias (3C,)
                parts = tensor.view(nh, 3, hs, *tensor.shape[1:]).unbind(1)
                for proj, part in zip(("q_proj", "k_proj", "v_proj"), parts):
                    out[f"{prefix}self_attn.{proj}.{kind}"] = part.reshape(nh * hs, *tensor.shape[1:])
                continue
            for old, new in _RENAMES.items():
                if rest.startswith(old):
                    rest = new + rest.removeprefix(old)
            out[prefix + rest] = tensor
        else:
            out[key] = tensor  # unexpected: reported by the caller
    return out

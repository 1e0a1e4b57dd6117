"""`metatokens info`: model shapes and presets with their parameter counts, with and without meta-attention.

The shape table counts a shape as `model_shape` builds it (learned absolute positions, the shape's
own window); the preset table counts each preset as `metatokens pretrain --config NAME` builds it
(its positional encoding and window), which is the number a run prints and a report quotes.
"""

from __future__ import annotations

import torch

from ..model.config import MODEL_SHAPES, model_shape
from ..model.gpt import GPT
from ..training.config import list_presets, load_run_config


def add_command(sub) -> None:
    p = sub.add_parser("info", help="parameter counts of the named model shapes and presets",
                       description="Parameter counts of the model shapes (learned positions, the shape's window) and of "
                                   "the presets, as `metatokens pretrain --config NAME` builds them.")
    p.add_argument("--shape", choices=list(MODEL_SHAPES), help="one shape only (default: all shapes and presets)")
    p.set_defaults(func=run)


def parameter_counts(shape: str) -> tuple[int, int]:
    """(with meta-attention, without) for a named shape; built on the meta device, so free."""
    with torch.device("meta"):
        meta = GPT(model_shape(shape, meta_token_id=0))
        base = GPT(model_shape(shape, meta_attention=False))
    return meta.num_params(), base.num_params()


def run(args) -> int:
    print("model shapes (learned absolute positions, the shape's own window):")
    print(f"{'shape':<12}{'layers x heads x d':>20}{'window':>8}{'vocab':>8}{'with meta':>14}{'without':>14}{'extra':>8}")
    for shape in [args.shape] if args.shape else MODEL_SHAPES:
        s = MODEL_SHAPES[shape]
        meta, base = parameter_counts(shape)
        dims = f"{s['n_layer']} x {s['n_head']} x {s['n_embd']}"
        print(f"{shape:<12}{dims:>20}{s['block_size']:>8}{s['vocab_size']:>8}{meta:>14,}{base:>14,}{(meta - base) / base:>8.1%}")
    if args.shape:
        return 0
    print("presets, as `metatokens pretrain --config NAME` builds them:")
    print(f"{'preset':<22}{'shape':>12}{'positions':>11}{'window':>8}{'meta-attention':>16}{'parameters':>14}")
    for name, shape, cfg, count in preset_counts():
        meta = "yes" if cfg.meta_attention else "no"
        print(f"{name:<22}{shape:>12}{cfg.pos_encoding:>11}{cfg.block_size:>8}{meta:>16}{count:>14,}")
    return 0


def preset_counts() -> list[tuple[str, str, object, int]]:
    """(preset, base shape, ModelConfig, parameters) of every preset, as pre-training builds it
    (the vocabulary is the preset's; a run pads its tokenizer's size to the same number)."""
    rows = []
    for name in list_presets():
        cfg = load_run_config(name).model
        shape = next((s for s, dims in MODEL_SHAPES.items()
                      if all(getattr(cfg, k) == v for k, v in dims.items() if k in ("n_layer", "n_head", "n_embd"))), "custom")
        with torch.device("meta"):
            rows.append((name, shape, cfg, GPT(cfg).num_params()))
    return rows

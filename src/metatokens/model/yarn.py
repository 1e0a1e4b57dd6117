"""YaRN on a loaded RoPE model: extend its window from L to scale * L at evaluation time."""

from __future__ import annotations

from ..errors import EvaluationError
from .config import YarnConfig
from .gpt import GPT
from .positions import Rotary


def apply_yarn(model: GPT, scale: float) -> GPT:
    """Extend a RoPE model's window from L to scale * L with YaRN (docs/method.md section 3), in place.

    L is the window the model was pre-trained on: ``yarn.original_max_position_embeddings`` when
    the model already has YaRN (e.g. fine-tuned with it), else ``block_size``. The weights stay;
    the rotary tables and the attention temperature are rebuilt; ``block_size`` records the new
    window. The other YaRN settings are the paper's (beta_fast 32, beta_slow 1, factors 1).
    """
    if not isinstance(model, GPT) or model.config.pos_encoding != "rope":
        kind = model.config.pos_encoding if isinstance(model, GPT) else "its own Hugging Face"
        raise EvaluationError(f"YaRN here extends metatokens RoPE models; this one uses {kind} positions")
    cfg = model.config
    if not (isinstance(scale, (int, float)) and scale >= 1):
        raise EvaluationError(f"the YaRN scale must be a number >= 1, got {scale!r}")
    original = cfg.yarn.original_max_position_embeddings if cfg.yarn is not None else cfg.block_size
    yarn = None if scale == 1 else YarnConfig(factor=float(scale), original_max_position_embeddings=original)
    model.config = cfg.replace(yarn=yarn, block_size=int(round(original * scale)))
    device = next(model.parameters()).device
    model.rotary = Rotary(model.config.head_dim, model.config.rope_theta, yarn).to(device)
    return model

"""Rotary position embedding (RoPE), its YaRN extension, and zeroing at meta positions.

Learned absolute positions (APE) are a plain embedding table and live in gpt.py.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import YarnConfig


def rope_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """theta^(-2i/d) for i = 0 .. d/2-1 (Su et al. 2021)."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


def yarn_inv_freq(head_dim: int, theta: float, yarn: YarnConfig) -> torch.Tensor:
    """YaRN "NTK-by-parts" frequencies (Peng et al. 2023, eq. 17-19).

    Dimensions that rotate more than beta_fast times over the original window keep their
    frequency (extrapolation); those rotating fewer than beta_slow times are divided by the scale
    (interpolation); a linear ramp blends the two in between. The correction range is rounded
    outwards (floor / ceil), as in the YaRN reference and Hugging Face `rope_type="yarn"`.
    """
    s, L = yarn.factor, yarn.original_max_position_embeddings

    def dim_for_rotations(rotations: float) -> float:
        # Dimension index i whose wavelength 2*pi*theta^(2i/d) fits `rotations` times into L.
        return head_dim * math.log(L / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(dim_for_rotations(yarn.beta_fast)), 0)
    high = min(math.ceil(dim_for_rotations(yarn.beta_slow)), head_dim - 1)
    if low == high:
        high += 0.001  # the reference's guard against a zero-width ramp
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolate = (1.0 - ramp) * yarn.extrapolation_factor  # 1 = keep the original frequency
    base = rope_inv_freq(head_dim, theta)
    return (base / s) * (1.0 - extrapolate) + base * extrapolate


class Rotary(nn.Module):
    """Computes cos/sin for given positions; optionally leaves meta positions unrotated.

    YaRN's attention temperature is *not* folded into cos/sin here: the model applies it once,
    as a factor on the attention logits (see `logit_scale`), so that unrotated meta positions
    see the same temperature as every other position and it can never be applied twice.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0, yarn: YarnConfig | None = None):
        super().__init__()
        inv = yarn_inv_freq(head_dim, theta, yarn) if yarn is not None else rope_inv_freq(head_dim, theta)
        self.register_buffer("inv_freq", inv, persistent=False)
        # Logits are scaled by mscale^2 = 1/t: the reference multiplies both cos and sin (so both
        # q and k) by mscale; doing it on the logits is the same product, applied in one place.
        self.logit_scale = (yarn.mscale**2) if yarn is not None else 1.0

    def forward(self, positions: torch.Tensor, unrotated: torch.Tensor | None = None):
        """cos, sin of shape (..., hs/2) for integer positions (...); `unrotated` (broadcastable
        to positions) marks positions that keep q/k as they are (angle 0)."""
        angles = positions.to(self.inv_freq.dtype)[..., None] * self.inv_freq
        cos, sin = angles.cos(), angles.sin()
        if unrotated is not None:
            keep = ~unrotated[..., None]
            cos = torch.where(keep, cos, torch.ones_like(cos))
            sin = torch.where(keep, sin, torch.zeros_like(sin))
        return cos, sin


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[i], x[i + d/2]) by the angle of frequency i (the GPT-NeoX / Llama layout)."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

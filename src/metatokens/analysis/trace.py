"""Activations captured from outside the model with forward hooks.

The model computes attention with fused kernels and never materialises the probabilities, and it
should stay that way; so we record what enters each attention sublayer (the LayerNorm outputs)
and the residual stream between blocks, and the analyses recompute what they need from those
(see attention.py). Nothing in the model's code (metatokens/model/) is changed or monkeypatched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model.gpt import GPT


@dataclass
class Trace:
    """One forward pass of a (B, T) batch, seen from the outside."""

    idx: torch.Tensor  # (B, T) token ids
    is_meta: torch.Tensor  # (B, T) bool: the model's meta mask
    residual: list[torch.Tensor]  # n_layer + 1 tensors (B, T, C): the embeddings, then after each block
    ln_1: list[torch.Tensor]  # n_layer tensors (B, T, C): what each causal self-attention reads
    ln_meta: list[torch.Tensor | None]  # n_layer (B, T, C): what meta-attention reads, zero off meta rows;
    #                                     None without meta-attention or when the batch has no meta-token
    logits: torch.Tensor  # (B, T, V) the model's output


@torch.no_grad()
def trace(model: GPT, idx: torch.Tensor, meta_mask: torch.Tensor | None = None) -> Trace:
    """Run the model once on `idx` (B, T) and capture its residual stream and attention inputs."""
    is_meta = model.meta_mask(idx, meta_mask)
    B, T = idx.shape
    n_layer = len(model.h)
    residual: list[torch.Tensor | None] = [None] * (n_layer + 1)
    ln_1: list[torch.Tensor | None] = [None] * n_layer
    ln_meta: list[torch.Tensor | None] = [None] * n_layer
    flat_meta = is_meta.flatten().nonzero().squeeze(1)

    def keep_input(module, args):
        residual[0] = args[0].detach()

    def keep_output(store, i):
        def hook(module, args, output):
            store[i] = output.detach()

        return hook

    def keep_meta_input(i):
        def hook(module, args, output):
            out = output.detach()
            if out.dim() == 2:
                # The sparse path normalises only the meta rows, gathered in row-major order
                # (b * T + t); put them back in place so every layer has one (B, T, C) layout.
                full = out.new_zeros(B * T, out.size(-1))
                full[flat_meta] = out
                out = full.view(B, T, -1)
            ln_meta[i] = out

        return hook

    handles = [model.h[0].register_forward_pre_hook(keep_input)]
    for i, block in enumerate(model.h):
        handles.append(block.register_forward_hook(keep_output(residual, i + 1)))
        handles.append(block.ln_1.register_forward_hook(keep_output(ln_1, i)))
        if hasattr(block, "ln_meta"):
            handles.append(block.ln_meta.register_forward_hook(keep_meta_input(i)))
    try:
        logits, _ = model(idx, meta_mask=meta_mask)
    finally:
        for handle in handles:
            handle.remove()
    return Trace(idx, is_meta, residual, ln_1, ln_meta, logits)  # type: ignore[arg-type]

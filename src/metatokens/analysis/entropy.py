"""Attention sharpening at meta-tokens (docs/method.md section 7, "Sharpening").

Per example, layer l and head h, with H_i = -sum_j a_ij ln a_ij the entropy of query i's causal
self-attention:

    meta      = mean of H_i over the meta-token queries i
    non_meta  = mean of H_i over all other queries
    nearby    = mean of H_i over non-meta queries within `window` positions of a meta-token
                (a control for position: H_i <= ln(i + 1) grows with i, so early queries are
                sharp for free; `nearby` compares meta-tokens with neighbours of similar i)
    diff      = non_meta - meta          (the paper: about 1.40 nats on average)
    boost     = mean over meta queries i of  max_j s_ij(real meta embedding) - max_j s_ij(zeroed)
                where s are the scaled attention logits (the paper: about 1.26)

and the entropy of meta-attention itself at meta queries. Headline numbers average over layers
and heads per example, then over examples with a 95% bootstrap interval over examples.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..model.gpt import GPT
from ..plotting import analysis_title, label_cells, pyplot, save_figure, wrap_title
from ..progress import progress_bar
from .attention import attention_entropy, meta_attention, self_attention
from .common import check_fits, check_has_meta, example_ids, model_variant, summary
from .trace import trace


def near_meta(is_meta: torch.Tensor, window: int) -> torch.Tensor:
    """(T,) bool: non-meta positions within `window` positions (either side) of a meta-token."""
    T = is_meta.numel()
    where = is_meta.nonzero().squeeze(1)
    distance = (torch.arange(T, device=is_meta.device)[:, None] - where[None, :]).abs()
    return (distance <= window).any(1) & ~is_meta


@torch.no_grad()
def entropy_analysis(
    model: GPT,
    examples: Sequence,
    *,
    window: int = 16,
    boost: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Entropy of self-attention at meta vs non-meta queries, and the max-logit boost; see module doc."""
    check_has_meta(examples, "entropy")
    check_fits(model, examples)
    device = next(model.parameters()).device
    L, nh = model.config.n_layer, model.config.n_head
    zeroed = model_variant(model, meta_embed="zero") if boost else None
    keys = ["meta", "non_meta", "nearby", "meta_attention", "boost", "max_logit_real", "max_logit_zeroed"]
    per = {k: np.full((len(examples), L, nh), np.nan) for k in keys}
    for e, example in enumerate(progress_bar(examples, desc="entropy", unit="example", disable=not progress)):
        idx = example_ids(example, device)
        tr = trace(model, idx)
        is_meta = tr.is_meta[0]
        nearby = near_meta(is_meta, window)
        tr0 = trace(zeroed, idx) if zeroed is not None else None
        for layer in range(L):
            att = self_attention(model, tr, layer)
            H = attention_entropy(att.probs)[0]  # (nh, T)
            per["meta"][e, layer] = H[:, is_meta].mean(-1).cpu().numpy()
            per["non_meta"][e, layer] = H[:, ~is_meta].mean(-1).cpu().numpy()
            if nearby.any():
                per["nearby"][e, layer] = H[:, nearby].mean(-1).cpu().numpy()
            meta_att = meta_attention(model, tr, layer)
            if meta_att is not None:
                per["meta_attention"][e, layer] = attention_entropy(meta_att.probs)[0][:, is_meta].mean(-1).cpu().numpy()
            if tr0 is not None:
                real = att.logits[0][:, is_meta].amax(-1)  # (nh, m): every meta query has key 0 at least
                zero = self_attention(zeroed, tr0, layer).logits[0][:, is_meta].amax(-1)
                per["max_logit_real"][e, layer] = real.mean(-1).cpu().numpy()
                per["max_logit_zeroed"][e, layer] = zero.mean(-1).cpu().numpy()
                per["boost"][e, layer] = (real - zero).mean(-1).cpu().numpy()
    diff = per["non_meta"] - per["meta"]
    diff_nearby = per["nearby"] - per["meta"]

    def layer_head(a: np.ndarray) -> list | None:
        if np.isnan(a).all():
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(a, axis=0).tolist()

    def headline(a: np.ndarray) -> dict[str, Any] | None:
        with warnings.catch_warnings():  # an all-NaN row (e.g. no meta-attention) is expected
            warnings.simplefilter("ignore", RuntimeWarning)
            per_example = np.nanmean(a.reshape(len(a), -1), axis=1)
        per_example = per_example[~np.isnan(per_example)]
        # the per-example values go along, so that a study can bootstrap seeds, then examples
        return {**summary(per_example), "per_example": per_example.tolist()} if per_example.size else None

    return {
        "n_examples": len(examples),
        "window": window,
        "meta_queries": int(sum(len(e.meta_positions) for e in examples)),
        "entropy_difference": headline(diff),  # non-meta minus meta, nats
        "entropy_difference_nearby": headline(diff_nearby),
        "entropy_meta": headline(per["meta"]),
        "entropy_non_meta": headline(per["non_meta"]),
        "meta_attention_entropy": headline(per["meta_attention"]),
        "max_logit_boost": headline(per["boost"]) if boost else None,
        "per_layer_head": {
            "entropy_difference": layer_head(diff),
            "entropy_difference_nearby": layer_head(diff_nearby),
            "entropy_meta": layer_head(per["meta"]),
            "entropy_non_meta": layer_head(per["non_meta"]),
            "meta_attention_entropy": layer_head(per["meta_attention"]),
            "max_logit_boost": layer_head(per["boost"]),
            "max_logit_real": layer_head(per["max_logit_real"]),
            "max_logit_zeroed": layer_head(per["max_logit_zeroed"]),
        },
    }


def _heatmap(ax, grid, title: str, plt, cmap: str = "RdBu_r"):
    grid = np.asarray(grid, dtype=float)
    bound = float(np.nanmax(np.abs(grid))) if not np.isnan(grid).all() else 0.0
    image = ax.imshow(grid, cmap=cmap, vmin=-(bound or 1.0), vmax=bound or 1.0, aspect="auto")
    L, nh = grid.shape
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(nh))
    ax.set_yticks(range(L))
    ax.set_title(title, fontsize=10)
    plt.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return image


def plot_entropy(result: dict[str, Any], path, title: str = "") -> None:
    """Layer x head heatmaps: the entropy difference, and the max-logit boost when measured; every
    cell carries its value, in black or white by its colour."""
    plt = pyplot()
    grids = result["per_layer_head"]
    panels = [("entropy_difference", "non-meta minus meta entropy (nats)")]
    if grids.get("max_logit_boost") is not None:
        panels.append(("max_logit_boost", "max-logit boost: real - zeroed meta embedding"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.8), squeeze=False)
    drawn = []
    for ax, (key, label) in zip(axes[0], panels):
        h = result[key]
        lo, hi = h["ci95"]
        image = _heatmap(ax, grids[key], f"{label}\nmean {h['mean']:.3f}, 95% CI [{lo:.3f}, {hi:.3f}]", plt)
        drawn.append((ax, image, grids[key]))
    fig.suptitle(wrap_title(analysis_title(result, "attention entropy", title), 110), fontsize=11)
    fig.tight_layout()
    for ax, image, grid in drawn:  # after the layout, so the font fits the cells as drawn
        label_cells(ax, image, grid)
    save_figure(fig, path)

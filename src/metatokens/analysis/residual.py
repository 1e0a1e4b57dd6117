"""What the residual stream holds at meta-tokens (docs/method.md section 7, "Caching").

Similarity against distance: for every layer l (0 = the embeddings, l = the output of block l)
and every meta query i, cos(h_l[i], h_l[j]) for each earlier position j < i, averaged by the
distance d = i - j over all meta queries of all examples. The same average over non-meta queries
is the control: nearby tokens look alike in any transformer, so the claim is about how the meta
curve differs from it. Distances are shown in power-of-two bins 1, 2, 3-4, 5-8, 9-16, ...

Logit lens at meta positions: each layer's residual through the final LayerNorm and the
unembedding, lm_head(ln_f(h_l[i])); the last layer's lens is the model's own output. Reported:
the top-k tokens (meta and padding ids excluded, as generation excludes them) for a few
examples, and over all examples the probability and rank of the answer's first token at the
last meta position, per layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..model.gpt import GPT
from ..plotting import analysis_title, pyplot, save_figure, wrap_title
from ..progress import progress_bar
from .common import check_fits, check_has_meta, example_ids
from .trace import trace


def distance_bins(max_distance: int) -> list[tuple[int, int]]:
    """Inclusive (low, high) bins 1, 2, 3-4, 5-8, ... covering 1..max_distance."""
    bins, low = [], 1
    while low <= max_distance:
        high = min(max(low, 2 * (low - 1)), max_distance)
        bins.append((low, high))
        low = high + 1
    return bins


def similarity_by_distance(h: torch.Tensor, queries: torch.Tensor, max_distance: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums and counts, indexed by distance 0..max_distance, of cos(h[i], h[j]) over the queries
    i (a (T,) bool mask) and all j < i. h: (T, C)."""
    T = h.size(0)
    unit = F.normalize(h.float(), dim=-1)
    rows = queries.nonzero().squeeze(1)
    sims = unit[rows] @ unit.T  # (q, T)
    distance = rows[:, None] - torch.arange(T, device=h.device)[None, :]
    earlier = distance > 0
    d, s = distance[earlier], sims[earlier]
    sums = torch.zeros(max_distance + 1, dtype=torch.float64, device=h.device).index_add_(0, d, s.double())
    counts = torch.bincount(d, minlength=max_distance + 1).double()
    return sums, counts


@torch.no_grad()
def residual_analysis(
    model: GPT,
    tokenizer,
    examples: Sequence,
    *,
    top_k: int = 5,
    lens_examples: int = 5,
    progress: bool = False,
) -> dict[str, Any]:
    """Cosine similarity against distance at meta vs non-meta queries, and the logit lens."""
    check_has_meta(examples, "residual")
    check_fits(model, examples)
    device = next(model.parameters()).device
    L = model.config.n_layer
    max_d = max(len(e.prompt_ids) for e in examples) - 1
    sums = {k: torch.zeros(L + 1, max_d + 1, dtype=torch.float64) for k in ("meta", "control")}
    counts = {k: torch.zeros(L + 1, max_d + 1, dtype=torch.float64) for k in ("meta", "control")}
    vocab_limit = min(tokenizer.vocab_size, model.config.vocab_size)
    meta_id = model.config.meta_token_id
    answer_prob = np.zeros((len(examples), L + 1))
    answer_rank = np.zeros((len(examples), L + 1))
    lens: list[dict[str, Any]] = []
    for e, example in enumerate(progress_bar(examples, desc="residual", unit="example", disable=not progress)):
        tr = trace(model, example_ids(example, device))
        is_meta = tr.is_meta[0]
        for layer, h in enumerate(tr.residual):
            for key, queries in (("meta", is_meta), ("control", ~is_meta)):
                s, c = similarity_by_distance(h[0], queries, max_d)
                sums[key][layer] += s.cpu()
                counts[key][layer] += c.cpu()
        meta_rows = is_meta.nonzero().squeeze(1)
        # (L+1, m, V): every layer's residual at the meta positions through ln_f and the unembedding
        stacked = torch.stack([h[0, meta_rows] for h in tr.residual])
        logp = model.lm_head(model.ln_f(stacked)).float()[..., :vocab_limit]
        if meta_id is not None and meta_id < vocab_limit:
            logp[..., meta_id] = float("-inf")
        logp = logp.log_softmax(-1)
        target = example.answer_ids[0]
        last = logp[:, -1]  # (L+1, V) at the last meta position
        answer_prob[e] = last[:, target].exp().cpu().numpy()
        answer_rank[e] = (last > last[:, target : target + 1]).sum(-1).cpu().numpy() + 1
        if e < lens_examples:
            top = logp.topk(min(top_k, vocab_limit), dim=-1)
            for k, position in enumerate(meta_rows.tolist()):
                lens.append({
                    "example": e,
                    "position": position,
                    "prompt_length": len(example.prompt_ids),
                    "answer": example.answer_text,
                    "layers": [
                        {
                            "layer": layer,
                            "top": [
                                {"token": tokenizer.decode([i], skip_meta=False), "id": i, "prob": float(np.exp(v))}
                                for i, v in zip(top.indices[layer, k].tolist(), top.values[layer, k].tolist())
                            ],
                        }
                        for layer in range(L + 1)
                    ],
                })
    bins = distance_bins(max_d)
    result: dict[str, Any] = {
        "n_examples": len(examples),
        "layers": list(range(L + 1)),
        "layer_names": ["embeddings"] + [f"block {i}" for i in range(1, L + 1)],
        "distance_bins": [list(b) for b in bins],
    }
    for key in ("meta", "control"):
        by_distance = (sums[key] / counts[key])[:, 1:]  # distance 0 never occurs (j < i)
        binned = []
        for low, high in bins:
            total, n = sums[key][:, low : high + 1].sum(1), counts[key][:, low : high + 1].sum(1)
            binned.append((total / n).tolist())
        result[f"cosine_{key}_binned"] = np.array(binned).T.tolist()  # (L+1, bins)
        result[f"cosine_{key}_by_distance"] = by_distance.tolist()  # (L+1, max_d), distance 1..max_d
        result[f"pairs_{key}"] = int(counts[key][0].sum())
    result["logit_lens"] = {
        "answer_first_token_prob": {"mean": answer_prob.mean(0).tolist(), "std": answer_prob.std(0).tolist()},
        "answer_first_token_rank": {"mean": answer_rank.mean(0).tolist(), "median": np.median(answer_rank, 0).tolist()},
        "top_k": top_k,
        "examples": lens,
    }
    return result


def plot_residual(result: dict[str, Any], path, title: str = "") -> None:
    """Heatmaps (layer x distance bin) of cosine similarity at meta and non-meta queries, their
    difference, and the logit lens's probability of the answer's first token by layer; two by two,
    so no panel is squeezed into a strip."""
    plt = pyplot()
    meta = np.asarray(result["cosine_meta_binned"], dtype=float)
    control = np.asarray(result["cosine_control_binned"], dtype=float)
    labels = [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in result["distance_bins"]]
    layers = list(result["layers"])
    layer_ticks = ["0 (emb.)"] + [str(layer) for layer in layers[1:]]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.6))
    # one colour scale for both panels, from every cell either measured (a bin a run had no pair for is NaN and
    # must not hide the other cells of its grid from the range)
    both = np.concatenate([meta.ravel(), control.ravel()])
    both = both[np.isfinite(both)]
    lo, hi = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
    diff = meta - control
    bound = float(np.nanmax(np.abs(diff))) if not np.isnan(diff).all() else 0.0
    for ax, grid, name, kw in (
        (axes[0, 0], meta, "meta-token queries", dict(cmap="viridis", vmin=lo, vmax=hi)),
        (axes[0, 1], control, "non-meta queries (control)", dict(cmap="viridis", vmin=lo, vmax=hi)),
        (axes[1, 0], diff, "meta minus control", dict(cmap="RdBu_r", vmin=-(bound or 1.0), vmax=bound or 1.0)),
    ):
        image = ax.imshow(grid, aspect="auto", origin="lower", **kw)
        ax.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 8 else 0, fontsize=8)
        ax.set_yticks(layers, layer_ticks)
        ax.set_xlabel("distance to the earlier token (positions, binned)")
        ax.set_ylabel("layer")
        ax.set_title(f"cosine similarity: {name}", fontsize=10)
        plt.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    lens = result["logit_lens"]["answer_first_token_prob"]
    mean, std = np.asarray(lens["mean"]), np.asarray(lens["std"])
    n = result.get("n_examples")
    over = f" over {n} examples" if n else " over the examples"
    ax = axes[1, 1]
    ax.plot(layers, mean, "o-", label=f"mean{over}")
    ax.fill_between(layers, np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1), alpha=0.2,
                    label="mean ± 1 standard deviation (clipped to [0, 1])")
    ax.set_xticks(layers, layer_ticks)
    ax.set_xlabel("layer")
    ax.set_ylabel("probability of the answer's first token")
    ax.set_ylim(bottom=0)
    ax.set_title("logit lens at the last meta-token", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.suptitle(wrap_title(analysis_title(result, "residual stream", title), 110), fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)

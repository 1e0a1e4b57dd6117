"""What the residual stream holds at meta-tokens (docs/method.md section 7, "Caching").

Similarity against distance: for every layer l (0 = the embeddings, l = the output of block l)
and every meta query i, the centred cosine

    cos_l(i, j) = (h_l[i] - m_l) . (h_l[j] - m_l) / (|h_l[i] - m_l| |h_l[j] - m_l|)

for each earlier position j < i, averaged by the distance d = i - j over all meta queries of all
examples; m_l is the mean residual state of layer l over all positions of all the examples
analysed. Centring removes the direction every state shares (uncentred, residual states of a
trained transformer all have cosines near 1 with each other, which says nothing about what a
meta-token caches). The same average over non-meta queries is the control: nearby tokens look
alike in any transformer, so the claim is about how the meta curve differs from it. Distances are
shown in power-of-two bins 1, 2, 3-4, 5-8, 9-16, ...; the uncentred binned means are kept too.

The claim itself (a meta-token's state is most like the tokens just before it, fading with
distance), per example: the mean centred cosine of its meta queries to positions at NEAR
distances (1-4) minus that at FAR distances (33 and more), at every layer; the same for its
non-meta queries. An example whose meta-tokens all sit before position 33 has no far pair: its
value is NaN (null in JSON) and the means skip it.

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
from .common import bootstrap_ci, check_fits, check_has_meta, example_ids
from .trace import trace

NEAR = (1, 4)  # distances (inclusive) that count as "near"
FAR = (33, None)  # 33 and beyond: present in prompts of 96 tokens whose meta-token sits past position 33
KINDS = ("meta", "control")  # meta-token queries; non-meta queries


def distance_bins(max_distance: int) -> list[tuple[int, int]]:
    """Inclusive (low, high) bins 1, 2, 3-4, 5-8, ... covering 1..max_distance."""
    bins, low = [], 1
    while low <= max_distance:
        high = min(max(low, 2 * (low - 1)), max_distance)
        bins.append((low, high))
        low = high + 1
    return bins


def similarity_by_distance(h: torch.Tensor, queries: torch.Tensor, max_distance: int,
                           centre: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums and counts, indexed by distance 0..max_distance, of cos(h[i] - centre, h[j] - centre)
    over the queries i (a (T,) bool mask) and all j < i. h: (T, C); centre: (C,) or None (uncentred)."""
    T = h.size(0)
    h = h.float() if centre is None else h.float() - centre.float()
    unit = F.normalize(h, dim=-1)
    rows = queries.nonzero().squeeze(1)
    sims = unit[rows] @ unit.T  # (q, T)
    distance = rows[:, None] - torch.arange(T, device=h.device)[None, :]
    earlier = distance > 0
    d, s = distance[earlier], sims[earlier]
    sums = torch.zeros(max_distance + 1, dtype=torch.float64, device=h.device).index_add_(0, d, s.double())
    counts = torch.bincount(d, minlength=max_distance + 1).double()
    return sums, counts


def mean_states(streams) -> list[torch.Tensor]:
    """Per layer, the mean state over all positions of all streams; a stream is (per-layer (T, C)
    states, (T,) meta mask)."""
    totals: list[torch.Tensor] = []
    n = 0
    for layers, _ in streams:
        sums = [h.double().sum(0) for h in layers]
        totals = sums if not totals else [t + s for t, s in zip(totals, sums)]
        n += layers[0].size(0)
    return [t / n for t in totals]


class Cosines:
    """Centred (and uncentred) cosine sums by distance, per layer and query kind, and each
    example's near-minus-far centred cosine; `add` one residual stream at a time."""

    def __init__(self, centres: Sequence[torch.Tensor], max_distance: int):
        self.centres, self.max_d = list(centres), max_distance
        shape = (len(self.centres), max_distance + 1)
        self.sums = {(k, c): torch.zeros(shape, dtype=torch.float64) for k in KINDS for c in (True, False)}
        self.counts = {k: torch.zeros(shape, dtype=torch.float64) for k in KINDS}
        self.near_far: dict[str, list[list[float]]] = {k: [[] for _ in self.centres] for k in KINDS}

    def add(self, layers: Sequence[torch.Tensor], is_meta: torch.Tensor) -> None:
        far_high = FAR[1] if FAR[1] is not None else self.max_d
        for layer, (h, centre) in enumerate(zip(layers, self.centres)):
            for kind, queries in zip(KINDS, (is_meta, ~is_meta)):
                s, c = (t.cpu() for t in similarity_by_distance(h, queries, self.max_d, centre.to(h.device)))
                self.sums[kind, True][layer] += s
                self.counts[kind][layer] += c
                self.sums[kind, False][layer] += similarity_by_distance(h, queries, self.max_d)[0].cpu()
                near = s[NEAR[0] : NEAR[1] + 1].sum() / c[NEAR[0] : NEAR[1] + 1].sum()
                far = s[FAR[0] : far_high + 1].sum() / c[FAR[0] : far_high + 1].sum()
                self.near_far[kind][layer].append(float(near - far))  # 0/0 = NaN: no such pair

    def result(self) -> dict[str, Any]:
        bins = distance_bins(self.max_d)
        out: dict[str, Any] = {"distance_bins": [list(b) for b in bins]}
        for kind in KINDS:
            counts = self.counts[kind]
            for centred, suffix in ((True, ""), (False, "_uncentred")):
                sums = self.sums[kind, centred]
                binned = [(sums[:, lo : hi + 1].sum(1) / counts[:, lo : hi + 1].sum(1)).tolist() for lo, hi in bins]
                out[f"cosine_{kind}_binned{suffix}"] = np.array(binned).T.tolist()  # (L+1, bins)
            # distance 0 never occurs (j < i): (L+1, max_d) for distances 1..max_d
            out[f"cosine_{kind}_by_distance"] = (self.sums[kind, True] / counts)[:, 1:].tolist()
            out[f"pairs_{kind}"] = int(counts[0].sum())
        near_far: dict[str, Any] = {"near": list(NEAR), "far": list(FAR), "centred": True}
        for kind in KINDS:
            values = np.asarray(self.near_far[kind], dtype=float)  # (L+1, examples)
            near_far[kind] = values.tolist()
            finite = [row[np.isfinite(row)] for row in values]
            near_far[f"{kind}_mean"] = [float(row.mean()) if row.size else float("nan") for row in finite]
            near_far[f"{kind}_ci95"] = [list(bootstrap_ci(row)) for row in finite]
            near_far[f"{kind}_n"] = [int(row.size) for row in finite]
        out["near_far"] = near_far
        return out


def cosine_statistics(streams: Sequence[tuple[Sequence[torch.Tensor], torch.Tensor]]) -> dict[str, Any]:
    """The similarity part of `residual_analysis` on given residual streams, each (per-layer (T, C)
    states, (T,) bool meta mask): centred on their own per-layer mean states."""
    max_d = max(layers[0].size(0) for layers, _ in streams) - 1
    cosines = Cosines(mean_states(streams), max_d)
    for layers, is_meta in streams:
        cosines.add(layers, is_meta)
    return cosines.result()


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
    """Centred cosine similarity against distance at meta vs non-meta queries, each example's
    near-minus-far cosine, and the logit lens."""
    check_has_meta(examples, "residual")
    check_fits(model, examples)
    device = next(model.parameters()).device
    L = model.config.n_layer

    def streams(desc: str):
        for example in progress_bar(examples, desc=desc, unit="example", disable=not progress):
            tr = trace(model, example_ids(example, device))
            yield [h[0] for h in tr.residual], tr.is_meta[0]

    # two passes: the centres need every example before the first cosine
    cosines = Cosines(mean_states(streams("residual, mean states")), max(len(e.prompt_ids) for e in examples) - 1)
    vocab_limit = min(tokenizer.vocab_size, model.config.vocab_size)
    meta_id = model.config.meta_token_id
    answer_prob = np.zeros((len(examples), L + 1))
    answer_rank = np.zeros((len(examples), L + 1))
    lens: list[dict[str, Any]] = []
    for e, (example, (residual, is_meta)) in enumerate(zip(examples, streams("residual"))):
        cosines.add(residual, is_meta)
        meta_rows = is_meta.nonzero().squeeze(1)
        # (L+1, m, V): every layer's residual at the meta positions through ln_f and the unembedding
        stacked = torch.stack([h[meta_rows] for h in residual])
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
    result: dict[str, Any] = {
        "n_examples": len(examples),
        "layers": list(range(L + 1)),
        "layer_names": ["embeddings"] + [f"block {i}" for i in range(1, L + 1)],
        "centring": "cosines of h - m, m = the layer's mean state over all positions of all examples analysed",
        **cosines.result(),
    }
    result["logit_lens"] = {
        "answer_first_token_prob": {"mean": answer_prob.mean(0).tolist(), "std": answer_prob.std(0).tolist()},
        "answer_first_token_rank": {"mean": answer_rank.mean(0).tolist(), "median": np.median(answer_rank, 0).tolist()},
        "top_k": top_k,
        "examples": lens,
    }
    return result


def _heatmaps(plt, axes, result: dict[str, Any], labels: list[str], layers: list[int], layer_ticks: list[str]) -> None:
    meta = np.asarray(result["cosine_meta_binned"], dtype=float)
    control = np.asarray(result["cosine_control_binned"], dtype=float)
    # one colour scale for both panels, from every cell either measured (a bin a run had no pair for is NaN and
    # must not hide the other cells of its grid from the range)
    both = np.concatenate([meta.ravel(), control.ravel()])
    both = both[np.isfinite(both)]
    lo, hi = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
    diff = meta - control
    bound = float(np.nanmax(np.abs(diff))) if not np.isnan(diff).all() else 0.0
    for ax, grid, name, kw in (
        (axes[0], meta, "meta-token queries", {"cmap": "viridis", "vmin": lo, "vmax": hi}),
        (axes[1], control, "non-meta queries (control)", {"cmap": "viridis", "vmin": lo, "vmax": hi}),
        (axes[2], diff, "meta minus control", {"cmap": "RdBu_r", "vmin": -(bound or 1.0), "vmax": bound or 1.0}),
    ):
        image = ax.imshow(grid, aspect="auto", origin="lower", **kw)
        ax.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 8 else 0, fontsize=8)
        ax.set_yticks(layers, layer_ticks)
        ax.set_xlabel("distance to the earlier token (positions, binned)")
        ax.set_ylabel("layer")
        ax.set_title(f"centred cosine similarity: {name}", fontsize=10)
        plt.colorbar(image, ax=ax, fraction=0.046, pad=0.04)


def _last_layer_curves(ax, result: dict[str, Any], labels: list[str]) -> None:
    """Centred cosine against distance bin at the last layer, meta and control; uncentred dashed."""
    x = np.arange(len(labels))
    for kind, name, colour in (("meta", "meta-token queries", "C0"), ("control", "non-meta queries", "C1")):
        ax.plot(x, result[f"cosine_{kind}_binned"][-1], "o-", color=colour, label=f"{name}, centred")
        if f"cosine_{kind}_binned_uncentred" in result:
            ax.plot(x, result[f"cosine_{kind}_binned_uncentred"][-1], "--", color=colour, alpha=0.6,
                    label=f"{name}, uncentred")
    ax.axhline(0.0, color="gray", lw=0.8)
    ax.set_xticks(x, labels, rotation=45 if len(labels) > 8 else 0, fontsize=8)
    ax.set_xlabel("distance to the earlier token (positions, binned)")
    ax.set_ylabel("cosine similarity")
    ax.set_title("last layer: cosine similarity by distance", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def _near_far(ax, result: dict[str, Any], layers: list[int], layer_ticks: list[str]) -> None:
    """Each layer's mean over examples of near-minus-far centred cosine, with its 95% interval."""
    nf = result.get("near_far")
    if not nf:
        ax.axis("off")
        return
    far = f"{nf['far'][0]}+" if nf["far"][1] is None else f"{nf['far'][0]}-{nf['far'][1]}"
    for kind, name, shift in (("meta", "meta-token queries", -0.06), ("control", "non-meta queries", 0.06)):
        mean = np.asarray(nf[f"{kind}_mean"], dtype=float)
        ci = np.asarray([[np.nan, np.nan] if c is None or None in c else c for c in nf[f"{kind}_ci95"]], dtype=float)
        errors = np.abs(np.stack([mean - ci[:, 0], ci[:, 1] - mean]))
        n = min(nf[f"{kind}_n"]) if nf[f"{kind}_n"] else 0
        ax.errorbar(np.asarray(layers) + shift, mean, yerr=errors, fmt="o-", capsize=3,
                    label=f"{name} (examples with a far pair: {n})")
    ax.axhline(0.0, color="gray", lw=0.8)
    ax.set_xticks(layers, layer_ticks)
    ax.set_xlabel("layer")
    ax.set_ylabel("centred cosine, near minus far")
    ax.set_title(f"near ({nf['near'][0]}-{nf['near'][1]}) minus far ({far}) per example: mean, 95% CI", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def plot_residual(result: dict[str, Any], path, title: str = "") -> None:
    """Heatmaps (layer x distance bin) of centred cosine similarity at meta and non-meta queries and
    their difference; the last layer's curves, centred and not; near minus far by layer; and the logit
    lens's probability of the answer's first token by layer. Three rows of two panels."""
    plt = pyplot()
    labels = [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in result["distance_bins"]]
    layers = list(result["layers"])
    layer_ticks = ["0 (emb.)"] + [str(layer) for layer in layers[1:]]
    fig, axes = plt.subplots(3, 2, figsize=(12, 12.6))
    _heatmaps(plt, [axes[0, 0], axes[0, 1], axes[1, 0]], result, labels, layers, layer_ticks)
    _last_layer_curves(axes[1, 1], result, labels)
    _near_far(axes[2, 0], result, layers, layer_ticks)
    lens = result["logit_lens"]["answer_first_token_prob"]
    mean, std = np.asarray(lens["mean"]), np.asarray(lens["std"])
    n = result.get("n_examples")
    over = f" over {n} examples" if n else " over the examples"
    ax = axes[2, 1]
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
    what = "residual stream (cosines centred on each layer's mean state)"
    fig.suptitle(wrap_title(analysis_title(result, what, title) + ("; cosines centred on each layer's mean state"
                                                                    if title else ""), 110), fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.985))  # a little air between the title and the panels' own
    save_figure(fig, path)

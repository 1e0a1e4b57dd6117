"""The residual caching probe: cosines centred on each layer's mean state, and each example's
near-minus-far cosine at meta-token queries.

Independent references: the cosine written out pair by pair on a small tensor; the model's traced
residual stream, centred and compared densely; hand-made streams whose meta-token states follow a
slowly drifting signal (similar to nearby tokens, less to far ones) or are drawn independently.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import task_model

from metatokens.analysis import (
    cosine_statistics,
    residual_analysis,
    similarity_by_distance,
    trace,
)
from metatokens.analysis.common import example_ids
from metatokens.tasks import make_examples


def dense_cosines(h: torch.Tensor, queries: torch.Tensor, centre: torch.Tensor | None) -> dict[int, list[float]]:
    """{distance: [cos of each (query i, earlier j) pair]}, one pair at a time."""
    out: dict[int, list[float]] = {}
    for i in range(h.size(0)):
        if not queries[i]:
            continue
        for j in range(i):
            a, b = (h[i], h[j]) if centre is None else (h[i] - centre, h[j] - centre)
            out.setdefault(i - j, []).append(float(a @ b / (a.norm() * b.norm())))
    return out


@pytest.mark.parametrize("centred", [True, False])
def test_centred_cosine_is_the_pairwise_formula(centred):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(9, 5, generator=g, dtype=torch.float64) + 3.0  # a shared offset, as residual streams have
    queries = torch.tensor([0, 1, 0, 0, 1, 1, 0, 0, 1], dtype=torch.bool)
    centre = h.mean(0) if centred else None
    sums, counts = similarity_by_distance(h, queries, 8, centre)
    dense = dense_cosines(h, queries, centre)
    for d in range(1, 9):
        assert counts[d] == len(dense.get(d, []))
        assert sums[d].item() == pytest.approx(sum(dense.get(d, [])), abs=1e-5)


def test_the_analysis_centres_on_the_mean_state_of_every_position_of_every_example(task_tokenizer):
    model = task_model(task_tokenizer)
    examples = make_examples("list_recall", task_tokenizer, length=64, n=3, seed=0)
    result = residual_analysis(model, task_tokenizer, examples, lens_examples=0)
    traces = [trace(model, example_ids(e)) for e in examples]
    for layer in range(model.config.n_layer + 1):
        states = [tr.residual[layer][0].double() for tr in traces]
        centre = torch.cat(states).mean(0)  # over all positions of all examples
        pooled: dict[int, list[float]] = {}
        for h, tr in zip(states, traces):
            for d, values in dense_cosines(h, tr.is_meta[0], centre).items():
                pooled.setdefault(d, []).extend(values)
        measured = result["cosine_meta_by_distance"][layer]
        for d, values in pooled.items():
            assert measured[d - 1] == pytest.approx(np.mean(values), abs=1e-4), (layer, d)
        per_example = result["near_far"]["meta"][layer]
        assert any(math.isfinite(v) for v in per_example)  # some meta-token sits 33+ tokens in
        for k, (h, tr) in enumerate(zip(states, traces)):
            dense = dense_cosines(h, tr.is_meta[0], centre)
            near = [v for d in range(1, 5) for v in dense.get(d, [])]
            far = [v for d, vs in dense.items() if d >= 33 for v in vs]
            expected = np.mean(near) - np.mean(far) if far else math.nan
            assert per_example[k] == pytest.approx(expected, abs=1e-4, nan_ok=True), (layer, k)


def drifting_streams(meta_follows: bool, n: int = 40, T: int = 100, C: int = 32):
    """Text states follow a slowly drifting signal (a random walk plus an offset every state shares);
    meta states at 40, 60, 80 and 99 either follow it too or are drawn on their own."""
    g = torch.Generator().manual_seed(1 if meta_follows else 2)
    offset = 4.0 * torch.ones(C, dtype=torch.float64)
    streams = []
    for _ in range(n):
        signal = torch.cumsum(0.3 * torch.randn(T, C, generator=g, dtype=torch.float64), 0)
        signal += torch.randn(C, generator=g, dtype=torch.float64)
        is_meta = torch.zeros(T, dtype=torch.bool)
        is_meta[[40, 60, 80, 99]] = True
        h = signal + offset
        if not meta_follows:
            h[is_meta] = offset + signal.std() * torch.randn(int(is_meta.sum()), C, generator=g, dtype=torch.float64)
        streams.append(([h, 2.0 * h], is_meta))  # two layers
    return streams


@pytest.mark.parametrize("meta_follows", [True, False])
def test_near_minus_far_tells_a_drifting_meta_state_from_an_independent_one(meta_follows):
    result = cosine_statistics(drifting_streams(meta_follows))
    nf = result["near_far"]
    assert nf["near"] == [1, 4] and nf["far"] == [33, None]
    assert np.asarray(nf["meta"]).shape == (2, 40) and nf["meta_n"] == [40, 40]
    for layer in range(2):
        assert nf["control_mean"][layer] > 0.3  # text states drift in both streams
        if meta_follows:
            assert nf["meta_mean"][layer] > 0.3 and nf["meta_ci95"][layer][0] > 0.2
        else:
            assert abs(nf["meta_mean"][layer]) < 0.05
            assert nf["meta_ci95"][layer][0] < 0 < nf["meta_ci95"][layer][1]
    # the headline curves are the centred ones; the uncentred ones sit near 1 from the shared offset
    binned = np.asarray(result["cosine_control_binned"])
    assert (np.asarray(result["cosine_control_binned_uncentred"]) > binned).all()


def test_an_example_whose_meta_token_has_no_far_pair_counts_as_missing():
    streams = drifting_streams(True, n=3)
    early = torch.zeros(100, dtype=torch.bool)
    early[20] = True  # the farthest earlier token is 20 away
    streams.append((streams[0][0], early))
    nf = cosine_statistics(streams)["near_far"]
    assert math.isnan(nf["meta"][0][3]) and nf["meta_n"] == [3, 3]
    assert nf["meta_mean"][0] == pytest.approx(np.mean(nf["meta"][0][:3]))

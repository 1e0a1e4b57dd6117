"""The accuracy figure's error bars stay inside 0-100% exact match (hand-made 3-seed results)."""

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest

import metatokens.plotting as plotting
import metatokens.study.figures as study_figures
from metatokens.study.design import SCALES, ModelSpec
from metatokens.study.results import StudyResults
from metatokens.study.figures import accuracy_figure

L = SCALES["toy"].ft_len
N = 10  # prompts per seed


def cell_of(rate: float) -> dict:
    right = round(rate * N)
    vec = [1] * right + [0] * (N - right)
    return {"exact_match": right / N, "exact_per_example": vec, "n": N, "prompts": "same"}


def results(tmp_path: Path, rates_by_seed: dict[str, list[float]]) -> StudyResults:
    """One meta model, List Recall at L (first line) and at 2L (second), three seeds; nothing else measured."""
    scale = dataclasses.replace(SCALES["toy"], models={"meta-rope": ModelSpec("Meta+RoPE", "tiny", meta=True)})
    seeds = {}
    for s in range(3):
        cells = {key: cell_of(rates[s]) for key, rates in rates_by_seed.items()}
        seeds[s] = {"evaluate-meta-rope": SimpleNamespace(result={"list_recall": {"prompts": cells}})}
    return StudyResults(out=tmp_path, scale_name="toy", scale=scale, seeds=seeds, requested_seeds=3)


def drawn_bars(monkeypatch, res: StudyResults) -> list[tuple[float, float, float]]:
    """(x, low, high) of every vertical error bar of the figure, read from its artists."""
    figures = []
    monkeypatch.setattr(study_figures, "save_figure", lambda fig, path, **kw: figures.append(fig) or Path(path))
    accuracy_figure(res, "list_recall")
    (fig,) = figures
    (ax,) = [a for a in fig.axes if a.containers]
    bars = []
    for container in ax.containers:
        _, _, (vertical,) = container.lines  # data line, caps, bar LineCollection
        for seg in vertical.get_segments():
            (x0, y0), (x1, y1) = seg
            assert x0 == pytest.approx(x1)
            bars.append((x0, min(y0, y1), max(y0, y1)))
    plotting.pyplot().close(fig)
    return bars


def test_error_bars_of_a_rate_near_100_or_0_stop_at_the_axis_limits(tmp_path, monkeypatch):
    # seeds 100%, 100%, 40%: mean 80, sample sd 34.64 points -> mean + sd = 114.6, past 100%
    # seeds 0%, 0%, 60%:     mean 20, sample sd 34.64 points -> mean - sd = -14.6, below 0%
    res = results(tmp_path, {str(L): [1.0, 1.0, 0.4], str(2 * L): [0.0, 0.0, 0.6]})
    sd = ((0.2 ** 2 * 2 + 0.4 ** 2) / 2) ** 0.5 * 100  # 34.64, written out
    bars = sorted(drawn_bars(monkeypatch, res))
    assert len(bars) == 2, bars
    for x, low, high in bars:
        assert 0.0 - 1e-9 <= low and high <= 100.0 + 1e-9, f"error bar at x={x:.2f} spans {low:.1f}..{high:.1f}%"
    (_, low_l, high_l), (_, low_2l, high_2l) = bars  # x: L before 2L
    assert (low_l, high_l) == pytest.approx((80 - sd, 100.0))
    assert (low_2l, high_2l) == pytest.approx((0.0, 20 + sd))


def test_error_bars_inside_the_range_are_plus_minus_one_sd(tmp_path, monkeypatch):
    res = results(tmp_path, {str(L): [0.4, 0.5, 0.6]})
    (bar,) = drawn_bars(monkeypatch, res)
    assert bar[1:] == pytest.approx((50 - 10, 50 + 10))  # sample sd of 40, 50, 60 is 10 points

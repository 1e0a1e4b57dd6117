"""The rate-distortion figure: distortion against rate per representation, betas labelled, and the
no-information line (the conditional label prior p(answer | question)); see rate_distortion.py."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..plotting import analysis_title, pyplot, save_figure, wrap_title

LINE_LABELS = {
    "last_meta": "last meta-token",
    "last_token": "last token",
    "last_meta_zero_pos": "last meta-token, meta pos. zeroed",
}


def _label_betas(ax, points: list[tuple[float, float, float]], obstacles: list[tuple[float, float]] = (),
                 fontsize: float = 7.0) -> list:
    """Write "β=B" beside the (rate, distortion, beta) points without two labels overlapping each
    other or covering a marker (of `points` or `obstacles`, (rate, distortion) pairs): each label
    takes the first free place of four around its point; a point with none free adds its beta to the
    nearest label ("β=0.5, 1"). Call once the axes' limits and size are final."""
    fig = ax.figure
    ax.get_xlim(), ax.get_ylim()  # brings the view limits up to date with what was drawn
    box = ax.get_position()
    width_pt, height_pt = box.width * fig.get_size_inches()[0] * 72, box.height * fig.get_size_inches()[1] * 72
    to_axes = ax.transLimits  # data -> axes fraction, with the current limits

    def extent(text: str) -> tuple[float, float]:  # label width, height in points
        return 0.6 * fontsize * len(text), 1.2 * fontsize

    placed: list[dict] = []  # each: point (pt), offset (pt), betas

    def rect(p: dict) -> tuple[float, float, float, float]:
        w, h = extent("β=" + ", ".join(f"{b:g}" for b in p["betas"]))
        x, y = p["at"][0] + p["offset"][0], p["at"][1] + p["offset"][1]
        x0 = x - w if p["offset"][0] < 0 else x
        y0 = y - h if p["offset"][1] < 0 else y
        return x0, y0, x0 + w, y0 + h

    def overlaps(r, others) -> bool:
        return any(r[0] < o[2] and o[0] < r[2] and r[1] < o[3] and o[1] < r[3] for o in others)

    def in_points(rate: float, distortion: float) -> tuple[float, float]:
        fx, fy = to_axes.transform((rate, distortion))
        return fx * width_pt, fy * height_pt

    anchors = [in_points(r, d) for r, d, _ in points]
    markers = [(mx - 3, my - 3, mx + 3, my + 3) for mx, my in anchors + [in_points(r, d) for r, d in obstacles]]
    for (_, _, beta), at in zip(points, anchors):
        if not (np.isfinite(at[0]) and np.isfinite(at[1])):
            continue
        others = [rect(p) for p in placed] + markers
        for offset in ((4, 3), (4, -3), (-4, 3), (-4, -3)):
            candidate = {"at": at, "offset": offset, "betas": [beta]}
            if not overlaps(rect(candidate), others):
                placed.append(candidate)
                break
        else:
            if placed:
                nearest = min(placed, key=lambda p: (p["at"][0] - at[0]) ** 2 + (p["at"][1] - at[1]) ** 2)
                nearest["betas"].append(beta)
            else:
                placed.append({"at": at, "offset": (4, 3), "betas": [beta]})
    out = []
    for p in placed:
        text = "β=" + ", ".join(f"{b:g}" for b in p["betas"])
        x, y = to_axes.inverted().transform((p["at"][0] / width_pt, p["at"][1] / height_pt))
        out.append(ax.annotate(text, (x, y), textcoords="offset points", xytext=p["offset"], fontsize=fontsize,
                               ha="left" if p["offset"][0] > 0 else "right",
                               va="bottom" if p["offset"][1] > 0 else "top"))
    return out


def _line_label(result: dict[str, Any], key: str, held_out: bool) -> str:
    """The representation's name; on the held-out panel also whether its probe learned anything."""
    label = LINE_LABELS.get(key, key)
    verdict = (result.get("learned") or {}).get(key)
    if not held_out or not verdict:
        return label
    interval = verdict.get("ci_selection") or {"level": 0.95, "interval": verdict["ci95"]}
    lo, hi = interval["interval"]
    said = "learned" if verdict["learned"] else "learned nothing"
    return (f"{label}: {said}; best β {verdict['best_beta']:g} is {verdict['margin_nats']:+.2f} nats under the line "
            f"({interval['level']:.1%} CI {lo:+.2f} to {hi:+.2f})")


def plot_rate_distortion(result: dict[str, Any], path, title: str = "") -> None:
    """Distortion against rate, one line per representation, betas marked; one panel per split; the
    no-information line dotted."""
    plt = pyplot()
    splits = [("", "training examples", "no_information_train")]
    if result.get("n_test"):
        splits.append(("test_", "held-out examples", "no_information_test"))
    fig, axes = plt.subplots(1, len(splits), figsize=(6.6 * len(splits), 6.2), squeeze=False)
    # No question values (--no-question, a task whose question adds nothing, or a result from before
    # the decoder saw the question): the line is the label prior.
    conditional = any(result.get("questions") or [[]])
    line = ("no information: p(answer | question), fitted on the training examples" if conditional
            else "no information: the label prior")
    marks = []
    for ax, (prefix, name, line_key) in zip(axes[0], splits):
        for key, points in result["curves"].items():
            rate = [p[f"{prefix}rate"] for p in points]
            distortion = [p[f"{prefix}distortion"] for p in points]
            ax.plot(rate, distortion, "o-", label=_line_label(result, key, bool(prefix)), alpha=0.85)
        if result.get(line_key) is not None:
            ax.axhline(result[line_key], color="gray", ls=":", lw=1.5, label=f"{line} ({result[line_key]:.2f})")
        ax.set_xlabel("rate: KL(q(z|h) || N(0, I)) (nats)")
        ax.set_ylabel("distortion: cross-entropy of the answer (nats)")
        count = result.get("n_test" if prefix else "n_train")
        ax.set_title(f"{name}" + (f" (n = {count})" if count else "") + "; β marked on the first line", fontsize=10)
        ax.grid(alpha=0.3)
        # below the axes: the held-out labels carry verdicts, too long to sit on the curves
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False)
        first = next(iter(result["curves"].values()))  # the sweep is the same for all lines
        marks.append((ax, [(p[f"{prefix}rate"], p[f"{prefix}distortion"], p["beta"]) for p in first],
                      [(p[f"{prefix}rate"], p[f"{prefix}distortion"]) for c in result["curves"].values() for p in c]))
    what = "rate-distortion of a VIB probe" + (", decoder told the question" if conditional else "")
    fig.suptitle(wrap_title(analysis_title(result, what, title), 110), fontsize=11)
    fig.tight_layout()
    for ax, points, obstacles in marks:  # once the layout is final, so label sizes are known in the axes' units
        _label_betas(ax, points, obstacles)
    save_figure(fig, path)

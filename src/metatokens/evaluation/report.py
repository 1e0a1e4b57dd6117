"""What `metatokens evaluate` writes: markdown tables and figures of task accuracy by length and of
perplexity by position, with the majority-answer and chance floors; `write_report` puts the JSON,
markdown and PNG of one result in a folder.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_text
from ..plotting import pyplot, save_figure, wrap_title
from .perplexity import _every


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _positions(m: dict[str, Any]) -> str:
    """A model's positions column: its encoding, with YaRN and an attention window when on."""
    pos = m["pos_encoding"]
    if m.get("yarn"):
        pos += f" + YaRN x{m['yarn']['factor']:g}"
    if m.get("attn_window"):
        pos += f", window {m['attn_window']}" + (f" + {m['attn_sinks']} sinks" if m.get("attn_sinks") else "")
    return pos


def task_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"### {result['task']} ({result['difficulty']}), {result['n_per_length']} {result.get('split', 'test')} examples per length, seed {result['seed']}",
        "",
        "Length = prompt-length bin: prompts of 0.75 L to L tokens. Exact match and token accuracy in %, "
        "with 95% Wilson intervals.",
        "",
        "| model | positions | meta | length | n | exact match % (95% CI) | token acc. % (95% CI) | answer loss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in result["models"]:
        pos = _positions(m)
        for r in m["results"]:
            if r.get("skipped"):
                lines.append(f"| {m['name']} | {pos} | {'yes' if m['meta'] else 'no'} | {r['length']} | 0 | beyond window | beyond window | |")
                continue
            em, tok = r["exact_match_ci95"], r["token_accuracy_ci95"]
            lines.append(
                f"| {m['name']} | {pos} | {'yes' if m['meta'] else 'no'} | {r['length']} | {r['n']} | "
                f"{_pct(r['exact_match'])} ({_pct(em[0])}-{_pct(em[1])}) | "
                f"{_pct(r['token_accuracy'])} ({_pct(tok[0])}-{_pct(tok[1])}) | {r['answer_loss']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def task_baselines(result: dict[str, Any]) -> dict[str, list[tuple[int, float]]]:
    """(length, exact match) of the majority-answer and chance guessers at every length the result
    measured them (`answer_baselines`, in each scored row; the first model that has one), in %."""
    lines: dict[str, dict[int, float]] = {"majority": {}, "chance": {}}
    for m in result["models"]:
        for r in m["results"]:
            for which, points in lines.items():
                value = (r.get("baselines") or {}).get(which)
                if value is not None and r["length"] not in points:
                    points[r["length"]] = 100 * value
    return {which: sorted(points.items()) for which, points in lines.items()}


def task_title(result: dict[str, Any]) -> str:
    """The models and the task, for the title of a `task_plot`."""
    names = [m["name"] for m in result["models"]]
    models = ", ".join(names) if len(", ".join(names)) <= 70 else f"{len(names)} models (see the legend)"
    n = result.get("n_per_length")
    return (f"{models}: {result['task']} ({result['difficulty']})"
            + (f", {n} {result.get('split', 'test')} prompts per length" if n else "") + (f", seed {result['seed']}" if "seed" in result else ""))


BASELINE_STYLE = {"majority": (":", "majority answer"), "chance": ("-.", "chance")}


def task_plot(result: dict[str, Any], out: Path) -> Path:
    """Exact match and token accuracy by length, one line per model; the exact-match panel carries
    the majority-answer and chance lines where the result has them."""
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.6), sharex=True)
    for ax, key, title in ((axes[0], "exact_match", "exact match"), (axes[1], "token_accuracy", "token accuracy")):
        count = len(result["models"])
        for i, m in enumerate(result["models"]):
            rows = [r for r in m["results"] if not r.get("skipped")]
            if not rows:
                continue
            dodge = 2 ** (0.04 * (i - (count - 1) / 2))  # side by side, so overlapping error bars stay readable
            xs = [r["length"] * dodge for r in rows]
            ys = [100 * r[key] for r in rows]
            err = [[100 * (r[key] - r[f"{key}_ci95"][0]) for r in rows], [100 * (r[f"{key}_ci95"][1] - r[key]) for r in rows]]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=m["name"])
        if key == "exact_match":  # the guessers' floor is an exact-match rate
            for which, points in task_baselines(result).items():
                if points:
                    style, label = BASELINE_STYLE[which]
                    if len(points) == 1:  # one length: a line across the panel
                        ax.axhline(points[0][1], ls=style, color="gray", lw=1.2, label=label)
                    else:
                        ax.plot(*zip(*points), style, color="gray", lw=1.2, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(result["lengths"], [str(x) for x in result["lengths"]])
        ax.minorticks_off()
        ax.set_ylim(-3, 103)
        ax.set_xlabel("prompt length (tokens, bin upper edge)")
        ax.set_ylabel(f"{title} (%)")
        ax.set_title(f"{title}" + (f"; error bars: {result['error_bars']}" if result.get("error_bars")
                                   else "; error bars: 95% Wilson intervals"), fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(wrap_title(task_title(result), 120), fontsize=11)
    fig.tight_layout()
    save_figure(fig, out)
    return out


def write_report(result: dict[str, Any], out_dir: str | Path, stem: str | None = None) -> dict[str, Path]:
    """JSON, markdown and PNG of a `evaluate_task` or `evaluate_perplexity` result in out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = stem or (result["task"] if result["kind"] == "task" else "perplexity")
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md", "png": out / f"{stem}.png"}
    atomic_write_text(paths["json"], json.dumps(result, indent=1) + "\n")
    if result["kind"] == "task":
        atomic_write_text(paths["markdown"], task_markdown(result))
        task_plot(result, paths["png"])
    else:
        atomic_write_text(paths["markdown"], perplexity_markdown(result))
        perplexity_plot(result, paths["png"])
    return paths


def perplexity_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"### Perplexity on {result['source']} ({_every(result['every'])}, seed {result['seed']})",
        "",
        f"Documents: {result.get('documents', _every(result['every']))}.",
        "",
        "| model | positions | context | meta-tokens per row | text tokens | loss | perplexity |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in result["models"]:
        pos = _positions(m)
        lines.append(f"| {m['name']} | {pos} | {m['context']} | {m['meta_per_row']} (k={m['meta_rate']:g}) | {m['tokens']} | "
                     f"{m['loss']:.4f} | {m['perplexity']:.2f} |")
    lines += ["", "Perplexity by position within the context:", ""]
    first = result["models"][0]["buckets"]
    header = " | ".join(f"{b['positions'][0]}-{b['positions'][1]}" for b in first)
    lines += [f"| model | {header} |", "|---|" + "---|" * len(first)]
    for m in result["models"]:
        cells = " | ".join("n/a" if b["perplexity"] is None else f"{b['perplexity']:.2f}" for b in m["buckets"])
        lines.append(f"| {m['name']} | {cells} |")
    return "\n".join(lines) + "\n"


def perplexity_plot(result: dict[str, Any], out: Path) -> Path:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in result["models"]:
        pts = [((b["positions"][0] + b["positions"][1]) / 2, b["perplexity"]) for b in m["buckets"] if b["perplexity"]]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=f"{m['name']} (k={m['meta_rate']:g})")
    ax.set_xlabel("position within the context (bucket centre)")
    ax.set_ylabel("perplexity per text token")
    ax.set_title(f"perplexity by position: {result['source']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out)
    return out

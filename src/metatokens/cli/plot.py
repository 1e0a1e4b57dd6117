"""`metatokens plot RUN [RUN ...]`: loss curves of several runs on one PNG."""

from __future__ import annotations

import json
from pathlib import Path

from ..plotting import pyplot, save_figure, wrap_title
from ..runs.folder import read_metrics


def add_command(sub) -> None:
    p = sub.add_parser("plot", help="draw the training and validation loss of runs on one PNG")
    p.add_argument("runs", nargs="+", help="run folders (each with metrics.jsonl)")
    p.add_argument("--out", help="PNG to write (default: loss.png, or METRIC.png, inside the first run folder)")
    p.add_argument("--metric", default="loss", help="plot train_/val_ METRIC (default: loss)")
    p.add_argument("--names", help="comma-separated legend names, one per run (default: the run folders)")
    p.set_defaults(func=run)


def run_labels(runs: list[Path]) -> list[str]:
    """The shortest path endings that tell the runs apart ("a/run", "b/run" rather than "run" twice)."""
    parts = [Path(r).resolve().parts for r in runs]
    labels = [str(Path(*p[-1:])) for p in parts]
    for k in range(2, max((len(p) for p in parts), default=0) + 1):
        if len(set(labels)) == len(labels):
            break
        labels = [str(Path(*p[-k:])) for p in parts]
    return labels  # still equal only when the same folder is given twice


def run_purpose(run: Path) -> str | None:
    """What a run trained its model on, from its run.json: "fine-tuning on list_recall, parity" or
    "pre-training on builtin"; None when run.json is missing or says neither."""
    try:
        info = json.loads((Path(run) / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict):
        return None
    finetune = info.get("finetune")
    if isinstance(finetune, dict):
        tasks = finetune.get("tasks") or str(finetune.get("task") or "").split(",")
        tasks = [t for t in tasks if t]
        return "fine-tuning on " + ", ".join(tasks) if tasks else "fine-tuning"
    data = (info.get("config") or {}).get("data") if isinstance(info.get("config"), dict) else None
    if isinstance(data, dict) and data.get("source"):
        return f"pre-training on {data['source']}"
    return None


def runs_title(labels: list[str], purposes: list[str | None], metric: str) -> str:
    """The runs (the models) and what they were trained on (the task), for the figure's title."""
    what = list(dict.fromkeys(p for p in purposes if p))
    head = f"{metric}: " + ", ".join(labels)
    if len(what) == 1:
        return f"{head}\n{what[0]}"
    if what:
        return head + "\n" + "; ".join(f"{label}: {p}" for label, p in zip(labels, purposes) if p)
    return head


def plot_runs(runs: list[Path], out: Path, metric: str = "loss", names: list[str] | None = None) -> Path:
    """Train (line) and validation (dots) METRIC of each run, one colour per run."""
    plt = pyplot()
    if names is not None and len(names) != len(runs):
        raise ValueError(f"{len(names)} names for {len(runs)} runs")
    labels = names if names is not None else run_labels(runs)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn, splits = 0, set()
    for i, (run, label) in enumerate(zip(runs, labels)):
        rows = read_metrics(run)
        colour = f"C{i % 10}"
        for split, style in (("train", "-"), ("val", "o--")):
            pts = [(r["step"], r[f"{split}_{metric}"]) for r in rows if f"{split}_{metric}" in r]
            if pts:
                ax.plot(*zip(*pts), style, color=colour, label=f"{label} {split}",
                        alpha=0.9 if split == "val" else 0.5)
                drawn += 1
                splits.add(split)
    if not drawn:
        raise ValueError(f"no train_{metric} or val_{metric} values in {', '.join(map(str, runs))}")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel(f"{metric} (nats per text token)" if metric == "loss" else metric)
    key = {frozenset({"train", "val"}): "\n(lines: training, dots: validation)",
           frozenset({"val"}): "\n(validation)", frozenset({"train"}): "\n(training)"}[frozenset(splits)]
    ax.set_title(wrap_title(runs_title(labels, [run_purpose(r) for r in runs], metric), 80) + key, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out)


def run(args) -> int:
    names = [n.strip() for n in args.names.split(",")] if args.names else None
    if names is not None and len(names) != len(args.runs):
        raise ValueError(f"--names has {len(names)} names for {len(args.runs)} runs")
    # a per-task metric (exact_match/copying) names a file, not a subfolder
    out = Path(args.out) if args.out else Path(args.runs[0]) / f"{args.metric.replace('/', '-')}.png"
    out = plot_runs([Path(r) for r in args.runs], out, args.metric, names)
    print(f"wrote {out}")
    return 0

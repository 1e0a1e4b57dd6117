"""`metatokens analyze ANALYSIS`: the paper's analyses of a meta-token model on a synthetic task.

    metatokens analyze entropy          --checkpoint RUN --task list_recall --length 128
    metatokens analyze ablate           --checkpoint RUN --task list_recall --lengths 64,128
    metatokens analyze residual         --checkpoint RUN --task list_recall --length 128
    metatokens analyze rate-distortion  --checkpoint RUN --task list_recall --length 128 --n 500

Each writes ANALYSIS.json (its numbers and settings) and ANALYSIS.png to --out; see docs/analysis.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..analysis.ablate import ablation_study, markdown_table, plot_ablation
from ..analysis.common import load_for_analysis, model_description, write_json
from ..analysis.entropy import entropy_analysis, plot_entropy
from ..analysis.rate_distortion import DEFAULT_BETAS, rate_distortion_analysis
from ..analysis.rate_distortion_plot import plot_rate_distortion
from ..analysis.residual import plot_residual, residual_analysis
from ..errors import AnalysisError
from ..fileio import atomic_write_text, check_out_folder, output_lock
from ..plotting import model_label
from ..tasks.registry import SPLITS, get_task, make_examples, question_key
from .common import beside_model

DEFAULT_OUT = "analysis"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _number_list(text: str, convert, ok, kind: str, bound: str) -> list:
    """Comma-separated numbers for an argparse `type=`: each converted, all passing `ok`."""
    try:
        values = [convert(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {kind}, got {text!r}") from None
    if not values or not all(ok(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated {bound} {kind}, got {text!r}")
    return values


def _int_list(text: str) -> list[int]:
    return _number_list(text, int, lambda v: v > 0, "integers", "positive")


def _float_list(text: str) -> list[float]:
    return _number_list(text, float, lambda v: v >= 0, "numbers", "non-negative")  # NaN fails v >= 0


def _common(p, *, many: bool = False, n: int = 50, split: bool = True) -> None:
    p.add_argument("--checkpoint", required=True, metavar="RUN",
                   help="model folder, or run folder (its latest checkpoint)")
    if many:
        p.add_argument("--task", default="list_recall", metavar="TASKS",
                       help="comma-separated tasks (list_recall, segment_counting, parity, copying; default: list_recall)")
        p.add_argument("--lengths", type=_int_list, default=[128], metavar="L1,L2",
                       help="comma-separated target prompt lengths in tokens (default: 128)")
    else:
        p.add_argument("--task", default="list_recall",
                       help="task (list_recall, segment_counting, parity, copying; default: list_recall)")
        p.add_argument("--length", type=_positive_int, default=128, metavar="L",
                       help="target prompt length in tokens (default: 128)")
    p.add_argument("--difficulty", default="medium", help="medium, hard, extra-hard or long (default: medium)")
    p.add_argument("--n", type=_positive_int, default=n, metavar="N", help=f"examples per task and length (default: {n})")
    p.add_argument("--seed", type=int, default=0, help="seed of the task examples (and of the probes; default: 0)")
    if split:
        p.add_argument("--split", default="test", choices=list(SPLITS),
                       help="examples from this split: train, dev or test (default: test)")
    p.add_argument("--out", metavar="DIR", help=f"folder for the JSON and PNG (default: {DEFAULT_OUT}/ inside the "
                   "--checkpoint's run folder)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _holding_out(run):
    """`run(args, out)` with its output folder checked and held for its whole life: a second analysis
    writing there is refused."""

    def held(args) -> int:
        out = _out(args)
        with output_lock(out, AnalysisError):
            return run(args, out)

    return held


def _out(args) -> Path:
    """The output folder, checked before any work (a file there would fail only at the end)."""
    out = Path(args.out) if args.out else beside_model(args.checkpoint, DEFAULT_OUT)
    return check_out_folder(out, AnalysisError, "--out" if args.out else "the default output folder")


def add_command(sub) -> None:
    p = sub.add_parser(
        "analyze",
        help="analyses of a meta-token model: entropy, ablate, residual, rate-distortion",
        description="The paper's analyses on a synthetic task; each writes a JSON of its numbers and a PNG to --out.",
    )
    inner = p.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)

    e = inner.add_parser("entropy", help="attention entropy at meta vs non-meta queries; max-logit boost")
    _common(e)
    e.add_argument("--window", type=int, default=16,
                   help="'nearby' control: non-meta queries within this many positions of a meta-token (default: 16)")
    e.add_argument("--no-boost", action="store_true",
                   help="skip the max-logit boost (one forward pass less per example)")
    e.set_defaults(func=_holding_out(run_entropy))

    a = inner.add_parser("ablate", help="accuracy with the meta position or embedding zeroed, beside the full model")
    _common(a, many=True, n=100)
    a.add_argument("--batch-size", type=_positive_int, default=16, help="examples per forward pass (default: 16)")
    a.set_defaults(func=_holding_out(run_ablate))

    r = inner.add_parser("residual", help="cosine similarity vs distance at meta-tokens; logit lens at meta positions")
    _common(r)
    r.add_argument("--top-k", type=_positive_int, default=5, help="tokens per layer in the logit lens (default: 5)")
    r.add_argument("--lens-examples", type=int, default=5, metavar="N",
                   help="examples whose lens is written out in full (default: 5)")
    r.set_defaults(func=_holding_out(run_residual))

    d = inner.add_parser("rate-distortion", help="information bottleneck probe on frozen hidden states, beta sweep")
    _common(d, split=False, n=500)
    d.add_argument("--n-test", type=int, default=None, metavar="N",
                   help="held-out (test split) examples for reporting and for the learned-anything check; "
                        "0 = none (default: --n)")
    d.add_argument("--betas", type=_float_list, default=None, metavar="B1,B2",
                   help="comma-separated betas (default: 0.01,0.02,0.05,0.1,0.2,0.5,1)")
    d.add_argument("--epochs", type=_positive_int, default=5, help="probe training epochs (default: 5, the paper's)")
    d.add_argument("--batch-size", type=_positive_int, default=8,
                   help="probe minibatch size (default: 8; the paper's 1 is 3.5x slower and leaves the probe "
                        "noisier at large beta)")
    d.add_argument("--no-question", action="store_true",
                   help="the decoder does not see the question (one head for all questions; the no-information "
                        "line is then the label prior)")
    d.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate of the probe (default: 3e-3)")
    d.add_argument("--z-dim", type=_positive_int, default=16, help="bottleneck width (default: 16)")
    d.add_argument("--samples", type=_positive_int, default=32, help="draws of z when measuring distortion (default: 32)")
    d.add_argument("--layer", type=int, default=None,
                   help="probe the residual after this block (0 = embeddings) instead of the final hidden state")
    d.set_defaults(func=_holding_out(run_rate_distortion))


# ---------------------------------------------------------------------------------------------


def _check_task_args(tasks: list[str], difficulty: str) -> list[str]:
    """Fail on a bad task or difficulty before the (slow) model load; returns canonical names."""
    names = []
    for task in tasks:
        the_task = get_task(task)
        the_task.level(difficulty)
        names.append(the_task.name)
    return names


def _settings(args, folder: Path, model, **extra: Any) -> dict[str, Any]:
    keys = ("task", "length", "lengths", "difficulty", "n", "seed", "split")
    return {
        "checkpoint": str(folder),
        **{k: getattr(args, k) for k in keys if hasattr(args, k)},
        "model": model_description(model),
        **extra,
    }


def _examples(args, tokenizer, task: str, *, n: int | None = None, split: str | None = None):
    return make_examples(
        task, tokenizer, length=args.length, difficulty=args.difficulty, n=n or args.n,
        seed=args.seed, split=split or args.split,
    )


def _finish(out: Path, name: str, result: dict[str, Any], plot, title: str) -> None:
    png, js = out / f"{name}.png", out / f"{name}.json"
    plot(result, png, title=title)
    write_json(js, result)
    print(f"wrote {js} and {png}")


def _title(folder: Path, args, what: str) -> str:
    """A figure's title: the model (its run and step, not just "step-00001800") and the task."""
    where = f" @ {args.length}" if hasattr(args, "length") else ""
    return f"{model_label(folder)}: {what}, {args.task}{where} ({args.difficulty}, n={args.n})"


def _interval(h: dict[str, Any] | None) -> str:
    if h is None:
        return "n/a"
    return f"{h['mean']:.3f} (95% CI {h['ci95'][0]:.3f} to {h['ci95'][1]:.3f}, n={h['n']})"


def run_entropy(args, out: Path) -> int:
    (args.task,) = _check_task_args([args.task], args.difficulty)
    if args.window < 0:
        raise ValueError(f"--window must be >= 0, got {args.window}")
    model, tokenizer, folder = load_for_analysis(args.checkpoint, args.device)
    examples = _examples(args, tokenizer, args.task)
    result = entropy_analysis(model, examples, window=args.window, boost=not args.no_boost, progress=not args.no_progress)
    result = {"settings": _settings(args, folder, model, window=args.window), **result}
    print(f"entropy difference, non-meta minus meta (nats): {_interval(result['entropy_difference'])}")
    print(f"  same, non-meta queries within {args.window} of a meta-token: {_interval(result['entropy_difference_nearby'])}")
    print(f"meta-attention entropy at meta queries (nats): {_interval(result['meta_attention_entropy'])}"
          " (a meta-token attends only to itself and earlier meta-tokens: 0 where a prompt holds one)")
    if result["max_logit_boost"] is not None:
        print(f"max-logit boost, real minus zeroed meta embedding: {_interval(result['max_logit_boost'])}")
    _finish(out, "entropy", result, plot_entropy, _title(folder, args, "attention entropy"))
    return 0


def run_ablate(args, out: Path) -> int:
    tasks = _check_task_args([t.strip() for t in args.task.split(",") if t.strip()], args.difficulty)
    if not tasks:
        raise ValueError("--task needs at least one task name")
    model, tokenizer, folder = load_for_analysis(args.checkpoint, args.device)
    result = ablation_study(
        model, tokenizer, tasks, args.lengths, difficulty=args.difficulty, n=args.n, seed=args.seed,
        split=args.split, batch_size=args.batch_size, progress=not args.no_progress,
    )
    result = {"settings": _settings(args, folder, model, tasks=tasks), **result}
    table = markdown_table(result)
    print("exact match (%), change from the full model in parentheses:\n" + table, end="")
    out.mkdir(parents=True, exist_ok=True)

    title = f"{model_label(folder)}: ablations at meta positions ({args.difficulty}, {args.split}, n={args.n})"
    atomic_write_text(out / "ablate.md", "Exact match (%); change from the full model in parentheses.\n\n" + table)
    _finish(out, "ablate", result, plot_ablation, title)
    return 0


def run_residual(args, out: Path) -> int:
    (args.task,) = _check_task_args([args.task], args.difficulty)
    if args.lens_examples < 0:
        raise ValueError(f"--lens-examples must be >= 0, got {args.lens_examples}")
    model, tokenizer, folder = load_for_analysis(args.checkpoint, args.device)
    examples = _examples(args, tokenizer, args.task)
    result = residual_analysis(
        model, tokenizer, examples, top_k=args.top_k, lens_examples=args.lens_examples, progress=not args.no_progress
    )
    result = {"settings": _settings(args, folder, model), **result}
    labels = [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in result["distance_bins"]]
    print("centred cosine similarity to earlier tokens at the last layer, by distance: "
          + " ".join(f"{b:>7}" for b in labels))
    for key, name in (("meta", "meta-token queries"), ("control", "non-meta queries")):
        row = result[f"cosine_{key}_binned"][-1]
        print(f"{name:>76}: " + " ".join("    nan" if v != v else f"{v:7.3f}" for v in row))
    nf = result["near_far"]
    print(f"near ({nf['near'][0]}-{nf['near'][1]}) minus far ({nf['far'][0]}+) centred cosine, mean over examples "
          "by layer (95% CI):")
    for key, name in (("meta", "meta-token queries"), ("control", "non-meta queries")):
        cells = [f"{m:.3f} ({lo:.3f} to {hi:.3f})" for m, (lo, hi) in zip(nf[f"{key}_mean"], nf[f"{key}_ci95"])]
        print(f"  {name} (n = {min(nf[f'{key}_n'])}): " + "; ".join(cells))
    probs = result["logit_lens"]["answer_first_token_prob"]["mean"]
    print("logit lens, answer's first token at the last meta-token, mean prob by layer: "
          + " ".join(f"{p:.3f}" for p in probs))
    _finish(out, "residual", result, plot_residual, _title(folder, args, "residual stream"))
    return 0


def run_rate_distortion(args, out: Path) -> int:
    (args.task,) = _check_task_args([args.task], args.difficulty)
    n_test = args.n if args.n_test is None else args.n_test
    if n_test < 0:
        raise ValueError(f"--n-test must be >= 0, got {n_test}")
    if not args.lr > 0:
        raise ValueError(f"--lr must be positive, got {args.lr}")
    betas = args.betas or list(DEFAULT_BETAS)
    model, tokenizer, folder = load_for_analysis(args.checkpoint, args.device)
    train = _examples(args, tokenizer, args.task, split="train")
    test = _examples(args, tokenizer, args.task, n=n_test, split="test") if n_test else []
    result = rate_distortion_analysis(
        model, train, test, betas=betas, layer=args.layer, z_dim=args.z_dim, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, samples=args.samples, seed=args.seed,
        question=None if args.no_question else question_key, progress=not args.no_progress,
    )
    result = {"settings": _settings(args, folder, model, n_test=n_test, question=not args.no_question), **result}
    prefix = "test_" if test else ""
    print(f"{'beta':>6}" + "".join(f"{name:>28}" for name in result["curves"]))
    print(f"{'':>6}" + f"{'rate / distortion (nats)':>28}" * len(result["curves"])
          + ("   [held-out]" if test else "   [training examples]"))
    for k, beta in enumerate(result["betas"]):
        cells = [f"{c[k][prefix + 'rate']:.3f} / {c[k][prefix + 'distortion']:.3f}" for c in result["curves"].values()]
        print(f"{beta:>6g}" + "".join(f"{c:>28}" for c in cells))
    line = result["no_information_test" if test else "no_information_train"]
    print(f"no information ({'p(answer | question)' if not args.no_question else 'the label prior'}): {line:.3f} nats")
    for name, verdict in (result["learned"] or {}).items():
        lo, hi = verdict["ci_selection"]["interval"]
        print(f"{name}: best held-out distortion {verdict['best_distortion']:.3f} at beta {verdict['best_beta']:g}, "
              f"{verdict['margin_nats']:+.3f} nats under the line ({verdict['ci_selection']['level']:.1%} CI "
              f"{lo:+.3f} to {hi:+.3f}): {'learned' if verdict['learned'] else 'learned nothing'}")
    _finish(out, "rate_distortion", result, plot_rate_distortion, _title(folder, args, "rate-distortion"))
    return 0

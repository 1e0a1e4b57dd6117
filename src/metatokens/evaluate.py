"""Evaluation on the synthetic tasks: accuracy by length bin, its markdown and plots.

Task accuracy (arXiv 2509.16278, sections 5-6; docs/method.md section 5)
-----------------------------------------------------------------
For every length bin, `n` test-split examples of the task are scored in one teacher-forced pass:
the model reads ``prompt + answer[:-1]`` and, at each answer position, its argmax over the
vocabulary (the meta-token and the embedding's padding rows excluded, exactly as generation
excludes them) is compared with the answer token.

* **token accuracy** = answer tokens whose teacher-forced argmax is right / answer tokens (EOS
  included; pooled over the bin).
* **exact match** = examples whose answer tokens are all right. This is *the same number* greedy
  decoding gives: greedy decoding reproduces the answer iff the argmax at every step, given the
  right prefix, is the next answer token, which is what teacher forcing checks (tested against
  `metatokens.generate` in tests/test_finetune_evaluate.py). Teacher forcing needs one forward pass
  per batch instead of one per generated token.

Both come with 95% Wilson score intervals. The token interval treats tokens as independent, which
they are not inside one answer, so it is narrower than the truth; the exact-match interval is the
one to compare models by.

Length limits: a model with learned absolute positions (APE) cannot read past its table, so a
bin whose examples need more positions is refused (one line, before anything runs) or, with
``skip_unfit``, reported as not applicable. RoPE and NoPE models read any length; ``yarn_scale``
puts YaRN on RoPE models first (`apply_yarn`).

Models are loaded by `metatokens.loading`; perplexity by position is `metatokens.perplexity`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .data.packing import tokenizer_hash
from .fileio import atomic_write_text
from .errors import EvaluationError
from .loading import LoadedModel, uses_meta
from .plotting import pyplot, save_figure, wrap_title
from .tasks.base import Example
from .tasks import TaskError
from .tasks.registry import get_task, make_examples
from .model.config import IGNORE_INDEX
from .model.yarn import apply_yarn

Z95 = 1.959963984540054  # standard normal quantile of 0.975: two-sided 95% intervals


# ----------------------------------------------------------------------------- statistics


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927); (0, 1) when trials == 0."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denom = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    # At 0 or n successes the bound is exactly 0 or 1; the subtraction above leaves rounding dust.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high


# ----------------------------------------------------------------------------- scoring


@dataclass
class Score:
    """Counts of one model on one set of examples."""

    examples: int = 0
    exact: int = 0
    tokens: int = 0
    tokens_correct: int = 0
    nll: float = 0.0  # summed over answer tokens
    per_example: list[int] | None = None  # 1 where that example (in the order given) was exactly right

    def add(self, other: "Score") -> "Score":
        for name in ("examples", "exact", "tokens", "tokens_correct", "nll"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def summary(self) -> dict[str, Any]:
        em_lo, em_hi = wilson_interval(self.exact, self.examples)
        tok_lo, tok_hi = wilson_interval(self.tokens_correct, self.tokens)
        return {
            "n": self.examples,
            "exact": self.exact,
            "exact_match": self.exact / self.examples if self.examples else None,
            "exact_match_ci95": [em_lo, em_hi],
            "answer_tokens": self.tokens,
            "tokens_correct": self.tokens_correct,
            "token_accuracy": self.tokens_correct / self.tokens if self.tokens else None,
            "token_accuracy_ci95": [tok_lo, tok_hi],
            "answer_loss": self.nll / self.tokens if self.tokens else None,
            **({"exact_per_example": self.per_example} if self.per_example is not None else {}),
        }


def answer_baselines(examples: Sequence[Example]) -> dict[str, float]:
    """Exact match of two guessers that never read the prompt's content, the floor a model must clear:
    "majority" always gives the most common answer of these examples; "chance" guesses uniformly
    among the answers the question allows (1/k for a List Recall list of k items, 1/2 for Parity,
    one over the possible counts 1..w for Segment Counting over w words, 0 for Copying, whose spans
    are random word sequences)."""
    from collections import Counter

    if not examples:
        return {"majority": 0.0, "chance": 0.0}
    majority = Counter(e.answer_text for e in examples).most_common(1)[0][1] / len(examples)
    total = 0.0
    for e in examples:
        info = e.info
        if info.get("task") == "list_recall":
            total += 1 / len(info["lists"][info["target"]])
        elif info.get("task") == "parity":
            total += 1 / 2
        elif info.get("task") == "segment_counting":
            total += 1 / sum(len(items) for items in info["lists"][info["start"]: info["end"] + 1])
    return {"majority": majority, "chance": total / len(examples)}


def prompts_digest(examples: Sequence[Example]) -> str:
    """A digest of the examples' prompt texts (meta-tokens left out) and answers, in order: two
    evaluations with the same digest scored the same prompts, one for one, so their
    ``exact_per_example`` lists can be paired."""
    h = hashlib.sha256()
    for e in examples:
        h.update(e.prompt_text.encode("utf-8") + b"\x00" + e.answer_text.encode("utf-8") + b"\x01")
    return h.hexdigest()[:16]


def needed_positions(examples: Sequence[Example]) -> int:
    """Positions a teacher-forced row needs: prompt + answer, less the last answer token (never an input)."""
    return max(len(e.prompt_ids) + len(e.answer_ids) - 1 for e in examples)


def collate(examples: Sequence[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded teacher-forcing rows: x = prompt + answer[:-1], y = answer at the answer positions.

    Prompt and padding targets are -100, so a loss or score covers the answer tokens only (the
    meta-token never appears in an answer, so it is never a target).
    """
    width = needed_positions(examples)
    x = torch.full((len(examples), width), pad_id, dtype=torch.long)
    y = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for i, e in enumerate(examples):
        seq = list(e.prompt_ids) + list(e.answer_ids)
        x[i, : len(seq) - 1] = torch.tensor(seq[:-1])
        p = len(e.prompt_ids)
        y[i, p - 1 : len(seq) - 1] = torch.tensor(e.answer_ids)
    return x, y


def answer_logits(model: nn.Module, x: torch.Tensor, where: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    if hasattr(model, "hidden_states") and hasattr(model, "lm_head"):
        return model.lm_head(model.hidden_states(x)[where]).float()
    logits, _ = model(x)
    return logits[where].float()


@torch.no_grad()
def score_examples(
    model: nn.Module,
    examples: Sequence[Example],
    *,
    pad_id: int,
    vocab_limit: int | None = None,
    meta_token_id: int | None = None,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    progress=None,
) -> Score:
    """Exact match, token accuracy and answer loss of `model` on `examples` (teacher-forced argmax).

    The argmax never picks `meta_token_id` or ids at or above `vocab_limit`, as generation never
    does, so exact match equals that of greedy decoding.
    """
    total = Score(per_example=[0] * len(examples))
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].prompt_ids) + len(examples[i].answer_ids))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = [examples[i] for i in rows]
        x, y = collate(batch, pad_id)
        x, y = x.to(device), y.to(device)
        where = (y != IGNORE_INDEX).nonzero(as_tuple=True)
        logits = answer_logits(model, x, where)  # (answer tokens, V)
        targets = y[where]
        nll = F.cross_entropy(logits, targets, reduction="sum")
        if meta_token_id is not None and meta_token_id < logits.size(1):
            logits[:, meta_token_id] = float("-inf")
        if vocab_limit is not None:
            logits[:, vocab_limit:] = float("-inf")
        right = logits.argmax(-1) == targets
        per_row = torch.zeros(len(batch), dtype=torch.long, device=x.device).index_add_(0, where[0], right.long())
        lengths = torch.tensor([len(e.answer_ids) for e in batch], device=x.device)
        exact = (per_row == lengths).tolist()
        for i, ok in zip(rows, exact):
            total.per_example[i] = int(ok)
        total.add(Score(len(batch), sum(exact), int(targets.numel()), int(right.sum()), float(nll)))
        if progress is not None:
            progress.update(len(batch))
    return total


# ----------------------------------------------------------------------------- task evaluation


def evaluate_task(
    models: Sequence[LoadedModel],
    task: str,
    lengths: Sequence[int],
    *,
    n: int = 100,
    seed: int = 0,
    difficulty: str = "medium",
    yarn_scale: float | None = None,
    meta: str = "auto",
    skip_unfit: bool = False,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Accuracy of every model at every length bin; see the module docstring for the metrics."""
    if not models:
        raise EvaluationError("no models to evaluate")
    lengths = sorted({int(length) for length in lengths})
    if not lengths or lengths[0] < 8:
        raise EvaluationError(f"lengths must be integers >= 8, got {lengths}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise EvaluationError(f"n must be a positive integer, got {n!r}")
    get_task(task)
    if yarn_scale is not None:
        rope = [m for m in models if m.pos_encoding == "rope"]
        if not rope:
            raise EvaluationError("--yarn-scale applies to RoPE models, and none of these models uses RoPE")
        for m in rope:
            apply_yarn(m.model, yarn_scale)

    # Make every example set first and check every length against every model, so that a refusal
    # comes before any compute and nothing is half-written.
    cache: dict[tuple[str, bool, int], list[Example]] = {}
    plan: list[tuple[LoadedModel, bool, list[tuple[int, list[Example] | None, str | None]]]] = []
    for m in models:
        with_meta = uses_meta(m, meta)
        tok_hash = tokenizer_hash(m.tokenizer)
        cells = []
        for length in lengths:
            key = (tok_hash, with_meta, length)
            if key not in cache:
                try:
                    cache[key] = make_examples(task, m.tokenizer, length=length, difficulty=difficulty, n=n, seed=seed,
                                               split="test", meta=with_meta)
                except TaskError as err:
                    raise EvaluationError(f"{m.name}: {err}") from None
            examples = cache[key]
            need, limit = needed_positions(examples), m.max_positions
            if limit is not None and need > limit:
                why = (f"{m.name} ({m.pos_encoding}, {limit} learned positions) cannot read length {length}: its "
                       f"examples need up to {need} positions (prompt + answer)")
                if not skip_unfit:
                    raise EvaluationError(f"{why}; drop that length, use a RoPE/NoPE model (--yarn-scale), or pass --skip-unfit")
                cells.append((length, None, why))
            else:
                cells.append((length, examples, None))
        plan.append((m, with_meta, cells))

    bar = None
    if progress:
        from .progress import progress_bar

        bar = progress_bar(total=sum(len(ex) for _, _, cells in plan for _, ex, _ in cells if ex), desc=f"evaluate {task}",
                           unit="ex")
    results = []
    for m, with_meta, cells in plan:
        rows = []
        for length, examples, why in cells:
            if examples is None:
                rows.append({"length": length, "n": 0, "skipped": why})
                continue
            score = score_examples(m.model, examples, pad_id=m.tokenizer.eos_token_id, vocab_limit=m.tokenizer.vocab_size,
                                   meta_token_id=m.tokenizer.meta_token_id, batch_size=batch_size, device=device, progress=bar)
            prompt_lengths = [len(e.prompt_ids) for e in examples]
            rows.append({"length": length, **score.summary(), "prompt_tokens": [min(prompt_lengths), max(prompt_lengths)],
                         "positions_needed": needed_positions(examples), "prompts_sha256": prompts_digest(examples),
                         "baselines": answer_baselines(examples)})
        results.append({**m.describe(), "meta": with_meta, "results": rows})
    if bar is not None:
        bar.close()
    return {
        "kind": "task",
        "task": get_task(task).name,
        "difficulty": difficulty,
        "split": "test",
        "n_per_length": n,
        "seed": seed,
        "lengths": lengths,
        "yarn_scale": yarn_scale,
        "scoring": "teacher-forced argmax over answer tokens (EOS included); exact match = all answer tokens right "
                   "= greedy decoding; 95% Wilson intervals",
        "models": results,
    }


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def task_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"### {result['task']} ({result['difficulty']}), {result['n_per_length']} test examples per length, seed {result['seed']}",
        "",
        "Length = prompt-length bin: prompts of 0.75 L to L tokens. Exact match and token accuracy in %, "
        "with 95% Wilson intervals.",
        "",
        "| model | positions | meta | length | n | exact match % (95% CI) | token acc. % (95% CI) | answer loss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in result["models"]:
        pos = m["pos_encoding"]
        if m.get("yarn"):
            pos += f" + YaRN x{m['yarn']['factor']:g}"
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
            + (f", {n} test prompts per length" if n else "") + (f", seed {result['seed']}" if "seed" in result else ""))


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


# ----------------------------------------------------------------------------- reports


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
        from .perplexity import perplexity_markdown, perplexity_plot

        atomic_write_text(paths["markdown"], perplexity_markdown(result))
        perplexity_plot(result, paths["png"])
    return paths

"""What every analysis shares: loading a model for analysis, config variants with the same
weights, task examples as tensors, bootstrap intervals, and writing JSON / PNG files atomically."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..devices import resolve_device
from ..errors import AnalysisError, CheckpointError
from ..fileio import atomic_write_text
from ..model.gpt import GPT
from ..runs.checkpoints import resolve_model_dir
from ..runs.model_folder import load_pretrained


def load_for_analysis(checkpoint: str | Path, device: str = "cpu"):
    """(model in eval mode, tokenizer, model folder) from a model folder or a run folder."""
    device = resolve_device(device)  # a bad --device, in one line, before the model loads
    folder = resolve_model_dir(checkpoint)
    model, tokenizer, _ = load_pretrained(folder, device)
    if tokenizer is None:
        raise CheckpointError(f"{folder}: no tokenizer.json in the model folder; task prompts need one")
    if model.config.meta_token_id is None:
        raise AnalysisError(f"{folder}: the model has no meta_token_id; these analyses need a meta-token model")
    return model.eval(), tokenizer, folder


def model_variant(model: GPT, **changes: Any) -> GPT:
    """A copy of `model` with config fields changed (e.g. meta_pos="zero") and the same weights.

    The copy is built from its config and loaded with the state dict rather than deep-copied, so
    nothing the original computed from its old config at construction time can leak into it.
    """
    device = next(model.parameters()).device
    copy = GPT(model.config.replace(**changes))
    copy.load_state_dict(model.state_dict(), strict=True)
    return copy.to(device).eval()


def example_ids(example, device: str | torch.device = "cpu") -> torch.Tensor:
    """(1, T) prompt ids of a task Example."""
    return torch.tensor([list(example.prompt_ids)], dtype=torch.long, device=device)


def check_fits(model: GPT, examples: Sequence, *, with_answer: bool = False, what: str = "prompts") -> None:
    """Refuse, in one line, inputs longer than a learned absolute position table."""
    limit = model.config.max_positions
    if limit is None or not examples:
        return
    longest = max(len(e.prompt_ids) + (len(e.answer_ids) - 1 if with_answer else 0) for e in examples)
    if longest > limit:
        raise AnalysisError(
            f"{what} reach {longest} tokens but the model has {limit} learned positions; use a shorter --length"
        )


def check_has_meta(examples: Sequence, where: str) -> None:
    if any(not e.meta_positions for e in examples):
        raise AnalysisError(f"{where}: some examples have no meta-token; make them with meta=True")


def bootstrap_ci(values, *, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (resampling the values, i.e. examples).

    Chosen over a t-interval because per-example means of entropies and logits need not be normal,
    and it needs no t quantiles (no SciPy). With one value the interval is that value.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        return (math.nan, math.nan)
    if x.size == 1:
        return (float(x[0]), float(x[0]))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return (float(lo), float(hi))


def summary(values, **kw) -> dict[str, Any]:
    """Mean, standard deviation, 95% bootstrap interval and count of per-example values."""
    x = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = bootstrap_ci(x, **kw)
    return {
        "mean": float(x.mean()) if x.size else math.nan,
        "std": float(x.std(ddof=1)) if x.size > 1 else 0.0,
        "ci95": [lo, hi],
        "n": int(x.size),
    }


def to_jsonable(value: Any) -> Any:
    """Tensors and arrays as nested lists, NaN/inf as None (JSON has neither)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(to_jsonable(data), indent=2) + "\n")
    return path


def model_description(model: GPT) -> dict[str, Any]:
    cfg = model.config
    return {
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_embd": cfg.n_embd,
        "pos_encoding": cfg.pos_encoding,
        "meta_attention": cfg.meta_attention,
        "meta_pos": cfg.meta_pos,
        "meta_embed": cfg.meta_embed,
        "yarn": cfg.yarn is not None,
    }

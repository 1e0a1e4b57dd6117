"""Evaluation on the synthetic tasks: accuracy by length bin (`evaluate_task`).

Task accuracy (arXiv 2509.16278, sections 5-6; docs/method.md section 5)
-----------------------------------------------------------------
For every length bin, `n` examples of the task are scored in one teacher-forced pass, from the test
split (the default) or, with ``split="dev"``, from the dev split: the prompts for choices made
while developing a recipe, so that the test prompts are read only by the final evaluation
(`metatokens.tasks.split_of`).
the model reads ``prompt + answer[:-1]`` and, at each answer position, its argmax over the
vocabulary (the meta-token and the embedding's padding rows excluded, exactly as generation
excludes them) is compared with the answer token.

* **token accuracy** = answer tokens whose teacher-forced argmax is right / answer tokens (EOS
  included; pooled over the bin).
* **exact match** = examples whose answer tokens are all right. This is *the same number* greedy
  decoding gives: greedy decoding reproduces the answer iff the argmax at every step, given the
  right prefix, is the next answer token, which is what teacher forcing checks (tested against
  `metatokens.generation` in tests/unit/test_finetune_evaluate.py). Teacher forcing needs one forward pass
  per batch instead of one per generated token.

Both come with 95% Wilson score intervals (`metatokens.stats`). The token interval treats tokens as independent, which
they are not inside one answer, so it is narrower than the truth; the exact-match interval is the
one to compare models by.

Length limits: a model with learned absolute positions (APE) cannot read past its table, so a
bin whose examples need more positions is refused (one line, before anything runs) or, with
``skip_unfit``, reported as not applicable. RoPE and NoPE models read any length; ``yarn_scale``
puts YaRN on RoPE models first (`apply_yarn`).

Models are loaded by `loading.py`, scored by `scoring.py`; markdown and figures are `report.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..data.packing import tokenizer_hash
from ..errors import EvaluationError
from ..model.yarn import apply_yarn
from ..progress import progress_bar
from ..tasks import TaskError
from ..tasks.base import Example
from ..tasks.registry import get_task, make_examples
from .loading import LoadedModel, uses_meta
from .scoring import answer_baselines, needed_positions, prompts_digest, score_examples

# ----------------------------------------------------------------------------- task evaluation

EVAL_SPLITS = ("test", "dev")  # the task splits an evaluation may score (never train)


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
    split: str = "test",
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
    if split not in EVAL_SPLITS:
        raise EvaluationError(f"split must be test or dev, got {split!r} (train prompts are what fine-tuning learns from)")
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
                                               split=split, meta=with_meta)
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
        "split": split,
        "n_per_length": n,
        "seed": seed,
        "lengths": lengths,
        "yarn_scale": yarn_scale,
        "scoring": "teacher-forced argmax over answer tokens (EOS included); exact match = all answer tokens right "
                   "= greedy decoding; 95% Wilson intervals",
        "models": results,
    }

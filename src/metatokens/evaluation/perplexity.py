"""Perplexity by position (`evaluate_perplexity`).

Documents are tokenised and joined with EOS, as in pre-training, and cut into ``context``-token
rows laid out exactly like pre-training rows (`metatokens.data.inject`: ``round(k * context)``
meta-tokens at uniformly random positions, text shifted right, no loss on meta targets). Loss and
perplexity per text token are reported overall and by position bucket within the row.

Models: metatokens model folders or run folders (their latest checkpoint), and Hugging Face
causal LMs through `HFCausalLM`, an adapter that gives them our model interface (the GPT-Neo
baseline of the paper). Hugging Face models never see meta-tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..data.corpora import iter_documents
from ..data.inject import num_meta, val_batches
from ..data.packing import _check_val_fraction, tokenizer_hash
from ..errors import EvaluationError
from ..model.config import IGNORE_INDEX
from ..model.gpt import GPT
from ..model.yarn import apply_yarn
from ..progress import progress_bar
from ..tokenizer.meta import MetaTokenizer
from .loading import LoadedModel, auto_meta_rate
from .scoring import answer_logits


def _token_stream(tokenizer: MetaTokenizer, source: str, need: int, *, every: int, max_documents: int | None,
                  text_field: str, hf_config: str | None, split: str) -> tuple[torch.Tensor, int]:
    """EOS-joined tokens of every `every`-th document until `need` tokens (pre-training's layout)."""
    ids: list[int] = []
    used = 0
    for i, doc in enumerate(iter_documents(source, text_field=text_field, hf_config=hf_config, split=split,
                                           max_documents=max_documents)):
        if i % every:
            continue
        ids.extend(tokenizer.encode(doc))
        ids.append(tokenizer.eos_token_id)
        used += 1
        if len(ids) >= need:
            break
    return torch.tensor(ids, dtype=torch.long), used


def parse_meta_rate(spec: str | float | None) -> float | str:
    """'auto', 'none' (0) or a rate k in [0, 1) as in pre-training's data.k."""
    if spec is None or spec == "auto":
        return "auto"
    if spec in ("none", "off"):
        return 0.0
    try:
        k = float(spec)
    except (TypeError, ValueError):
        raise EvaluationError(f"--meta-every must be auto, none or a rate k in [0, 1) (e.g. 0.1), got {spec!r}") from None
    if not 0 <= k < 1:
        raise EvaluationError(f"--meta-every rate must be in [0, 1), got {k}")
    return k


@torch.no_grad()
def evaluate_perplexity(
    models: Sequence[LoadedModel],
    source: str,
    *,
    context: int | None = None,
    buckets: int = 8,
    meta: str | float = "auto",
    rows: int = 64,
    batch_size: int = 8,
    seed: int = 0,
    every: int | str = "auto",
    max_documents: int | None = None,
    text_field: str = "text",
    hf_config: str | None = None,
    split: str = "train",
    yarn_scale: float | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Loss and perplexity per text token, overall and by position bucket (module docstring)."""
    if not models:
        raise EvaluationError("no models to evaluate")
    every, documents_note = documents_to_score(models, source, every, hf_config=hf_config, split=split)
    for name, value in (("buckets", buckets), ("rows", rows), ("every", every), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise EvaluationError(f"{name} must be a positive integer, got {value!r}")
    rate = parse_meta_rate(meta)
    if yarn_scale is not None:
        for m in models:
            if m.pos_encoding == "rope":
                apply_yarn(m.model, yarn_scale)

    settings = []
    for m in models:
        n = context or (m.model.config.block_size if isinstance(m.model, GPT) else m.max_positions)
        if not n:
            raise EvaluationError(f"{m.name}: give --context (the model has no window of its own)")
        if m.max_positions is not None and n > m.max_positions:
            raise EvaluationError(f"{m.name} ({m.pos_encoding}, {m.max_positions} learned positions) cannot read a context "
                                  f"of {n}; use --context {m.max_positions} or less, or a RoPE/NoPE model")
        k = rate if rate != "auto" else auto_meta_rate(m)
        if k > 0 and m.meta_token_id is None:
            raise EvaluationError(f"{m.name} has no meta-token; use --meta-every none")
        if buckets > n:
            raise EvaluationError(f"buckets ({buckets}) must not exceed the context ({n})")
        num_meta(n, k)  # checks the rate leaves room for text
        settings.append((m, n, k))

    streams: dict[tuple[str, int], tuple[torch.Tensor, int]] = {}
    results = []
    for m, n, k in settings:
        key = (tokenizer_hash(m.tokenizer), n)
        if key not in streams:
            streams[key] = _token_stream(m.tokenizer, source, rows * n + 1, every=every, max_documents=max_documents,
                                         text_field=text_field, hf_config=hf_config, split=split)
        tokens, documents = streams[key]
        if len(tokens) <= n + 1:
            raise EvaluationError(f"{source}: only {len(tokens)} tokens, fewer than one context of {n}; use more documents or a smaller --context")
        edges = [round(i * n / buckets) for i in range(buckets + 1)]
        loss_sum = torch.zeros(n, dtype=torch.float64)
        count = torch.zeros(n, dtype=torch.long)
        meta_id = m.meta_token_id if m.meta_token_id is not None else 0
        # One call picks exactly `rows` evenly spaced rows; they are then scored batch_size at a time.
        (x_all, y_all), = val_batches(tokens.numpy(), n, rows, k, meta_id, seed=seed, max_batches=1)
        batches = list(zip(x_all.split(batch_size), y_all.split(batch_size)))
        iterator = batches
        if progress:
            iterator = progress_bar(batches, desc=f"perplexity {m.name}", unit="batch")
        for x, y in iterator:
            x, y = x.to(device), y.to(device)
            keep = y != IGNORE_INDEX
            where = keep.nonzero(as_tuple=True)
            logits = answer_logits(m.model, x, where)
            nll = F.cross_entropy(logits, y[where], reduction="none").double().cpu()
            loss_sum.index_add_(0, where[1].cpu(), nll)
            count.index_add_(0, where[1].cpu(), torch.ones_like(where[1].cpu()))
        total_loss = float(loss_sum.sum() / max(int(count.sum()), 1))
        bucket_rows = []
        for lo, hi in zip(edges, edges[1:]):
            c = int(count[lo:hi].sum())
            loss = float(loss_sum[lo:hi].sum() / c) if c else None
            bucket_rows.append({"positions": [lo, hi - 1], "tokens": c, "loss": loss,
                                "perplexity": math.exp(loss) if loss is not None else None})
        results.append({**m.describe(), "context": n, "meta_rate": k, "meta_per_row": num_meta(n, k),
                        "rows": sum(len(x) for x, _ in batches), "documents": documents, "tokens": int(count.sum()),
                        "loss": total_loss, "perplexity": math.exp(total_loss), "buckets": bucket_rows})
    return {
        "kind": "perplexity",
        "source": source,
        "every": every,
        "documents": documents_note,
        "seed": seed,
        "yarn_scale": yarn_scale,
        "note": "loss per text token (meta targets carry no loss), natural log; models with different tokenizers "
                "are not comparable token for token",
        "models": results,
    }


def _every(r: int) -> str:
    return "every document" if r == 1 else f"every {r}th document"


def documents_to_score(models: Sequence[LoadedModel], source: str, every: int | str, *, hf_config: str | None = None,
                       split: str = "train") -> tuple[int, str]:
    """(R, what the documents are): which documents of `source` to score, every R-th from the first.

    ``every="auto"``: when the models' run.json says they were pre-trained on this very source
    (same split and configuration), R is that pre-training's hold-out stride, round(1 /
    val_fraction), so only its validation documents are scored (pre-training holds out document i
    when i % R == 0, `metatokens.data.packing`). Models pre-trained with different strides cannot
    share the documents: refused, pass an explicit R. Otherwise every document is scored, and the
    note says whether any model could have trained on them.
    """
    if every != "auto":
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise EvaluationError(f"every must be a positive integer or auto, got {every!r}")
        return every, f"{_every(every)} (chosen with --every)"
    here, unknown = {}, []
    for m in models:
        config = m.run_info.get("config") if isinstance(m.run_info.get("config"), dict) else {}
        data = config.get("data") if isinstance(config.get("data"), dict) else None
        if data is None or data.get("source") is None:
            unknown.append(m.name)
        elif data.get("source") == source and (not source.startswith("hf:")  # a split only means something for hf:
                                               or (data.get("hf_config"), data.get("split", "train")) == (hf_config, split)):
            try:
                here[m.name] = _check_val_fraction(float(data.get("val_fraction", 0.005)))
            except (TypeError, ValueError) as err:
                raise EvaluationError(f"{m.name}: run.json data.val_fraction is not usable ({err}); pass --every") from None
    if len(set(here.values())) > 1:
        strides = ", ".join(f"{name}: every {r}th" for name, r in here.items())
        raise EvaluationError(f"the models hold out different documents of {source} ({strides}); pass --every R "
                              "to score the same documents for all")
    if here:
        r = next(iter(here.values()))
        note = f"the pre-training validation documents of {', '.join(here)} ({_every(r)}, none seen in training)"
        if unknown:
            note += f"; {', '.join(unknown)}: pre-training corpus not recorded"
        return r, note
    if unknown:
        return 1, (f"every document; {', '.join(unknown)}: pre-training corpus not recorded, so these documents may have "
                   "been seen in training (pass --every R to pick the pre-training's held-out ones)")
    return 1, "every document (no model was pre-trained on this source)"



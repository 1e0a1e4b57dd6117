"""Sampling with a key/value cache for both attentions. The meta-token is never sampled."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .model import GPT, KVCache


def _next_token(logits: torch.Tensor, temperature: float, top_k: int | None, generator) -> torch.Tensor:
    """logits (B, V) with forbidden ids already at -inf -> next ids (B, 1)."""
    if temperature <= 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)


@torch.no_grad()
def stream(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    use_cache: bool = True,
    vocab_limit: int | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token ids (B, 1), one step at a time.

    temperature 0 is greedy decoding. `vocab_limit` forbids ids at or above it (the padding rows of
    an embedding larger than the tokenizer). With `use_cache` each step feeds only the new token;
    without it, the whole sequence is recomputed (the reference the cache is tested against).
    """
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError("the prompt must be a non-empty (batch, length) tensor of token ids")
    limit = model.config.max_positions
    if limit is not None and idx.size(1) + max_new_tokens > limit:
        raise ValueError(
            f"prompt ({idx.size(1)}) + new tokens ({max_new_tokens}) exceed the {limit} learned positions"
        )
    forbidden = torch.zeros(model.config.vocab_size, dtype=torch.bool, device=idx.device)
    if model.config.meta_token_id is not None:
        forbidden[model.config.meta_token_id] = True
    if vocab_limit is not None:
        forbidden[vocab_limit:] = True
    cache = KVCache.empty(model.config.n_layer) if use_cache else None
    seq, feed = idx, idx
    for _ in range(max_new_tokens):
        h = model.hidden_states(feed, cache=cache)[:, -1]
        logits = model.lm_head(h).float().masked_fill(forbidden, float("-inf"))
        nxt = _next_token(logits, temperature, top_k, generator)
        seq = torch.cat((seq, nxt), 1)
        feed = nxt if use_cache else seq
        yield nxt


def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, **kwargs) -> torch.Tensor:
    """The prompt followed by max_new_tokens sampled ids; keyword arguments as in `stream`."""
    steps = list(stream(model, idx, max_new_tokens, **kwargs))
    return torch.cat([idx, *steps], 1)

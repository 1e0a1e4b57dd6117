"""Generation: sampling with a key/value cache for both attentions. The meta-token is never sampled.

`stream` and `generate` (here) are `decode.stream_tokens` without a meta-token policy: one decode
loop serves both. `decode.py` also holds the meta-token policies of `metatokens generate`.

May import: errors, devices, model, tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..model.gpt import GPT
from .decode import stream_tokens


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
    for nxt, _ in stream_tokens(model, idx, max_new_tokens, policy="none", temperature=temperature, top_k=top_k,
                                use_cache=use_cache, vocab_limit=vocab_limit, generator=generator):
        yield nxt


def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, **kwargs) -> torch.Tensor:
    """The prompt followed by max_new_tokens sampled ids; keyword arguments as in `stream`."""
    steps = list(stream(model, idx, max_new_tokens, **kwargs))
    return torch.cat([idx, *steps], 1)

"""Generation with meta-tokens inserted by a policy, streamed token by token.

A model trained with meta-tokens (arXiv 2509.16278) reads them but never emits them, so at
inference something outside the model decides where they go. Policies:

    none      no meta-tokens (the literal text "<|meta|>" in a prompt stays plain text)
    every:N   a meta-token follows every run of N text tokens, in the prompt and while generating
    marked    the prompt marks them with the literal string "<|meta|>"; none are added later

`every:N` counts text tokens since the last meta-token, so a prompt encoded by the policy has
a meta-token after text tokens N, 2N, 3N, ... and generation keeps that rhythm. When the policy
asks for a meta-token, its id is fed to the model without sampling (one model call covers the
last sampled token and the meta-token); the meta-token id itself is never sampled.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from .. import devices
from ..errors import MetaPolicyError
from ..model.cache import KVCache
from ..model.gpt import GPT
from ..tokenizer.backend import META_TOKEN
from ..tokenizer.meta import MetaTokenizer

__all__ = [
    "MetaPolicy", "MetaPolicyError", "StreamDecoder", "encode_prompt", "generate_ids", "insert_every", "stream_tokens",
    "stream_text",
]


@dataclass(frozen=True)
class MetaPolicy:
    """Where meta-tokens enter the sequence at inference: kind none | every | marked."""

    kind: str = "none"
    n: int = 0  # run length of `every`; 0 for the other kinds

    @classmethod
    def parse(cls, spec: str | MetaPolicy) -> MetaPolicy:
        if isinstance(spec, MetaPolicy):
            return spec
        text = str(spec).strip()
        if text in ("none", "marked"):
            return cls(text)
        if text.startswith("every:"):
            count = text.removeprefix("every:")
            if count.isdigit() and int(count) > 0:
                return cls("every", int(count))
        raise MetaPolicyError(f"unknown meta-token policy {spec!r}; use none, every:N (N a positive integer) or marked")

    def __str__(self) -> str:
        return f"every:{self.n}" if self.kind == "every" else self.kind


def insert_every(ids: list[int], n: int, meta_id: int, since: int = 0) -> list[int]:
    """ids with meta_id after every run of n text ids; `since` text ids already precede them."""
    out = []
    for i in ids:
        if i != meta_id and since >= n:  # a meta-token the text already has is not doubled
            out.append(meta_id)
            since = 0
        out.append(i)
        since = 0 if i == meta_id else since + 1
    return out + [meta_id] if since >= n else out


def encode_prompt(tokenizer: MetaTokenizer, text: str, policy: str | MetaPolicy = "none") -> list[int]:
    """Token ids of a prompt under a policy.

    MetaTokenizer.encode never yields the meta id from text (by design), so `marked` splits the
    prompt on the literal marker and joins the encoded pieces with meta ids explicitly.
    """
    policy = MetaPolicy.parse(policy)
    meta = tokenizer.meta_token_id
    if policy.kind == "marked":
        ids: list[int] = []
        for i, piece in enumerate(text.split(META_TOKEN)):
            if i:
                ids.append(meta)
            ids.extend(tokenizer.encode(piece))
        return ids
    ids = tokenizer.encode(text)
    return insert_every(ids, policy.n, meta) if policy.kind == "every" else ids


def _text_run(row: list[int], meta_id: int | None) -> int:
    """Text tokens after the last meta-token of a row."""
    run = 0
    for i in reversed(row):
        if i == meta_id:
            break
        run += 1
    return run


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
def stream_tokens(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    policy: str | MetaPolicy = "none",
    temperature: float = 1.0,
    top_k: int | None = None,
    use_cache: bool = True,
    vocab_limit: int | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, bool]]:
    """Yield (ids (B, 1), inserted) per step: a sampled token, or a meta-token the policy inserted.

    Exactly max_new_tokens sampled steps are yielded; `every:N` adds inserted ones in between.
    The prompt `idx` (B, T) is taken as is: encode it with `encode_prompt` to apply the policy
    there too. `generate.stream` is this loop without a policy. Temperature 0 is greedy, `vocab_limit` forbids
    ids at or above it, and the meta id is never sampled. Without the cache, every step
    recomputes the whole sequence (the reference the cache is tested against).
    """
    policy = MetaPolicy.parse(policy)
    meta_id = model.config.meta_token_id
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError("the prompt must be a non-empty (batch, length) tensor of token ids")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if policy.kind != "none" and meta_id is None:
        raise MetaPolicyError(f"meta-token policy {policy} needs a model with a meta_token_id; this one has none")
    since = 0
    if policy.kind == "every":
        runs = {_text_run(row, meta_id) for row in idx.tolist()}
        if len(runs) > 1:
            raise MetaPolicyError(
                "every:N needs all rows of the batch to end with the same number of text tokens after their last meta-token"
            )
        since = runs.pop()
    # The sequence length is known in advance, so an APE model's limit is checked before anything streams.
    inserted, run = 0, since
    for _ in range(max_new_tokens if policy.kind == "every" else 0):
        inserted, run = (inserted + 1, 1) if run >= policy.n else (inserted, run + 1)
    limit = model.config.max_positions
    if limit is not None and idx.size(1) + max_new_tokens + inserted > limit:
        raise ValueError(
            f"prompt ({idx.size(1)}) + new tokens ({max_new_tokens}) + inserted meta-tokens ({inserted}) "
            f"exceed the {limit} learned positions of this model"
        )
    forbidden = torch.zeros(model.config.vocab_size, dtype=torch.bool, device=idx.device)
    if meta_id is not None:
        forbidden[meta_id] = True
    if vocab_limit is not None:
        forbidden[vocab_limit:] = True
    cache = KVCache.empty(model.config.n_layer) if use_cache else None
    seq, pending = idx, idx  # pending: ids not yet fed through the cache
    sampled = 0
    while sampled < max_new_tokens:
        if policy.kind == "every" and since >= policy.n:
            nxt, since = torch.full_like(idx[:, :1], meta_id), 0
            yield nxt, True
        else:
            h = model.hidden_states(pending if use_cache else seq, cache=cache)[:, -1]
            logits = model.lm_head(h).float().masked_fill(forbidden, float("-inf"))
            nxt = _next_token(logits, temperature, top_k, generator)
            pending = pending[:, :0]
            sampled, since = sampled + 1, since + 1
            yield nxt, False
        seq, pending = torch.cat((seq, nxt), 1), torch.cat((pending, nxt), 1)


def decoding_precision(model: GPT, dtype: str, device: torch.device | str) -> Callable[[], contextlib.AbstractContextManager]:
    """Prepare `model` for decoding in `dtype` (fp32 or bf16); returns the context to decode in.

    bf16: the parameters are cast to bf16 in place (half the bytes read per token, what bounds
    decoding at batch 1) and decoding runs under a bf16 autocast; buffers such as the rotary
    frequencies stay fp32, so positions keep their precision. On a CPU without bf16 units
    (AVX512-BF16 or AMX) this falls back to fp32 with one line. Greedy tokens agree with fp32's
    on a trained model up to near-ties (tests/unit/test_inference.py states the rate).
    """
    if dtype not in ("fp32", "bf16"):
        raise ValueError(f"dtype must be fp32 or bf16, got {dtype!r}")
    device = torch.device(device)
    if dtype == "fp32":
        return contextlib.nullcontext
    if device.type == "cpu" and not devices.cpu_has_bf16():  # on stderr: stdout carries the generated text
        print("note: --dtype bf16 asked for, but this CPU has no bf16 units (AVX512-BF16/AMX); decoding in fp32",
              file=sys.stderr)
        return contextlib.nullcontext
    for p in model.parameters():
        p.data = p.data.to(torch.bfloat16)
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def generate_ids(model: GPT, idx: torch.Tensor, max_new_tokens: int, **kwargs) -> torch.Tensor:
    """The prompt followed by everything `stream_tokens` yields (inserted meta-tokens included)."""
    return torch.cat([idx, *(ids for ids, _ in stream_tokens(model, idx, max_new_tokens, **kwargs))], 1)


class StreamDecoder:
    """Turns ids arriving one by one into text pieces whose concatenation is decode(all ids).

    Byte-level BPE can split one character over several tokens; a piece is held back while the
    text decoded so far ends in an incomplete character (U+FFFD), and `flush` releases the rest.
    """

    def __init__(self, tokenizer: MetaTokenizer, *, show_meta: bool = False):
        self.tokenizer, self.skip_meta = tokenizer, not show_meta
        self.ids: list[int] = []
        self.emitted = 0  # characters of decode(ids) already returned

    def _text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_meta=self.skip_meta)

    def push(self, token: int) -> str:
        self.ids.append(int(token))
        text = self._text()
        if text.endswith("\ufffd"):
            return ""
        piece, self.emitted = text[self.emitted :], len(text)
        return piece

    def flush(self) -> str:
        text = self._text()
        piece, self.emitted = text[self.emitted :], len(text)
        return piece


def stream_text(
    model: GPT,
    tokenizer: MetaTokenizer,
    prompt: str,
    max_new_tokens: int,
    *,
    policy: str | MetaPolicy = "none",
    show_meta: bool = False,
    stop_at_eos: bool = True,
    device: str | torch.device = "cpu",
    **kwargs,
) -> Iterator[str]:
    """Text pieces of the continuation of `prompt`, as they are generated.

    The prompt is encoded under the policy (an empty prompt starts from the end-of-text token);
    with show_meta the inserted meta-tokens appear as "<|meta|>". Generation stops early at the
    end-of-text token when stop_at_eos. Other keyword arguments go to `stream_tokens`.
    """
    ids = encode_prompt(tokenizer, prompt, policy) or [tokenizer.eos_token_id]
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    kwargs.setdefault("vocab_limit", tokenizer.vocab_size)
    decoder = StreamDecoder(tokenizer, show_meta=show_meta)
    for nxt, _ in stream_tokens(model, idx, max_new_tokens, policy=policy, **kwargs):
        token = int(nxt[0, 0])
        if stop_at_eos and token == tokenizer.eos_token_id:
            break
        if piece := decoder.push(token):
            yield piece
    if rest := decoder.flush():
        yield rest

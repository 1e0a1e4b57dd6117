"""`metatokens generate`: sample a continuation from a model folder, streamed to stdout."""

from __future__ import annotations

import math
import sys

import torch

from ..devices import resolve_device
from ..errors import CheckpointError
from ..generation.decode import MetaPolicy, decoding_precision, stream_text
from ..runs.checkpoints import resolve_model_dir
from ..runs.model_folder import load_pretrained

# Most tokens one call samples, far past any window we train: a RoPE model has no position limit and its
# KV cache keeps growing, so an unbounded request would run until memory runs out.
MAX_NEW_TOKENS = 100_000


def add_command(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="sample text from a model folder, streamed as it is generated",
        description="Sample a continuation of --prompt and print it as tokens arrive (the prompt itself is not echoed).",
    )
    p.add_argument("--checkpoint", required=True, metavar="RUN", help="model folder, or run folder (its latest checkpoint)")
    p.add_argument("--prompt", default="", help='prompt text; with --meta marked, "<|meta|>" marks meta-tokens (default: empty)')
    p.add_argument("--max-new-tokens", type=int, default=100, metavar="N", help=f"tokens to sample, at most {MAX_NEW_TOKENS:,} (default: 100)")
    p.add_argument("--temperature", type=float, default=0.8, metavar="T", help="a finite number >= 0; 0 = greedy (default: 0.8, as nanoGPT's sample.py)")
    p.add_argument("--top-k", type=int, default=200, metavar="K", help="sample among the K likeliest tokens; 0 = all (default: 200)")
    p.add_argument("--seed", type=int, default=None, metavar="S", help="seed for sampling (default: fresh randomness)")
    p.add_argument("--meta", default="none", metavar="POLICY", help="meta-token policy: none, every:N or marked (default: none)")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole sequence every step (slow; a reference)")
    p.add_argument("--show-meta", action="store_true", help='print inserted meta-tokens as "<|meta|>"')
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, mps or auto")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: weights in bf16, decoding under a bf16 autocast (default fp32; see BENCHMARKS.md "
                        "for when it is faster)")
    p.set_defaults(func=run)


def check_prompt_text(prompt: str) -> None:
    """Refuse a --prompt that is not text: bytes that are not UTF-8 reach Python as lone surrogates
    (U+DC80..U+DCFF), which no tokenizer encodes. Replacing them would sample from another prompt."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as err:
        code = ord(prompt[err.start])
        what = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"lone surrogate U+{code:04X}"
        raise ValueError(f"--prompt is not valid UTF-8 text ({what} at character {err.start}); pass the prompt "
                         "in UTF-8 (a UTF-8 terminal locale, or convert it with iconv -t UTF-8)") from None


def run(args) -> int:
    policy = MetaPolicy.parse(args.meta)  # checked before the (slow) model load
    if args.max_new_tokens < 0:
        raise ValueError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if args.max_new_tokens > MAX_NEW_TOKENS:
        raise ValueError(f"--max-new-tokens must be at most {MAX_NEW_TOKENS:,}, got {args.max_new_tokens:,}")
    if args.top_k < 0:
        raise ValueError(f"--top-k must be >= 0, got {args.top_k}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise ValueError(f"--temperature must be a finite number >= 0, got {args.temperature}")
    check_prompt_text(args.prompt)
    args.device = resolve_device(args.device)

    model, tokenizer, _ = load_pretrained(resolve_model_dir(args.checkpoint), args.device)
    if tokenizer is None:
        raise CheckpointError(f"{args.checkpoint}: no tokenizer.json in the model folder; generate needs one")
    model.eval()
    precision = decoding_precision(model, args.dtype, args.device)
    generator = None
    if args.seed is not None:
        generator = torch.Generator(device=args.device).manual_seed(args.seed)
    pieces = stream_text(
        model, tokenizer, args.prompt, args.max_new_tokens, policy=policy, show_meta=args.show_meta,
        device=args.device, temperature=args.temperature, top_k=args.top_k or None,
        use_cache=not args.no_cache, generator=generator,
    )
    with precision():
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    return 0

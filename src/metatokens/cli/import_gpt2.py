"""`metatokens import-gpt2`: a Hugging Face GPT-2 checkpoint -> a metatokens model folder."""

from __future__ import annotations

import sys
import warnings

from ..errors import GPT2ImportWarning
from ..hf.gpt2 import import_gpt2


def add_command(sub) -> None:
    p = sub.add_parser(
        "import-gpt2",
        help="build a meta-token model from a Hugging Face GPT-2 checkpoint (for continued pre-training)",
        description="Copies every GPT-2 weight, adds meta-attention sublayers whose output projections are "
        "zero (so the logits on text without meta-tokens are GPT-2's) and a <|meta|> embedding row "
        "(the mean of GPT-2's rows). Continue with `metatokens pretrain --init RUN`.",
    )
    p.add_argument("--from", dest="source", required=True, metavar="NAME_OR_PATH",
                   help="GPT-2 folder (config.json, model.safetensors, tokenizer files) or Hub name such as gpt2")
    p.add_argument("--out", required=True, metavar="RUN", help="model folder to write: new or empty, or an earlier "
                   "import with --overwrite")
    p.add_argument("--overwrite", action="store_true", help="replace RUN if it holds an earlier import (never anything else)")
    p.add_argument("--pos-encoding", choices=("ape", "rope", "none"), default="ape",
                   help="ape keeps GPT-2's learned positions; rope/none discard them (default: ape)")
    p.add_argument("--no-meta", action="store_true",
                   help="no meta-attention (a plain GPT-2 baseline; <|meta|> stays in the vocabulary)")
    p.add_argument("--vocab-multiple", type=int, default=64,
                   help="pad the embedding to a multiple of this many rows (default 64: 50304 for GPT-2; 1: no padding)")
    p.add_argument("--seed", type=int, default=0, help="seed for the new meta-attention weights")
    p.set_defaults(func=run)


def run(args) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GPT2ImportWarning)
        out = import_gpt2(
            args.source, args.out, pos_encoding=args.pos_encoding, meta_attention=not args.no_meta,
            vocab_multiple=args.vocab_multiple, seed=args.seed, overwrite=args.overwrite,
        )
    for w in caught:
        if issubclass(w.category, GPT2ImportWarning):
            print(f"metatokens import-gpt2: warning: {' '.join(str(w.message).split())}", file=sys.stderr)
        else:  # not ours: show it as Python would have
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    print(f"{out}: imported {args.source} ({args.pos_encoding}, {'no meta-attention' if args.no_meta else 'meta-attention'})")
    return 0

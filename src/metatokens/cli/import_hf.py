"""`metatokens import-hf`: a Llama-family, GPT-NeoX or GPT-2 checkpoint -> a meta-token model folder."""

from __future__ import annotations

from ..hf.families import import_hf
from ..model.config import SUPPORTED
from ..runs.model_folder import read_config


def add_command(sub) -> None:
    p = sub.add_parser(
        "import-hf",
        help="add meta-attention to a pretrained Llama/Qwen2/Mistral, GPT-NeoX or GPT-2 checkpoint",
        description=f"Supports the {SUPPORTED}. Copies every weight (safetensors only), appends <|meta|> to the "
        "tokenizer and the embedding (mean of the token rows), and adds after each self-attention a meta-attention "
        "sublayer in the family's style whose output projection is zero, so that the logits equal the checkpoint's "
        "at the start. Continue with `metatokens pretrain --init RUN`, `finetune --init RUN`, `export`.",
    )
    p.add_argument("--from", dest="source", required=True, metavar="NAME_OR_PATH",
                   help="Hugging Face model folder (config.json, *.safetensors, tokenizer.json) or Hub name "
                   "such as EleutherAI/pythia-14m")
    p.add_argument("--out", required=True, metavar="RUN",
                   help="model folder to write: new or empty, or an earlier import-hf output with --overwrite")
    p.add_argument("--overwrite", action="store_true", help="replace RUN if it holds an earlier import-hf output (never anything else)")
    p.add_argument("--meta-pos", choices=("keep", "zero"), default="keep",
                   help="zero: meta-tokens get no position (unrotated q/k; GPT-2: no position vector) (default: keep)")
    p.add_argument("--no-meta", action="store_true", help="no meta-attention (a baseline; <|meta|> stays in the vocabulary)")
    p.add_argument("--block-size", type=int, default=1024,
                   help="training window recorded for pretrain --init (at most the checkpoint's; GPT-2 keeps its own) (default 1024)")
    p.add_argument("--vocab-multiple", type=int, default=64, help="pad the embedding to a multiple of this many rows (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed for the new meta-attention weights")
    p.set_defaults(func=run)


def run(args) -> int:
    out = import_hf(args.source, args.out, meta_attention=not args.no_meta, meta_pos=args.meta_pos,
                    block_size=args.block_size, vocab_multiple=args.vocab_multiple, seed=args.seed, overwrite=args.overwrite)
    info = read_config(out)["imported_from_hf"]
    print(f"{out}: imported {args.source} ({info['model_type']}, {info['family']} family, "
          f"{'no meta-attention' if args.no_meta else 'meta-attention'}, meta_pos {args.meta_pos})")
    return 0

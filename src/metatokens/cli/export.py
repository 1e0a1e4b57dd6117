"""`metatokens export`: a model folder -> a Hugging Face transformers folder (model + tokenizer)."""

from __future__ import annotations

from ..hf.export import export_hf


def add_command(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a Hugging Face transformers folder (AutoModelForCausalLM, AutoTokenizer)",
        description="Load with AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True), or without "
        "remote code after `import metatokens.model.hf_model`. Weights are safetensors. See docs/huggingface.md.",
    )
    p.add_argument("--checkpoint", required=True, metavar="RUN",
                   help="metatokens model folder (or run folder: its latest checkpoint)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write: new or empty, or an earlier export "
                   "with --overwrite")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it holds an earlier export (never anything else)")
    p.set_defaults(func=run)


def run(args) -> int:
    out = export_hf(args.checkpoint, args.out, overwrite=args.overwrite)
    has_tokenizer = (out / "tokenizer.json").is_file()
    print(f"{out}: transformers model" + (" and tokenizer" if has_tokenizer else " (no tokenizer in the checkpoint)"))
    return 0

"""`metatokens tasks lm-eval`: the synthetic tasks' test prompts as a task folder for lm-evaluation-harness.

    metatokens tasks lm-eval --checkpoint EXPORT --out DIR --lengths 96,192
    lm_eval --model hf --model_args pretrained=EXPORT,trust_remote_code=True --include_path DIR --tasks metatokens

See docs/lm-eval.md.
"""

from __future__ import annotations

from ..evaluation.harness import lm_eval_command, write_lm_eval_pack
from .evaluate import _lengths


def add_command(sub) -> None:
    p = sub.add_parser("tasks", help="the synthetic tasks for other tools (lm-evaluation-harness)",
                       description="Write the synthetic tasks in another tool's format.")
    kinds = p.add_subparsers(dest="format", metavar="FORMAT", required=True)
    q = kinds.add_parser(
        "lm-eval",
        help="a task folder for lm_eval --include_path: one task per task and length",
        description="Write the test prompts `metatokens evaluate --checkpoint RUN` scores (same tokenizer, seed, "
                    "split and meta-token variant) as lm-evaluation-harness tasks: greedy generation until EOS, "
                    "exact match. Run them with lm_eval --include_path DIR --tasks metatokens. See docs/lm-eval.md.",
    )
    q.add_argument("--checkpoint", required=True, metavar="RUN", help="the model whose tokenizer fits the prompts: "
                   "an export (metatokens export), a Hugging Face folder, or a metatokens run or model folder")
    q.add_argument("--out", required=True, metavar="DIR", help="folder to write: new or empty, or an earlier pack "
                   "with --overwrite")
    q.add_argument("--task", default="all", help="list_recall, segment_counting, parity, copying, several "
                   "comma-separated, or all (default; lengths a task cannot fit are left out)")
    q.add_argument("--lengths", default="64,128,256", help="prompt-length bins, comma-separated (default 64,128,256)")
    q.add_argument("--n", type=int, default=100, help="prompts per task and length (default 100)")
    q.add_argument("--seed", type=int, default=0, help="as metatokens evaluate --seed (default 0)")
    q.add_argument("--split", default="test", choices=("test", "dev"), help="test (default) or dev prompts")
    q.add_argument("--difficulty", default="medium", help="medium (default), hard, extra-hard or long")
    q.add_argument("--meta", choices=("auto", "on", "off"), default="auto",
                   help="meta-tokens in the prompts (auto: what the model was trained with, as in evaluate)")
    q.add_argument("--overwrite", action="store_true", help="replace DIR if it holds an earlier pack (never anything else)")
    q.set_defaults(func=run)


def run(args) -> int:
    lengths = _lengths(args.lengths)
    marker = write_lm_eval_pack(args.checkpoint, args.out, task=args.task, lengths=lengths, n=args.n, seed=args.seed,
                                difficulty=args.difficulty, split=args.split, meta=args.meta, overwrite=args.overwrite)
    for entry in marker["tasks"]:
        print(f"{entry['name']}: {entry['n']} prompts, up to {entry['max_gen_toks']} new tokens, "
              f"prompts_sha256 {entry['prompts_sha256']}")
    for skip in marker["skipped"]:
        print(f"left out {skip['task']} at {skip['length']}: {skip['why']}")
    print(f"wrote {args.out}; run:")
    if marker["hf_folder"]:
        print(f"  {lm_eval_command(marker, args.out)}")
    else:
        print(f"  metatokens export --checkpoint {args.checkpoint} --out EXPORT   (lm_eval loads Hugging Face folders)")
        print(f"  {lm_eval_command({**marker, 'checkpoint': 'EXPORT', 'remote_code': True}, args.out)}")
    return 0

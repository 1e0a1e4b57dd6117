"""Print decoded examples of the synthetic tasks, and the difficulty table.

    python -m metatokens.tasks --show                          # one short example per task
    python -m metatokens.tasks --show --task parity --length 256 --difficulty hard -n 3
    python -m metatokens.tasks --levels                        # the difficulty table (markdown)

``--tokenizer`` takes a tokenizer.json, ``gpt2`` (GPT-2's files from the local Hugging Face
cache, never the network) or ``builtin`` (the default: a 4096-token BPE trained in about a
second on the built-in English prose corpus of :mod:`metatokens.data`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from ..data.corpora import builtin_documents
from ..tokenizer.meta import MetaTokenizer
from .base import DIFFICULTIES
from .registry import SPLITS, TASKS, make_examples


def load_tokenizer(spec: str):
    if spec == "gpt2":
        return MetaTokenizer.from_gpt2()
    if spec == "builtin":
        return MetaTokenizer.train(list(builtin_documents()), 4096)
    return MetaTokenizer.from_file(spec)


def levels_table() -> str:
    rows = ["| task | difficulty | parameters |", "|---|---|---|"]
    for name, task in TASKS.items():
        for difficulty in DIFFICULTIES:
            fields = dataclasses.asdict(task.level(difficulty))
            text = ", ".join(f"{k}={'..'.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in fields.items())
            rows.append(f"| {name} | {difficulty} | {text} |")
    return "\n".join(rows)


def show(args: argparse.Namespace) -> None:
    tokenizer = load_tokenizer(args.tokenizer)
    for name in args.task or list(TASKS):
        examples = make_examples(
            name, tokenizer, length=args.length, difficulty=args.difficulty, n=args.n, seed=args.seed, split=args.split
        )
        for example in examples:
            print(f"=== {name} / {args.difficulty} / target length {args.length}: "
                  f"{len(example.prompt_ids)} prompt tokens, meta at {example.meta_positions}")
            print(tokenizer.decode(example.prompt_ids, skip_meta=False), end="")
            print(f"{example.answer_text}   [answer: {len(example.answer_ids)} tokens with EOS]\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metatokens.tasks", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--show", action="store_true", help="print decoded examples")
    mode.add_argument("--levels", action="store_true", help="print the difficulty table as markdown")
    parser.add_argument("--task", action="append", choices=list(TASKS), help="repeatable (default: every task)")
    parser.add_argument("--difficulty", default="medium", choices=DIFFICULTIES)
    parser.add_argument("--length", type=int, default=128, help="target prompt length in tokens (default 128)")
    parser.add_argument("-n", type=int, default=1, help="examples per task (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="train", choices=SPLITS)
    parser.add_argument("--tokenizer", default="builtin", help="tokenizer.json path, 'gpt2' or 'builtin' (default)")
    args = parser.parse_args(argv)
    try:
        if args.levels:
            print(levels_table())
        else:
            show(args)
    except (ValueError, OSError) as exc:  # TaskError and TokenizerError are ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

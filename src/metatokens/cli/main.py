"""The `metatokens` command line: one subcommand per workflow.

Each workflow module exposes `add_command(subparsers)`, which adds its parser and sets
`func(args) -> int`. A refusal raises a `metatokens.errors.MetatokensError` (or a ValueError / OSError
for bad input met elsewhere), printed here as one line with exit status 2. A Ctrl-C is one line and 130.
Set METATOKENS_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .. import __version__
from ..errors import MetatokensError, one_line

# Modules that contribute subcommands, in the order `--help` lists them.
COMMAND_MODULES = [
    "metatokens.cli.pretrain",
    "metatokens.cli.plot",
    "metatokens.cli.export",
    "metatokens.cli.import_gpt2",
    "metatokens.cli.import_hf",
    "metatokens.cli.finetune",
    "metatokens.cli.evaluate",
    "metatokens.cli.tasks",
    "metatokens.cli.generate",
    "metatokens.cli.analyze",
    "metatokens.cli.reproduce",
    "metatokens.cli.info",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metatokens",
        description="Language models with learned meta-tokens and meta-attention (arXiv 2509.16278).",
    )
    parser.add_argument("--version", action="version", version=f"metatokens {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_command(sub)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """`parser.parse_args`, except that an unknown flag after a command is reported with that
    command's usage (argparse's own message shows the top-level one, which does not list the flags)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        target = parser
        while True:  # down the chosen (sub)commands: `analyze ablate` is two levels
            chosen = [action.choices[getattr(args, action.dest)] for action in target._actions
                      if isinstance(action, argparse._SubParsersAction) and getattr(args, action.dest, None) in action.choices]
            if not chosen:
                break
            target = chosen[0]
        target.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as stop:
        # Ctrl-C: one line, exit 130. A stop that says more (a study whose stage was stopped, a run that
        # saved a checkpoint) gives its own line and, for RunStopped, the status of its signal.
        said = " ".join(str(stop).split())
        print(f"metatokens {args.command}: {said}" if said else "metatokens: interrupted", file=sys.stderr)
        return getattr(stop, "exit_code", 130)
    except (MetatokensError, ValueError, OSError) as err:
        # Our refusals, bad input met by a library (a ValueError) and missing or unwritable files
        # are one line. Anything else, a RuntimeError from PyTorch say, is a bug or an environment
        # problem and keeps its traceback.
        if os.environ.get("METATOKENS_DEBUG"):
            raise
        print(f"metatokens {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The `metatokens` command line: `main.py` parses and dispatches, one thin module per command.

Each command module has `add_command(subparsers)`, which adds its parser and sets `func(args) -> int`;
its `run` turns the flags into one call of the library below (training, evaluation, hf, analysis,
study). May import every other package; nothing imports it.
"""

from .main import COMMAND_MODULES, build_parser, main, parse_args

__all__ = ["COMMAND_MODULES", "build_parser", "main", "parse_args"]

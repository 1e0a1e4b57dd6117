"""Subcommands of the `metatokens` CLI; each module has `add_command(subparsers)`."""

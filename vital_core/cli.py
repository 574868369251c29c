"""The `vital` command. Subcommands are plugins registered by each package.

Every package declares its subcommands under the `vital.commands` entry-point group in
pyproject.toml, pointing at a `register(subparsers)` function that adds one or more
subparsers and sets `func` (called with the parsed namespace, returns an exit code).
This keeps `vital_core` free of imports of the packages built on top of it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import entry_points


class CLIError(Exception):
    """A user error on the command line: printed as `vital: error: ...`, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    """The full parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="vital",
        description="VITAL: latent-space reasoning for medical multimodal LLMs — model, training, index, service.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for ep in sorted(entry_points(group="vital.commands"), key=lambda e: e.name):
        ep.load()(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `vital` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"vital: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vital: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # `python -m vital_core.cli` (how torchrun starts it) runs this file as __main__, whose CLIError is
    # not the one subcommands import and raise: run the imported module so their errors stay clean.
    from vital_core import cli

    sys.exit(cli.main())

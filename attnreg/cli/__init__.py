"""The ``attnreg`` command line. Each subcommand is a module of this package with ``register(subparsers)``.

A command module's ``register`` adds its parser and sets ``func(args) -> int`` as the parser default; the
commands are found by listing this package, so adding one touches no other file.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    """The parser with every command module of this package registered, in name order."""
    parser = argparse.ArgumentParser(prog="attnreg", description="A registry of sparse attention patterns.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its return value is the exit status."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

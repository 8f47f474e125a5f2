"""The ``attnreg`` command line. Each subcommand is a module of this package with ``register(subparsers)``.

A command module's ``register`` adds its parser and sets ``func(args) -> int`` as the parser default; the
commands are found by listing this package, so adding one touches no other file.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import platform
import sys
from collections.abc import Sequence

import torch

import attnreg

#: The exit status after the reader of stdout went away (``attnreg list | head -1``): what a shell reports for a
#: program killed by SIGPIPE (128 + 13), so ``set -o pipefail`` scripts see the same as with ``cat`` or ``git log``.
BROKEN_PIPE_STATUS = 141


def version_text() -> str:
    """``attnreg X.Y.Z (torch ..., Python ...)``: argparse's ``PROG VERSION`` first, then what a bug report needs."""
    return f"attnreg {attnreg.__version__} (torch {torch.__version__}, Python {platform.python_version()})"


def build_parser() -> argparse.ArgumentParser:
    """The parser with every command module of this package registered, in name order."""
    parser = argparse.ArgumentParser(prog="attnreg", description="A registry of sparse attention patterns.")
    parser.add_argument("--version", action="version", version=version_text())
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its return value is the exit status.

    A closed stdout (the output piped into ``head``) ends the command quietly with :data:`BROKEN_PIPE_STATUS`, as in
    Python's "Note on SIGPIPE": files a command writes (``--png``, ``--json``) are written before its text.
    """
    try:
        try:
            args = build_parser().parse_args(argv)
            return int(args.func(args) or 0)
        finally:
            sys.stdout.flush()  # inside the try: a reader gone is found here, not at interpreter exit
    except BrokenPipeError:
        # Python flushes stdout again at exit; pointing it at devnull keeps that flush from failing too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return BROKEN_PIPE_STATUS


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

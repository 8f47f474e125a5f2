"""``attnreg show NAME``: draw a registered pattern for one example with padding and global tokens.

The pattern's parameters are ``--kebab-case`` options read from its factory, so the command line for a pattern
only exists once its name is known: the options after NAME are parsed by a parser built for that pattern.
"""

from __future__ import annotations

import argparse
import sys

import torch

from attnreg.cli._outputs import write_files
from attnreg.cli._params import (
    add_named_command,
    add_pattern_options,
    call_text,
    command_help,
    pattern_from_args,
    plain_text,
)
from attnreg.registry import ConflictError, PluginError, UnknownNameError, get_registry
from attnreg.validation import PatternError, require, require_int

USAGE = "attnreg show NAME [--length N] [--pad P] [--globals I,J] [--png FILE] [--PATTERN-PARAMETER VALUE ...]"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``show`` command."""
    add_named_command(
        subparsers,
        "show",
        run=run,
        help="draw a pattern for one example (text, or --png FILE)",
        description="Draw pattern NAME for one example. `attnreg show NAME --help` lists its parameters.",
        usage=USAGE,
        name_help="a registered pattern (see `attnreg list`)",
        options_help="drawing options and the pattern's parameters",
    )


def pattern_parser(name: str) -> argparse.ArgumentParser:
    """The parser for ``show NAME``'s options: length, padding, global tokens, PNG, and the pattern's parameters."""
    description = plain_text(get_registry().pattern_entry(name).description)
    parser = argparse.ArgumentParser(
        prog=f"attnreg show {name}", description=f"Draw pattern {name!r}{f': {description}' if description else '.'}"
    )
    parser.add_argument("--length", type=int, default=32, help="sequence length (default: 32)")
    parser.add_argument("--pad", type=int, default=0, help="padded positions at the end (default: 0)")
    parser.add_argument(
        "--globals",
        type=_positions,
        default=(),
        help="comma-separated positions of selected global tokens, e.g. 0,5 (patterns with selected globals)",
    )
    parser.add_argument("--png", metavar="FILE", help="also draw the pattern as a picture into FILE (matplotlib)")
    add_pattern_options(parser, name)
    return parser


def _positions(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positions such as 0,5, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    """Draw the pattern (the picture first: see :mod:`attnreg.cli._outputs`); 2 on a usage error (unknown name, bad
    parameter), 1 if the picture cannot be drawn."""
    status = command_help(args)
    if status is not None:
        return status
    try:
        options = pattern_parser(args.name).parse_args(args.options)
        pattern = pattern_from_args(args.name, options)
        attention_mask, global_mask = _masks(options)
        layout = pattern.materialize(options.length, attention_mask=attention_mask, global_mask=global_mask)
    except (UnknownNameError, ConflictError, PatternError, PluginError, TypeError) as error:
        print(f"attnreg show: error: {error}", file=sys.stderr)
        return 2

    from attnreg.render import render_png, render_text

    title = f"{call_text(args.name, options)}\n{_example_text(options)}"
    writers = {"picture": lambda: render_png(layout, options.png, title=title)} if options.png else {}
    written = write_files("show", writers)
    num_globals = len(options.globals) if pattern.selected_globals is not None else 0
    cost = pattern.cost(options.length, num_globals=num_globals)
    allowed = int(layout.allowed[0].sum())
    print(f"{args.name}: {pattern!r}")
    print(f"{_example_text(options)}, {layout.count} aggregated keys")
    print()
    print(render_text(layout))
    print()
    print(
        f"this example: {allowed} allowed pairs; cost at length {options.length} without padding"
        f"{f' ({num_globals} global tokens at the start)' if num_globals else ''}: {cost.allowed_pairs} pairs, "
        f"density {cost.density:.3f}, {cost.flops:,} FLOPs per head at head_dim 64"
    )
    return written.report()


def _example_text(options: argparse.Namespace) -> str:
    """``length 32, 2 padded, global tokens [0, 5]``: the example drawn."""
    return f"length {options.length}, {options.pad} padded, global tokens {list(options.globals) or 'none'}"


def _masks(options: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The ``(1, length)`` attention mask (``--pad`` positions at the end are padding) and global mask."""
    length = options.length
    require_int("--length", length, minimum=1)
    require(0 <= options.pad <= length, "--pad", options.pad, f"expected 0 to --length ({length})")
    bad = [p for p in options.globals if not 0 <= p < length]
    require(not bad, "--globals", ",".join(map(str, options.globals)), f"expected positions in [0, {length})")
    attention_mask = torch.arange(length)[None, :] < length - options.pad
    if not options.globals:
        return attention_mask, None
    global_mask = torch.zeros(1, length, dtype=torch.bool)
    global_mask[0, list(options.globals)] = True
    return attention_mask, global_mask

"""``attnreg check [NAME ...]``: run the conformance suite and print a per-pattern × per-engine table.

Exits 1 when any check fails, after the table and a readable account of each failure; 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``check`` command."""
    parser = subparsers.add_parser(
        "check",
        help="run the conformance suite on registered patterns",
        description="Check registered patterns on every engine that accepts them: outputs and gradients against "
        "the dense reference, padding, half precision, locality, batch independence, determinism, linear memory, "
        "spec round trips and bad parameters.",
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="patterns to check (default: every registered one)")
    parser.add_argument("--engines", nargs="+", metavar="ENGINE", help="engines to check (default: all registered)")
    parser.add_argument("--quick", action="store_true", help="fewer lengths and cases (for CI)")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a pattern parameter (VALUE read as JSON, else as a string); repeatable",
    )
    parser.add_argument("--checks", nargs="+", metavar="CHECK", help="only these checks (see --list-checks)")
    parser.add_argument("--list-checks", action="store_true", help="list the checks and exit")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        metavar="N",
        help="torch CPU threads (default 1: the suite's tensors are small, more threads mostly add overhead)",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="also say why each skipped check was skipped")
    parser.set_defaults(func=run)


def parse_params(items: list[str]) -> dict[str, Any]:
    """``["a=3", "b=true"]`` -> ``{"a": 3, "b": True}``; a value that is not JSON stays a string."""
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"attnreg check: --param {item!r} is not allowed: expected KEY=VALUE")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def run(args: argparse.Namespace) -> int:
    """Run the suite as the arguments say; print the table and the failures; 1 if anything failed."""
    from attnreg.testing import ENGINE_CHECKS, SPEC_CHECKS, run_conformance

    if args.list_checks:
        for name, check in {**SPEC_CHECKS, **ENGINE_CHECKS}.items():
            print(f"{name:20} {(check.__doc__ or '').splitlines()[0]}")
        return 0
    import torch

    from attnreg import PatternError, UnknownNameError

    if args.threads < 1:
        print(f"attnreg check: --threads {args.threads} is not allowed: expected an int >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    try:
        report = run_conformance(
            args.names or None,
            params=parse_params(args.param),
            engines=args.engines,
            quick=args.quick,
            device=args.device,
            checks=args.checks,
            progress=lambda name: print(f"checking {name} ...", file=sys.stderr, flush=True),
        )
    except (PatternError, UnknownNameError) as error:
        print(f"attnreg check: {error}", file=sys.stderr)
        return 2
    print(report.format(skipped=args.verbose))
    print(f"({time.perf_counter() - started:.1f} s)")
    return 0 if report.ok else 1

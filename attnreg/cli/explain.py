"""``attnreg explain NAME``: which engine the dispatcher would pick for a call, and why every other one would not.

The call is described, not run: its tensors are zero-cost expanded views (or ``meta`` tensors standing in for a device
this machine lacks), so ``--length 1000000`` explains as fast as ``--length 16``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import torch

from attnreg._validation import PatternError, require, require_int
from attnreg.cli._params import DTYPES, add_named_command, add_pattern_options, command_help, pattern_from_args
from attnreg.execution import AttentionCall, make_call
from attnreg.execution.call import as_keywords, part_tensor_shapes
from attnreg.execution.dispatch import Verdict, judge
from attnreg.pattern.spec import Pattern
from attnreg.registry import ConflictError, PluginError, UnknownNameError, get_registry

USAGE = (
    "attnreg explain NAME [--length N] [--batch B] [--num-heads H] [--head-dim D] [--device D] [--dtype T] [--grad] "
    "[--globals K] [--pad P] [--PATTERN-PARAMETER VALUE ...]"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``explain`` command."""
    add_named_command(
        subparsers,
        "explain",
        run=run,
        help="which engine would run a pattern, and why the others would not",
        description="Explain the dispatcher's choice for pattern NAME (`attnreg explain NAME --help`: its options).",
        usage=USAGE,
        name_help="a registered pattern (see `attnreg list`)",
        options_help="call options and the pattern's parameters",
    )


class OldSpelling(argparse.Action):
    """An option under its old name (``--heads`` for ``--num-heads``): it still sets the value, for one release, and
    says on stderr what to write instead."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        new = "--" + self.dest.replace("_", "-")
        print(f"attnreg: {option_string} is renamed {new} ({option_string} will stop working)", file=sys.stderr)
        setattr(namespace, self.dest, values)


def call_options(parser: argparse.ArgumentParser) -> None:
    """The options that describe one call: sizes, device, dtype, gradients, global tokens, padding."""
    parser.add_argument("--length", type=int, default=4096, help="sequence length (default: 4096)")
    parser.add_argument("--batch", type=int, default=1, help="batch size (default: 1)")
    parser.add_argument("--num-heads", type=int, default=8, help="attention heads (default: 8)")
    parser.add_argument("--heads", type=int, dest="num_heads", action=OldSpelling, help=argparse.SUPPRESS)
    parser.add_argument("--head-dim", type=int, default=64, help="size of each head (default: 64)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="(default: float32)")
    parser.add_argument("--grad", action="store_true", help="the call needs gradients (training)")
    parser.add_argument("--globals", type=int, default=0, help="selected global tokens per example (default: 0)")
    parser.add_argument("--pad", type=int, default=0, help="padded positions at the end of each example (default: 0)")


def pattern_parser(name: str) -> argparse.ArgumentParser:
    """The parser for ``explain NAME``'s options: the call's description and the pattern's parameters."""
    parser = argparse.ArgumentParser(prog=f"attnreg explain {name}", description=f"Explain pattern {name!r}.")
    call_options(parser)
    add_pattern_options(parser, name)
    return parser


@dataclass(frozen=True)
class _AssumedDeviceCall(AttentionCall):
    """A call whose tensors are ``meta`` stand-ins for a device this machine does not have."""

    assumed_device: torch.device | None = None

    @property
    def device(self) -> torch.device:
        return self.assumed_device or self.q.device


def describe_call(pattern: Pattern, options: argparse.Namespace) -> tuple[AttentionCall, bool]:
    """A call matching ``options`` without allocating its tensors; True when the device is only assumed."""
    n, batch = options.length, options.batch
    for name in ("length", "batch", "num_heads", "head_dim"):
        value = getattr(options, name)
        require_int(f"--{name.replace('_', '-')}", value, minimum=1)
    require(0 <= options.pad < n, "--pad", options.pad, f"expected 0 to --length - 1 ({n - 1})")
    require(0 <= options.globals <= n - options.pad, "--globals", options.globals, "expected 0 to the real length")
    try:
        device = torch.device(options.device)
    except RuntimeError:
        raise PatternError(f"--device={options.device!r} is not allowed: expected cpu, cuda, cuda:N, ...") from None
    assumed = device.type == "cuda" and not torch.cuda.is_available()
    place = torch.device("meta") if assumed else device
    dtype = DTYPES[options.dtype]

    def tensor(*shape: int) -> torch.Tensor:
        return torch.zeros((), device=place, dtype=dtype, requires_grad=options.grad).expand(*shape)

    shape = (batch, options.num_heads, n, options.head_dim)
    inputs: dict = {}
    if options.pad:
        inputs["attention_mask"] = (torch.arange(n, device=place) < n - options.pad).expand(batch, n)
    if options.globals:
        require(pattern.selected_globals is not None, "--globals", options.globals, "pattern has no selected globals")
        inputs["global_mask"] = (torch.arange(n, device=place) < options.globals).expand(batch, n)
    parts = part_tensor_shapes(
        pattern,
        batch=batch,
        num_heads=options.num_heads,
        length=n,
        head_dim=options.head_dim,
        global_projections=bool(options.globals),
    )
    inputs.update(as_keywords({name: tensor(*part_shape) for name, part_shape in parts.items()}))
    call = make_call(tensor(*shape), tensor(*shape), tensor(*shape), pattern, **inputs)
    if assumed:
        fields = {name: getattr(call, name) for name in call.__dataclass_fields__}
        call = _AssumedDeviceCall(**fields, assumed_device=device)
    return call, assumed


def format_verdicts(verdicts: list[Verdict]) -> list[str]:
    """One line per engine: the chosen one first, then the supported ones by cost, then the refusals and why."""
    width = max(len(v.engine.name) for v in verdicts)
    lines = []
    for index, verdict in enumerate(verdicts):
        name = verdict.engine.name.ljust(width)
        if verdict.supported:
            what = "runs (cheapest supported)" if index == 0 else "supported, but estimated slower"
            lines.append(f"  {'->' if index == 0 else '  '} {name}  ~{_seconds(verdict.cost)}  {what}")
        else:
            lines.append(f"     {name}  cannot: {'; '.join(verdict.reasons)}")
    return lines


def _seconds(cost: float | None) -> str:
    if cost is None:
        return "-"
    return f"{cost * 1e3:.3g} ms" if cost < 1 else f"{cost:.3g} s"


def run(args: argparse.Namespace) -> int:
    """Print the dispatcher's verdicts; 2 on a usage error (unknown name, bad option or parameter)."""
    status = command_help(args)
    if status is not None:
        return status
    try:
        options = pattern_parser(args.name).parse_args(args.options)
        pattern = pattern_from_args(args.name, options)
        call, assumed = describe_call(pattern, options)
        verdicts = judge(call, get_registry().engines())
    except (UnknownNameError, ConflictError, PatternError, PluginError, TypeError, argparse.ArgumentError) as error:
        print(f"attnreg explain: error: {error}", file=sys.stderr)
        return 2
    print(f"{args.name}: {pattern!r}")
    print(
        f"call: batch {call.batch}, {call.num_heads} heads, length {call.length}, head_dim {call.head_dim}, "
        f"{options.dtype} on {call.device}{' (assumed: not available here)' if assumed else ''}, "
        f"{'forward + backward' if call.requires_grad else 'forward only'}, {options.globals} global tokens, "
        f"{options.pad} padded, {call.count} aggregated keys"
    )
    print("engines (estimated time of this call):")
    print("\n".join(format_verdicts(verdicts)))
    if not verdicts or not verdicts[0].supported:
        print("no engine can run this call")
        return 1
    return 0

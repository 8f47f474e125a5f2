"""How much faster than transformers' layer any attention kernel could make it: the layer against its projections alone.

Usage (CPU):

    python benchmarks/projection_floor.py [--only longt5-local,longt5-tglobal,longformer] [--lengths 16384,32768]
                                          [--grad] [--repeats 3]

A layer's q/k/v/o projections (every ``nn.Linear`` in transformers' layer, on the full hidden states) cost the same
whatever computes the attention, so ``transformers' layer / projections alone`` bounds the speed-up of a layer that
keeps transformers' projections. Each pair is timed alternately in one run (median of repeats), as the targets are.
(It slightly overstates Longformer's floor: transformers projects ``query_global`` on the global rows only.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable

import torch
from harness import alternate
from torch import nn

from attnreg.bench.cases import TRANSFORMERS
from attnreg.registry import get_registry


def _hidden(kwargs: dict) -> torch.Tensor:
    """The hidden states a layer case is called with (LongT5 and Longformer layers take ``hidden_states``)."""
    return kwargs["hidden_states"]


def _runs(name: str, length: int, grad: bool) -> tuple[Callable[[], None], Callable[[], None]]:
    """``(layer, projections)``: one call each of transformers' layer and of its linear layers alone."""
    entry = get_registry().benchmarks[name]
    module, kwargs = entry.make_cases(length, batch=1, device="cpu", dtype=torch.float32)[TRANSFORMERS]
    hidden = _hidden(kwargs).detach().requires_grad_(grad)
    kwargs = {**kwargs, "hidden_states": hidden}
    linears = [sub for sub in module.modules() if isinstance(sub, nn.Linear)]

    def finish(outputs: list[torch.Tensor]) -> None:
        if grad:
            sum(out.sum() for out in outputs).backward()

    def layer() -> None:
        with torch.set_grad_enabled(grad):
            finish([module(**kwargs)[0]])

    def projections() -> None:
        with torch.set_grad_enabled(grad):
            finish([linear(hidden) for linear in linears])

    return layer, projections


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="longt5-local,longt5-tglobal,longformer")
    parser.add_argument("--lengths", default="16384,32768")
    parser.add_argument("--grad", action="store_true", help="forward + backward")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print("| layer | mode | length | transformers' layer ms | its projections alone ms | largest possible speed-up |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in args.only.split(","):
        for length in (int(part) for part in args.lengths.split(",")):
            layer, projections = _runs(name, length, args.grad)
            times = alternate({"layer": layer, "projections": projections}, torch.device("cpu"), repeats=args.repeats)
            whole, floor = (statistics.median(times[label]) for label in ("layer", "projections"))
            mode = "fwd+bwd" if args.grad else "forward"
            print(f"| {name} | {mode} | {length} | {whole * 1e3:,.0f} | {floor * 1e3:,.0f} | {whole / floor:.2f}x |")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

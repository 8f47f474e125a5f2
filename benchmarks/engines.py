"""Every registered layer benchmark across the engines at long lengths, side by side, with the targets checked.

Usage (CPU, takes long at 32k; the defaults are the targets' lengths):

    python benchmarks/engines.py [--lengths 4096,16384,32768] [--grad] [--only longt5-local,longformer]
                                 [--engines blocked,dense-sdpa,reference] [--repeats 3] [--device cpu] [--out DIR]

For each benchmark it prints the table of ``attnreg bench`` (transformers' layer, attnreg's layer on every engine,
dense ones skipped where they would not fit), draws ``DIR/NAME-forward.png`` (and ``-train.png`` with ``--grad``), and
ends with the targets: the fastest linear engine against transformers at each target's length, its memory against
transformers' at 16k, and time/memory growth from 4k to 32k.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from attnreg.bench.cases import TRANSFORMERS
from attnreg.bench.plot import plot_result
from attnreg.bench.runner import BenchResult, Measurement, run_benchmark
from attnreg.bench.table import format_table
from attnreg.registry import get_registry


@dataclass(frozen=True)
class Target:
    """At ``length``, the fast engine must beat transformers' layer by ``speedup`` (forward, or forward + backward)."""

    benchmark: str
    length: int
    grad: bool
    speedup: float


TARGETS = [
    Target("longt5-local", 16384, False, 2.4),
    Target("longt5-local", 32768, False, 4.5),
    Target("longt5-tglobal", 16384, False, 9.0),
    Target("longformer-noglobal", 16384, False, 3.2),
    Target("longformer", 16384, False, 2.8),
    Target("longt5-local", 16384, True, 1.8),
    Target("longt5-tglobal", 16384, True, 5.0),
    Target("longformer", 16384, True, 4.5),
]
MEMORY_LENGTH, MEMORY_SHARE = 16384, 0.5
GROWTH_FROM, GROWTH_TO, GROWTH_LIMIT = 4096, 32768, 9.0


def fastest(result: BenchResult, length: int) -> Measurement | None:
    """The quickest measured engine at ``length`` that is not a dense one (nor transformers)."""
    quadratic = {engine.name for engine in get_registry().engines() if engine.quadratic_memory}
    found = [result.get(label, length) for label in result.labels() if label not in {*quadratic, TRANSFORMERS}]
    found = [m for m in found if m is not None and m.seconds is not None]
    return min(found, key=lambda m: m.seconds, default=None)


def target_lines(results: dict[tuple[str, bool], BenchResult]) -> list[str]:
    """A markdown table of every target whose run is present: met, or by how much it falls short."""
    lines = [
        "| layer | mode | length | transformers ms | fastest engine | ms | speed-up | target | met |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for target in TARGETS:
        result = results.get((target.benchmark, target.grad))
        if result is None or target.length not in result.lengths():
            continue
        theirs, ours = result.get(TRANSFORMERS, target.length), fastest(result, target.length)
        mode = "fwd+bwd" if target.grad else "forward"
        if theirs is None or theirs.seconds is None or ours is None:
            lines.append(f"| {target.benchmark} | {mode} | {target.length} | - | - | - | - | {target.speedup}x | n/a |")
            continue
        speedup = theirs.seconds / ours.seconds
        verdict = "yes" if speedup >= target.speedup else f"no ({speedup / target.speedup:.0%} of target)"
        lines.append(
            f"| {target.benchmark} | {mode} | {target.length} | {theirs.seconds * 1e3:,.0f} | {ours.label} | "
            f"{ours.seconds * 1e3:,.0f} | {speedup:.2f}x | {target.speedup}x | {verdict} |"
        )
    return lines


def memory_and_growth_lines(results: dict[tuple[str, bool], BenchResult]) -> list[str]:
    """Peak memory against transformers' at 16k (at most half), and 4k -> 32k growth (at most 9x) per benchmark."""
    lines = []
    for (name, grad), result in sorted(results.items()):
        mode = "fwd+bwd" if grad else "forward"
        ours, theirs = fastest(result, MEMORY_LENGTH), result.get(TRANSFORMERS, MEMORY_LENGTH)
        if ours and theirs and theirs.peak_bytes and ours.peak_bytes is not None:
            share = ours.peak_bytes / theirs.peak_bytes
            met = "yes" if share <= MEMORY_SHARE else "no"
            lines.append(f"- {name} {mode}: memory at {MEMORY_LENGTH} = {share:.0%} of transformers' ({met}, <= 50%)")
        low, high = fastest(result, GROWTH_FROM), fastest(result, GROWTH_TO)
        if low and high and low.label == high.label:
            time_ratio = high.seconds / low.seconds
            memory_ratio = high.peak_bytes / max(low.peak_bytes, 1)
            met = "yes" if max(time_ratio, memory_ratio) <= GROWTH_LIMIT else "no"
            lines.append(
                f"- {name} {mode} ({low.label}): {GROWTH_FROM} -> {GROWTH_TO}: time x{time_ratio:.1f}, "
                f"memory x{memory_ratio:.1f} ({met}, <= {GROWTH_LIMIT:g})"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="4096,16384,32768", help="comma-separated lengths")
    parser.add_argument("--grad", action="store_true", help="also time forward + backward")
    parser.add_argument("--only", help="comma-separated benchmark names (default: every registered one)")
    parser.add_argument("--engines", help="comma-separated engines (default: every registered one)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--max-seconds", type=float, default=120.0, help="skip a variant predicted to be slower")
    parser.add_argument("--out", default="benchmarks/results", help="folder for the plots and summary.md")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    lengths = sorted({int(part) for part in args.lengths.split(",") if part.strip()})
    names = sorted(get_registry().benchmarks) if not args.only else args.only.split(",")
    engines = args.engines.split(",") if args.engines else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}", flush=True)
    results: dict[tuple[str, bool], BenchResult] = {}
    sections = []
    for name in names:
        for grad in (False, True) if args.grad else (False,):
            result = run_benchmark(
                name,
                lengths=lengths,
                grad=grad,
                dtype=getattr(torch, args.dtype),
                device=args.device,
                repeats=args.repeats,
                engines=engines,
                max_seconds=args.max_seconds,
            )
            results[(name, grad)] = result
            table = format_table(result)
            print(table + "\n", flush=True)
            sections.append("```\n" + table + "\n```")
            plot_result(result, out / f"{name}-{'train' if grad else 'forward'}.png")
    summary = ["## Targets", "", *target_lines(results), "", *memory_and_growth_lines(results)]
    print("\n".join(summary))
    (out / "summary.md").write_text("\n\n".join(["# attnreg engines benchmark", *sections, "\n".join(summary)]) + "\n")
    print(f"\nwritten: {out / 'summary.md'} and the plots in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

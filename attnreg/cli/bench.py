"""``attnreg bench NAME``: time and peak memory of every engine against transformers and the dense engines, by length.

NAME is a registered layer benchmark (``attnreg list`` shows them; the plugin's layer against transformers' on the
same weights) or any pattern (a bare ``attnreg.attention`` call on random inputs, pattern parameters as options).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from attnreg._validation import PatternError, require, require_int
from attnreg.cli._outputs import write_files
from attnreg.cli._params import DTYPES, add_named_command, add_pattern_options, command_help, pattern_params
from attnreg.registry import ConflictError, PluginError, UnknownNameError, get_registry

USAGE = (
    "attnreg bench NAME [--lengths 512,1024,2048] [--grad] [--batch 1] [--dtype float32] [--device cpu] "
    "[--repeats 3] [--engines a,b] [--threads N] [--plot FILE.png] [--json FILE] [--csv FILE] [--bare] "
    "[--PATTERN-PARAMETER VALUE ...]"
)
DEFAULT_LENGTHS = "512,1024,2048"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bench`` command."""
    add_named_command(
        subparsers,
        "bench",
        run=run,
        help="time and peak memory of the engines (and transformers) by sequence length",
        description="Benchmark NAME across engines and lengths (`attnreg bench NAME --help`: its options).",
        usage=USAGE,
        name_help="a layer benchmark or a pattern (see `attnreg list`)",
        options_help="benchmark options (and pattern parameters)",
    )


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated lengths such as 512,1024, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive lengths, got {text!r}")
    return sorted(set(values))


def bench_parser(name: str, *, with_pattern: bool) -> argparse.ArgumentParser:
    """The options of ``bench NAME`` (with the pattern's parameters when NAME is benchmarked as a bare pattern)."""
    parser = argparse.ArgumentParser(prog=f"attnreg bench {name}", description=f"Benchmark {name!r}.")
    parser.add_argument(
        "--lengths",
        type=_int_list,
        default=_int_list(DEFAULT_LENGTHS),
        help=f"comma-separated sequence lengths (default: {DEFAULT_LENGTHS})",
    )
    parser.add_argument("--grad", action="store_true", help="time forward + backward (default: forward only)")
    parser.add_argument("--batch", type=int, default=1, help="batch size (default: 1)")
    timed = sorted(name for name in DTYPES if name != "float64")  # transformers' layers and SDPA's kernels, not fp64
    parser.add_argument("--dtype", choices=timed, default="float32", help="(default: float32)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement, median (default: 3)")
    parser.add_argument("--engines", help="comma-separated engines to compare (default: every registered one)")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=60.0,
        help="skip a variant at a length predicted to take longer than this, repeats included",
    )
    parser.add_argument("--plot", metavar="FILE", help="also draw time and memory against length, log-log, into FILE")
    parser.add_argument("--json", metavar="FILE", help="also write the settings, environment and figures to FILE")
    parser.add_argument("--csv", metavar="FILE", help="also write one row per figure (with the environment) to FILE")
    parser.add_argument("--bare", action="store_true", help="bench the bare attention call even if a layer exists")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    if with_pattern:
        add_pattern_options(parser, name)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, write the files asked for (plot, JSON, CSV), print the table; 2 on a usage error, 1 if a
    file cannot be written."""
    from attnreg.bench.environment import describe, environment
    from attnreg.bench.export import write_csv, write_json
    from attnreg.bench.plot import plot_result
    from attnreg.bench.runner import run_benchmark
    from attnreg.bench.table import format_table

    status = command_help(args)
    if status is not None:
        return status
    try:
        registry = get_registry()
        bare = "--bare" in args.options or args.name not in registry.benchmarks
        options = bench_parser(args.name, with_pattern=bare).parse_args(args.options)
        require_int("--batch", options.batch, minimum=1)
        require_int("--repeats", options.repeats, minimum=1)
        engines = None
        if options.engines:
            engines = [part.strip() for part in options.engines.split(",") if part.strip()]
            known = [engine.name for engine in registry.engines()]
            unknown = [name for name in engines if name not in known]
            require(not unknown, "--engines", options.engines, f"known engines are {', '.join(known)}")
        if options.threads is not None:
            require_int("--threads", options.threads, minimum=1)
            torch.set_num_threads(options.threads)
        if options.device.startswith("cuda"):
            require(torch.cuda.is_available(), "--device", options.device, "CUDA is not available on this machine")
        result = run_benchmark(
            args.name,
            lengths=options.lengths,
            grad=options.grad,
            batch=options.batch,
            dtype=DTYPES[options.dtype],
            device=options.device,
            repeats=options.repeats,
            engines=engines,
            params=pattern_params(options) if bare else None,
            bare=bare,
            max_seconds=options.max_seconds,
            progress=not options.no_progress,
        )
    except (UnknownNameError, ConflictError, PatternError, PluginError, TypeError) as error:
        print(f"attnreg bench: error: {error}", file=sys.stderr)
        return 2
    env = environment(result.device)
    writers: dict[str, Callable[[], Path]] = {}
    if options.plot:
        writers["plot"] = lambda: plot_result(result, options.plot)
    if options.json:
        writers["figures"] = lambda: write_json(result, env, options.json)
    if options.csv:
        writers["rows"] = lambda: write_csv(result, env, options.csv)
    written = write_files("bench", writers)
    print(format_table(result))
    print(f"\nmeasured with {describe(env)}")
    return written.report()

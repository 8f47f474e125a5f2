"""One prepared check for a CUDA machine: every pattern on every engine against the reference, then the timings.

Run from the repository root, in one call (nothing to install: the script puts attnreg and the plugins on the path and
registers the plugins itself when they are not installed; xformers is optional, see benchmarks/README.md):

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py [--quick] [--lengths 4096,16384] [--out DIR]

1. Correctness, on CUDA in float32, bfloat16 and float16: each registered pattern (default parameters) and a few
   synthetic patterns covering every part, with padding and per-example global tokens, at a length that is not a
   block multiple; every engine that supports the call; the output (no grad: xformers merges partial attentions) and
   the output and every gradient (with grad: one call with a trainable bias), against the fp32 reference.
2. The test suite's CUDA-marked tests (``pytest -m cuda``), which skip without CUDA.
3. Timings, median of repeats: xformers against the blocked engine, dense SDPA and transformers' layers, for every
   registered layer benchmark, forward and forward + backward.

Exit status: 0 every check passed; 1 a mismatch or NaN; 2 no CUDA device (the CPU engines are still checked).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bootstrap() -> None:
    """Make attnreg and the repository's plugins importable and registered, installed or not."""
    for path in [ROOT, *sorted(p.parent for p in ROOT.glob("plugins/*/pyproject.toml"))]:
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    import attnreg

    for plugin_dir in sorted(ROOT.glob("plugins/*/attnreg_*/plugin.py")):
        module_name = f"{plugin_dir.parent.name}.plugin"
        name = plugin_dir.parent.name.removeprefix("attnreg_")
        if name in attnreg.get_registry().plugins:
            continue
        try:
            attnreg.register_plugin(importlib.import_module(module_name), name)
        except Exception as error:  # a plugin that cannot load is reported, the others still run
            print(f"plugin {name}: not loaded ({type(error).__name__}: {error})")


bootstrap()

import torch  # noqa: E402

import attnreg  # noqa: E402
from attnreg import AggregatedGlobals, Pattern, RelativePositionBias, SelectedGlobals, Window  # noqa: E402
from attnreg.bench.inputs import leaves, random_inputs  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: Largest error allowed, relative to the largest reference value, per dtype: (output, gradients).
TOLERANCE = {torch.float32: (2e-4, 5e-4), torch.bfloat16: (2e-2, 4e-2), torch.float16: (4e-3, 1e-2)}
BIAS = RelativePositionBias(num_buckets=32, max_distance=128)
SYNTHETIC = {
    "synthetic-local-bias": Pattern(window=Window.symmetric(37), bias=BIAS, scale=1.0),
    "synthetic-tglobal": Pattern(
        window=Window.symmetric(37),
        aggregated_globals=AggregatedGlobals(16),
        bias=BIAS,
        aggregated_bias=BIAS,
        scale=1.0,
    ),
    "synthetic-globals-own": Pattern(window=Window(left=40, right=25), selected_globals=SelectedGlobals(True)),
    "synthetic-causal": Pattern(window=Window.causal(50), bias=RelativePositionBias(32, 128, bidirectional=False)),
}


def patterns() -> dict[str, Pattern]:
    """Every registered pattern with its default parameters, and the synthetic ones."""
    found = {}
    for name in attnreg.list_patterns():
        try:
            found[name] = attnreg.get_pattern(name)
        except Exception as error:
            print(f"pattern {name}: cannot build with defaults ({error})")
    return {**found, **SYNTHETIC}


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach(), expected.detach()
    if not torch.isfinite(actual).all():
        return float("inf")
    scale = expected.abs().max().clamp_min(1e-6)
    return float((actual.float() - expected.float()).abs().max() / scale)


def _split(inputs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    rest = {k: v for k, v in inputs.items() if k not in ("q", "k", "v")}
    return inputs["q"], inputs["k"], inputs["v"], rest


def _as_float32(inputs: dict) -> dict:
    """The same inputs in fp32 (values of the low-precision ones, rounded), fresh leaves for their gradients."""

    def convert(value):
        if isinstance(value, tuple):
            return tuple(convert(item) for item in value)
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.detach().float().requires_grad_(value.requires_grad)
        return value

    return {key: convert(value) for key, value in inputs.items()}


def check_one(pattern: Pattern, engine: str, dtype: torch.dtype, device: str, length: int) -> tuple[float, float]:
    """Largest relative errors (output without grad, worst of output and gradients with grad) of ``engine``."""
    inputs = random_inputs(
        pattern,
        length,
        batch=2,
        heads=4,
        head_dim=64,
        dtype=dtype,
        device=device,
        padding=37,
        num_globals=3,
        requires_grad=True,
        seed=1,
    )
    reference_inputs = _as_float32(inputs)
    q, k, v, rest = _split(reference_inputs)
    expected = attnreg.attention(q, k, v, pattern, backend="reference", **rest)
    weights = torch.randn(expected.shape, generator=torch.Generator().manual_seed(2)).to(device)
    (expected * weights).sum().backward()
    expected_grads = [t.grad for t in leaves(reference_inputs)]

    q, k, v, rest = _split(inputs)
    with torch.no_grad():
        forward_error = _relative_error(attnreg.attention(q, k, v, pattern, backend=engine, **rest), expected)
    out = attnreg.attention(q, k, v, pattern, backend=engine, **rest)
    (out.float() * weights).sum().backward()
    errors = [_relative_error(out, expected)]
    errors += [_relative_error(t.grad, want) for t, want in zip(leaves(inputs), expected_grads, strict=True)]
    return forward_error, max(errors)


def correctness(device: str, dtypes: list[torch.dtype], length: int) -> bool:
    """Check every pattern x engine x dtype; print one line per pattern and engine; True when all passed."""
    ok = True
    engines = [e.name for e in attnreg.get_registry().engines() if e.name != "reference"]
    print(f"\n== correctness on {device}, length {length} (batch 2, 4 heads, head_dim 64, padding, globals) ==")
    print("pattern / engine: per dtype, max relative error of the output (no grad) | output+grads (grad)")
    for name, pattern in patterns().items():
        for engine in engines:
            cells = []
            for dtype in dtypes:
                label = str(dtype).removeprefix("torch.")
                try:
                    forward_error, grad_error = check_one(pattern, engine, dtype, device, length)
                except attnreg.BackendUnavailableError as error:
                    cells.append(f"{label}: n/a ({str(error).split('this call: ', 1)[-1]})")
                    continue
                except Exception as error:
                    ok = False
                    cells.append(f"{label}: ERROR {type(error).__name__}: {str(error)[:120]}")
                    traceback.print_exc(limit=3)
                    continue
                limit_out, limit_grad = TOLERANCE[dtype]
                passed = forward_error <= limit_out and grad_error <= limit_grad
                ok &= passed
                cells.append(f"{label}: {forward_error:.1e} | {grad_error:.1e} {'ok' if passed else 'MISMATCH'}")
            print(f"  {name} / {engine}: " + "; ".join(cells), flush=True)
    return ok


def cuda_tests() -> bool:
    """Run the suite's CUDA-marked tests in a subprocess (repository and plugins on its path); True if they passed."""
    import os
    import subprocess

    paths = [str(ROOT), *[str(p.parent) for p in sorted(ROOT.glob("plugins/*/pyproject.toml"))]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests"]
    print("\n== " + " ".join(command[1:]) + " ==", flush=True)
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    print("\n".join(done.stdout.strip().splitlines()[-15:]), flush=True)
    return done.returncode in (0, 5)  # 5: nothing collected


def timings(device: str, lengths: list[int], dtype: torch.dtype, repeats: int, out: Path | None) -> None:
    """Every layer benchmark: xformers, blocked, dense SDPA and transformers, forward and forward + backward."""
    from attnreg.bench.plot import plot_result
    from attnreg.bench.runner import run_benchmark
    from attnreg.bench.table import format_table

    engines = [e for e in ("xformers", "blocked", "dense-sdpa") if e in attnreg.get_registry().engine_table]
    for name in sorted(attnreg.get_registry().benchmarks):
        for grad in (False, True):
            print(f"\n== timing {name} {'forward + backward' if grad else 'forward'} ==", flush=True)
            try:
                result = run_benchmark(
                    name,
                    lengths=lengths,
                    grad=grad,
                    dtype=dtype,
                    device=device,
                    repeats=repeats,
                    engines=engines,
                    max_seconds=60.0,
                    progress=False,
                )
            except Exception as error:
                print(f"  failed: {type(error).__name__}: {error}")
                continue
            print(format_table(result), flush=True)
            if out is not None:
                try:
                    plot_result(result, out / f"gpu-{name}-{'train' if grad else 'forward'}.png")
                except ImportError as error:
                    print(f"  no plot: {error}")


def environment() -> bool:
    """Print what this machine has; True when CUDA is usable."""
    from attnreg.execution.xformers_engine import installed

    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, attnreg {attnreg.__version__}")
    cuda = torch.cuda.is_available()
    if cuda:
        props = torch.cuda.get_device_properties(0)
        print(f"CUDA {torch.version.cuda}: {props.name}, {props.total_memory / 2**30:.0f} GiB")
    else:
        print("CUDA: not available -- this check needs a CUDA device; only the CPU engines are checked here")
    if installed():
        try:
            import xformers

            print(f"xformers {xformers.__version__}")
        except Exception as error:
            print(f"xformers: import failed ({type(error).__name__}: {error})")
    else:
        print("xformers: not installed (its engine reports n/a; see benchmarks/README.md to carry a wheel)")
    print(f"patterns: {', '.join(attnreg.list_patterns())}; engines: {', '.join(attnreg.get_registry().engine_table)}")
    print(f"layer benchmarks: {', '.join(sorted(attnreg.get_registry().benchmarks)) or '(none)'}")
    return cuda


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one dtype per check and one timing length")
    parser.add_argument("--length", type=int, default=601, help="length of the correctness checks (default 601)")
    parser.add_argument("--lengths", default="4096,16384", help="timing lengths (default 4096,16384)")
    parser.add_argument("--timing-dtype", choices=sorted(DTYPES), default="bfloat16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-timings", action="store_true")
    parser.add_argument("--no-tests", action="store_true", help="skip the suite's CUDA-marked tests")
    parser.add_argument("--out", type=Path, help="folder for the timing plots")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    cuda = environment()
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if cuda else "cpu"
    dtypes = [torch.float32] if args.quick and not cuda else list(DTYPES.values())
    if not cuda:
        dtypes = [torch.float32, torch.bfloat16][: 1 if args.quick else 2]
    ok = correctness(device, dtypes, args.length if cuda else min(args.length, 131))
    if cuda and not args.no_tests:
        ok &= cuda_tests()
    if cuda and not args.no_timings:
        lengths = [int(part) for part in args.lengths.split(",") if part.strip()]
        timings(device, lengths[:1] if args.quick else lengths, DTYPES[args.timing_dtype], args.repeats, args.out)
    verdict = "all checks passed" if ok else "MISMATCH: see the lines marked MISMATCH or ERROR above"
    print(f"\n{verdict} ({time.perf_counter() - start:.0f} s)")
    if not ok:
        return 1
    return 0 if cuda else 2


if __name__ == "__main__":
    sys.exit(main())

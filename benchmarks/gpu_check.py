"""One prepared check for one CUDA GPU: pre-flight, the fast engines against the reference, timings; about 8 minutes.

Run from the repository root in one call (nothing to install: attnreg and the plugins are put on the path and
registered when they are not installed; xformers is used only if it loads):

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out "$OUT" [--budget 450] [--lengths 16384,65536]

1. Pre-flight: torch, CUDA, the device and its compute capability, triton, FlexAttention, and whether xformers
   loads (and why not).
2. Correctness: the blocked, flex and xformers engines against the fp32 reference for LongT5 local and TGlobal,
   Longformer with global tokens and the gallery patterns, in bfloat16 and float16, forward (no grad) and forward +
   backward (output and every gradient), at a length off every block multiple, with padding and different global
   tokens per example. A NaN or Inf anywhere is a failure.
3. Timings in bfloat16 at each length: every engine on the bare attention of the anchor patterns (12 heads of 64),
   with effective TFLOP/s on the allowed pairs (4 * heads * head_dim * pairs a forward; 3.5 times that for forward +
   backward), and the registered layer benchmarks against transformers' layers and dense SDPA.
4. A sliding-window Mistral with ``attn_implementation="attnreg"`` against sdpa: prefill at each length, one cached
   decode step (``benchmarks/decoder.py``).
5. The suite's CUDA-marked tests (``pytest -m cuda``), with what time is left.
6. ``gpu-check.json`` (every figure) and ``gpu-check.md`` (the tables and the issue's targets) in ``--out``.

Work stops at ``--budget`` seconds: what did not run is listed as skipped. Exit status: 0 every check passed; 1 a
mismatch, NaN or error; 2 no CUDA device (the CPU parts ran, at small sizes).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

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
from attnreg.bench.cases import bare_variants  # noqa: E402
from attnreg.bench.inputs import leaves, random_inputs  # noqa: E402
from attnreg.bench.measure import cuda_peak_bytes, median_seconds  # noqa: E402

FAST_ENGINES = ("blocked", "flex", "xformers")
#: The anchors and the gallery, with parameters that make a 601-token check sparse.
CHECKED = {
    "longt5-local": {"local_radius": 127},
    "longt5-tglobal": {"local_radius": 127, "global_block_size": 16},
    "longformer": {"attention_window": 256},
    "causal": {},
    "sliding-window": {"left": 128, "right": 0},
    "streaming-llm": {"window": 128, "sinks": 4},
    "dilated-window": {"radius": 64, "dilation": 2},
    "prefix-lm": {"prefix": 96},
    "bigbird": {"block": 64, "random_blocks": 2},
}
#: The bare timings' patterns, at base-model widths: (pattern, parameters, global tokens).
TIMED = {
    "longformer": ("longformer", {"attention_window": 512}, 1),
    "longt5-local": ("longt5-local", {"local_radius": 127}, 0),
    "longt5-tglobal": ("longt5-tglobal", {"local_radius": 127, "global_block_size": 16}, 0),
    "sliding-window": ("sliding-window", {"left": 4096, "right": 0}, 0),
}
#: Largest error allowed relative to the largest reference value: (output, gradients).
TOLERANCE = {torch.float32: (2e-4, 5e-4), torch.bfloat16: (2e-2, 4e-2), torch.float16: (4e-3, 1e-2)}
#: Issue 13's targets on one H200.
TFLOPS_TARGETS = {"longformer": 200.0, "longt5-local": 120.0, "longt5-tglobal": 120.0}
LAYER_SPEEDUP_TARGET = 10.0


class Budget:
    """Seconds left for the whole check; parts that would start after it ends are recorded as skipped."""

    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


def preflight() -> dict[str, Any]:
    """What this machine has: versions, the device, FlexAttention, and whether xformers loads (and why not)."""
    found: dict[str, Any] = {"python": sys.version.split()[0], "torch": torch.__version__}
    found["attnreg"] = attnreg.__version__
    found["cuda"] = torch.version.cuda if torch.cuda.is_available() else None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        found["device"] = props.name
        found["capability"] = f"{props.major}.{props.minor}"
        found["memory_gib"] = round(props.total_memory / 2**30, 1)
    for module in ("triton", "transformers"):
        try:
            found[module] = importlib.import_module(module).__version__
        except Exception as error:
            found[module] = f"not available ({type(error).__name__}: {error})"
    try:
        importlib.import_module("torch.nn.attention.flex_attention")
        found["flex_attention"] = "available"
    except Exception as error:
        found["flex_attention"] = f"not available ({type(error).__name__}: {error})"
    found["xformers"] = xformers_status()
    found["engines"] = [engine.name for engine in attnreg.get_registry().engines()]
    return found


def xformers_status() -> str:
    """Whether xformers imports and its compiled operators loaded, in words."""
    try:
        xformers = importlib.import_module("xformers")
    except Exception as error:
        return f"not usable: {type(error).__name__}: {error}"
    if not getattr(xformers, "_has_cpp_library", False):
        return f"{xformers.__version__} imports, but its C++/CUDA operators did not load (built for another torch?)"
    return f"{xformers.__version__}, operators loaded"


def _relative_error(actual: torch.Tensor | None, expected: torch.Tensor) -> float:
    if actual is None or not torch.isfinite(actual).all():
        return float("inf")
    scale = expected.detach().abs().max().clamp_min(1e-6)
    return float((actual.detach().float() - expected.detach().float()).abs().max() / scale)


def _split(inputs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    return inputs["q"], inputs["k"], inputs["v"], {k: v for k, v in inputs.items() if k not in ("q", "k", "v")}


def _as_float32(inputs: dict) -> dict:
    """The same inputs in fp32 (the low-precision values, widened), fresh leaves for their gradients."""

    def convert(value: Any) -> Any:
        if isinstance(value, tuple):
            return tuple(convert(item) for item in value)
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.detach().float().requires_grad_(value.requires_grad)
        return value

    return {key: convert(value) for key, value in inputs.items()}


def check_one(name: str, engine: str, dtype: torch.dtype, device: str, length: int, grad: bool) -> float:
    """The largest relative error of ``engine`` on pattern ``name`` against the fp32 reference: the output alone
    (no grad) or the worst of the output and every gradient (``grad``)."""
    pattern = attnreg.get_pattern(name, **CHECKED[name])
    inputs = random_inputs(
        pattern, length, batch=2, num_heads=4, head_dim=64, dtype=dtype, device=device, padding=37, num_globals=3,
        requires_grad=grad, seed=1,
    )
    reference = _as_float32(inputs)
    q, k, v, rest = _split(reference)
    expected = attnreg.attention(q, k, v, pattern, backend="reference", **rest)
    q, k, v, rest = _split(inputs)
    if not grad:
        with torch.no_grad():
            return _relative_error(attnreg.attention(q, k, v, pattern, backend=engine, **rest), expected)
    weights = torch.randn(expected.shape, generator=torch.Generator().manual_seed(2)).to(device)
    (expected * weights).sum().backward()
    out = attnreg.attention(q, k, v, pattern, backend=engine, **rest)
    (out.float() * weights).sum().backward()
    errors = [_relative_error(out, expected)]
    errors += [_relative_error(t.grad, r.grad) for t, r in zip(leaves(inputs), leaves(reference), strict=True)]
    return max(errors)


def correctness(device: str, dtypes: list[torch.dtype], length: int, budget: Budget, stop_at: float) -> list[dict]:
    """Every checked pattern x fast engine x dtype x (forward, forward + backward), one record each."""
    records = []
    print(f"\n== correctness on {device}, length {length}: batch 2, 4 heads of 64, padding, per-example globals ==")
    for name in CHECKED:
        for engine in FAST_ENGINES:
            for dtype in dtypes:
                for grad in (False, True):
                    record = {"pattern": name, "engine": engine, "dtype": str(dtype).removeprefix("torch."),
                              "mode": "forward+backward" if grad else "forward"}
                    if budget.left() < stop_at:
                        record["status"] = "skipped: out of time"
                    else:
                        record.update(_checked(name, engine, dtype, device, length, grad))
                    records.append(record)
            line = [f"{r['dtype']} {r['mode']}: {r['status']}" for r in records[-2 * len(dtypes):]]
            print(f"  {name} / {engine}: " + "; ".join(line), flush=True)
    return records


def _checked(name: str, engine: str, dtype: torch.dtype, device: str, length: int, grad: bool) -> dict:
    """One check's status and error: ok, MISMATCH, n/a with the engine's reason, or ERROR."""
    try:
        error = check_one(name, engine, dtype, device, length, grad)
    except attnreg.BackendUnavailableError as refusal:
        return {"status": "n/a: " + str(refusal).split("this call: ", 1)[-1][:200]}
    except Exception as failure:
        traceback.print_exc(limit=4)
        return {"status": f"ERROR {type(failure).__name__}: {str(failure)[:200]}"}
    limit = TOLERANCE[dtype][1 if grad else 0]
    return {"status": "ok" if error <= limit else "MISMATCH", "error": error, "limit": limit}


def kernel_timings(device: str, lengths: list[int], budget: Budget, repeats: int) -> list[dict]:
    """Each engine on the bare attention of the timed patterns in bf16: time, peak memory and effective TFLOP/s."""
    records = []
    engines = [*FAST_ENGINES, "dense-sdpa"]
    heads, head_dim = 12, 64
    for length in lengths:
        for label, (name, params, globals_) in TIMED.items():
            pattern = attnreg.get_pattern(name, **params)
            flops = pattern.cost(length, num_globals=globals_, head_dim=head_dim, num_heads=heads).flops
            for grad in (False, True):
                mode = "forward + backward" if grad else "forward"
                print(f"\n== {label} bare attention, {length} tokens, bf16, {mode} ==", flush=True)
                variants = bare_variants(
                    pattern, length, batch=1, device=torch.device(device), dtype=torch.bfloat16, grad=grad,
                    engines=engines, num_heads=heads, head_dim=head_dim,
                )
                for variant in variants:
                    record = {"pattern": label, "length": length, "engine": variant.label,
                              "mode": "forward+backward" if grad else "forward"}
                    record.update(_timed(variant.run, device, budget, repeats, flops * (3.5 if grad else 1.0)))
                    records.append(record)
                    print(f"  {variant.label}: {_describe(record)}", flush=True)
    return records


def _timed(run: Any, device: str, budget: Budget, repeats: int, flops: float) -> dict:
    """Median time, peak memory and TFLOP/s of ``run``, or why there are none."""
    if budget.left() < 20:
        return {"status": "skipped: out of time"}
    try:
        run()  # compiles, builds layouts, warms the caches
        seconds = median_seconds(run, torch.device(device), repeats=repeats, warmup=1)
        peak = cuda_peak_bytes(run, torch.device(device)) if device == "cuda" else None
    except attnreg.BackendUnavailableError as refusal:
        return {"status": "n/a: " + str(refusal).split("this call: ", 1)[-1][:160]}
    except (RuntimeError, MemoryError) as failure:  # out of memory above all
        if device == "cuda":
            torch.cuda.empty_cache()
        return {"status": f"failed: {type(failure).__name__}: {str(failure).splitlines()[0][:160]}"}
    return {"status": "ok", "ms": seconds * 1e3, "peak_mib": None if peak is None else peak / 2**20,
            "tflops": flops / seconds / 1e12}


def _describe(record: dict) -> str:
    if record["status"] != "ok":
        return record["status"]
    peak = "" if record["peak_mib"] is None else f", peak {record['peak_mib']:,.0f} MiB"
    return f"{record['ms']:,.2f} ms, {record['tflops']:.1f} TFLOP/s{peak}"


def layer_timings(device: str, lengths: list[int], budget: Budget, repeats: int) -> list[dict]:
    """The registered layer benchmarks in bf16: transformers' layer against attnreg's on every engine."""
    from attnreg.bench.runner import run_benchmark

    records = []
    for name in sorted(attnreg.get_registry().benchmarks):
        for grad in (False, True):
            if budget.left() < 30:
                records.append({"benchmark": name, "mode": "forward+backward" if grad else "forward",
                                "status": "skipped: out of time"})
                continue
            print(f"\n== layer {name}, bf16, {'forward + backward' if grad else 'forward'} ==", flush=True)
            try:
                result = run_benchmark(
                    name, lengths=lengths, grad=grad, dtype=torch.bfloat16, device=device, repeats=repeats,
                    engines=[*FAST_ENGINES, "dense-sdpa"], max_seconds=min(30.0, budget.left() / 4), progress=False,
                )
            except Exception as failure:
                traceback.print_exc(limit=4)
                records.append({"benchmark": name, "status": f"ERROR {type(failure).__name__}: {failure}"})
                continue
            for m in result.measurements:
                records.append({
                    "benchmark": name, "mode": "forward+backward" if grad else "forward", "length": m.length,
                    "variant": m.label, "status": "ok" if m.seconds is not None else m.note,
                    "ms": None if m.seconds is None else m.seconds * 1e3,
                    "peak_mib": None if m.peak_bytes is None else m.peak_bytes / 2**20,
                })
                print(f"  {m.length} {m.label}: {records[-1]['status']} {records[-1]['ms'] or ''}", flush=True)
    return records


def decoder_timings(device: str, lengths: list[int], budget: Budget) -> dict:
    """A sliding-window Mistral (``benchmarks/decoder.py``) in bf16: prefill on attnreg against sdpa at each length, and
    one cached decode step at the first length, with ``attn_implementation="attnreg"``."""
    if budget.left() < 60:
        return {"status": "skipped: out of time"}
    import tempfile

    import decoder

    args = decoder.parse_args(["--lengths", ",".join(map(str, lengths)), "--context", str(lengths[0]),
                               "--device", device, "--dtype", "bfloat16", "--eager-max", "0", "--repeats", "3"])
    decoder.transformers_bridge.register_all()
    try:
        with tempfile.TemporaryDirectory() as folder:
            model = decoder.make_model(args, Path(folder))
        found: dict[str, Any] = {"status": "ok", "prefill": {}, "context": args.context}
        for length in lengths:
            found["prefill"][length] = decoder.prefill(model, length, args)
        found["decode"] = decoder.decode(model, args)
    except Exception as failure:
        traceback.print_exc(limit=4)
        return {"status": f"ERROR {type(failure).__name__}: {str(failure)[:200]}"}
    found["table"] = decoder.table(found)
    print("\n== decoder LLM (sliding-window Mistral, bf16) ==\n" + found["table"], flush=True)
    return found


def cuda_tests(budget: Budget) -> dict:
    """The suite's CUDA-marked tests (``pytest -m cuda``) in a subprocess stopped at the budget: its output's tail."""
    import os
    import subprocess

    if budget.left() < 60:
        return {"status": "skipped: out of time"}
    paths = [str(ROOT), *[str(p.parent) for p in sorted(ROOT.glob("plugins/*/pyproject.toml"))]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests", "plugins"]
    print("\n== " + " ".join(command[1:]) + " ==", flush=True)
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=budget.left() - 10)
    except subprocess.TimeoutExpired:
        return {"status": "stopped: out of time"}
    tail = "\n".join(done.stdout.strip().splitlines()[-15:])
    print(tail, flush=True)
    return {"status": "ok" if done.returncode in (0, 5) else f"FAILED (exit {done.returncode})", "tail": tail}


def targets(kernels: list[dict], layers: list[dict], lengths: list[int]) -> list[dict]:
    """Issue 13's GPU targets, each with the measured figure and whether it is met."""
    found = []
    at = 16384 if 16384 in lengths else min(lengths)
    for pattern, target in TFLOPS_TARGETS.items():
        best = max(
            (r["tflops"] for r in kernels if r["pattern"] == pattern and r["length"] == at and r["mode"] == "forward"
             and r["engine"] in ("flex", "xformers") and r["status"] == "ok"),
            default=None,
        )
        found.append({"target": f"{pattern} bf16 {at} forward, flex or xformers: TFLOP/s >= {target:g}",
                      "measured": best, "met": best is not None and best >= target})
    for name in sorted({r["benchmark"] for r in layers if "length" in r}):
        for mode in ("forward", "forward+backward"):
            rows = [r for r in layers if r["benchmark"] == name and r["mode"] == mode and r.get("length") == at]
            theirs = next((r["ms"] for r in rows if r["variant"] == "transformers" and r["ms"]), None)
            ours = min((r["ms"] for r in rows if r["variant"] in FAST_ENGINES and r["ms"]), default=None)
            ratio = None if theirs is None or ours is None else theirs / ours
            found.append({"target": f"layer {name} {mode} {at}: >= {LAYER_SPEEDUP_TARGET:g}x transformers",
                          "measured": ratio, "met": ratio is not None and ratio >= LAYER_SPEEDUP_TARGET})
    longest = max(lengths)
    fits = [r for r in kernels if r["length"] == longest and r["mode"] == "forward+backward"
            and r["engine"] in FAST_ENGINES and r["status"] == "ok"]
    found.append({"target": f"{longest} tokens fit and run forward and backward (a fast engine, every timed pattern)",
                  "measured": sorted({r["pattern"] for r in fits}), "met": {r["pattern"] for r in fits} >= set(TIMED)})
    return found


def markdown(report: dict) -> str:
    """The report as markdown: pre-flight, correctness failures and counts, the timing tables, the targets."""
    lines = ["# gpu_check", "", "## Pre-flight", ""]
    lines += [f"- {key}: {value}" for key, value in report["preflight"].items()]
    checks = report["correctness"]
    counts: dict[str, int] = {}
    for record in checks:
        counts[record["status"].split(":")[0]] = counts.get(record["status"].split(":")[0], 0) + 1
    lines += ["", "## Correctness", "", ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())), ""]
    lines += ["| pattern | engine | dtype | mode | status | rel. error |", "| --- | --- | --- | --- | --- | --- |"]
    for r in checks:
        error = f"{r['error']:.1e}" if "error" in r else ""
        lines.append(f"| {r['pattern']} | {r['engine']} | {r['dtype']} | {r['mode']} | {r['status']} | {error} |")
    lines += ["", "## Bare attention, bf16, 12 heads of 64", "",
              "| pattern | length | mode | engine | ms | TFLOP/s | peak MiB | status |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["kernels"]:
        ms, tflops = (f"{r['ms']:,.2f}", f"{r['tflops']:.1f}") if r["status"] == "ok" else ("", "")
        peak = f"{r['peak_mib']:,.0f}" if r.get("peak_mib") is not None else ""
        lines.append(f"| {r['pattern']} | {r['length']} | {r['mode']} | {r['engine']} | {ms} | {tflops} | {peak} | "
                     f"{r['status']} |")
    lines += ["", "## Layers, bf16", "", "| benchmark | mode | length | variant | ms | peak MiB | status |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["layers"]:
        ms = f"{r['ms']:,.2f}" if r.get("ms") else ""
        peak = f"{r['peak_mib']:,.0f}" if r.get("peak_mib") is not None else ""
        lines.append(f"| {r['benchmark']} | {r.get('mode', '')} | {r.get('length', '')} | {r.get('variant', '')} | "
                     f"{ms} | {peak} | {r['status']} |")
    lines += ["", "## Targets", "", "| target | measured | met |", "| --- | --- | --- |"]
    for t in report["targets"]:
        measured = f"{t['measured']:.1f}" if isinstance(t["measured"], float) else t["measured"]
        lines.append(f"| {t['target']} | {measured} | {'yes' if t['met'] else 'no'} |")
    decoder = report["decoder"]
    lines += ["", f"## Decoder LLM (sliding-window Mistral, bf16): {decoder['status']}", "", decoder.get("table", "")]
    tests = report["cuda_tests"]
    lines += ["", f"## pytest -m cuda: {tests['status']}", "", "```", tests.get("tail", ""), "```"]
    lines += ["", f"{report['seconds']:.0f} s in all."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for gpu-check.json and gpu-check.md")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for the whole check (default 450)")
    parser.add_argument("--length", type=int, default=601, help="length of the correctness checks (default 601)")
    parser.add_argument("--lengths", default="16384,65536", help="timing lengths (default 16384,65536)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    start, budget = time.perf_counter(), Budget(args.budget)
    report: dict[str, Any] = {"preflight": preflight()}
    print(json.dumps(report["preflight"], indent=1), flush=True)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtypes = [torch.bfloat16, torch.float16] if cuda else [torch.bfloat16]
    lengths = [int(part) for part in args.lengths.split(",") if part.strip()] if cuda else [1024]
    # correctness first, but leaving about half the budget to the timings
    report["correctness"] = correctness(device, dtypes, args.length if cuda else 131, budget, args.budget / 2)
    report["kernels"] = kernel_timings(device, lengths, budget, args.repeats)
    report["layers"] = layer_timings(device, lengths, budget, args.repeats)
    report["decoder"] = decoder_timings(device, lengths if cuda else [1024], budget)
    report["targets"] = targets(report["kernels"], report["layers"], lengths)
    report["cuda_tests"] = cuda_tests(budget) if cuda else {"status": "skipped: no CUDA"}
    report["seconds"] = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu-check.json").write_text(json.dumps(report, indent=1, default=str))
    (args.out / "gpu-check.md").write_text(markdown(report))
    print("\n" + markdown(report))
    failed = [r for r in report["correctness"] if r["status"].startswith(("MISMATCH", "ERROR"))]
    failed += [report["cuda_tests"]] if report["cuda_tests"]["status"].startswith("FAILED") else []
    print(f"{len(failed)} correctness failures; {report['seconds']:.0f} s; written to {args.out}")
    if failed:
        return 1
    return 0 if cuda else 2


if __name__ == "__main__":
    sys.exit(main())

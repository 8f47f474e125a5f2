"""Issue 12's gallery targets: attnreg's blocked engine against dense SDPA and compiled FlexAttention, side by side.

What it measures (CPU, fp32, batch 1, ``--heads`` × ``--head-dim``, random q/k/v): four gallery patterns,

- ``streaming-llm``: ``streaming-llm(window=512, sinks=4)``;
- ``dilated-window``: ``dilated-window(radius=256, dilation=2)``;
- ``sliding-window-docs``: ``sliding-window(left=511, right=0)`` with ``document_ids`` of 4 equal consecutive documents;
- ``bigbird``: ``bigbird(block=64, window_blocks=1, global_blocks=1, random_blocks=2)``,

each run five ways: attnreg's ``blocked`` engine (``attnreg.attention(prepared, ..., backend="blocked")``, the
pattern prepared once for the batch like Flex's block mask, its layout built in setup) and dense
``scaled_dot_product_attention`` with the materialised bool mask (``pattern.materialize(n, document_ids=...).allowed``,
a ``(1, 1, n, n)`` mask), each forward (under ``torch.no_grad()``) and forward + ``sum().backward()`` (gradients of
q, k, v cleared first); and FlexAttention, forward only (it has no CPU backward): ``torch.compile(flex_attention)``
with a ``BlockMask`` from ``create_block_mask`` over a ``mask_mod`` written from the pattern's definition (BigBird's
random blocks: the ``(blocks, blocks)`` table of the pattern's own ``RandomBlocks``; documents: a docs tensor).

At each length and pattern the variants run alternately, round after round (``harness.alternate``). Time: the median
of ``--repeats`` runs. Peak memory: ``attnreg.bench.measure.peak_bytes`` (on CPU from the profiler's allocation events,
inputs and the dense mask / block mask excluded) in a first, untimed run that doubles as the warm-up. Setup is reported
apart and never timed with the runs: the dense mask's materialisation, ``create_block_mask``, and Flex's compile (its
first call, cold; later lengths and patterns recompile).

How to read it: one markdown table per length (ms and MiB per variant), then the targets: ``SDPA / blocked`` (blocked's
speed-up over dense SDPA, target at least 5x, forward and forward + backward), ``blocked / Flex`` (blocked's forward
time over Flex's, target at most 1.2), and, with two or more lengths, each variant's peak-memory growth from the first
length to the last against the length's growth (``ratio`` 1.0 = linear, equal to the length growth = quadratic; met
when at most 1.2). At the first length the outputs are compared once per pattern (max abs difference: blocked against
SDPA and against Flex; blocked's q/k/v gradients against SDPA's).

    python benchmarks/gallery.py --json gallery.json                          # the issue's run: 16k
    python benchmarks/gallery.py --lengths 4096,16384 --json gallery.json     # with memory growth
    python benchmarks/gallery.py --lengths 1024 --heads 2 --repeats 1         # smoke run (the compiles dominate)
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from harness import alternate, begin, save_report
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

import attnreg
from attnreg import AnyOf, Pattern, RandomBlocks
from attnreg.bench.measure import peak_bytes

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

BLOCKED, SDPA, FLEX = "blocked", "dense-sdpa", "flex"
FORWARD, TRAIN = "fwd", "fwd+bwd"
SPEEDUP_TARGET, FLEX_TARGET, GROWTH_SLACK = 5.0, 1.2, 1.2


@dataclass(frozen=True)
class Case:
    """One of the issue's patterns: registered ``name`` with ``params``, ``documents`` equal consecutive documents
    (0: no ``document_ids``), and ``mask_mod(params, pattern, length, docs)`` writing Flex's mask from the
    definition."""

    label: str
    name: str
    params: dict[str, Any]
    documents: int
    mask_mod: Callable[[dict[str, Any], Pattern, int, torch.Tensor | None], MaskMod]


def streaming_mod(params: dict[str, Any], pattern: Pattern, length: int, docs: torch.Tensor | None) -> MaskMod:
    """``(i - window <= j <= i) or (j < sinks and j <= i)``."""
    window, sinks = params["window"], params["sinks"]

    def mod(b, h, q_idx, kv_idx):
        rel = q_idx - kv_idx
        return (rel >= 0) & ((rel <= window) | (kv_idx < sinks))

    return mod


def dilated_mod(params: dict[str, Any], pattern: Pattern, length: int, docs: torch.Tensor | None) -> MaskMod:
    """``|i - j| <= radius * dilation and (i - j) mod dilation == 0``."""
    reach, dilation = params["radius"] * params["dilation"], params["dilation"]

    def mod(b, h, q_idx, kv_idx):
        rel = q_idx - kv_idx
        return (rel.abs() <= reach) & (torch.remainder(rel, dilation) == 0)

    return mod


def sliding_docs_mod(params: dict[str, Any], pattern: Pattern, length: int, docs: torch.Tensor | None) -> MaskMod:
    """``i - left <= j <= i + right`` and the key in the query's document."""
    left, right = params["left"], params["right"]
    assert docs is not None

    def mod(b, h, q_idx, kv_idx):
        rel = kv_idx - q_idx
        return (rel >= -left) & (rel <= right) & (docs[b, q_idx] == docs[b, kv_idx])

    return mod


def bigbird_mod(params: dict[str, Any], pattern: Pattern, length: int, docs: torch.Tensor | None) -> MaskMod:
    """``|qb - kb| <= window_blocks or qb < global_blocks or kb < global_blocks or table[qb, kb]`` (blocks of
    ``block``), the table being the pattern's own ``RandomBlocks.table(length)``."""
    block, width, global_blocks = params["block"], params["window_blocks"], params["global_blocks"]
    parts = pattern.mask.parts if isinstance(pattern.mask, AnyOf) else (pattern.mask,)
    drawn = [part for part in parts if isinstance(part, RandomBlocks)]
    table = drawn[0].table(length) if drawn else torch.zeros(1, 1, dtype=torch.bool)

    def mod(b, h, q_idx, kv_idx):
        qb, kb = q_idx // block, kv_idx // block
        near = ((qb - kb).abs() <= width) | (qb < global_blocks) | (kb < global_blocks)
        return (near | table[qb, kb]) if drawn else near

    return mod


CASES: dict[str, Case] = {
    "streaming-llm": Case("streaming-llm(512, 4)", "streaming-llm", {"window": 512, "sinks": 4}, 0, streaming_mod),
    "dilated-window": Case("dilated-window(256, 2)", "dilated-window", {"radius": 256, "dilation": 2}, 0, dilated_mod),
    "sliding-window-docs": Case(
        "sliding-window(511, 0), 4 docs", "sliding-window", {"left": 511, "right": 0}, 4, sliding_docs_mod
    ),
    "bigbird": Case(
        "bigbird(64, 1, 1, 2)",
        "bigbird",
        {"block": 64, "window_blocks": 1, "global_blocks": 1, "random_blocks": 2},
        0,
        bigbird_mod,
    ),
}


def variant_labels(flex: bool) -> list[str]:
    labels = [f"{BLOCKED} {FORWARD}", f"{SDPA} {FORWARD}"]
    if flex:
        labels.append(f"{FLEX} {FORWARD}")
    return [*labels, f"{BLOCKED} {TRAIN}", f"{SDPA} {TRAIN}"]


def document_ids(documents: int, length: int) -> torch.Tensor | None:
    """``(1, length)``: ``documents`` equal consecutive documents (the last longer if ``length`` does not divide)."""
    if not documents:
        return None
    return torch.div(torch.arange(length) * documents, length, rounding_mode="floor")[None, :]


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max())


def measure_case(
    case: Case, length: int, args: argparse.Namespace, compiled: Callable[..., torch.Tensor] | None, check: bool
) -> dict[str, Any]:
    """Setup, correctness (when ``check``), peak memory and alternating timings of every variant for one pattern."""
    device = torch.device("cpu")
    pattern = attnreg.get_pattern(case.name, **case.params)
    docs = document_ids(case.documents, length)
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, args.heads, length, args.head_dim, generator=generator) for _ in range(3))
    leaves = [t.requires_grad_(True) for t in (q, k, v)]
    setup: dict[str, float] = {}

    start = time.perf_counter()
    layout = pattern.materialize(length, document_ids=docs)
    allowed = layout.allowed[:, None]  # (1, 1, n, n): a 4-D bool mask keeps SDPA on its flash kernel
    del layout  # it also holds an (n, n) int64 relative_position
    gc.collect()
    setup["materialize_s"] = time.perf_counter() - start
    if not bool(allowed.any(-1).all()):
        raise SystemExit(f"{case.label} at {length}: a query with no allowed key (SDPA would give NaN)")
    setup["density"] = float(allowed.sum()) / length**2

    # the counterpart of Flex's block mask: the pattern prepared for this batch, its block layout built on first use
    start = time.perf_counter()
    prepared = pattern.prepare(length, document_ids=docs)
    with torch.no_grad():
        attnreg.attention(q, k, v, prepared, backend="blocked")
    setup["prepare_s"] = time.perf_counter() - start

    def blocked() -> torch.Tensor:
        return attnreg.attention(q, k, v, prepared, backend="blocked")

    def sdpa() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)

    def infer(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with torch.no_grad():
                return fn()

        return run

    def train(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            for tensor in leaves:
                tensor.grad = None
            fn().sum().backward()

        return run

    runs: dict[str, Callable[[], object]] = {f"{BLOCKED} {FORWARD}": infer(blocked), f"{SDPA} {FORWARD}": infer(sdpa)}
    block_mask = None
    if compiled is not None:
        start = time.perf_counter()
        block_mask = create_block_mask(
            case.mask_mod(case.params, pattern, length, docs), B=None, H=None, Q_LEN=length, KV_LEN=length, device="cpu"
        )
        setup["block_mask_s"] = time.perf_counter() - start

        plain = [tensor.detach() for tensor in leaves]  # Flex refuses inputs that require grad, even under no_grad

        def flex() -> torch.Tensor:
            return compiled(*plain, block_mask=block_mask)

        start = time.perf_counter()
        infer(flex)()
        setup["flex_compile_s"] = time.perf_counter() - start  # compile + first call, cold
        runs[f"{FLEX} {FORWARD}"] = infer(flex)
    runs[f"{BLOCKED} {TRAIN}"] = train(blocked)
    runs[f"{SDPA} {TRAIN}"] = train(sdpa)

    # the memory runs, also the warm-up; the forward outputs and the gradients are kept for the check
    peaks: dict[str, int] = {}
    outputs: dict[str, Any] = {}
    for label, run in runs.items():
        peaks[label] = peak_bytes(lambda run=run, label=label: outputs.__setitem__(label, run()), device)
        if label.endswith(TRAIN):
            outputs[label] = [tensor.grad for tensor in leaves]
    correctness = None
    if check:
        reference = outputs[f"{BLOCKED} {FORWARD}"]
        correctness = {"blocked_vs_sdpa": max_diff(reference, outputs[f"{SDPA} {FORWARD}"])}
        if compiled is not None:
            correctness["blocked_vs_flex"] = max_diff(reference, outputs[f"{FLEX} {FORWARD}"])
            correctness["sdpa_vs_flex"] = max_diff(outputs[f"{SDPA} {FORWARD}"], outputs[f"{FLEX} {FORWARD}"])
        grads = zip(outputs[f"{BLOCKED} {TRAIN}"], outputs[f"{SDPA} {TRAIN}"], strict=True)
        correctness["grad_blocked_vs_sdpa"] = max(max_diff(a, b) for a, b in grads)
    outputs.clear()

    times = alternate(runs, device, repeats=args.repeats, warmup=0)
    return {
        "pattern": case.label,
        "length": length,
        "setup": setup,
        "correctness": correctness,
        "variants": {
            label: {
                "median_ms": statistics.median(seconds) * 1e3,
                "times_s": seconds,
                "peak_mib": peaks[label] / 2**20,
            }
            for label, seconds in times.items()
        },
    }


def ratios(result: dict[str, Any]) -> dict[str, float]:
    """The issue's ratios: SDPA / blocked (forward, forward + backward) and blocked / Flex (forward)."""
    ms = {label: figures["median_ms"] for label, figures in result["variants"].items()}
    found = {
        "sdpa_over_blocked_fwd": ms[f"{SDPA} {FORWARD}"] / ms[f"{BLOCKED} {FORWARD}"],
        "sdpa_over_blocked_train": ms[f"{SDPA} {TRAIN}"] / ms[f"{BLOCKED} {TRAIN}"],
    }
    if f"{FLEX} {FORWARD}" in ms:
        found["blocked_over_flex_fwd"] = ms[f"{BLOCKED} {FORWARD}"] / ms[f"{FLEX} {FORWARD}"]
    return found


def length_table(results: list[dict[str, Any]], labels: list[str]) -> list[str]:
    head = " | ".join(f"{label} ms | MiB" for label in labels)
    lines = [f"| pattern | {head} |", "| --- |" + " --- | --- |" * len(labels)]
    for result in results:
        cells = []
        for label in labels:
            figures = result["variants"][label]
            cells.append(f"{figures['median_ms']:,.1f} | {figures['peak_mib']:,.1f}")
        lines.append(f"| {result['pattern']} | " + " | ".join(cells) + " |")
    return lines


def verdict(value: float, met: bool) -> str:
    return f"{value:.2f}x {'yes' if met else 'no'}"


def target_table(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        f"| length | pattern | SDPA / blocked fwd (>= {SPEEDUP_TARGET:g}x) | SDPA / blocked fwd+bwd "
        f"(>= {SPEEDUP_TARGET:g}x) | blocked / Flex fwd (<= {FLEX_TARGET:g}) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for result in results:
        found = ratios(result)
        flex = found.get("blocked_over_flex_fwd")
        lines.append(
            f"| {result['length']} | {result['pattern']} | "
            f"{verdict(found['sdpa_over_blocked_fwd'], found['sdpa_over_blocked_fwd'] >= SPEEDUP_TARGET)} | "
            f"{verdict(found['sdpa_over_blocked_train'], found['sdpa_over_blocked_train'] >= SPEEDUP_TARGET)} | "
            f"{'-' if flex is None else verdict(flex, flex <= FLEX_TARGET)} |"
        )
    return lines


def growth_rows(results: list[dict[str, Any]], lengths: list[int], labels: list[str]) -> list[dict[str, Any]]:
    """Each pattern's and variant's peak memory at the first and last length, its growth against the length's."""
    first, last = lengths[0], lengths[-1]
    by_key = {(r["pattern"], r["length"]): r for r in results}
    rows = []
    for pattern in dict.fromkeys(r["pattern"] for r in results):
        low, high = by_key.get((pattern, first)), by_key.get((pattern, last))
        if low is None or high is None:
            continue
        for label in labels:
            a, b = low["variants"][label]["peak_mib"], high["variants"][label]["peak_mib"]
            growth = b / max(a, 1e-9)
            ratio = growth / (last / first)
            rows.append(
                {"pattern": pattern, "variant": label, "first_mib": a, "last_mib": b, "growth": growth, "ratio": ratio}
            )
    return rows


def growth_table(rows: list[dict[str, Any]], lengths: list[int]) -> list[str]:
    first, last = lengths[0], lengths[-1]
    lines = [
        f"| pattern | variant | MiB at {first} | MiB at {last} | growth (length x{last / first:g}) | "
        f"growth / length growth | linear (<= {GROWTH_SLACK:g}) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['pattern']} | {row['variant']} | {row['first_mib']:,.1f} | {row['last_mib']:,.1f} | "
            f"x{row['growth']:.2f} | {row['ratio']:.2f} | {'yes' if row['ratio'] <= GROWTH_SLACK else 'no'} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="16384", help="comma-separated lengths (default: 16384)")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--patterns", help=f"comma-separated subset of {', '.join(CASES)} (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant (median)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--no-flex", action="store_true", help="leave FlexAttention out (no compile)")
    parser.add_argument("--json", type=Path, help="write the figures and the environment here")
    args = parser.parse_args(argv)
    lengths = sorted({int(part) for part in args.lengths.split(",") if part.strip()})
    names = list(CASES) if not args.patterns else [name.strip() for name in args.patterns.split(",") if name.strip()]
    unknown = [name for name in names if name not in CASES]
    if unknown:
        parser.error(f"unknown pattern(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    labels = variant_labels(not args.no_flex)

    compiled = None
    if not args.no_flex:
        # one compiled function; every pattern (mask_mod) and length recompiles it: allow them all
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 4 * len(names) * len(lengths))
        compiled = torch.compile(flex_attention, dynamic=False)

    env = begin(args.threads, torch.device("cpu"))
    print(f"fp32, batch 1, {args.heads} heads x {args.head_dim}, repeats {args.repeats}\n", flush=True)
    report: dict[str, Any] = {"environment": env, "settings": {**vars(args), "json": str(args.json)}, "results": []}
    results: list[dict[str, Any]] = report["results"]
    started = time.perf_counter()
    for index, length in enumerate(lengths):
        at_length = []
        for name in names:
            case = CASES[name]
            begun = time.perf_counter()
            result = measure_case(case, length, args, compiled, check=index == 0)
            gc.collect()  # the dense mask and the block mask go with the case's closures
            result["ratios"] = ratios(result)
            result["wall_s"] = time.perf_counter() - begun
            results.append(result)
            at_length.append(result)
            setup = ", ".join(f"{key} {value:.3g}" for key, value in result["setup"].items())
            print(f"- {case.label} at {length}: {result['wall_s']:.1f} s in all; setup: {setup}", flush=True)
            if result["correctness"]:
                check = ", ".join(f"{key} {value:.2e}" for key, value in result["correctness"].items())
                print(f"  max abs diff: {check}", flush=True)
            save_report(args.json, report)
        print(f"\n## {length} tokens: median ms and peak MiB\n")
        print("\n".join(length_table(at_length, labels)) + "\n", flush=True)

    print("## Targets\n")
    print("\n".join(target_table(results)))
    if len(lengths) > 1:
        rows = growth_rows(results, lengths, labels)
        report["memory_growth"] = rows
        print(f"\n## Peak memory growth, {lengths[0]} -> {lengths[-1]}\n")
        print("\n".join(growth_table(rows, lengths)))
    report["wall_s"] = time.perf_counter() - started
    print(f"\nwall time: {report['wall_s']:.0f} s")
    save_report(args.json, report)
    if args.json:
        print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

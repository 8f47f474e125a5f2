"""The benchmark's table: time and peak memory per variant and length, against a baseline, and growth with length."""

from __future__ import annotations

from attnreg.bench.cases import TRANSFORMERS
from attnreg.bench.runner import BenchResult, Measurement


def baseline_label(result: BenchResult) -> str | None:
    """The baseline of the speed-ups: transformers' layer if there is one, else the reference, else dense SDPA."""
    labels = result.labels()
    for label in (TRANSFORMERS, "reference", "dense-sdpa"):
        if label in labels:
            return label
    return labels[0] if labels else None


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.1f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:,.1f}"


def format_table(result: BenchResult) -> str:
    """A plain-text table, one row per length and variant, then each variant's growth from first to last length."""
    base = baseline_label(result)
    kind = "forward + backward" if result.grad else "forward"
    dtype = str(result.dtype).removeprefix("torch.")
    lines = [
        f"{result.name} ({result.mode}): {kind}, batch {result.batch}, {dtype} on {result.device}, "
        f"median of {result.repeats}; peak = most bytes allocated at once during one call",
    ]
    header = ["length", "variant", "time ms", f"speed-up vs {base}", "peak MiB", f"memory vs {base}", "note"]
    rows = [header]
    for length in result.lengths():
        reference = result.get(base, length) if base else None
        for label in result.labels():
            m = result.get(label, length)
            if m is None:
                continue
            rows.append(
                [
                    str(length),
                    label,
                    _ms(m.seconds),
                    _speedup(m, reference),
                    _mib(m.peak_bytes),
                    _memory(m, reference),
                    m.note,
                ]
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    for row in rows:
        cells = [
            cell.rjust(width) if i in (0, 2, 3, 4, 5) else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row[:-1], widths, strict=True))
        ]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    lines.extend(growth_lines(result))
    return "\n".join(lines)


def _speedup(m: Measurement, base: Measurement | None) -> str:
    if m.seconds is None or base is None or base.seconds is None:
        return "-"
    return f"{base.seconds / m.seconds:.2f}x"


def _memory(m: Measurement, base: Measurement | None) -> str:
    if m.peak_bytes is None or base is None or not base.peak_bytes:
        return "-"
    saved = 1 - m.peak_bytes / base.peak_bytes
    return f"{100 * saved:.0f}% less" if saved >= 0 else f"{-100 * saved:.0f}% more"


def growth_lines(result: BenchResult) -> list[str]:
    """For each variant measured at two or more lengths: how time and memory grew from its first to its last length."""
    lines = []
    for label in result.labels():
        points = result.measured(label)
        if len(points) < 2:
            continue
        first, last = points[0], points[-1]
        memory = f"{last.peak_bytes / first.peak_bytes:.1f}x" if first.peak_bytes else "-"
        lines.append(
            f"growth {label}: length x{last.length / first.length:g} ({first.length} -> {last.length}): "
            f"time x{last.seconds / first.seconds:.1f}, memory {memory}"
        )
    return ["", *lines] if lines else []

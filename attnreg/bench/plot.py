"""The benchmark's picture: time and peak memory against length, log-log, one line per variant (matplotlib).

The title says what was measured (benchmark, pass, batch, dtype, device, heads for a bare call) and a footnote says
which variants have no line, or stop early, and why: a missing line is otherwise indistinguishable from a forgotten one.
"""

from __future__ import annotations

import inspect
import textwrap
from pathlib import Path

from attnreg.bench.cases import bare_variants
from attnreg.bench.export import settings
from attnreg.bench.runner import BenchResult


def setup_text(result: BenchResult) -> str:
    """``NAME (bare call, 8 heads of 64): forward, batch 1, float32, cpu``: what one line of the plot measured."""
    setup = settings(result)
    if result.mode == "bare":
        defaults = inspect.signature(bare_variants).parameters  # the bare call's shape is bare_variants' defaults
        what = f"bare attnreg.attention, {defaults['num_heads'].default} heads of {defaults['head_dim'].default}"
    else:
        what = "layer benchmark"
    return (
        f"{setup['benchmark']} ({what}): {setup['pass']}, batch {setup['batch']}, {setup['dtype']}, {setup['device']}"
    )


def missing_text(result: BenchResult) -> list[str]:
    """One line per variant not measured at some length: ``xformers: n/a: device is cpu ...`` when it never ran,
    ``reference: from 4096: skipped: ...`` when it stopped; the first length's note, which says why."""
    lines = []
    for label in result.labels():
        unmeasured = [m for m in result.measurements if m.label == label and m.seconds is None]
        if not unmeasured:
            continue
        first = min(unmeasured, key=lambda m: m.length)
        when = "" if not result.measured(label) else f"from {first.length}: "
        lines.append(f"{label}: {when}{first.note or 'not measured'}")
    return lines


def plot_result(result: BenchResult, path: str | Path) -> Path:
    """Draw ``result`` into ``path`` (PNG, SVG, PDF: by extension); an ImportError says how to get matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("--plot needs matplotlib: pip install matplotlib (or attnreg[test])") from error

    footnote = [textwrap.shorten(line, 150, placeholder="...") for line in missing_text(result)]
    height = 4.2 + 0.18 * len(footnote)
    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(11, height))
    for label in result.labels():
        points = result.measured(label)
        if not points:
            continue
        lengths = [m.length for m in points]
        time_axis.plot(lengths, [m.seconds * 1e3 for m in points], marker="o", label=label)
        memory_axis.plot(lengths, [max(m.peak_bytes, 1) / 2**20 for m in points], marker="o", label=label)
    for axis, what in ((time_axis, "time (ms, median)"), (memory_axis, "peak memory (MiB)")):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("sequence length")
        axis.set_ylabel(what)
        axis.grid(True, which="both", alpha=0.3)
    time_axis.legend(fontsize="small")
    figure.suptitle(setup_text(result))
    bottom = 0.0
    if footnote:
        text = "not measured (variant: why):\n" + "\n".join(footnote)
        figure.text(0.01, 0.01, text, fontsize="x-small", va="bottom", ha="left", family="monospace")
        bottom = (0.15 + 0.16 * (len(footnote) + 1)) / height
    figure.tight_layout(rect=(0, bottom, 1, 1))
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path

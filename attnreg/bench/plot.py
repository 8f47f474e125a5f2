"""The benchmark's picture: time and peak memory against length, log-log, one line per variant (matplotlib)."""

from __future__ import annotations

from pathlib import Path

from attnreg.bench.runner import BenchResult


def plot_result(result: BenchResult, path: str | Path) -> Path:
    """Draw ``result`` into ``path`` (PNG, SVG, PDF: by extension); an ImportError says how to get matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("--plot needs matplotlib: pip install matplotlib (or attnreg[test])") from error

    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label in result.labels():
        points = result.measured(label)
        if not points:
            continue
        lengths = [m.length for m in points]
        time_axis.plot(lengths, [m.seconds * 1e3 for m in points], marker="o", label=label)
        memory_axis.plot(lengths, [max(m.peak_bytes, 1) / 2**20 for m in points], marker="o", label=label)
    kind = "forward + backward" if result.grad else "forward"
    for axis, what in ((time_axis, "time (ms, median)"), (memory_axis, "peak memory (MiB)")):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("sequence length")
        axis.set_ylabel(what)
        axis.grid(True, which="both", alpha=0.3)
    time_axis.legend(fontsize="small")
    figure.suptitle(
        f"{result.name}: {kind}, batch {result.batch}, {str(result.dtype).removeprefix('torch.')}, {result.device}"
    )
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path

"""Drawing one example of a dense layout: as text for the terminal, or as a PNG picture (matplotlib, optional).

Both read the same per-cell classification, so the text and the picture always agree on what each cell is.
"""

from __future__ import annotations

import textwrap
from enum import IntEnum
from pathlib import Path

import torch

from attnreg.pattern.dense import DenseLayout


class Cell(IntEnum):
    """Why a (query, key) cell is or is not allowed."""

    WINDOW = 0
    GLOBAL = 1
    AGGREGATED = 2
    PADDING = 3
    NOT_ALLOWED = 4


GLYPHS = {Cell.WINDOW: "#", Cell.GLOBAL: "G", Cell.AGGREGATED: "A", Cell.PADDING: "-", Cell.NOT_ALLOWED: "."}
LABELS = {
    Cell.WINDOW: "window",
    Cell.GLOBAL: "global",
    Cell.AGGREGATED: "aggregated",
    Cell.PADDING: "padding",
    Cell.NOT_ALLOWED: "not allowed",
}
COLORS = {
    Cell.WINDOW: "#2b6cb0",
    Cell.GLOBAL: "#dd6b20",
    Cell.AGGREGATED: "#2f855a",
    Cell.PADDING: "#cbd5e0",
    Cell.NOT_ALLOWED: "#ffffff",
}


def classify(layout: DenseLayout, example: int = 0) -> torch.Tensor:
    """``(length, length + count)`` :class:`Cell` codes for one example of ``layout``.

    A padded query or key is ``PADDING``; an allowed token key inside the window (or with no window) is ``WINDOW``,
    one allowed only through a selected global token is ``GLOBAL``; an allowed aggregated key is ``AGGREGATED``.
    """
    allowed = layout.allowed[example].cpu()
    length = allowed.shape[0]
    real = _real_keys(layout, example)
    window = layout.pattern.window
    relative = layout.relative_position.cpu()
    in_window = torch.ones_like(relative, dtype=torch.bool) if window is None else window.contains(relative)
    cells = torch.full(allowed.shape, int(Cell.NOT_ALLOWED), dtype=torch.long)
    tokens = cells[:, :length]
    tokens[allowed[:, :length] & in_window] = int(Cell.WINDOW)
    tokens[allowed[:, :length] & ~in_window] = int(Cell.GLOBAL)
    tokens[~(real[:, None] & real[None, :])] = int(Cell.PADDING)
    aggregated = cells[:, length:]
    aggregated[allowed[:, length:]] = int(Cell.AGGREGATED)
    aggregated[~real] = int(Cell.PADDING)
    return cells


def _real_keys(layout: DenseLayout, example: int) -> torch.Tensor:
    """Tokens that are not padding: a real token always sees itself."""
    allowed = layout.allowed[example].cpu()
    length = allowed.shape[0]
    return allowed[:, :length].diagonal()


def render_text(layout: DenseLayout, example: int = 0) -> str:
    """The example as a character grid: queries as rows, token keys then aggregated keys (after ``|``) as columns."""
    cells = classify(layout, example)
    length = cells.shape[0]
    count = cells.shape[1] - length
    real = _real_keys(layout, example)
    global_rows = layout.global_rows[example].cpu()
    indent = " " * 7
    lines = [
        (indent + _digits(length, 10) + ("   " + _digits(count, 10) if count else "")).rstrip(),
        indent + _digits(length, 1) + (" | " + _digits(count, 1) if count else ""),
    ]
    lines = [line for line in lines if line]
    for i in range(length):
        flag = "g" if global_rows[i] else ("p" if not real[i] else " ")
        row = "".join(GLYPHS[Cell(int(c))] for c in cells[i])
        if count:
            row = f"{row[:length]} | {row[length:]}"
        lines.append(f"{i:>5}{flag} {row}")
    lines.append("")
    lines.append("legend: " + "   ".join(f"{GLYPHS[c]} {LABELS[c]}" for c in Cell))
    lines.append(
        "rows are queries (g: global token, p: padded), columns are keys" + (" | aggregated keys" if count else "")
    )
    return "\n".join(lines)


def _digits(count: int, place: int) -> str:
    """One line of column numbers: the tens digit (blank unless it changes) or the units digit."""
    if place == 1:
        return "".join(str(i % 10) for i in range(count))
    return "".join(str(i // 10 % 10) if i % 10 == 0 and i >= 10 else " " for i in range(count))


def render_png(layout: DenseLayout, path: str | Path, example: int = 0, title: str = "") -> Path:
    """Draw the example as a picture at ``path`` (needs matplotlib: ``pip install 'attnreg[plot]'``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap
        from matplotlib.patches import Patch
    except ImportError as error:
        raise ImportError(
            f"drawing a PNG needs matplotlib, which is not installed ({error}); "
            "install it with: pip install 'attnreg[plot]'"
        ) from error
    cells = classify(layout, example).numpy()
    length = cells.shape[0]
    size = max(4.0, min(16.0, cells.shape[1] / 8))
    figure, axes = plt.subplots(figsize=(size + 2, size * length / cells.shape[1] + 1))
    colormap = ListedColormap([COLORS[c] for c in Cell])
    axes.imshow(cells, cmap=colormap, vmin=0, vmax=len(Cell) - 1, interpolation="nearest")
    if cells.shape[1] > length:
        axes.axvline(length - 0.5, color="black", linewidth=1)
    axes.set_xlabel("keys" + (" | aggregated keys" if cells.shape[1] > length else ""))
    axes.set_ylabel("queries")
    axes.set_title(textwrap.fill(title, 90), fontsize=8)
    axes.legend(
        handles=[Patch(facecolor=COLORS[c], edgecolor="black", label=LABELS[c]) for c in Cell],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
    )
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path

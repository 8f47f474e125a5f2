"""Drawing one example of a dense layout: as text for the terminal, or as a PNG picture (matplotlib, optional).

Both read the same per-cell classification, so the text and the picture always agree on what each cell is.
"""

from __future__ import annotations

import textwrap
from enum import IntEnum
from pathlib import Path

import torch

from attnreg.pattern.dense import DenseLayout
from attnreg.pattern.predicates import AllOf, AnyOf, MaskPart
from attnreg.pattern.spec import Pattern


class Cell(IntEnum):
    """Why a (query, key) cell is or is not allowed."""

    TOKEN_RULE = 0
    GLOBAL = 1
    AGGREGATED = 2
    PADDING = 3
    NOT_ALLOWED = 4


GLYPHS = {Cell.TOKEN_RULE: "#", Cell.GLOBAL: "G", Cell.AGGREGATED: "A", Cell.PADDING: "-", Cell.NOT_ALLOWED: "."}
LABELS = {
    Cell.GLOBAL: "global token",
    Cell.AGGREGATED: "aggregated key",
    Cell.PADDING: "padding",
    Cell.NOT_ALLOWED: "not allowed",
}
COLORS = {
    Cell.TOKEN_RULE: "#2b6cb0",
    Cell.GLOBAL: "#dd6b20",
    Cell.AGGREGATED: "#2f855a",
    Cell.PADDING: "#cbd5e0",
    Cell.NOT_ALLOWED: "#ffffff",
}


def token_rule(pattern: Pattern) -> str:
    """What lets a token see a token key, as the pattern says it: its window and mask part (``every key`` if
    neither), e.g. ``Window(left=2, right=0)`` or ``Band(left=512, right=0) | KeyRange(start=0, stop=4)``."""
    rules = [repr(pattern.window)] if pattern.window is not None else []
    if pattern.mask is not None:
        rules.append(_mask_text(pattern.mask, inside=pattern.window is not None))
    return " & ".join(rules) or "every key"


def _mask_text(part: MaskPart, inside: bool = False) -> str:
    """A mask part as an expression: unions with ``|``, intersections with ``&``, other parts by their repr."""
    if isinstance(part, (AnyOf, AllOf)):
        text = (" | " if isinstance(part, AnyOf) else " & ").join(_mask_text(p, inside=True) for p in part.parts)
        return f"({text})" if inside and len(part.parts) > 1 else text
    return repr(part)


def label(cell: Cell, pattern: Pattern) -> str:
    """The legend's name for ``cell`` under ``pattern``."""
    return token_rule(pattern) if cell is Cell.TOKEN_RULE else LABELS[cell]


def legend(cells: torch.Tensor, pattern: Pattern) -> list[tuple[Cell, str]]:
    """The kinds of cell that ``cells`` shows, in :class:`Cell` order, with their names: only those present."""
    present = set(cells.unique().tolist())
    return [(cell, label(cell, pattern)) for cell in Cell if int(cell) in present]


def classify(layout: DenseLayout, example: int = 0) -> torch.Tensor:
    """``(length, length + count)`` :class:`Cell` codes for one example of ``layout``.

    A padded query or key is ``PADDING``; an allowed token key that the pattern's window and mask allow is
    ``TOKEN_RULE``, one allowed only through a selected global token is ``GLOBAL``; an allowed aggregated key is
    ``AGGREGATED``. The token rule is read from the same pattern spelled out without global tokens.
    """
    allowed = layout.allowed[example].cpu()
    length = allowed.shape[0]
    real = _real_keys(layout, example)
    by_rule = layout.pattern.materialize(length, attention_mask=real[None, :]).allowed[0, :, :length]
    cells = torch.full(allowed.shape, int(Cell.NOT_ALLOWED), dtype=torch.long)
    tokens = cells[:, :length]
    tokens[allowed[:, :length] & by_rule] = int(Cell.TOKEN_RULE)
    tokens[allowed[:, :length] & ~by_rule] = int(Cell.GLOBAL)
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
    lines.append("legend: " + "   ".join(f"{GLYPHS[cell]} {name}" for cell, name in legend(cells, layout.pattern)))
    flags = [text for text, shown in (("g: global token", global_rows.any()), ("p: padded", not real.all())) if shown]
    rows = "rows are queries" + (f" ({', '.join(flags)})" if flags else "")
    lines.append(f"{rows}, columns are keys" + (" | aggregated keys" if count else ""))
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
    classified = classify(layout, example)
    cells = classified.numpy()
    length = cells.shape[0]
    size = max(4.0, min(16.0, cells.shape[1] / 8))
    figure, axes = plt.subplots(figsize=(size + 2, size * length / cells.shape[1] + 1))
    colormap = ListedColormap([COLORS[c] for c in Cell])
    axes.imshow(cells, cmap=colormap, vmin=0, vmax=len(Cell) - 1, interpolation="nearest")
    if cells.shape[1] > length:
        axes.axvline(length - 0.5, color="black", linewidth=1)
    axes.set_xlabel("keys" + (" | aggregated keys" if cells.shape[1] > length else ""))
    axes.set_ylabel("queries")
    axes.set_title("\n".join(textwrap.fill(line, 90) for line in title.splitlines()), fontsize=8)
    axes.legend(
        handles=[
            Patch(facecolor=COLORS[cell], edgecolor="black", label=textwrap.fill(name, 40))
            for cell, name in legend(classified, layout.pattern)
        ],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
    )
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100, bbox_inches="tight")  # the legend sits outside the axes
    plt.close(figure)
    return path

"""The files a command writes beside its text (``--png``, ``--plot``, ``--json``, ``--csv``): written first.

Why first: a reader that stops early (``attnreg show NAME --png f.png | head -1``) closes stdout, and the files asked
for must not depend on how much of the text was read.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Written:
    """What :func:`write_files` did: a line per file written, a line per file that could not be."""

    lines: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def report(self) -> int:
        """Print the written lines to stdout and the errors to stderr; the exit status: 1 if any failed, else 0."""
        for line in self.lines:
            print(line)
        for error in self.errors:
            print(error, file=sys.stderr)
        return 1 if self.errors else 0


def write_files(command: str, writers: Mapping[str, Callable[[], Path]]) -> Written:
    """Call each writer (``what -> write()`` returning the path); a missing library or an unwritable path is an
    error line naming ``command``, not an exception, so the other files and the text still come out."""
    written = Written()
    for what, write in writers.items():
        try:
            written.lines.append(f"{what} written to {write()}")
        except (ImportError, OSError) as error:
            written.errors.append(f"attnreg {command}: error: {error}")
    return written

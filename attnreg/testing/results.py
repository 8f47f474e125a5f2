"""The suite's results: one outcome per (pattern, engine, check), a per-pattern × per-engine table, a report.

Why its own module: the CLI, the pytest plugin and the tests all read the same report, so it is rendered once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PASS, FAIL, SKIP = "pass", "fail", "skip"

#: The column of checks that concern the pattern itself, not an engine (spec round trips, bad parameters).
SPEC_COLUMN = "spec"


@dataclass(frozen=True)
class Outcome:
    """One check of one pattern on one engine (or on the spec column): passed, failed or skipped, and why."""

    pattern: str
    engine: str
    check: str
    status: str
    detail: str = ""


@dataclass
class Report:
    """Every outcome of a run, with the table and the failure details as text."""

    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing failed (skips are fine)."""
        return not self.failures

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == FAIL]

    def patterns(self) -> list[str]:
        return list(dict.fromkeys(o.pattern for o in self.outcomes))

    def columns(self) -> list[str]:
        engines = list(dict.fromkeys(o.engine for o in self.outcomes if o.engine != SPEC_COLUMN))
        return [SPEC_COLUMN, *engines]

    def cell(self, pattern: str, column: str) -> str:
        """``ok``, ``FAIL: check, check``, ``n/a`` (every case refused or not run) or ``-`` (nothing ran)."""
        found = [o for o in self.outcomes if o.pattern == pattern and o.engine == column]
        if not found:
            return "-"
        failed = [o.check for o in found if o.status == FAIL]
        if failed:
            return "FAIL: " + ", ".join(dict.fromkeys(failed))
        passed = sum(o.status == PASS for o in found)
        skipped = len(found) - passed
        if not passed:
            return "n/a"
        return f"ok ({passed})" if not skipped else f"ok ({passed}, {skipped} skipped)"

    def table(self) -> str:
        """The per-pattern × per-engine table, plain text."""
        columns = self.columns()
        rows = [["pattern", *columns]] + [[p, *(self.cell(p, c) for c in columns)] for p in self.patterns()]
        widths = [max(len(row[i]) for row in rows) for i in range(len(columns) + 1)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def details(self, *, skipped: bool = False) -> str:
        """Each failure (and with ``skipped`` each skip) as ``pattern / engine / check: detail``."""
        wanted = (FAIL, SKIP) if skipped else (FAIL,)
        blocks = []
        for o in self.outcomes:
            if o.status in wanted:
                head = f"{o.status.upper()} {o.pattern} / {o.engine} / {o.check}"
                blocks.append(head + ("\n" + _indent(o.detail) if o.detail else ""))
        return "\n".join(blocks)

    def format(self, *, skipped: bool = False) -> str:
        """The table, then the details, then a one-line summary."""
        parts = [self.table()]
        details = self.details(skipped=skipped)
        if details:
            parts.append(details)
        counts = {s: sum(o.status == s for o in self.outcomes) for s in (PASS, FAIL, SKIP)}
        parts.append(f"{counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIP]} skipped")
        return "\n\n".join(parts)


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())

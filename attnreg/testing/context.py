"""What a check is given (the pattern, the engine, the device, the level) and how it gathers its cases' results.

Why: each check runs several cases; a refused case is a skip, a failing one is reported with its case label,
and the check fails if any case fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from attnreg.execution.engine import Engine
from attnreg.pattern.spec import Pattern
from attnreg.testing.results import FAIL, PASS, SKIP

#: How many failing cases a check lists before summarising the rest.
SHOWN = 4


@dataclass(frozen=True)
class Context:
    """One pattern and one engine to check, on one device; ``quick`` trims the cases for CI."""

    name: str
    pattern: Pattern
    engine: Engine | None
    device: torch.device
    quick: bool = False
    seed: int = 0


@dataclass
class Cases:
    """The results of one check's cases: failures and refusals, labelled by case."""

    ran: int = 0
    failures: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)

    def failed(self, case: str, problems: list[str] | str) -> None:
        problems = [problems] if isinstance(problems, str) else problems
        self.failures.extend(f"[{case}] {p}" for p in problems)

    def refused(self, case: str, reasons: str) -> None:
        self.refusals.append(f"[{case}] engine refused: {reasons}")

    def verdict(self) -> tuple[str, str]:
        """``(status, detail)``: fail if any case failed, skip if none ran, else pass."""
        if self.failures:
            shown = self.failures[:SHOWN]
            more = len(self.failures) - len(shown)
            return FAIL, "\n".join(shown + ([f"... and {more} more"] if more else []))
        if not self.ran:
            return SKIP, "\n".join(self.refusals[:SHOWN]) or "no case applies"
        return PASS, f"{self.ran} case(s)" + (f", {len(self.refusals)} refused by the engine" if self.refusals else "")

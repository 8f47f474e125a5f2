"""The conformance suite: every check, for every chosen pattern and every engine that can run it.

Why one entry point: ``attnreg check``, the pytest plugin and this repository's tests all call
:func:`run_conformance` and read the same :class:`Report`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from attnreg._validation import PatternError, reject_unknown
from attnreg.execution.engine import Engine
from attnreg.registry import get_registry
from attnreg.testing import engine_checks, memory, spec_checks
from attnreg.testing.context import Context
from attnreg.testing.execute import clear_reference_cache
from attnreg.testing.results import FAIL, SPEC_COLUMN, Outcome, Report

#: Engine checks by the name the table shows, in the order they run.
ENGINE_CHECKS: dict[str, Callable[[Context], tuple[str, str]]] = {
    "reference": engine_checks.matches_reference,
    "padding": engine_checks.padding,
    "half-precision": engine_checks.half_precision,
    "locality": engine_checks.locality,
    "batch-independence": engine_checks.batch_independence,
    "determinism": engine_checks.determinism,
    "linear-memory": memory.linear_memory,
}

#: Checks of the pattern itself.
SPEC_CHECKS = {
    "round-trip": spec_checks.round_trips,
    "bad-parameters": spec_checks.bad_parameters,
}


def default_device() -> torch.device:
    """CUDA when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def select_engines(names: Iterable[str] | None = None) -> list[Engine]:
    """The registered engines named (all when ``names`` is ``None``); an unknown name lists the known ones."""
    table = get_registry().engine_table
    if names is None:
        return list(table.values())
    engines = []
    for name in names:
        if name not in table:
            raise PatternError(f"engine {name!r} is not registered; registered engines: {', '.join(sorted(table))}")
        engines.append(table[name])
    return engines


def check_pattern(
    name: str,
    *,
    params: Mapping[str, Any] | None = None,
    engines: Iterable[str] | None = None,
    quick: bool = False,
    device: torch.device | str | None = None,
    checks: Iterable[str] | None = None,
    seed: int = 0,
) -> Report:
    """Run the suite on one registered pattern (built with ``params``) for each engine; never raises on a failure."""
    report = Report()
    clear_reference_cache()
    entry = get_registry().pattern_entry(name)
    params = dict(params or {})
    wanted = set(checks) if checks is not None else None
    if wanted is not None:
        reject_unknown("checks", wanted, [*SPEC_CHECKS, *ENGINE_CHECKS])
    for check, function in SPEC_CHECKS.items():
        if wanted is None or check in wanted:
            report.outcomes.append(_outcome(name, SPEC_COLUMN, check, lambda f=function: f(entry, params)))
    try:
        pattern = entry.create(**params)
    except Exception as error:
        report.outcomes.append(Outcome(name, SPEC_COLUMN, "create", FAIL, f"{type(error).__name__}: {error}"))
        return report
    device = torch.device(device) if device is not None else default_device()
    for engine in select_engines(engines):
        ctx = Context(name, pattern, engine, device, quick=quick, seed=seed)
        for check, function in ENGINE_CHECKS.items():
            if wanted is None or check in wanted:
                report.outcomes.append(_outcome(name, engine.name, check, lambda f=function, c=ctx: f(c)))
    clear_reference_cache()
    return report


def run_conformance(
    names: Iterable[str] | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    engines: Iterable[str] | None = None,
    quick: bool = False,
    device: torch.device | str | None = None,
    checks: Iterable[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Run the suite on the named patterns (every registered one by default) and merge the reports."""
    names = list(names) if names is not None else get_registry().list_patterns()
    engines = list(engines) if engines is not None else None
    for name in names:  # unknown names fail now, not after the others have run
        get_registry().pattern_entry(name)
    select_engines(engines)
    report = Report()
    for name in names:
        if progress:
            progress(name)
        report.outcomes += check_pattern(
            name, params=params, engines=engines, quick=quick, device=device, checks=checks
        ).outcomes
    return report


def _outcome(pattern: str, engine: str, check: str, run: Callable[[], tuple[str, str]]) -> Outcome:
    """Run one check; a check that itself crashes is a failure that says so, never an aborted suite."""
    try:
        status, detail = run()
    except Exception as error:
        status, detail = FAIL, f"the check raised {type(error).__name__}: {error}"
    return Outcome(pattern, engine, check, status, detail)

"""The conformance suite as a pytest plugin: a plugin author switches it on in their own test run.

Installed with attnreg (entry point ``pytest11``) and inert until asked for; the suite is imported only then.
(Being part of the ``attnreg`` package, loading it imports ``attnreg`` and torch, as any test of a plugin does.)

- ``pytest --attnreg-conformance[=NAME,...]`` adds one test item per pattern (every registered one when no name
  or ``all`` is given) that runs the whole suite on it and fails with the table and each failure's account;
  ``--attnreg-engines`` and ``--attnreg-full`` refine it;
- the ``attnreg_conformance`` fixture: ``attnreg_conformance("my-pattern", params={...})`` in any test.
"""

from __future__ import annotations

from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("attnreg", "attnreg conformance suite")
    group.addoption(
        "--attnreg-conformance",
        action="store",
        nargs="?",
        const="all",
        default=None,
        metavar="NAMES",
        help="run attnreg's conformance suite on these patterns (comma-separated; alone or 'all': every one)",
    )
    group.addoption(
        "--attnreg-engines",
        action="store",
        default=None,
        metavar="ENGINES",
        help="only these engines (comma-separated; default: every registered engine)",
    )
    group.addoption("--attnreg-full", action="store_true", help="every length and case (default: the quick level)")


def _split(value: str | None) -> list[str] | None:
    return None if value is None else [part.strip() for part in value.split(",") if part.strip()]


class ConformanceItem(pytest.Item):
    """One pattern's whole suite; it fails with the per-engine table and every failure's account."""

    def __init__(self, *, pattern: str, engines: list[str] | None, quick: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pattern = pattern
        self.engines = engines
        self.quick = quick

    def runtest(self) -> None:
        from attnreg.testing import check_pattern

        report = check_pattern(self.pattern, engines=self.engines, quick=self.quick)
        if not report.ok:
            raise ConformanceFailure(report.format())

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, ConformanceFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[str, int, str]:
        return "attnreg-conformance", 0, f"attnreg conformance: {self.pattern}"


class ConformanceFailure(AssertionError):
    """The suite found failures; the message is the report."""


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    names = _split(config.getoption("attnreg_conformance"))
    if not names:
        return
    import attnreg

    if names == ["all"]:
        names = attnreg.list_patterns()
    engines = _split(config.getoption("attnreg_engines"))
    quick = not config.getoption("attnreg_full")
    for name in names:
        items.append(
            ConformanceItem.from_parent(
                session,
                name=f"attnreg-conformance[{name}]",
                nodeid=f"attnreg-conformance[{name}]",
                pattern=name,
                engines=engines,
                quick=quick,
            )
        )


@pytest.fixture
def attnreg_conformance():
    """``check(*names, params=None, engines=None, quick=True)``: run the suite, fail the test with the report."""

    def check(*names: str, params: dict[str, Any] | None = None, engines: list[str] | None = None, quick: bool = True):
        from attnreg.testing import run_conformance

        report = run_conformance(names or None, params=params, engines=engines, quick=quick)
        if not report.ok:
            pytest.fail(report.format(), pytrace=False)
        return report

    return check

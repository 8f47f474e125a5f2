"""``attnreg list``: the registered patterns, part kinds, builders, engines and benchmarks, failed plugins and
conflicts.

A plugin that failed to import, marks a function that is no hook, or raised in its hook is listed beside the
working ones with the reason (a traceback shortened unless ``--verbose``), and a plugin that registered nothing
gets a line too, so a broken installation is visible rather than silently missing. Each part kind is listed with its
class and parameters; ``--verbose`` also lists each pattern's and builder's parameters.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable

from attnreg.cli._params import parameter_text, parameters_text, plain_text
from attnreg.registry import (
    BenchmarkEntry,
    BuilderEntry,
    ConflictError,
    PartEntry,
    PatternEntry,
    PluginError,
    Registry,
    get_registry,
)
from attnreg.registry.registry import DISABLE_ENV

TRACEBACK_LINES = 4


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``list`` command."""
    parser = subparsers.add_parser(
        "list",
        help="list patterns, part kinds, builders, engines and plugins (failed ones included)",
        description="List what the installed plugins registered, which plugins failed, and name conflicts.",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="each pattern's and builder's parameters, each engine's capabilities, full tracebacks of failed plugins",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the registry; 1 when it cannot be loaded (strict mode and a plugin failed or two conflict)."""
    try:
        registry = get_registry()
    except (PluginError, ConflictError) as error:
        print(f"attnreg list: error: {error}", file=sys.stderr)
        return 1
    print(render(registry, verbose=args.verbose))
    return 0


def render(registry: Registry, *, verbose: bool = False) -> str:
    """The registry as text: one section per kind of contribution (patterns and builders with their parameters and
    engines with their capabilities when ``verbose``, part kinds with their class signatures), then failed plugins,
    conflicts, plugins that registered nothing and disabled plugins."""
    parameters = {name: parameters_text(entry) for name, entry in registry.patterns.items()} if verbose else {}
    builder_parameters = {name: parameters_text(entry) for name, entry in registry.builders.items()} if verbose else {}
    supports = {name: engine.capability_summary() for name, engine in registry.engine_table.items()} if verbose else {}
    sections = [
        _section("patterns", _rows(registry.patterns.values()), parameters),
        _section("parts", _part_rows(registry.parts.values())),
        _section("builders", _rows(registry.builders.values()), builder_parameters),
        _section("engines", _engine_rows(registry), supports, "supports"),
        _section("benchmarks", _rows(registry.benchmarks.values())),
        _failures(registry, verbose),
        _conflicts(registry),
        _empty(registry),
        _disabled(registry),
    ]
    return "\n\n".join(s for s in sections if s)


Row = tuple[str, str, str, str]


def _rows(entries: Iterable[PatternEntry | BuilderEntry | BenchmarkEntry]) -> list[Row]:
    """(name, plugin, distribution and version, description) of registered entries."""
    return [(e.name, e.plugin.name, e.plugin.source, e.description) for e in entries]


def _part_rows(entries: Iterable[PartEntry]) -> list[Row]:
    """The same columns for part kinds, the description led by the family and the class with its parameters:
    ``mask part Band(left: int | None = None, right: int | None = None): ...``."""
    rows = []
    for e in entries:
        signature = ", ".join(map(parameter_text, e.keyword_parameters().values()))
        described = f"{e.family} {e.part_type.__name__}({signature}): {e.description}"
        rows.append((e.kind, e.plugin.name, e.plugin.source, described))
    return rows


def _engine_rows(registry: Registry) -> list[Row]:
    """The same columns for engines, whose plugin the registry keeps apart."""
    rows = []
    for name, engine in registry.engine_table.items():
        info = registry.engine_plugins.get(name)
        rows.append((name, info.name if info else "?", info.source if info else "", engine.description))
    return rows


def _section(title: str, rows: list[Row], details: dict[str, str] | None = None, label: str = "parameters") -> str:
    """One aligned row per entry, its description as plain text, and under it its ``details`` (``label: ...``)."""
    rows = sorted(rows)
    if not rows:
        return f"{title}: (none)"
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{title}:"]
    for row in rows:
        cells = [row[i].ljust(widths[i]) for i in range(3)]
        lines.append(f"  {cells[0]}  {cells[1]}  {cells[2]}  {plain_text(row[3])}".rstrip())
        if details and row[0] in details:
            lines.append(f"      {label}: {details[row[0]]}")
    return "\n".join(lines)


def _failures(registry: Registry, verbose: bool) -> str:
    failed = registry.failures()
    if not failed:
        return ""
    lines = ["failed plugins:"]
    for info in sorted(failed, key=lambda p: p.name):
        what, _, trace = (info.error or "").partition("\n")
        lines.append(f"  {info.name}  {info.source}  {what.rstrip(':')}")
        trace_lines = trace.rstrip().splitlines()
        if not verbose and len(trace_lines) > TRACEBACK_LINES:
            trace_lines = [trace_lines[0], "  ...", *trace_lines[-(TRACEBACK_LINES - 1) :]]
            trace_lines.append("  (attnreg list --verbose shows the whole traceback)")
        lines.extend(f"    {line}" for line in trace_lines)
    return "\n".join(lines)


def _conflicts(registry: Registry) -> str:
    if not registry.conflicts:
        return ""
    lines = ["conflicts (names claimed by more than one plugin; nobody gets them):"]
    for (kind, name), conflict in sorted(registry.conflicts.items()):
        owners = " and ".join(f"{p.name} ({p.source})" for p in conflict.plugins)
        lines.append(f"  {kind} {name!r}: {owners}")
    return "\n".join(lines)


def _empty(registry: Registry) -> str:
    if not registry.empty_plugins:
        return ""
    lines = ["plugins that registered nothing:"]
    for name, why in registry.empty_plugins.items():
        lines.append(f"  {name}  {registry.plugins[name].source}  {why}")
    return "\n".join(lines)


def _disabled(registry: Registry) -> str:
    if not registry.disabled:
        return ""
    names = ", ".join(f"{info.name} ({info.source})" for _, info in sorted(registry.disabled.items()))
    return f"disabled by {DISABLE_ENV}: {names}"

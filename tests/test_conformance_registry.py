"""Every installed pattern passes the conformance suite on every registered engine that accepts it.

Parametrized over what is registered when the tests are collected: built-in plugins, the example plugin and
any other installed distribution; engines that refuse a case (e.g. xformers on CPU) skip it, never fail it.

FlexAttention compiles a kernel for every shape it sees (seconds each on a CPU: the suite's cases make dozens), so on
CPU it runs the suite on two patterns that between them hold the aggregated and bias parts and a block-sparse mask;
tests/test_flex_engine.py checks it on every engine test case (selected globals with their own projections too).
"""

from __future__ import annotations

import pytest
import torch

import attnreg
from attnreg.testing import check_pattern

pytestmark = pytest.mark.usefixtures("one_thread")

#: Engines that compile per shape, and the patterns they are checked on without CUDA: aggregated globals with both
#: biases, and a block-sparse union of block bands and global query and key ranges.
COMPILED = {"flex"}
COMPILED_PATTERNS = ["longt5-tglobal", "bigbird"]


def _engines(name: str) -> list[str]:
    every = [engine.name for engine in attnreg.get_registry().engines()]
    if torch.cuda.is_available() or name in COMPILED_PATTERNS:
        return every
    return [engine for engine in every if engine not in COMPILED]


@pytest.mark.parametrize("name", attnreg.list_patterns())
def test_installed_pattern_passes_the_conformance_suite(name):
    report = check_pattern(name, quick=True, engines=_engines(name))
    assert report.ok, "\n" + report.format()


def test_the_compiled_engines_are_checked_on_a_pattern_with_every_kind_of_part():
    assert set(COMPILED_PATTERNS) <= set(attnreg.list_patterns())
    parts = {kind for name in COMPILED_PATTERNS for kind in _part_kinds(attnreg.get_pattern(name))}
    assert {"window", "aggregated_globals", "bias", "aggregated_bias"} <= parts
    assert {"any", "block-band", "query-range", "key-range"} <= parts


def _part_kinds(pattern: attnreg.Pattern) -> set[str]:
    """The pattern's part fields that are set, and the kinds of its mask parts (composites opened)."""
    kinds = {name for name in ("window", "selected_globals", "aggregated_globals", "bias", "aggregated_bias")
             if getattr(pattern, name) is not None}
    stack = [] if pattern.mask is None else [pattern.mask]
    while stack:
        part = stack.pop()
        kinds.add(part.kind)
        stack.extend(getattr(part, "parts", ()))
    return kinds

"""Each engine's query block has its own name: ``QUERY_BLOCK`` (blocked engine), ``XFORMERS_QUERY_BLOCK`` (xformers)."""

from __future__ import annotations

import inspect

import pytest

from attnreg.execution.blocked import layout
from attnreg.execution.xformers_engine import engine, plan


def test_the_blocked_engine_cuts_queries_into_blocks_of_query_block(monkeypatch: pytest.MonkeyPatch) -> None:
    assert layout.Blocks.for_length(3 * layout.QUERY_BLOCK + 1).size == layout.QUERY_BLOCK
    monkeypatch.setattr(layout, "QUERY_BLOCK", 8)
    assert layout.Blocks.for_length(20).size == 8
    assert layout.Blocks.for_length(5).size == 5


XFORMERS_FUNCTIONS = [
    plan.block_layout,
    plan.build_plan,
    plan.kernel_shapes,
    engine.strategy,
    engine.xformers_attention,
    engine.plan_reasons,
]


@pytest.mark.parametrize("function", XFORMERS_FUNCTIONS, ids=lambda f: f.__name__)
def test_the_xformers_engine_groups_queries_by_xformers_query_block(function) -> None:
    assert inspect.signature(function).parameters["block"].default == plan.XFORMERS_QUERY_BLOCK


@pytest.mark.parametrize("module", [layout, plan, engine])
def test_no_module_keeps_the_old_shared_name(module) -> None:
    assert not hasattr(module, "DEFAULT_BLOCK")

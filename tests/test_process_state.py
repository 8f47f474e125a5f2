"""Process-wide state that must stay small and out of torch.compile: the bounded memos of the engines (shape-keyed
caches stop growing in a process that meets many lengths) and the registry's first load."""

from __future__ import annotations

import torch

import attnreg
from attnreg.execution.blocked import layout
from attnreg.execution.flex import engine as flex_engine
from attnreg.execution.memo import remember


def test_a_memo_builds_once_and_forgets_its_least_recently_used_entry_when_full() -> None:
    memo: dict = {}
    built = []
    for key in (1, 2, 1, 3, 1):
        remember(memo, key, lambda key=key: built.append(key) or key * 10, limit=2)
    assert built == [1, 2, 3] and memo == {3: 30, 1: 10}


def test_the_engines_memos_stay_bounded_over_many_lengths(monkeypatch) -> None:
    monkeypatch.setattr(layout, "_CACHE", {})
    monkeypatch.setattr(flex_engine, "_BLOCKS_VISITED", {})
    monkeypatch.setattr(flex_engine, "_MEMO_LIMIT", 3)
    monkeypatch.setattr(layout, "_CACHE_LIMIT", 3)
    pattern = attnreg.get_pattern("dilated-window", radius=8, dilation=2)
    for length in range(20, 30):
        q = torch.randn(1, 1, length, 8)
        call = attnreg.execution.make_call(q, q, q, pattern)
        flex_engine.FlexEngine().estimated_cost(call)
        attnreg.attention(q, q, q, pattern, backend="blocked")
    assert len(layout._CACHE) <= 3 and len(flex_engine._BLOCKS_VISITED) == 3


def test_loading_the_registry_inside_a_compiled_function_runs_eagerly(monkeypatch) -> None:
    """The first use may come inside torch.compile: loading plugins (which import transformers' models) must not have
    the compiler try every function the imports run."""
    monkeypatch.setattr(attnreg.registry, "_registry", None)
    torch._dynamo.reset()
    before = torch._dynamo.utils.counters["frames"]["total"]
    compiled = torch.compile(lambda x: torch.sin(x) * len(attnreg.get_registry().patterns))
    assert compiled(torch.ones(3)).shape == (3,)
    assert torch._dynamo.utils.counters["frames"]["total"] - before < 10
    torch._dynamo.reset()

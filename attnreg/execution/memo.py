"""Bounded memos for values keyed by shape and pattern: a long-running process meets many lengths, so each memo
forgets its least recently used entry once it holds ``limit`` (a plain dict, in order of use, which torch.compile
reads)."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

import torch

T = TypeVar("T")


def remember(memo: dict[Hashable, T], key: Hashable, build: Callable[[], T], limit: int) -> T:
    """``memo[key]``, built by ``build()`` the first time; the least recently used entry goes when ``memo`` is full
    (while torch.compile traces, a hit is only read: moving it would be a side effect of the graph)."""
    if key in memo:
        if not torch.compiler.is_compiling():
            memo[key] = memo.pop(key)
        return memo[key]
    if len(memo) >= limit:
        memo.pop(next(iter(memo)))
    memo[key] = build()
    return memo[key]

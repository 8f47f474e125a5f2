"""Bounded memos for values keyed by shape and pattern: a long-running process meets many lengths, so each memo
forgets its oldest entry once it holds ``limit`` (a plain dict keeps insertion order, and torch.compile reads it)."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

T = TypeVar("T")


def remember(memo: dict[Hashable, T], key: Hashable, build: Callable[[], T], limit: int) -> T:
    """``memo[key]``, built by ``build()`` the first time; the oldest entry goes when ``memo`` is full."""
    if key not in memo:
        if len(memo) >= limit:
            memo.pop(next(iter(memo)))
        memo[key] = build()
    return memo[key]

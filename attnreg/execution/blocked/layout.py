"""Block geometry: how a sequence is cut into query blocks, and what the padding to whole blocks costs."""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from attnreg.execution.memo import remember

#: Queries per block on the window part; a measured compromise between the kernels' efficiency (larger blocks) and
#: the keys a block computes beyond its queries' windows (smaller blocks). On 2 CPU cores at 16k tokens, 64 against
#: 128: LongT5 local (radius 127) forward + backward 380 ms against 435 ms, Longformer (window 512) the same.
QUERY_BLOCK = 64


@dataclass(frozen=True)
class Blocks:
    """``length`` queries cut into ``count`` blocks of ``size`` (the last one padded)."""

    length: int
    size: int

    @classmethod
    def for_length(cls, length: int, block: int | None = None) -> Blocks:
        """Blocks of ``block`` (default :data:`QUERY_BLOCK`) queries, or one block when the sequence is shorter."""
        return cls(length=length, size=min(block or QUERY_BLOCK, length))

    @property
    def count(self) -> int:
        return math.ceil(self.length / self.size)

    @property
    def padded(self) -> int:
        return self.count * self.size

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, heads, length, dim)`` into ``(batch, heads, count, size, dim)``, zero-padding the last block."""
        batch, heads, _, dim = x.shape
        return pad_length(x, 0, self.padded - self.length).view(batch, heads, self.count, self.size, dim)

    def join(self, x: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`split` on ``(batch, heads, count, size, *rest)``: ``(batch, heads, length, *rest)``."""
        return x.flatten(2, 3)[:, :, : self.length]

    def positions(self, device: torch.device) -> torch.Tensor:
        """Query positions ``(count, size)`` (padded ones run past ``length``)."""
        return torch.arange(self.padded, device=device).view(self.count, self.size)


def pad_length(x: torch.Tensor, before: int, after: int, value: float | bool = 0) -> torch.Tensor:
    """Pad dimension 2 of ``(batch, heads, length, dim)`` (or dimension 1 of ``(batch, length)``) with ``value``.

    One concatenation: each element is written once (a padded copy would fill the whole tensor first). Heads-inner
    storage ``(batch, length, heads, dim)``, as a projection makes it, stays so: a plain copy, not a transposing one.
    """
    if before == 0 and after == 0:
        return x
    if x.dim() == 4 and x.stride(1) < x.stride(2):
        return _concatenate(x.transpose(1, 2), 1, before, after, value).transpose(1, 2)
    return _concatenate(x, 1 if x.dim() == 2 else 2, before, after, value)


def _concatenate(x: torch.Tensor, dim: int, before: int, after: int, value: float | bool) -> torch.Tensor:
    """``x`` with ``before`` and ``after`` entries of ``value`` around it along ``dim``."""
    pieces = []
    for count in (before, after):
        shape = list(x.shape)
        shape[dim] = count
        pieces.append(x.new_full(shape, value) if count else None)
    return torch.cat([p for p in (pieces[0], x, pieces[1]) if p is not None], dim=dim)


def table_dtype(weight: torch.Tensor) -> torch.Tensor:
    """A bias table in the dtype scores are computed in: fp32, or fp64 for fp64 tables."""
    return weight.to(torch.promote_types(weight.dtype, torch.float32))


T = TypeVar("T")

_CACHE: dict[Hashable, Any] = {}
_CACHE_LIMIT = 64


def cached(key: Hashable, build: Callable[[], T]) -> T:
    """``build()``, remembered by ``key``: index tensors (or tuples of them) that depend only on shapes and the pattern.

    Why: they are made of many tiny operations, each costly on a busy CPU. Not cached while compiling (the
    compiler folds them itself).
    """
    if torch.compiler.is_compiling():
        return build()
    return remember(_CACHE, key, build, _CACHE_LIMIT)

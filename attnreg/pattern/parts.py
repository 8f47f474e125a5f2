"""The core parts of an attention pattern: small frozen values that say what each query sees and how it scores it.

Their methods compute only what defines that meaning exactly (T5's buckets, LongT5's aggregated tokens, the global
slots), for every engine alike; how to run the attention fast is the engines' business.

One window convention everywhere: a query at position ``i`` sees key ``j`` iff ``i - left <= j <= i + right``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from attnreg._validation import require, require_int


@dataclass(frozen=True)
class Window:
    """Keys a query sees around itself: ``i - left <= j <= i + right``; ``None`` leaves that side unbounded.

    Both counts exclude ``i`` itself, which a query always sees. ``right=0`` is a causal window.
    """

    left: int | None
    right: int | None

    def __post_init__(self) -> None:
        for side in ("left", "right"):
            value = getattr(self, side)
            if value is not None:
                require_int(f"Window.{side}", value, minimum=0)

    @classmethod
    def symmetric(cls, radius: int | None) -> Window:
        """The window ``|i - j| <= radius`` (LongT5's ``local_radius``)."""
        return cls(left=radius, right=radius)

    @classmethod
    def causal(cls, left: int | None) -> Window:
        """A causal window: the query and up to ``left`` keys before it."""
        return cls(left=left, right=0)

    @property
    def is_causal(self) -> bool:
        """True when no query sees a key after itself."""
        return self.right == 0

    def contains(self, relative_position: torch.Tensor) -> torch.Tensor:
        """Which relative positions ``j - i`` fall inside the window (elementwise, boolean)."""
        inside = torch.ones_like(relative_position, dtype=torch.bool)
        if self.left is not None:
            inside &= relative_position >= -self.left
        if self.right is not None:
            inside &= relative_position <= self.right
        return inside

    def span(self, length: int) -> tuple[int, int]:
        """The window's reach ``(left, right)`` on a sequence of ``length`` tokens, unbounded sides made finite."""
        cap = max(length - 1, 0)
        left = cap if self.left is None else min(self.left, cap)
        right = cap if self.right is None else min(self.right, cap)
        return left, right


@dataclass(frozen=True)
class SelectedGlobals:
    """Global tokens chosen per example at run time by a boolean ``global_mask`` (Longformer).

    Symmetric: every token sees every global token, and a global token sees every non-padded token.
    With ``own_projections`` the global rows take their own query/key/value projections
    (Longformer's ``query_global``, ``key_global``, ``value_global``) when the caller passes them.
    """

    own_projections: bool = False

    def __post_init__(self) -> None:
        require(
            isinstance(self.own_projections, bool),
            "SelectedGlobals.own_projections",
            self.own_projections,
            "expected a bool",
        )

    @staticmethod
    def slots(global_mask: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(positions, filled)``, both ``(batch, count)``: each example's global token positions in order (then
        other positions, as filler), and which slots hold a global token. ``global_mask``: ``(batch, length)`` bool."""
        positions = torch.sort((~global_mask).to(torch.int8), dim=-1, stable=True).indices[:, :count]
        filled = torch.arange(count, device=global_mask.device) < global_mask.sum(dim=-1, keepdim=True)
        return positions, filled


@dataclass(frozen=True)
class AggregatedGlobals:
    """Transient global tokens (LongT5 TGlobal): each fixed block of ``global_block_size`` tokens becomes one extra key.

    A block's token is the sum of its non-padded tokens' hidden states (the model normalises and projects it);
    tokens after the last full block join that block, and there are ``length // global_block_size`` of them.
    They are extra keys and values only: no query belongs to them.
    """

    global_block_size: int

    def __post_init__(self) -> None:
        require_int("AggregatedGlobals.global_block_size", self.global_block_size, minimum=1)

    def count(self, length: int) -> int:
        """How many aggregated tokens a sequence of ``length`` positions has."""
        return length // self.global_block_size

    def block_ids(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """The aggregated token each position belongs to, ``(batch, length)`` int64; ``-1`` for none.

        Padded positions belong to none. Block ``p // global_block_size`` is capped at the last block whose final
        position is a real token, so a tail shorter than a block joins the block before it.
        """
        batch, length = attention_mask.shape
        real = attention_mask.bool()
        positions = torch.arange(length, device=attention_mask.device)
        ends_block = (positions % self.global_block_size) == self.global_block_size - 1
        full_blocks = (ends_block & real).sum(dim=-1, keepdim=True) - 1
        ids = torch.minimum((positions // self.global_block_size).expand(batch, length), full_blocks)
        return torch.where(real, ids, torch.full_like(ids, -1))

    def valid(self, block_ids: torch.Tensor, count: int) -> torch.Tensor:
        """Which aggregated tokens a real query may see, ``(batch, count)`` bool: those up to the largest id in use."""
        last = block_ids.max(dim=-1, keepdim=True).values
        return torch.arange(count, device=block_ids.device) <= last

    def aggregate(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Sum ``(batch, length, dim)`` hidden states into ``(batch, count, dim)`` block tokens, in O(length * dim);
        ``attention_mask`` ``(batch, length)`` marks the real tokens (None: all of them)."""
        require(
            isinstance(hidden_states, torch.Tensor) and hidden_states.dim() == 3,
            "hidden_states.shape",
            tuple(getattr(hidden_states, "shape", ())),
            "expected (batch, length, dim)",
        )
        if attention_mask is None:
            attention_mask = torch.ones(hidden_states.shape[:2], dtype=torch.bool, device=hidden_states.device)
        require(
            isinstance(attention_mask, torch.Tensor) and attention_mask.shape == hidden_states.shape[:2],
            "attention_mask.shape",
            tuple(getattr(attention_mask, "shape", ())),
            f"expected (batch, length) = {tuple(hidden_states.shape[:2])}",
        )
        batch, length, dim = hidden_states.shape
        count = self.count(length)
        ids = self.block_ids(attention_mask)
        slots = torch.where(ids >= 0, ids, torch.full_like(ids, count))  # an extra slot collects the padding
        sums = hidden_states.new_zeros(batch, count + 1, dim)
        sums = sums.scatter_add(1, slots.unsqueeze(-1).expand(batch, length, dim), hidden_states)
        return sums[:, :count]

    def relative_position(self, block_ids: torch.Tensor, count: int) -> torch.Tensor:
        """``g - block(i)`` for every position and aggregated token, ``(batch, length, count)``."""
        return torch.arange(count, device=block_ids.device) - block_ids.unsqueeze(-1)


@dataclass(frozen=True)
class RelativePositionBias:
    """An additive per-head bias, read from a learned ``(num_buckets, heads)`` table by a relative position's T5 bucket.

    Small distances get a bucket each; larger ones share logarithmically wider buckets up to ``max_distance``.
    ``bidirectional=False`` keeps buckets for keys before the query only (decoders).
    """

    num_buckets: int = 32
    max_distance: int = 128
    bidirectional: bool = True

    def __post_init__(self) -> None:
        require(
            isinstance(self.bidirectional, bool),
            "RelativePositionBias.bidirectional",
            self.bidirectional,
            "expected a bool",
        )
        require_int("RelativePositionBias.num_buckets", self.num_buckets, minimum=4 if self.bidirectional else 2)
        require_int("RelativePositionBias.max_distance", self.max_distance, minimum=1)
        exact = (self.num_buckets // 2 if self.bidirectional else self.num_buckets) // 2
        require(
            self.max_distance > exact,
            "RelativePositionBias.max_distance",
            self.max_distance,
            f"must exceed the {exact} exact buckets that num_buckets={self.num_buckets} gives",
        )

    def bucket(self, relative_position: torch.Tensor) -> torch.Tensor:
        """The bucket of each relative position ``j - i`` (int64, same shape), as T5 computes it."""
        relative_position = relative_position.long()
        buckets = self.num_buckets
        offset = torch.zeros_like(relative_position)
        if self.bidirectional:
            buckets //= 2
            offset = (relative_position > 0).long() * buckets
            distance = relative_position.abs()
        else:
            distance = (-relative_position).clamp(min=0)
        exact = buckets // 2
        scaled = torch.log(distance.float() / exact) / math.log(self.max_distance / exact) * (buckets - exact)
        far = (exact + scaled.to(torch.long)).clamp(max=buckets - 1)
        return offset + torch.where(distance < exact, distance, far)

    def lookup(self, weight: torch.Tensor, relative_position: torch.Tensor) -> torch.Tensor:
        """The bias ``weight[bucket(rel)]`` with the head dimension first: ``(heads, *rel.shape)``."""
        values = weight[self.bucket(relative_position)]
        return values.movedim(-1, 0)

"""The dense materialisation of a pattern: the O(n²) ground truth that every fast path is tested against."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnreg._validation import require
from attnreg.pattern.predicates import AllOf, AnyOf, Band, KeyRange, QueryRange, count_allowed
from attnreg.pattern.spec import Pattern


@dataclass(frozen=True)
class DenseLayout:
    """A pattern spelled out for one batch: keys are the ``length`` tokens followed by the aggregated tokens.

    - ``allowed``: ``(batch, length, length + count)`` bool, query × key;
    - ``global_rows``: ``(batch, length)`` bool, the queries that use the global projections;
    - ``block_ids``: ``(batch, length)`` int64, each token's aggregated token (-1: none), or ``None``;
    - ``relative_position``: ``(length, length)`` ``j - i``;
    - ``aggregated_relative_position``: ``(batch, length, count)`` ``g - block(i)``.
    """

    pattern: Pattern
    allowed: torch.Tensor
    global_rows: torch.Tensor
    block_ids: torch.Tensor | None
    relative_position: torch.Tensor
    aggregated_relative_position: torch.Tensor

    @property
    def count(self) -> int:
        """How many aggregated keys follow the token keys."""
        return self.aggregated_relative_position.shape[-1]

    def aggregation(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``(batch, count, length)`` 0/1 matrix: aggregated inputs are ``aggregation @ hidden_states``."""
        batch, length = self.global_rows.shape
        if self.block_ids is None:
            return torch.zeros(batch, 0, length, dtype=dtype, device=self.allowed.device)
        slots = torch.arange(self.count, device=self.block_ids.device)
        return (slots[None, :, None] == self.block_ids[:, None, :]).to(dtype)

    def bias(
        self,
        bias_weight: torch.Tensor | None = None,
        aggregated_bias_weight: torch.Tensor | None = None,
        num_heads: int = 1,
    ) -> torch.Tensor:
        """The additive bias ``(batch, heads, length, length + count)`` from the tables and the pattern's score terms
        (zeros if none); score terms apply to token keys.

        In fp32, or fp64 when a table is fp64 (so that float64 checks such as ``gradcheck`` stay exact).
        """
        batch, length = self.global_rows.shape
        heads = _heads(bias_weight, aggregated_bias_weight, num_heads)
        device = self.allowed.device
        dtype = torch.float32
        for weight in (bias_weight, aggregated_bias_weight):
            if weight is not None:
                dtype = torch.promote_types(dtype, weight.dtype)
        token_bias = torch.zeros(batch, heads, length, length, device=device, dtype=dtype)
        aggregated_bias = torch.zeros(batch, heads, length, self.count, device=device, dtype=dtype)
        if self.pattern.bias is not None and bias_weight is not None:
            token_bias = token_bias + self.pattern.bias.lookup(bias_weight.to(dtype), self.relative_position)
        positions = torch.arange(length, device=device)
        for term in self.pattern.score_terms:
            token_bias = token_bias + term.term(positions[:, None], positions[None, :], heads).to(dtype)
        if self.pattern.aggregated_bias is not None and aggregated_bias_weight is not None:
            looked_up = self.pattern.aggregated_bias.lookup(
                aggregated_bias_weight.to(dtype), self.aggregated_relative_position
            )
            aggregated_bias = aggregated_bias + looked_up.movedim(0, 1)
        return torch.cat([token_bias, aggregated_bias], dim=-1)


def _heads(bias_weight: torch.Tensor | None, aggregated_bias_weight: torch.Tensor | None, default: int) -> int:
    for weight in (bias_weight, aggregated_bias_weight):
        if weight is not None:
            return weight.shape[-1]
    return default


def materialize(
    pattern: Pattern,
    length: int,
    *,
    attention_mask: torch.Tensor | None = None,
    global_mask: torch.Tensor | None = None,
    document_ids: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> DenseLayout:
    """Spell ``pattern`` out densely for ``length`` tokens, a ``(batch, length)`` attention mask and global mask.

    ``document_ids`` ``(batch, length)`` integers restrict token keys to the query's own document. Without masks the
    layout is built on ``device`` (default: the CPU); with masks, on theirs.
    """
    require(isinstance(length, int) and length >= 1, "length", length, "expected an int >= 1")
    real = _mask("attention_mask", attention_mask, length, default=True, other=global_mask, device=device)
    device = real.device
    globals_ = _mask("global_mask", global_mask, length, default=False, other=real, device=device)
    require(
        pattern.selected_globals is not None or global_mask is None or not bool(globals_.any()),
        "global_mask",
        "a mask with global tokens",
        "this pattern has no selected_globals; pass no global_mask",
    )
    globals_ = globals_ & real
    if document_ids is not None:  # the documents give the batch size when no mask does
        real = real.expand(document_ids.shape[0], length)
        globals_ = globals_.expand(document_ids.shape[0], length)
    positions = torch.arange(length, device=device)
    relative_position = positions[None, :] - positions[:, None]

    sees = torch.ones(length, length, dtype=torch.bool, device=device)
    if pattern.window is not None:
        sees = pattern.window.contains(relative_position)
    if pattern.mask is not None:
        sees = sees & pattern.mask.allowed(positions[:, None], positions[None, :], length)
    sees = sees.expand(real.shape[0], length, length)
    if pattern.selected_globals is not None:
        sees = sees | globals_[:, None, :] | globals_[:, :, None]
    token_allowed = sees & real[:, None, :] & real[:, :, None]
    if document_ids is not None:
        token_allowed = token_allowed & (document_ids[:, :, None] == document_ids[:, None, :])

    block_ids = None
    count = pattern.aggregated_count(length)
    aggregated_allowed = torch.zeros(real.shape[0], length, count, dtype=torch.bool, device=device)
    aggregated_relative_position = torch.zeros(real.shape[0], length, count, dtype=torch.long, device=device)
    if pattern.aggregated_globals is not None:
        block_ids = pattern.aggregated_globals.block_ids(real)
        valid = pattern.aggregated_globals.valid(block_ids, count)
        aggregated_allowed = valid[:, None, :] & real[:, :, None]
        aggregated_relative_position = pattern.aggregated_globals.relative_position(block_ids, count)

    return DenseLayout(
        pattern=pattern,
        allowed=torch.cat([token_allowed, aggregated_allowed], dim=-1),
        global_rows=globals_,
        block_ids=block_ids,
        relative_position=relative_position,
        aggregated_relative_position=aggregated_relative_position,
    )


def _mask(
    name: str,
    mask: torch.Tensor | None,
    length: int,
    *,
    default: bool,
    other: torch.Tensor | None,
    device: torch.device | str | None,
) -> torch.Tensor:
    """A ``(batch, length)`` bool mask; a missing one is filled with ``default`` at the other mask's batch size."""
    if mask is None:
        batch = 1 if other is None else other.shape[0]
        device = device if other is None else other.device
        return torch.full((batch, length), default, dtype=torch.bool, device=device)
    require(
        isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape[1] == length,
        name,
        tuple(mask.shape) if isinstance(mask, torch.Tensor) else mask,
        f"expected a (batch, {length}) tensor",
    )
    return mask.bool()


def allowed_pairs(pattern: Pattern, length: int, *, num_globals: int = 0) -> int:
    """How many (query, key) pairs ``pattern`` allows at ``length``, no padding, globals first; O(length)."""
    require(
        isinstance(num_globals, int) and 0 <= num_globals <= length,
        "num_globals",
        num_globals,
        f"expected an int in [0, {length}]",
    )
    require(
        num_globals == 0 or pattern.selected_globals is not None,
        "num_globals",
        num_globals,
        "this pattern has no selected_globals",
    )
    if pattern.mask is not None:
        return _mask_pairs(pattern, length, num_globals) + length * pattern.aggregated_count(length)
    i = torch.arange(length, dtype=torch.long)
    if pattern.window is None:
        low, high = torch.zeros_like(i), torch.full_like(i, length - 1)
    else:
        left, right = pattern.window.span(length)
        low, high = (i - left).clamp(min=0), (i + right).clamp(max=length - 1)
    per_row = high - low + 1
    if num_globals:
        globals_in_window = (high.clamp(max=num_globals - 1) - low + 1).clamp(min=0)
        per_row = torch.where(i < num_globals, torch.full_like(i, length), per_row + num_globals - globals_in_window)
    return int(per_row.sum()) + length * pattern.aggregated_count(length)


def _mask_pairs(pattern: Pattern, length: int, num_globals: int) -> int:
    """Token pairs of a pattern with a mask part, counted on its block coverage; the ``num_globals`` first tokens
    see and are seen by every token."""
    sees = pattern.mask
    if pattern.window is not None:
        sees = AllOf((Band(pattern.window.left, pattern.window.right), sees))
    if num_globals:
        sees = AnyOf((sees, KeyRange(0, num_globals), QueryRange(0, num_globals)))
    return count_allowed(sees, length)

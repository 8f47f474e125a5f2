"""FlexAttention's ``mask_mod`` and ``score_mod`` for a pattern: per-element functions that only index small tables.

Why tables: the kernel calls these for every pair it visits, so everything that can be worked out per token, per
offset or per block is worked out before (key masks, positions, documents, T5 buckets per offset); the functions'
code is the same for every pattern with the same parts, so flex compiles it once per shape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

#: Block of queries and keys the mask part's bits are laid out in (flex's default block size).
BLOCK = 128


@dataclass(frozen=True)
class PartBits:
    """The pattern's token predicate on its partial blocks: ``bits[slot[qb, kb], i % BLOCK, j % BLOCK]``; slot 0 is
    all False (empty blocks), slot 1 all True (full blocks, partial in a call only for padding or documents)."""

    slot: torch.Tensor
    bits: torch.Tensor


@dataclass(frozen=True)
class Side:
    """What one flex call's queries may see, per example (tables have the batch first; ``None``: no restriction, or
    the index itself for positions).

    - ``length``: token count; ``tokens``: where the token keys end (extra keys follow); ``keys``: the key count;
    - ``key_ok`` ``(batch, keys)``: which keys may be seen at all (padding, global keys outside their slots, unfilled
      slots, aggregated tokens past an example's last full block);
    - ``query_positions`` ``(batch, queries)`` / ``key_positions`` ``(batch, keys)``: token positions, for biases;
    - ``query_documents`` / ``key_documents``: document ids (key ``-1`` for none);
    - ``aggregated``: ``(start, count)`` of the aggregated keys among the keys; ``query_blocks`` ``(batch, queries)``:
      the block each query's aggregated bias counts from;
    - ``band``: the window ``(left, right)`` checked on token keys (``None`` sides unbounded), or ``None``;
    - ``part``: the pattern's window and mask part bit by bit on partial blocks, or ``None``.
    """

    length: int
    tokens: int
    keys: int
    key_ok: torch.Tensor | None = None
    query_positions: torch.Tensor | None = None
    key_positions: torch.Tensor | None = None
    query_documents: torch.Tensor | None = None
    key_documents: torch.Tensor | None = None
    aggregated: tuple[int, int] | None = None
    query_blocks: torch.Tensor | None = None
    band: tuple[int | None, int | None] | None = None
    part: PartBits | None = None


def mask_mod(side: Side, device: torch.device) -> Callable[..., torch.Tensor]:
    """Whether query ``q`` may see key ``kv`` of example ``b``: the key is allowed, in the query's document, and a
    token key passes the window or the mask part (extra keys after the tokens pass on ``key_ok`` alone)."""
    last, tokens = side.keys - 1, side.tokens
    key_ok, documents, band, part = side.key_ok, side.key_documents, side.band, side.part
    query_documents = side.query_documents
    # the window's reach as tensors, not constants: patterns that differ only in their window share a compiled kernel
    left, right = (None, None) if band is None else (_reach(side.band[0], device), _reach(side.band[1], device))

    def mod(b, h, q, kv):
        kv = kv.clamp(max=last)
        allowed = torch.ones_like(q, dtype=torch.bool) if key_ok is None else key_ok[b, kv]
        if documents is not None:
            allowed = allowed & (query_documents[b, q] == documents[b, kv])
        token = None
        if band is not None:
            token = torch.ones_like(allowed)
            if left is not None:
                token = token & (kv >= q - left)
            if right is not None:
                token = token & (kv <= q + right)
        elif part is not None:
            slot = part.slot[q // BLOCK, (kv // BLOCK).clamp(max=part.slot.shape[1] - 1)]
            token = part.bits[slot, q % BLOCK, kv % BLOCK]
        if token is not None:
            allowed = allowed & (token | (kv >= tokens))
        return allowed

    return mod


def _reach(side: int | None, device: torch.device) -> torch.Tensor | None:
    return None if side is None else torch.tensor(side, dtype=torch.int32, device=device)


def score_mod(
    side: Side,
    *,
    token_table: torch.Tensor | None,
    aggregated_table: torch.Tensor | None,
    aggregated_offset: int,
    softcap: float | None,
) -> Callable[..., torch.Tensor] | None:
    """The scaled score of query ``q`` and key ``kv`` made final: the softcap, then the bias of the key's token
    position (``token_table`` ``(heads, 2 * length - 1)`` by offset ``j - i``: learned bias and score terms), or for
    an aggregated key the ``aggregated_table`` ``(heads, offsets)`` by ``g - block(i) + aggregated_offset``."""
    if softcap is None and token_table is None and aggregated_table is None:
        return None
    length, last = side.length, side.keys - 1
    query_positions, key_positions = side.query_positions, side.key_positions
    start, count = side.aggregated if side.aggregated is not None else (0, 0)
    query_blocks = side.query_blocks

    def mod(score, b, h, q, kv):
        kv = kv.clamp(max=last)
        if softcap is not None:
            score = torch.tanh(score / softcap) * softcap
        i = q if query_positions is None else query_positions[b, q]
        j = kv if key_positions is None else key_positions[b, kv]
        bias = None
        if token_table is not None:
            bias = token_table[h, (j - i + length - 1).clamp(0, 2 * length - 2)]
        if count and (bias is not None or aggregated_table is not None):
            extra = torch.zeros_like(score)
            if aggregated_table is not None:
                offset = (kv - start - query_blocks[b, q] + aggregated_offset).clamp(0, aggregated_table.shape[1] - 1)
                extra = aggregated_table[h, offset]
            inside = (kv >= start) & (kv < start + count)
            bias = extra if bias is None else torch.where(inside, extra, bias)
        return score if bias is None else score + bias

    return mod

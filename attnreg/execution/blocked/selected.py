"""Selected global tokens (Longformer): every query against the global keys, and the global queries against all.

Global tokens are gathered into ``slots`` per example (globals first, in position order); the slot count is the
call's ``max_globals`` bound, or else the largest number of globals in the batch, read back from the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnreg.execution.blocked.aggregated import aggregated_slot_part
from attnreg.execution.blocked.dropped import BlockDropout
from attnreg.execution.blocked.kernel import blocked_attention
from attnreg.execution.blocked.layout import Blocks, table_dtype
from attnreg.execution.blocked.merge import Part, merge
from attnreg.execution.call import AttentionCall


@dataclass(frozen=True)
class Slots:
    """Where each example's global tokens are.

    ``rows``: ``(batch, length)`` global rows; ``index``: ``(batch, slots)`` positions; ``filled``: slots in use.
    """

    rows: torch.Tensor
    index: torch.Tensor
    filled: torch.Tensor

    @classmethod
    def gather(cls, global_rows: torch.Tensor, call: AttentionCall) -> Slots:
        """Slots for the ``(batch, length)`` bool global rows (already restricted to real tokens)."""
        index, filled = call.pattern.selected_globals.slots(global_rows, call.global_slots(global_rows.sum(dim=-1)))
        return cls(rows=global_rows, index=index, filled=filled)

    @property
    def count(self) -> int:
        return self.index.shape[1]

    def take(self, x: torch.Tensor) -> torch.Tensor:
        """The slot rows ``(batch, heads, slots, dim)`` of ``(batch, heads, length, dim)``."""
        batch, heads, _, dim = x.shape
        return x.gather(2, self.index[:, None, :, None].expand(batch, heads, self.count, dim))

    def put(self, rows: torch.Tensor, into: torch.Tensor) -> torch.Tensor:
        """``into`` ``(batch, heads, length, dim)`` with the global rows replaced by ``rows`` (slot order).

        One copy of ``into`` and a write per slot; unfilled slots (which point at other rows) write back what is there.
        """
        batch, heads, _, dim = rows.shape
        index = self.index[:, None, :, None].expand(batch, heads, self.count, dim)
        rows = torch.where(self.filled[:, None, :, None], rows.to(into.dtype), into.gather(2, index))
        return into.scatter(2, index, rows)


def _bias(call: AttentionCall, key_positions: torch.Tensor, query_positions: torch.Tensor) -> torch.Tensor | None:
    """``(batch, heads, *shape)`` fp32 bias of ``key - query`` (broadcast positions), or ``None`` without a bias."""
    if call.bias_weight is None:
        return None
    return call.pattern.bias.lookup(table_dtype(call.bias_weight), key_positions - query_positions).movedim(0, 1)


def global_key_part(call: AttentionCall, blocks: Blocks, slots: Slots) -> Part:
    """Every query against the global tokens' keys (the token projections)."""
    positions = blocks.positions(call.device)
    bias = _bias(call, slots.index[:, None, None, :], positions[None, :, :, None])
    out, lse = blocked_attention(
        blocks.split(call.q),
        slots.take(call.k),
        slots.take(call.v),
        size=slots.count,
        step=0,
        scale=call.scale,
        softcap=call.pattern.softcap,
        bias=bias,
        valid=slots.filled[:, None, None, None, :],
        dropout=BlockDropout.of(call.dropout, lambda: (positions[None], slots.index[:, None, None, :])),
    )
    has_keys = slots.filled.any(dim=-1)[:, None, None]
    return Part(blocks.join(out), blocks.join(lse), has_keys)


def global_query_rows(call: AttentionCall, real: torch.Tensor, slots: Slots) -> torch.Tensor:
    """The global queries' rows ``(batch, heads, slots, dim)``: against every real token and the aggregated keys,
    with their own projections when the call has them."""
    q, k, v = (call.global_q, call.global_k, call.global_v) if call.has_global_projections else (call.q, call.k, call.v)
    positions = torch.arange(call.length, device=call.device)
    bias = _bias(call, positions[None, None, :], slots.index[:, :, None])
    dropout = BlockDropout.of(call.dropout, lambda: (slots.index[:, None, :], positions[None, None, None, :]))
    queries = slots.take(q)
    out, lse = blocked_attention(
        queries[:, :, None],
        k,
        v,
        size=call.length,
        step=0,
        scale=call.scale,
        softcap=call.pattern.softcap,
        bias=None if bias is None else bias[:, :, None],
        valid=real[:, None, None, None, :],
        dropout=dropout,
    )
    parts = [Part(out[:, :, 0], lse[:, :, 0])]
    if call.count > 0:
        parts.append(aggregated_slot_part(call, real, queries, slots.index))
    return merge(parts)

"""``BlockedEngine``: every pattern made of the parts, in blocks, linear in the sequence length, on any device."""

from __future__ import annotations

import torch

from attnreg.execution import host
from attnreg.execution.blocked.aggregated import aggregated_part
from attnreg.execution.blocked.layout import Blocks
from attnreg.execution.blocked.merge import merge
from attnreg.execution.blocked.selected import Slots, global_key_part, global_query_rows
from attnreg.execution.blocked.sparse import sparse_part, uses_sparse, visited_pairs
from attnreg.execution.blocked.window import window_part, window_size
from attnreg.execution.call import AttentionCall, slot_count_reasons
from attnreg.execution.engine import Engine
from attnreg.execution.window_reach import window_reach

#: Effective rate (FLOP/s) of the blocked kernels and a fixed cost per call, measured on a 2-core CPU.
_CPU_RATE = 1e11
_GPU_RATE = 5e12
_CALL_OVERHEAD = 1e-3


def _keys(call: AttentionCall) -> tuple[bool, torch.Tensor, Slots | None, torch.Tensor | None]:
    """``(padded, real, slots, keys_ok)``: whether any token is padding, the real tokens ``(batch, length)``, the
    global slots (None without global tokens) and the keys the token parts may see (None: all)."""
    real = call.attention_mask
    padded = real is not None and not (host.host_readable(real) and bool(real.all()))
    if not padded:
        real = torch.ones(call.batch, call.length, dtype=torch.bool, device=call.device)
    slots = None
    if call.pattern.selected_globals is not None and call.global_mask is not None:
        slots = Slots.gather(call.global_mask & real, call)
        if slots.count == 0:
            slots = None
    keys_ok = real if slots is None else real & ~slots.rows
    if not padded and slots is None:
        keys_ok = None
    return padded, real, slots, keys_ok


def blocked_attention_call(call: AttentionCall) -> torch.Tensor:
    """The output of ``call``, ``(batch, heads, length, head_dim)``; differentiable in every tensor input."""
    padded, real, slots, keys_ok = call.per_batch(("blocked", "keys"), lambda: _keys(call))
    blocks = Blocks.for_length(call.length)
    parts = [(sparse_part if uses_sparse(call) else window_part)(call, blocks, keys_ok)]
    if slots is not None:
        parts.append(global_key_part(call, blocks, slots))
    if call.count > 0:
        parts.append(aggregated_part(call, real))
    out = merge(parts)
    if slots is not None:
        out = slots.put(global_query_rows(call, real, slots), out)
    if padded:
        out = torch.where(real[:, None, :, None], out, torch.zeros((), dtype=out.dtype, device=out.device))
    return out.to(call.dtype)


def blocked_flops(call: AttentionCall) -> int:
    """Multiply-adds ×2 of the blocked computation, padding to whole blocks included."""
    blocks = Blocks.for_length(call.length)
    if uses_sparse(call):
        keys = visited_pairs(call, blocks)
    else:
        keys = blocks.padded * window_size(blocks, *window_reach(call))
    if call.pattern.selected_globals is not None and call.global_mask is not None:
        keys += 2 * call.length  # one global token as the typical case; the dispatcher needs a rough figure
    keys += call.length * call.count
    return 4 * call.batch * call.num_heads * call.head_dim * keys


class BlockedEngine(Engine):
    """Queries in blocks, each against its window's key blocks plus the global keys, merged by log-sum-exp."""

    name = "blocked"
    description = "blocked window + global parts merged by log-sum-exp, linear in length; any device"
    supports_dropout = True
    supports_dropout_mask = True

    def unsupported_reasons(self, call: AttentionCall) -> list[str]:
        pattern, reasons = call.pattern, []
        if pattern.selected_globals is not None and (pattern.score_terms or call.document_ids is not None):
            reasons.append("score terms or document_ids with selected global tokens are not supported yet")
        return reasons

    def untraceable_reasons(self, call: AttentionCall) -> list[str]:
        """Asked by the dispatcher under torch.compile only: without ``max_globals`` the slot count is data."""
        return slot_count_reasons(call)

    def estimated_cost(self, call: AttentionCall) -> float:
        rate = _CPU_RATE if call.device.type == "cpu" else _GPU_RATE
        factor = 3.0 if call.requires_grad else 1.0
        return _CALL_OVERHEAD + factor * blocked_flops(call) / rate

    def __call__(self, call: AttentionCall) -> torch.Tensor:
        return blocked_attention_call(call)

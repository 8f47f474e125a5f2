"""The thin layer between a :class:`~attnreg.execution.xformers_engine.plan.Plan` and xformers' operators.

Why thin: everything it passes is built and tested in :mod:`.plan`; this module only gathers q/k/v into xformers'
``(batch, length, heads, head_dim)`` layout, calls ``memory_efficient_attention`` (or ``_partial`` and
``merge_attentions``), and puts the rows back. xformers is imported lazily: it has no CPU operator.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from types import ModuleType

import torch

from attnreg.execution.call import AttentionCall
from attnreg.execution.xformers_engine.plan import Part, Plan

_HALF = frozenset({torch.float16, torch.bfloat16})


@dataclass(frozen=True)
class Features:
    """What the installed xformers offers: the dtypes its structural local mask runs in, and partial + merge."""

    local_mask_dtypes: frozenset[torch.dtype]
    partial_merge: bool


def installed() -> bool:
    """Whether xformers can be imported, without importing it (its import warns on CPU-only torch)."""
    if "xformers" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("xformers") is not None
    except (ImportError, ValueError):
        return False


def load_fmha() -> ModuleType:
    """``xformers.ops.fmha``, imported on first use."""
    return importlib.import_module("xformers.ops.fmha")


def probe(fmha: ModuleType) -> Features:
    """Read the installed version's capabilities from its module (never from its version number)."""
    mask_type = getattr(getattr(fmha, "attn_bias", None), "LocalAttentionFromBottomRightMask", None)
    dtypes: set[torch.dtype] = set()
    if mask_type is not None:
        ops = getattr(fmha, "ALL_FW_OPS", None)
        if ops is None:
            dtypes |= _HALF
        for op in ops or ():
            if mask_type in tuple(getattr(op, "SUPPORTED_ATTN_BIAS_TYPES", ())):
                dtypes |= set(getattr(op, "SUPPORTED_DTYPES", _HALF))
    partial_merge = hasattr(fmha, "memory_efficient_attention_partial") and hasattr(fmha, "merge_attentions")
    return Features(frozenset(dtypes), partial_merge)


def _gather(source: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rows ``positions`` ``(1 or batch, groups, rows)`` of ``(batch, length, ...)``: ``(batch*groups, rows, ...)``."""
    batch, length = source.shape[:2]
    index = positions.expand(batch, *positions.shape[1:])
    flat = (torch.arange(batch, device=source.device)[:, None, None] * length + index).reshape(-1)
    rows = source.reshape(batch * length, *source.shape[2:]).index_select(0, flat)
    return rows.reshape(batch * index.shape[1], index.shape[2], *source.shape[2:])


def _inputs(call: AttentionCall) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per projection set: queries, keys and values ("tokens then aggregated tokens"), ``(batch, len, heads, dim)``."""

    def keys(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = call.with_aggregated(k, v)
        return k.transpose(1, 2), v.transpose(1, 2)

    found = {"tokens": (call.q.transpose(1, 2), *keys(call.k, call.v))}
    if call.has_global_projections:
        found["global"] = (call.global_q.transpose(1, 2), *keys(call.global_k, call.global_v))
    return found


def _attend(
    fmha: ModuleType, part: Part, inputs: dict, call: AttentionCall, partial: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One part through xformers: ``(batch*groups, rows, heads, dim)`` output and, if ``partial``, its log-sum-exp."""
    q, k, v = inputs[part.projections]
    if part.mask is not None:
        n = call.length
        k, v = k[:, :n], v[:, :n]
        bias = fmha.attn_bias.LocalAttentionFromBottomRightMask(
            window_left=part.mask.window_left, window_right=part.mask.window_right
        )
    else:
        q, k, v = _gather(q, part.query_positions), _gather(k, part.key_columns), _gather(v, part.key_columns)
        bias = part.bias
    if not partial:
        p = 0.0 if call.dropout is None else call.dropout.p
        return fmha.memory_efficient_attention(q, k, v, attn_bias=bias, p=p, scale=call.scale), None
    out, lse = fmha.memory_efficient_attention_partial(q, k, v, attn_bias=bias, scale=call.scale)
    return out, lse[..., : part.rows]  # some operators round the log-sum-exp's length up


def _sequence(out: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """``(batch*groups, rows, heads, dim)`` back to ``(batch, length, heads, dim)``."""
    return out.reshape(batch, -1, *out.shape[2:])[:, :length]


def _sequence_lse(lse: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """``(batch*groups, heads, rows)`` back to ``(batch, heads, length)``."""
    groups = lse.shape[0] // batch
    heads, rows = lse.shape[1:]
    return lse.reshape(batch, groups, heads, rows).permute(0, 2, 1, 3).reshape(batch, heads, -1)[..., :length]


def run_plan(fmha: ModuleType, plan: Plan, call: AttentionCall) -> torch.Tensor:
    """The output ``(batch, heads, length, head_dim)`` of ``call`` computed by xformers along ``plan``."""
    batch, n = call.batch, call.length
    inputs = _inputs(call)
    if len(plan.merged) == 1:
        out = _sequence(_attend(fmha, plan.merged[0], inputs, call, partial=False)[0], batch, n)
    else:
        outs, lses = [], []
        for part in plan.merged:
            part_out, lse = _attend(fmha, part, inputs, call, partial=True)
            part_out, lse = _sequence(part_out, batch, n), _sequence_lse(lse, batch, n)
            seen = torch.isfinite(lse)  # a query that sees no key of this part adds nothing (and may come back NaN)
            outs.append(part_out.masked_fill(~seen.transpose(1, 2)[..., None], 0.0))
            lses.append(lse.masked_fill(~seen, float("-inf")).contiguous())
        out = fmha.merge_attentions(outs, lses, write_lse=False, output_dtype=call.dtype)[0]
    if plan.global_rows is not None:
        rows = _attend(fmha, plan.global_rows, inputs, call, partial=False)[0]
        slots = plan.row_slots[..., None, None].expand(batch, n, *rows.shape[2:])
        out = torch.where(plan.global_mask[..., None, None], rows.gather(1, slots), out)
    return out.masked_fill(~plan.real[..., None, None], 0.0).transpose(1, 2)

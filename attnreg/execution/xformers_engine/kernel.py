"""The thin layer between a :class:`~attnreg.execution.xformers_engine.plan.Plan` and xformers' operators.

Why thin: everything it passes is built and tested in :mod:`.plan`; this module only gathers q/k/v into xformers'
``(batch, length, heads, head_dim)`` layout, calls ``memory_efficient_attention`` once per kernel call, and puts the
rows back. xformers is imported lazily: it has no CPU operator and its import warns on CPU-only torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterator
from types import ModuleType

import torch

from attnreg.execution.call import AttentionCall
from attnreg.execution.xformers_engine.plan import KernelCall, LocalMask, Plan


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


def xformers_mask(fmha: ModuleType, mask: LocalMask) -> object:
    """``mask`` as xformers' own ``LocalAttentionFromBottomRightMask``."""
    bias_types = fmha.attn_bias
    return bias_types.LocalAttentionFromBottomRightMask(window_left=mask.window_left, window_right=mask.window_right)


def _gather(source: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rows ``positions`` ``(1 or batch, groups, rows)`` of ``(batch, length, ...)``: ``(batch*groups, rows, ...)``."""
    batch, length = source.shape[:2]
    index = positions.expand(batch, *positions.shape[1:])
    flat = (torch.arange(batch, device=source.device)[:, None, None] * length + index).reshape(-1)
    rows = source.reshape(batch * length, *source.shape[2:]).index_select(0, flat)
    return rows.reshape(batch * index.shape[1], index.shape[2], *source.shape[2:])


def _inputs(call: AttentionCall) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per projection set: queries, keys and values ("tokens then aggregated tokens"), ``(batch, len, heads, dim)``.

    Detached when no gradient is needed: xformers reads ``requires_grad`` (not the grad mode) to decide whether to
    compute the log-sum-exp and pick a backward operator, which a call under ``torch.no_grad()`` never uses.
    """
    grad = call.requires_grad

    def layout(t: torch.Tensor) -> torch.Tensor:
        return t.transpose(1, 2) if grad else t.detach().transpose(1, 2)

    def keys(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = call.with_aggregated(k, v)
        return layout(k), layout(v)

    found = {"tokens": (layout(call.q), *keys(call.k, call.v))}
    if call.has_global_projections:
        found["global"] = (layout(call.global_q), *keys(call.global_k, call.global_v))
    return found


def kernel_arguments(fmha: ModuleType, plan: Plan, call: AttentionCall) -> Iterator[tuple[KernelCall, dict]]:
    """Each kernel call of ``plan`` and the keyword arguments of its ``fmha.memory_efficient_attention`` call."""
    inputs = _inputs(call)
    p = 0.0 if call.dropout is None else call.dropout.p
    for kernel in plan.calls:
        q, k, v = inputs[kernel.projections]
        if kernel.mask is not None:
            bias = xformers_mask(fmha, kernel.mask)
        else:
            q, k, v = _gather(q, kernel.query_positions), _gather(k, kernel.key_columns), _gather(v, kernel.key_columns)
            bias = kernel.bias
            if bias.requires_grad and not (q.requires_grad or k.requires_grad or v.requires_grad):
                # xformers takes its autograd function (forward with the log-sum-exp) only when q, k or v needs a
                # gradient; otherwise the bias's gradient would come from a forward run without it.
                q = q.detach().requires_grad_()
        yield kernel, {"query": q, "key": k, "value": v, "attn_bias": bias, "p": p, "scale": call.scale}


def _sequence(out: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """``(batch*groups, rows, heads, dim)`` back to ``(batch, length, heads, dim)``."""
    return out.reshape(batch, -1, *out.shape[2:])[:, :length]


def run_plan(fmha: ModuleType, plan: Plan, call: AttentionCall) -> torch.Tensor:
    """The output ``(batch, heads, length, head_dim)`` of ``call`` computed by xformers along ``plan``."""
    batch, n = call.batch, call.length
    arguments = kernel_arguments(fmha, plan, call)
    outs = {kernel.name: fmha.memory_efficient_attention(**kwargs) for kernel, kwargs in arguments}
    out = _sequence(outs[plan.tokens.name], batch, n)
    if plan.global_rows is not None:
        rows = outs[plan.global_rows.name]
        slots = plan.row_slots[..., None, None].expand(batch, n, *rows.shape[2:])
        out = torch.where(plan.global_mask[..., None, None], rows.gather(1, slots), out)
    return out.masked_fill(~plan.real[..., None, None], 0.0).transpose(1, 2)

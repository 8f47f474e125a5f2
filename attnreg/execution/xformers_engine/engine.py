"""The xformers engine: the pattern on ``xformers.ops.memory_efficient_attention`` (CUDA), linear in sequence length."""

from __future__ import annotations

from dataclasses import replace
from types import ModuleType

import torch

from attnreg.execution.call import AttentionCall, general_part_reasons
from attnreg.execution.engine import Engine
from attnreg.execution.xformers_engine.kernel import installed, load_fmha, run_plan
from attnreg.execution.xformers_engine.operators import build_reasons, kernel_reasons
from attnreg.execution.xformers_engine.plan import (
    XFORMERS_QUERY_BLOCK,
    block_layout,
    build_plan,
    has_extra_keys,
    kernel_shapes,
)

#: Effective FLOP/s of the memory-efficient kernels with a tensor bias, and bias bytes/s read.
_FLOPS = {torch.float16: 8e13, torch.bfloat16: 8e13, torch.float32: 1.5e13}
_BIAS_BYTES = 2e12
_LAUNCH_S = 30e-6
#: Building the plan (masks, biases, index tensors): a few dozen small kernels whatever the length.
_PLAN_S = 6e-4


def strategy(call: AttentionCall, fmha: ModuleType, block: int = XFORMERS_QUERY_BLOCK) -> bool:
    """Whether the window runs as a structural mask (no bias tensor): a window without bias, extra keys or padding,
    on an operator that takes xformers' ``LocalAttentionFromBottomRightMask`` for these inputs (flash: half
    precision, head sizes it supports); otherwise the blocked tensor bias, which cutlass runs."""
    pattern = call.pattern
    candidate = (
        pattern.window is not None
        and pattern.bias is None
        and not has_extra_keys(call)
        and not kernel_reasons(fmha, call, kernel_shapes(call, structural=True, block=block))
    )
    return candidate and (call.attention_mask is None or bool(call.attention_mask.all()))  # last: reading it syncs


def xformers_attention(call: AttentionCall, fmha: ModuleType, block: int = XFORMERS_QUERY_BLOCK) -> torch.Tensor:
    """Run ``call`` with the xformers module ``fmha`` (``xformers.ops.fmha`` or a stand-in with its interface)."""
    if strategy(call, fmha, block):
        unpadded = replace(call, attention_mask=None)
        return run_plan(fmha, build_plan(unpadded, structural=True, block=block), unpadded)
    return run_plan(fmha, build_plan(call, structural=False, block=block), call)


def plan_reasons(call: AttentionCall, fmha: ModuleType, block: int = XFORMERS_QUERY_BLOCK) -> list[str]:
    """Why xformers' operators would refuse the calls the engine plans for ``call`` (empty: they all run)."""
    structural = strategy(call, fmha, block)
    return kernel_reasons(fmha, call, kernel_shapes(call, structural=structural, block=block))


class XformersEngine(Engine):
    """xformers' memory-efficient attention over blocked keys with a tensor bias, or a structural local mask."""

    name = "xformers"
    description = "xformers memory_efficient_attention on CUDA: blocked tensor bias (cutlass) or local mask (flash)"
    devices = frozenset({"cuda"})
    dtypes = frozenset({torch.float16, torch.bfloat16, torch.float32})
    #: Its operators' own ``p`` (their own draws: explicit keep flags are refused).
    supports_dropout = True

    def unsupported_reasons(self, call: AttentionCall) -> list[str]:
        reasons = general_part_reasons(call)
        if not installed():
            return [*reasons, "xformers is not installed (it needs a CUDA build of torch)"]
        if reasons or (self.devices is not None and call.device.type not in self.devices):
            return reasons  # refused already (its devices say why): importing xformers there only warns
        try:
            fmha = load_fmha()
            reasons = build_reasons()
        except Exception as error:  # an installed but broken xformers is a reason, not a crash
            return [f"xformers failed to import: {type(error).__name__}: {error}"]
        return reasons or plan_reasons(call, fmha)

    def estimated_cost(self, call: AttentionCall) -> float:
        rows, groups, _, span = block_layout(call)
        keys = span + call.count
        pairs = call.batch * call.num_heads * groups * rows * keys
        passes = 2 if call.has_global_projections else 1
        flops = 4 * pairs * call.head_dim * (3 if call.requires_grad else 1)
        bias_bytes = pairs * call.q.element_size() * (2 if call.requires_grad else 1)
        return flops / _FLOPS.get(call.dtype, 1.5e13) + bias_bytes / _BIAS_BYTES + _PLAN_S + passes * _LAUNCH_S

    def __call__(self, call: AttentionCall) -> torch.Tensor:
        return xformers_attention(call, load_fmha())

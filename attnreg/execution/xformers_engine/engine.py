"""The xformers engine: the pattern on ``xformers.ops.memory_efficient_attention`` (CUDA), linear in sequence length."""

from __future__ import annotations

from dataclasses import replace

import torch

from attnreg.execution.call import AttentionCall, general_part_reasons
from attnreg.execution.engine import Engine
from attnreg.execution.xformers_engine.kernel import Features, installed, load_fmha, probe, run_plan
from attnreg.execution.xformers_engine.plan import DEFAULT_BLOCK, block_layout, build_plan

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
#: Effective FLOP/s of the memory-efficient kernels with a tensor bias, and bias bytes/s read.
_FLOPS = {torch.float16: 8e13, torch.bfloat16: 8e13, torch.float32: 1.5e13}
_BIAS_BYTES = 2e12
_LAUNCH_S = 30e-6
#: Building the plan (masks, biases, index tensors): a few dozen small kernels whatever the length.
_PLAN_S = 6e-4


def strategy(call: AttentionCall, features: Features) -> tuple[bool, bool]:
    """``(merge, structural)`` for :func:`build_plan`: merge extra keys by log-sum-exp when nothing needs a gradient
    (xformers' partial attention has no backward) and nothing drops out (its dropout, ``p``, is in the full operator
    only), and a structural window mask where no bias or padding needs a tensor.
    """
    pattern = call.pattern
    merge = features.partial_merge and not call.requires_grad and call.dropout is None
    has_extras = call.global_mask is not None or (pattern.aggregated_globals is not None and call.count > 0)
    structural = (
        pattern.window is not None
        and pattern.bias is None
        and call.dtype in features.local_mask_dtypes
        and (merge or not has_extras)
        and (call.attention_mask is None or bool(call.attention_mask.all()))  # last: reading it syncs the device
    )
    return merge, structural


def xformers_attention(call: AttentionCall, fmha, features: Features, block: int = DEFAULT_BLOCK) -> torch.Tensor:
    """Run ``call`` with the xformers module ``fmha`` (``xformers.ops.fmha`` or a stand-in with its interface)."""
    merge, structural = strategy(call, features)
    if structural:
        unpadded = replace(call, attention_mask=None)
        try:
            return run_plan(fmha, build_plan(unpadded, merge=merge, structural=True, block=block), unpadded)
        except NotImplementedError:  # no operator for the mask on this GPU/build: the tensor bias always runs
            pass
    return run_plan(fmha, build_plan(call, merge=merge, structural=False, block=block), call)


class XformersEngine(Engine):
    """xformers' memory-efficient attention over blocked keys with a tensor bias, structural masks, partial + merge."""

    name = "xformers"
    description = "xformers memory_efficient_attention on CUDA: blocked tensor bias or local mask, merged global keys"
    #: Its operators' own ``p`` (their own draws: explicit keep flags are refused).
    supports_dropout = True

    def unsupported_reasons(self, call: AttentionCall) -> list[str]:
        reasons = []
        if not installed():
            reasons.append("xformers is not installed (it needs a CUDA build of torch)")
        if call.device.type != "cuda":
            reasons.append(f"device is {call.device.type}: xformers runs on CUDA only")
        if call.dtype not in _DTYPES:
            reasons.append(f"dtype {call.dtype} is not supported (float16, bfloat16, float32)")
        reasons.extend(general_part_reasons(call))
        if not reasons:
            try:
                load_fmha()
            except Exception as error:  # an installed but broken xformers is a reason, not a crash
                reasons.append(f"xformers failed to import: {type(error).__name__}: {error}")
        return reasons

    def estimated_cost(self, call: AttentionCall) -> float:
        rows, groups, _, span = block_layout(call)
        keys = span + call.count
        pairs = call.batch * call.heads * groups * rows * keys
        passes = 2 if call.has_global_projections else 1
        flops = 4 * pairs * call.head_dim * (3 if call.requires_grad else 1)
        bias_bytes = pairs * call.q.element_size() * (2 if call.requires_grad else 1)
        return flops / _FLOPS.get(call.dtype, 1.5e13) + bias_bytes / _BIAS_BYTES + _PLAN_S + passes * _LAUNCH_S

    def __call__(self, call: AttentionCall) -> torch.Tensor:
        fmha = load_fmha()
        return xformers_attention(call, fmha, probe(fmha))

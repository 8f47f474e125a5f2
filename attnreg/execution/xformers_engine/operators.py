"""Whether xformers' own operators run a kernel call, asked the way its dispatcher asks (``fmha/dispatch.py``).

Why ask them: which operator takes which bias, dtype, head size, GPU and gradient is xformers' knowledge, stated by
each operator's ``not_supported_reasons``; a copy of that support matrix here would drift from the installed version.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

from attnreg.execution.call import AttentionCall
from attnreg.execution.xformers_engine.kernel import xformers_mask
from attnreg.execution.xformers_engine.plan import KernelShape

#: The operator families xformers' dispatcher tries on CUDA, in its order (``_dispatch_fw`` / ``_dispatch_bw``).
#: ``triton_splitk`` joins that list only for keys broadcast across heads (MQA, a key stride of 0 over heads) with
#: few queries; the engine passes every head's keys (gathered, never broadcast), so it is never tried for its calls.
FAMILIES = ("flash3", "flash", "cutlass")
#: How xformers' reasons about the machine begin: they say nothing of the inputs, so they are set aside where the
#: inputs are not on CUDA (a plan checked on CPU; on CUDA every reason counts).
MACHINE_REASONS = (
    "device=",
    "bf16 is only supported on A100+",
    "operator wasn't built",
    "xFormers wasn't build with CUDA",
    "requires device with capability",
    "triton is not available",
)


def build_reasons() -> list[str]:
    """Why the installed xformers runs nothing at all: its C++/CUDA operators did not load (a wheel built for
    another torch or Python), or were built without CUDA. Every call would raise."""
    xformers = importlib.import_module("xformers")
    library = getattr(xformers, "_cpp_lib", None)
    if not getattr(xformers, "_has_cpp_library", False):
        error = getattr(library, "_cpp_library_load_exception", None)
        return [f"its C++ operators did not load: {' '.join(str(error).split()) or 'no reason given'}"]
    if not getattr(library, "_built_with_cuda", False):
        return ["its C++ operators were built without CUDA"]
    return []


def input_reasons(reasons: list[str], device_type: str) -> list[str]:
    """``reasons`` without those about the machine when the inputs are not on CUDA (see :data:`MACHINE_REASONS`)."""
    if device_type == "cuda":
        return list(reasons)
    return [reason for reason in reasons if not reason.startswith(MACHINE_REASONS)]


def _refusals(op: type, inputs: object) -> list[str]:
    return input_reasons(op.not_supported_reasons(inputs), inputs.query.device.type)


def operator_reasons(fmha: ModuleType, inputs: object, backward: bool) -> list[str]:
    """Why no operator of xformers' dispatch runs ``inputs`` (an ``fmha.Inputs``) forward, and backward if asked;
    empty if one does. With dropout the backward must be the forward's own family (it replays its random draws)."""
    try:
        inputs.validate_inputs()
    except ValueError as error:
        return [" ".join(str(error).split())]
    families = [getattr(fmha, name) for name in FAMILIES if hasattr(fmha, name)]
    refused = []
    for family in families:
        forward = _refusals(family.FwOp, inputs)
        if forward:
            refused.append(f"{family.FwOp.NAME}: {', '.join(forward)}")
            continue
        if not backward:
            return []
        candidates = [family] if inputs.p else families
        behind = {f.BwOp.NAME: _refusals(f.BwOp, inputs) for f in candidates}
        if not all(behind.values()):
            return []
        refused.extend(f"{family.FwOp.NAME} then {name}: {', '.join(why)}" for name, why in behind.items())
    return refused or ["no xformers operator family found"]


def _placeholder(shape: tuple[int, ...], call: AttentionCall, requires_grad: bool = False) -> torch.Tensor:
    """A tensor of ``shape`` on the call's device and dtype holding one element: the operators read shapes, dtypes,
    devices and strides, never values (a stride of 0 passes every alignment rule of strides)."""
    one = torch.empty(1, dtype=call.dtype, device=call.device)
    return one.as_strided(shape, (0,) * len(shape)).requires_grad_(requires_grad)


def shape_inputs(fmha: ModuleType, call: AttentionCall, shape: KernelShape) -> object:
    """The ``fmha.Inputs`` of a kernel call of ``shape``, with placeholder tensors on the call's device."""
    heads, head_dim = call.num_heads, call.head_dim
    query = _placeholder((shape.batch, shape.queries, heads, head_dim), call)
    key = _placeholder((shape.batch, shape.keys, heads, head_dim), call)
    bias = (
        xformers_mask(fmha, shape.mask)
        if shape.mask is not None
        else _placeholder((shape.batch, heads, shape.queries, shape.keys), call, requires_grad=shape.trainable_bias)
    )
    p = 0.0 if call.dropout is None else call.dropout.p
    return fmha.Inputs(query=query, key=key, value=key, attn_bias=bias, p=p, scale=call.scale)


def kernel_reasons(fmha: ModuleType, call: AttentionCall, shapes: list[KernelShape]) -> list[str]:
    """Why xformers cannot run the calls of ``shapes`` for ``call``: each refused call named, with every operator's
    reasons; empty if each has an operator (and a backward one when the call needs gradients)."""
    reasons = []
    for shape in shapes:
        refused = operator_reasons(fmha, shape_inputs(fmha, call, shape), backward=call.requires_grad)
        if refused:
            reasons.append(f"no xformers operator runs its {shape.name} call ({'; '.join(refused)})")
    return reasons

"""A NaN or Inf in a key or value reaches only the queries that see that key, on every engine, as in the reference.

Why a wrapper and not each kernel: fused kernels add masks to scores (``nan + -inf`` is NaN) and multiply weights by
values (``0 * nan`` is NaN), so a non-finite key or value leaks into rows that never see it (a block, or every row).
Padded keys, which no query sees, are zeroed first (:func:`hide_padded`, a cheap masked fill that traces); what is
left is a real key hidden from some queries by the pattern. When the call's keys and values can be read for free (on
the CPU, outside ``torch.compile``) and hold a non-finite number, the engine runs on cleaned inputs, and a second,
gradient-free run of the same engine on an indicator of the bad keys finds the rows that see one: those rows are NaN,
the others exact. Elsewhere (an accelerator, where the read would stall the device, or while tracing) only the
padded keys are cleaned.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from attnreg.execution import host
from attnreg.execution.call import AttentionCall

#: The key and value tensors of a call, by the query set that reads them.
_KEY_VALUES = (("k", "v"), ("global_k", "global_v"), ("aggregated_k", "aggregated_v"))


def hide_padded(call: AttentionCall) -> AttentionCall:
    """``call`` with its padded keys and values zeroed (token and global projections): no query sees them, so a NaN
    or Inf left there (as padding often holds) cannot reach an output through an engine's arithmetic."""
    real = call.attention_mask
    if real is None or (host.host_readable(real) and bool(real.all())):
        return call
    hidden = ~real[:, None, :, None]
    present = [name for name in ("k", "v", "global_k", "global_v") if getattr(call, name) is not None]
    return replace(call, **{name: getattr(call, name).masked_fill(hidden, 0) for name in present})


def _bad_keys(call: AttentionCall) -> dict[str, torch.Tensor] | None:
    """Per key tensor name, ``(batch, heads, keys)`` True where the key or its value is not finite; ``None`` when
    all are finite or they cannot be read for free."""
    if not host.host_readable(call.k):
        return None
    found = {}
    for key_name, value_name in _KEY_VALUES:
        key, value = getattr(call, key_name), getattr(call, value_name)
        if key is not None:
            found[key_name] = ~(torch.isfinite(key).all(dim=-1) & torch.isfinite(value).all(dim=-1))
    return found if any(bool(bad.any()) for bad in found.values()) else None


def contained(attend: Callable[[AttentionCall], torch.Tensor], call: AttentionCall) -> torch.Tensor:
    """``attend(call)``, a non-finite key or value making NaN only the rows that see it (see the module docstring)."""
    bad = _bad_keys(call)
    if bad is None:
        return attend(call)
    zero = torch.zeros((), dtype=call.dtype, device=call.device)
    cleaned, probe = {}, {}
    for key_name, value_name in _KEY_VALUES:
        if key_name not in bad:
            continue
        hidden = bad[key_name][..., None]
        key, value = getattr(call, key_name), getattr(call, value_name)
        cleaned[key_name], cleaned[value_name] = torch.where(hidden, zero, key), torch.where(hidden, zero, value)
        probe[key_name] = torch.zeros_like(key)
        probe[value_name] = hidden.to(call.dtype).expand_as(value).contiguous()
    clean = replace(call, **cleaned)
    out = attend(clean)
    present = [name for name in ("q", "global_q") if getattr(call, name) is not None]
    queries = {name: torch.zeros_like(getattr(call, name)) for name in present}
    with torch.no_grad():
        seen = attend(replace(clean, **probe, **queries, dropout=None)).amax(dim=-1, keepdim=True) > 0
    return out.masked_fill(seen, float("nan"))

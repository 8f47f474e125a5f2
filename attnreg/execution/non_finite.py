"""A NaN or Inf in a key or value reaches only the queries that see that key, on every engine, as in the reference.

Why a wrapper and not each kernel: fused kernels add masks to scores (``nan + -inf`` is NaN) and multiply weights by
values (``0 * nan`` is NaN), so a non-finite key or value leaks into rows that never see it (a block, or every row).
Padded keys, which no query sees, are zeroed first (:func:`hide_padded`, a cheap masked fill that traces); what is
left is a real key hidden from some queries by the pattern. When the keys and values hold a non-finite number, the
engine runs on cleaned inputs, and a second, gradient-free run of the same engine on an indicator of the bad keys
finds the rows that see one: those rows are NaN, the others exact.

Finding out whether any key is bad is a read (one sum per tensor, :func:`all_finite`). On the CPU it costs no sync
and is always done. On an accelerator it would be a
device sync per call, which the fast paths never make (they run with no host sync at all, for CUDA graphs and
overlap), and under ``torch.compile`` it would be a graph break. So there only the padded keys are cleaned, unless
:func:`check_non_finite` asks for the read. Why not poison the bad keys and let the kernels spread NaN to the rows that
see them, with no read: kernels do not promise to propagate NaN (compiled FlexAttention on the CPU drops a NaN key's
score even from the rows that see it).

Gradients: the NaN rows pass none back (``masked_fill``) and a bad key receives none (``torch.where``); the other
gradients are those of the cleaned inputs. Without the read they follow the kernels' arithmetic.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import torch

from attnreg.execution import host
from attnreg.execution.call import AttentionCall
from attnreg.execution.engine import Engine

#: How many ``check_non_finite()`` blocks enclose the running code (process-wide, like ``attnreg.backend``).
_CHECKING: list[None] = []


@contextmanager
def check_non_finite() -> Iterator[None]:
    """Inside the block, every attnreg call reads whether a key or value is NaN or Inf, on every device, so that one
    reaches only the rows that see it there too (on the CPU this always happens: the read costs no sync there).

    The price, on an accelerator: a device sync per call (two when a key is bad; an error while a CUDA graph is
    captured); under ``torch.compile``, a graph break at each call (an error with ``fullgraph=True``). Meant for
    debugging a divergence, as ``torch.autograd.detect_anomaly`` is.
    """
    _CHECKING.append(None)
    try:
        yield
    finally:
        _CHECKING.pop()


def reads_allowed(x: torch.Tensor) -> bool:
    """Whether a path may read ``x`` to contain its non-finite numbers: on the CPU outside torch.compile, where that
    costs no sync, and anywhere inside :func:`check_non_finite`."""
    return bool(_CHECKING) or host.host_readable(x)


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


def all_finite(*tensors: torch.Tensor) -> bool:
    """Whether every element of ``tensors`` is finite, in one cheap read: a sum is finite only if all its terms are
    (a sum that overflows is a false alarm, which the exact check per key then clears). ``torch.isfinite`` would cost
    several full passes on the CPU."""
    return bool(torch.isfinite(torch.stack([t.sum(dtype=torch.float32) for t in tensors])).all())


def _key_sets(call: AttentionCall) -> list[tuple[str, str]]:
    """The names of the key and value tensors ``call`` has (tokens, global projections, aggregated tokens)."""
    return [(key_name, value_name) for key_name, value_name in _KEY_VALUES if getattr(call, key_name) is not None]


def _bad_keys(call: AttentionCall) -> dict[str, torch.Tensor]:
    """Per key tensor name, ``(batch, heads, keys)``: True where the key or its value is not finite (no read)."""
    found = {}
    for key_name, value_name in _key_sets(call):
        key, value = getattr(call, key_name), getattr(call, value_name)
        found[key_name] = ~(torch.isfinite(key).all(dim=-1) & torch.isfinite(value).all(dim=-1))
    return found


def _any(bad: dict[str, torch.Tensor]) -> bool:
    """Whether any key is bad: one read (one device sync on an accelerator)."""
    return bool(torch.stack([flags.any() for flags in bad.values()]).any())


def _cleaned(call: AttentionCall, bad: dict[str, torch.Tensor]) -> AttentionCall:
    """``call`` with each bad key and its value set to zero."""
    zero = torch.zeros((), dtype=call.dtype, device=call.device)
    changed = {}
    for key_name, value_name in _key_sets(call):
        hidden = bad[key_name][..., None]
        changed[key_name] = torch.where(hidden, zero, getattr(call, key_name))
        changed[value_name] = torch.where(hidden, zero, getattr(call, value_name))
    return replace(call, **changed)


def _visibility_probe(call: AttentionCall, bad: dict[str, torch.Tensor]) -> AttentionCall:
    """``call`` made to give each row the mean of ``bad`` over the keys it sees: zero queries and keys, no score
    terms, softcap or bias (so every visible key weighs exactly ``1 / visible``, however far: ALiBi or a learned bias
    would underflow a far key's weight to 0), values the indicator of ``bad``, no dropout."""
    probe = {}
    for key_name, value_name in _key_sets(call):
        value = getattr(call, value_name)
        probe[key_name] = torch.zeros_like(getattr(call, key_name))
        probe[value_name] = bad[key_name][..., None].to(call.dtype).expand_as(value).contiguous()
    for name in ("q", "global_q", "bias_weight", "aggregated_bias_weight"):
        if getattr(call, name) is not None:
            probe[name] = torch.zeros_like(getattr(call, name))
    pattern = replace(call.pattern, score_terms=(), softcap=None)
    return replace(call, **probe, pattern=pattern, prepared=None, dropout=None)


def _probed(engine: Engine, call: AttentionCall, bad: dict[str, torch.Tensor]) -> torch.Tensor:
    """``engine(call)`` on cleaned keys, NaN in the rows that a gradient-free run of :func:`_visibility_probe` shows
    to see a bad key."""
    clean = _cleaned(call, bad)
    out = engine(clean)
    with torch.no_grad():
        seen = engine(_visibility_probe(clean, bad)).amax(dim=-1, keepdim=True) > 0
    return out.masked_fill(seen, float("nan"))


def contained(engine: Engine, call: AttentionCall) -> torch.Tensor:
    """``engine(call)``, a non-finite key or value making NaN only the rows that see it (see the module docstring)."""
    if not reads_allowed(call.k):
        return engine(call)
    if all_finite(*(getattr(call, name) for pair in _key_sets(call) for name in pair)):
        return engine(call)
    bad = _bad_keys(call)
    return _probed(engine, call, bad) if _any(bad) else engine(call)

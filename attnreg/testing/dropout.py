"""Exact dropout comparisons for plugin tests: attnreg and a reference layer drop the very same weights.

Why: dropout draws differ between libraries, so a layer in training mode cannot be compared with the layer it
replaces unless both are handed the same keep flags. These helpers patch the two doors (``attnreg.attention`` /
``attention_weights`` and ``torch.nn.functional.dropout``) with pytest's ``monkeypatch``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

import attnreg

if TYPE_CHECKING:
    import pytest


def inject_keep_flags(monkeypatch: pytest.MonkeyPatch, p: float, seed: int = 0) -> list[torch.Tensor]:
    """Make ``attnreg.attention`` and ``attnreg.attention_weights`` drop with keep flags drawn here (``dropout_mask``).

    Returns the flags of each call in order, ``(batch, heads, length, length + count)`` in attnreg's dense layout
    (tokens, then aggregated tokens), so that a test can give the same ones to the reference in its own layout. A
    call that asks for another rate than ``p`` fails.
    """
    flags: list[torch.Tensor] = []

    def with_flags(function: Callable[..., Any]) -> Callable[..., Any]:
        def call(q, k, v, pattern, *, dropout_p: float = 0.0, **inputs):
            assert dropout_p == p, f"the layer asked for dropout_p={dropout_p}, expected {p}"
            aggregated = inputs.get("aggregated_kv")
            keys = q.shape[2] + (0 if aggregated is None else aggregated[0].shape[2])
            generator = torch.Generator().manual_seed(seed + len(flags))
            flags.append(torch.rand(*q.shape[:3], keys, generator=generator).to(q.device) >= p)
            return function(q, k, v, pattern, dropout_p=dropout_p, dropout_mask=flags[-1], **inputs)

        return call

    for name in ("attention", "attention_weights"):
        monkeypatch.setattr(attnreg, name, with_flags(getattr(attnreg, name)))
    return flags


def torch_dropout_keeps(monkeypatch: pytest.MonkeyPatch, rate: float, flags: list[torch.Tensor]) -> None:
    """Make ``torch.nn.functional.dropout`` (transformers' layers drop with it) keep ``flags``, one per call, in order.

    Each holds the keep flags of the tensor dropped at that call, in any shape with its number of elements; kept
    values are scaled by ``1 / (1 - rate)`` as torch's dropout does. A call with another rate or outside training fails.
    """
    pending = list(flags)

    def dropout(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
        assert training and p == rate, f"dropout(p={p}, training={training}), expected p={rate} in training"
        return input * pending.pop(0).reshape(input.shape).to(input.dtype) * (1.0 / (1.0 - p))

    monkeypatch.setattr(torch.nn.functional, "dropout", dropout)

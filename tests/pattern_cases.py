"""Patterns covering every part an engine must honour, shared by the engine tests (not a test module itself)."""

from __future__ import annotations

from collections.abc import Callable

import torch

import attnreg
from attnreg import AggregatedGlobals, Pattern, RelativePositionBias, SelectedGlobals, Window
from attnreg.bench.inputs import leaves, random_inputs

BIAS = RelativePositionBias(num_buckets=8, max_distance=16)

PATTERNS = {
    "local-bias": Pattern(window=Window.symmetric(3), bias=BIAS, scale=1.0),
    "tglobal": Pattern(
        window=Window.symmetric(3),
        aggregated_globals=AggregatedGlobals(4),
        bias=BIAS,
        aggregated_bias=BIAS,
        scale=1.0,
    ),
    "window-globals-own": Pattern(window=Window.symmetric(2), selected_globals=SelectedGlobals(own_projections=True)),
    "window-globals": Pattern(window=Window(left=2, right=1), selected_globals=SelectedGlobals()),
    "causal-bias": Pattern(window=Window.causal(4), bias=RelativePositionBias(8, 16, bidirectional=False)),
    "full-bias": Pattern(bias=BIAS),
    "window-only": Pattern(window=Window(left=5, right=2)),
}


def case_inputs(name: str, length: int = 19, **kwargs) -> dict:
    """Inputs for ``PATTERNS[name]``: batch 2, padding on one example, two globals (one on the other)."""
    options = {"batch": 2, "padding": 5, "num_globals": 2}
    options.update(kwargs)
    return random_inputs(PATTERNS[name], length, **options)


def run(inputs: dict, pattern: Pattern, backend: str) -> torch.Tensor:
    """``attnreg.attention`` on ``inputs`` with ``backend``."""
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    rest = {key: value for key, value in inputs.items() if key not in ("q", "k", "v")}
    return attnreg.attention(q, k, v, pattern, backend=backend, **rest)


def gradients(inputs: dict, forward: Callable[[], torch.Tensor]) -> list[torch.Tensor]:
    """The gradients of ``inputs``' trainable tensors (``leaves`` order) for ``forward()``'s output weighted by a
    fixed ramp over its last dimension; the inputs' ``.grad`` are cleared afterwards."""
    out = forward()
    (out * torch.linspace(-1, 1, out.shape[-1], device=out.device)).sum().backward()
    found = [t.grad.clone() for t in leaves(inputs)]
    for t in leaves(inputs):
        t.grad = None
    return found

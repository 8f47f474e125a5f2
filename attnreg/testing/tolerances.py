"""Every numeric threshold of the conformance suite, in one place.

Why here: an engine passes or fails on these numbers, so a reader (and a plugin author) finds them all together.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tolerance:
    """How far a tensor may be from the float64 reference: ``max|got - want| <= atol + rtol * max|want|``.

    Measured over the whole tensor (not elementwise), so gradients that are sums over many terms (bias tables)
    are held to the same relative standard as the output.
    """

    atol: float
    rtol: float

    def limit(self, reference_scale: float) -> float:
        """The largest allowed absolute difference for a reference whose largest magnitude is ``reference_scale``."""
        return self.atol + self.rtol * reference_scale


#: Output and gradient tolerance against the float64 dense reference, per dtype of the engine's inputs.
TOLERANCES: dict[torch.dtype, Tolerance] = {
    torch.float64: Tolerance(atol=1e-10, rtol=1e-9),
    torch.float32: Tolerance(atol=2e-5, rtol=2e-5),
    torch.bfloat16: Tolerance(atol=2e-2, rtol=3e-2),
    torch.float16: Tolerance(atol=4e-3, rtol=5e-3),
}

#: Locality and batch independence compare an engine with itself in float32: only summation order may differ.
SELF_CONSISTENCY = Tolerance(atol=1e-6, rtol=1e-5)

#: The fast engines' peak memory at 4n over that at n, scaled by how much the pattern's own allowed pairs grow
#: beyond 4x (aggregated globals add n/block keys per query): linear growth plus 12.5% slack.
MEMORY_GROWTH_LIMIT = 4.5

#: The perturbation added to inputs a query must not depend on (locality, batch independence).
PERTURBATION = 3.0


def tolerance(dtype: torch.dtype) -> Tolerance:
    """The tolerance for inputs of ``dtype``."""
    return TOLERANCES[dtype]


def half_dtypes(device: torch.device) -> tuple[torch.dtype, ...]:
    """The half-precision dtypes checked on ``device``: bfloat16 on CPU, float16 and bfloat16 on CUDA."""
    return (torch.float16, torch.bfloat16) if device.type == "cuda" else (torch.bfloat16,)

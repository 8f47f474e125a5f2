"""Score terms: what a pattern adds to the scaled scores beyond learned tables (ALiBi), as registered parts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from attnreg._deprecation import renamed_keywords
from attnreg.pattern.predicates import ScoreTerm, register_part


@renamed_keywords(heads="num_heads")
def alibi_slopes(num_heads: int) -> torch.Tensor:
    """The ALiBi paper's slopes ``(num_heads,)``: ``2**(-8 h / n)`` for a power of two ``n``; otherwise those of the
    largest power of two below, then every other slope of twice that many (the paper's rule)."""
    closest = 2 ** math.floor(math.log2(num_heads))
    base = [2 ** (-8 * (h + 1) / closest) for h in range(closest)]
    if closest < num_heads:
        base += [2 ** (-8 * (h + 1) / (2 * closest)) for h in range(2 * closest)][0::2][: num_heads - closest]
    return torch.tensor(base, dtype=torch.float64)


@register_part
@dataclass(frozen=True)
class ALiBi(ScoreTerm):
    """Attention with linear biases: ``score -= m_h * |i - j|``, slopes :func:`alibi_slopes` for the call's heads."""

    kind: ClassVar[str] = "alibi"

    @renamed_keywords(heads="num_heads")
    def term(self, i: torch.Tensor, j: torch.Tensor, num_heads: int) -> torch.Tensor:
        distance = (i - j).abs().to(torch.float32)
        slopes = alibi_slopes(num_heads).to(device=distance.device, dtype=torch.float32)
        return -slopes.view(-1, *([1] * distance.dim())) * distance

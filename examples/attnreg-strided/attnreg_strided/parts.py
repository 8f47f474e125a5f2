"""The ``strided-columns`` mask part: every query sees the keys at ``j mod stride == stride - 1``.

The "summary" columns of the Sparse Transformer's fixed pattern (Child et al. 2019, with one summary key per stride):
the last key of each stride-long stretch, through which information travels further than a local window. Built on
attnreg's public :class:`attnreg.MaskPart`; every engine runs it through ``allowed`` and ``coverage``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

import attnreg
from attnreg.validation import require_int

#: Block coverage values of attnreg's mask parts (int8): no pair allowed, some allowed, every pair allowed.
EMPTY, PARTIAL, FULL = 0, 1, 2


@dataclass(frozen=True)
class StridedColumns(attnreg.MaskPart):
    """Keys ``j mod stride == stride - 1``, for every query: the last key of each stretch of ``stride`` keys."""

    kind: ClassVar[str] = "strided-columns"
    stride: int = 64

    def __post_init__(self) -> None:
        require_int("StridedColumns.stride", self.stride, minimum=1)

    def sizes(self) -> set[int]:
        """Lengths where the structure changes: one stride, where the first column appears."""
        return {self.stride}

    def allowed(self, i: torch.Tensor, j: torch.Tensor, length: int) -> torch.Tensor:
        return (torch.remainder(j, self.stride) == self.stride - 1) & torch.ones_like(i, dtype=torch.bool)

    def coverage(
        self, q_first: torch.Tensor, q_last: torch.Tensor, k_first: torch.Tensor, k_last: torch.Tensor, length: int
    ) -> torch.Tensor:
        """Exact, from the number of columns among keys ``k_first..k_last`` (the multiples of ``stride`` in
        ``k_first + 1..k_last + 1``); the queries do not matter."""
        columns = torch.div(k_last + 1, self.stride, rounding_mode="floor") - torch.div(
            k_first, self.stride, rounding_mode="floor"
        )
        verdict = torch.where(columns == 0, EMPTY, torch.where(columns == k_last - k_first + 1, FULL, PARTIAL))
        return verdict.to(torch.int8) + torch.zeros_like(q_first, dtype=torch.int8)

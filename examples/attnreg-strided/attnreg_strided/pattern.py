"""The ``strided`` pattern: a causal local window plus the strided summary columns before the query."""

from __future__ import annotations

import attnreg
from attnreg.validation import require_int
from attnreg_strided.parts import StridedColumns


def strided(local: int = 64, stride: int = 64) -> attnreg.Pattern:
    """``(i - local <= j <= i) or (j mod stride == stride - 1 and j <= i)``: Sparse Transformer's fixed pattern.

    A causal window of ``local`` past keys, and every earlier key that closes a stretch of ``stride`` keys (Child et
    al. 2019, one summary column per stride).
    """
    require_int("local", local, minimum=0)
    require_int("stride", stride, minimum=1)
    causal = attnreg.Band(None, 0)
    return attnreg.Pattern(mask=attnreg.Band(local, 0) | (StridedColumns(stride) & causal))

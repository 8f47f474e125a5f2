"""The ``causal-window`` pattern: each token sees itself and the ``window`` tokens before it, with a past-only bias.

Built from attnreg's public parts only; attnreg's engines run it because they read parts, never names.
"""

from __future__ import annotations

import attnreg
from attnreg.validation import require_int


def causal_window(window: int = 64, num_buckets: int = 32, max_distance: int = 128) -> attnreg.Pattern:
    """A causal sliding window of ``window`` past tokens with a learned bias bucketed over the distance to the past.

    ``num_buckets`` and ``max_distance`` are T5's bucket parameters (``bidirectional=False``: every bucket is for
    keys before the query, half of them exact distances, the rest logarithmically wider up to ``max_distance``).
    """
    require_int("window", window, minimum=1)
    require_int("num_buckets", num_buckets, minimum=2)
    require_int("max_distance", max_distance, minimum=num_buckets // 2 + 1)
    return attnreg.Pattern(
        window=attnreg.Window.causal(window),
        bias=attnreg.RelativePositionBias(num_buckets=num_buckets, max_distance=max_distance, bidirectional=False),
    )

"""attnreg-longformer: Longformer's sliding window + symmetric global attention as an attnreg plugin.

A drop-in ``LongformerSelfAttention``, the ``longformer`` pattern, and ``attnreg.build("longformer", ...)`` models.
"""

from attnreg_longformer.layer import LongformerSelfAttention
from attnreg_longformer.models import build_longformer, skip_window_padding, use_attnreg_attention
from attnreg_longformer.pattern import longformer, window_from_attention_window

__all__ = [
    "LongformerSelfAttention",
    "build_longformer",
    "longformer",
    "skip_window_padding",
    "use_attnreg_attention",
    "window_from_attention_window",
]

"""attnreg-longt5: LongT5 local and Transient-Global attention as attnreg patterns, drop-in layers and models.

Found by attnreg through the ``attnreg`` entry point like any third-party plugin; uses attnreg's public API only.
"""

from attnreg_longt5.layers import LongT5LocalAttention, LongT5TransientGlobalAttention, SharedPositionBias
from attnreg_longt5.models import build_longt5, make_config, use_attnreg_attention
from attnreg_longt5.patterns import longt5_local, longt5_tglobal, pattern_for_config

__all__ = [
    "LongT5LocalAttention",
    "LongT5TransientGlobalAttention",
    "SharedPositionBias",
    "build_longt5",
    "longt5_local",
    "longt5_tglobal",
    "make_config",
    "pattern_for_config",
    "use_attnreg_attention",
]

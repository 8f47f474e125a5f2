"""attnreg-longt5: LongT5 local and Transient-Global attention as attnreg patterns, drop-in layers and models.

Found by attnreg through the ``attnreg`` entry point like any third-party plugin. From attnreg it imports the
package, ``attnreg.nn``, ``attnreg.validation`` and ``attnreg.models.inputs`` (the built models' input checks: public
by that module's own docstring, not yet in the docs); from transformers, it subclasses the attention layers of
``transformers.models.longt5.modeling_longt5``, and its benchmark calls that module's private
``_get_local_attention_mask``.
"""

from attnreg_longt5.layers import LongT5LocalAttention, LongT5TransientGlobalAttention, SharedPositionBias
from attnreg_longt5.models import (
    build_longt5,
    build_longt5_local,
    build_longt5_tglobal,
    make_config,
    use_attnreg_attention,
)
from attnreg_longt5.patterns import longt5_local, longt5_tglobal, pattern_for_config

__all__ = [
    "LongT5LocalAttention",
    "LongT5TransientGlobalAttention",
    "SharedPositionBias",
    "build_longt5",
    "build_longt5_local",
    "build_longt5_tglobal",
    "longt5_local",
    "longt5_tglobal",
    "make_config",
    "pattern_for_config",
    "use_attnreg_attention",
]

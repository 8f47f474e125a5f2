"""The ``longt5-local`` and ``longt5-tglobal`` patterns, and the pattern a ``LongT5Config`` describes.

Built only from attnreg's parts: a symmetric window ``|i - j| <= local_radius``, T5 buckets over ``j - i``, no score
scaling, and for TGlobal one aggregated token per ``global_block_size`` tokens with a bias over ``g - block(i)``.
"""

from __future__ import annotations

from typing import Any

import attnreg
from attnreg.validation import require, require_int


def longt5_local(
    local_radius: int = 127, num_buckets: int = 32, max_distance: int = 128, bidirectional: bool = True
) -> attnreg.Pattern:
    """LongT5 local attention: each token sees the ``local_radius`` tokens on either side, with T5's bucketed bias."""
    require_int("local_radius", local_radius, minimum=0)
    return attnreg.Pattern(
        window=attnreg.Window.symmetric(local_radius),
        bias=attnreg.RelativePositionBias(num_buckets, max_distance, bidirectional),
        scale=1.0,
    )


def longt5_tglobal(
    local_radius: int = 127,
    global_block_size: int = 16,
    num_buckets: int = 32,
    max_distance: int = 128,
    bidirectional: bool = True,
) -> attnreg.Pattern:
    """LongT5 Transient-Global attention: the local pattern plus one aggregated key per ``global_block_size`` tokens.

    The side bias reads a second table by the bucket of ``g - block(i)``, with the same bucket parameters.
    """
    local = longt5_local(local_radius, num_buckets, max_distance, bidirectional)
    require_int("global_block_size", global_block_size, minimum=1)
    return attnreg.Pattern(
        window=local.window,
        aggregated_globals=attnreg.AggregatedGlobals(global_block_size),
        bias=local.bias,
        aggregated_bias=local.bias,
        scale=1.0,
    )


ATTENTION_TYPES = {"local": "longt5-local", "transient-global": "longt5-tglobal"}


def local_params(config: Any) -> dict[str, Any]:
    """The :func:`longt5_local` arguments a ``LongT5Config`` gives (a decoder's bias is unidirectional)."""
    return {
        "local_radius": config.local_radius,
        "num_buckets": config.relative_attention_num_buckets,
        "max_distance": config.relative_attention_max_distance,
        "bidirectional": not config.is_decoder,
    }


def pattern_for_config(config: Any) -> attnreg.Pattern:
    """The pattern of a ``LongT5Config``'s encoder self-attention (``encoder_attention_type`` chooses which)."""
    kind = getattr(config, "encoder_attention_type", None)
    require(kind in ATTENTION_TYPES, "config.encoder_attention_type", kind, f"expected one of {list(ATTENTION_TYPES)}")
    if kind == "local":
        return longt5_local(**local_params(config))
    return longt5_tglobal(global_block_size=config.global_block_size, **local_params(config))

"""The gallery: the attention patterns the field uses, each defined exactly, built from the core's parts.

With ``i`` the query and ``j`` the key (0-based), each factory's docstring gives ``allowed(i, j)``. Every one also
takes ``softcap`` (scores become ``softcap * tanh(score / softcap)`` on the scaled ``q·k``, before any bias:
Gemma-2) and ``alibi`` (``score -= m_h * |i - j|`` with the ALiBi paper's slopes for the call's head count).
"""

from __future__ import annotations

from attnreg._validation import require, require_int
from attnreg.pattern.parts import Window
from attnreg.pattern.predicates import AnyOf, Band, BlockBand, Dilation, KeyRange, MaskPart, QueryRange, RandomBlocks
from attnreg.pattern.scores import ALiBi
from attnreg.pattern.spec import Pattern


def _pattern(*, window: Window | None = None, mask: MaskPart | None = None, softcap, alibi) -> Pattern:
    require(isinstance(alibi, bool), "alibi", alibi, "expected True or False")
    return Pattern(window=window, mask=mask, score_terms=(ALiBi(),) if alibi else (), softcap=softcap)


def causal(softcap: float | None = None, alibi: bool = False) -> Pattern:
    """``j <= i``: decoder self-attention."""
    return _pattern(window=Window.causal(None), softcap=softcap, alibi=alibi)


def sliding_window(left: int = 256, right: int = 256, softcap: float | None = None, alibi: bool = False) -> Pattern:
    """``i - left <= j <= i + right`` (Longformer, Mistral with ``right=0``)."""
    require_int("left", left, minimum=0)
    require_int("right", right, minimum=0)
    return _pattern(window=Window(left, right), softcap=softcap, alibi=alibi)


def streaming_llm(window: int = 512, sinks: int = 4, softcap: float | None = None, alibi: bool = False) -> Pattern:
    """``(i - window <= j <= i) or (j < sinks and j <= i)``: a causal window plus attention-sink keys (StreamingLLM,
    Xiao et al. 2023). Sinks are keys only: they see nothing after themselves."""
    require_int("window", window, minimum=0)
    require_int("sinks", sinks, minimum=0)
    mask = Band(window, 0) if sinks == 0 else AnyOf((Band(window, 0), KeyRange(0, sinks) & Band(None, 0)))
    return _pattern(mask=mask, softcap=softcap, alibi=alibi)


def dilated_window(
    radius: int = 128, dilation: int = 2, causal: bool = False, softcap: float | None = None, alibi: bool = False
) -> Pattern:
    """``|i - j| <= radius * dilation and (i - j) mod dilation == 0``; ``causal`` adds ``j <= i`` (Longformer's dilated
    window, Beltagy et al. 2020)."""
    require_int("radius", radius, minimum=0)
    require_int("dilation", dilation, minimum=1)
    require(isinstance(causal, bool), "causal", causal, "expected True or False")
    reach = radius * dilation
    return _pattern(mask=Band(reach, 0 if causal else reach) & Dilation(dilation), softcap=softcap, alibi=alibi)


def prefix_lm(prefix: int = 128, softcap: float | None = None, alibi: bool = False) -> Pattern:
    """``j <= i or j < prefix``: bidirectional over the prefix, causal after it (T5's prefix LM, UniLM)."""
    require_int("prefix", prefix, minimum=0)
    return _pattern(mask=AnyOf((Band(None, 0), KeyRange(0, prefix))), softcap=softcap, alibi=alibi)


def bigbird(
    block: int = 64,
    window_blocks: int = 1,
    global_blocks: int = 1,
    random_blocks: int = 0,
    seed: int = 0,
    softcap: float | None = None,
    alibi: bool = False,
) -> Pattern:
    """With ``qb = i // block`` and ``kb = j // block``: ``|qb - kb| <= window_blocks``, or ``qb < global_blocks``, or
    ``kb < global_blocks``, or ``kb`` among the ``random_blocks`` blocks drawn for ``qb`` from ``seed`` (see
    :class:`~attnreg.pattern.predicates.RandomBlocks`) (BigBird, Zaheer et al. 2020)."""
    require_int("block", block, minimum=1)
    require_int("window_blocks", window_blocks, minimum=0)
    require_int("global_blocks", global_blocks, minimum=0)
    require_int("random_blocks", random_blocks, minimum=0)
    require_int("seed", seed, minimum=0)
    parts: list[MaskPart] = [BlockBand(block, window_blocks)]
    if global_blocks:
        parts += [QueryRange(0, global_blocks * block), KeyRange(0, global_blocks * block)]
    if random_blocks:
        parts.append(RandomBlocks(block, random_blocks, seed))
    return _pattern(mask=AnyOf(tuple(parts)) if len(parts) > 1 else parts[0], softcap=softcap, alibi=alibi)


#: Registered name -> (factory, one-line description, where it comes from).
GALLERY = {
    "causal": (causal, "j <= i: decoder self-attention"),
    "sliding-window": (sliding_window, "i - left <= j <= i + right (Longformer; Mistral with right=0)"),
    "streaming-llm": (streaming_llm, "causal window plus attention-sink keys j < sinks (StreamingLLM)"),
    "dilated-window": (dilated_window, "every dilation-th key within radius * dilation (Longformer's dilation)"),
    "prefix-lm": (prefix_lm, "j <= i or j < prefix: bidirectional prefix, causal after it"),
    "bigbird": (bigbird, "sliding, global and seeded random blocks (BigBird)"),
}

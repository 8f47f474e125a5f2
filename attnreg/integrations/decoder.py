"""``attn_implementation="attnreg"``: each layer of a transformers model runs its own attention on attnreg.

The structure comes from the model itself: the mask function transformers builds for each layer type (full causal,
bidirectional, a sliding window, chunks) and the attention call's own options (``softcap``, ``s_aux`` sink logits).
A whole sequence (prefill, training, encoders) runs on attnreg's engines, in memory linear in the length for sliding
layers; a step with a cache (decoding) attends only to the keys its layer allows, so a sliding layer's work per token
is O(window). Anything else is refused, naming the layer and what it cannot honour.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from transformers.masking_utils import bidirectional_mask_function, causal_mask_function, prepare_padding_mask

from attnreg._validation import PatternError
from attnreg.execution.dropout import check_dropout_p
from attnreg.execution.non_finite import all_finite, reads_allowed
from attnreg.execution.reference import weighted_values
from attnreg.functional import attention, attention_weights
from attnreg.integrations.transformers_bridge import shared_kv_heads
from attnreg.pattern.parts import Window
from attnreg.pattern.predicates import Band, KeyRange
from attnreg.pattern.spec import Pattern

NAME = "attnreg"


@dataclasses.dataclass(frozen=True)
class LayerMask:
    """What the ``"attnreg"`` mask function hands a layer's attention: its structure, padding and positions.

    - ``causal``: keys after the query are hidden; ``window``: transformers' ``sliding_window`` (a key is seen when
      ``kv > q - window``); ``chunk``: keys of another chunk of ``chunk`` tokens (counted after each example's
      left padding, ``left_padding``) are hidden;
    - ``padding``: ``(batch, kv_length)`` True for real keys, or None; ``q_offset``/``kv_offset``: the positions of
      the first query and key (a cache holds earlier tokens).
    """

    causal: bool
    window: int | None
    chunk: int | None
    left_padding: torch.Tensor | None
    padding: torch.Tensor | None
    q_offset: int | torch.Tensor
    kv_offset: int
    kv_length: int


def _closure(function: Callable) -> dict[str, Any]:
    """The variables ``function`` closes over, by name."""
    cells = function.__closure__ or ()
    return {name: cell.cell_contents for name, cell in zip(function.__code__.co_freevars, cells, strict=True)}


def read_mask_function(mask_function: Callable) -> dict[str, Any]:
    """The structure of one of transformers' mask functions: causal or not, a sliding window, chunks.

    Only the functions transformers composes for these are read (causal, bidirectional, ``and_masks`` of the
    sliding-window and chunked overlays); anything else (packed sequences, image blocks, a model's own overlay)
    is an error naming it.
    """
    if mask_function is causal_mask_function:
        return {"causal": True}
    if mask_function is bidirectional_mask_function:
        return {"causal": False}
    name = getattr(mask_function, "__qualname__", repr(mask_function))
    if name == "sliding_window_overlay.<locals>.inner_mask":
        return {"window": _closure(mask_function)["sliding_window"]}
    if name == "chunked_overlay.<locals>.inner_mask":
        found = _closure(mask_function)
        return {"chunk": found["chunk_size"], "left_padding": found["left_padding"]}
    if name == "and_masks.<locals>.and_mask":
        merged: dict[str, Any] = {}
        for part in _closure(mask_function)["mask_functions"]:
            merged.update(read_mask_function(part))
        return merged
    raise PatternError(
        f"attn_implementation={NAME!r} cannot honour the mask function {name!r}: it reads causal, bidirectional, "
        "sliding-window and chunked masks; packed sequences, image-token blocks and other overlays are not supported"
    )


def layer_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int | torch.Tensor = 0,
    kv_offset: int = 0,
    mask_function: Callable = causal_mask_function,
    attention_mask: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    **kwargs: Any,
) -> LayerMask:
    """The ``AttentionMaskInterface`` entry: a :class:`LayerMask` instead of a dense mask (nothing O(length²))."""
    structure = read_mask_function(mask_function)
    padding = prepare_padding_mask(attention_mask, kv_length, kv_offset)
    if padding is not None:
        padding = padding[:, kv_offset : kv_offset + kv_length].to(device=device, dtype=torch.bool)
    return LayerMask(
        causal=structure.get("causal", True),
        window=structure.get("window"),
        chunk=structure.get("chunk"),
        left_padding=structure.get("left_padding"),
        padding=padding,
        q_offset=q_offset,
        kv_offset=kv_offset,
        kv_length=kv_length,
    )


def _where(module: torch.nn.Module) -> str:
    index = getattr(module, "layer_idx", None)
    return type(module).__name__ + ("" if index is None else f" (layer {index})")


def _refuse(module: torch.nn.Module, problems: list[str]) -> None:
    if problems:
        raise PatternError(f"attn_implementation={NAME!r} cannot run {_where(module)}: {'; '.join(problems)}")


def _problems(
    module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, mask: Any, options: dict[str, Any]
) -> list[str]:
    """Why this layer call cannot run on attnreg, in the model's own terms."""
    problems = []
    if not isinstance(mask, LayerMask):
        shape = getattr(mask, "shape", None)
        problems.append(
            "its attention mask was not made by attnreg's mask function "
            f"({'none' if mask is None else f'a {type(mask).__name__} of shape {tuple(shape or ())}'}): pass the 2-D "
            "padding mask and let the model build the rest"
        )
    if getattr(module, "is_decoder", False) and not getattr(module, "is_causal", True):
        problems.append("cross-attention (keys from another sequence) is not supported")
    if query.shape[1] % key.shape[1]:
        problems.append(f"{query.shape[1]} query heads are not a multiple of {key.shape[1]} key/value heads")
    window = options.get("sliding_window")
    if isinstance(mask, LayerMask) and window is not None and mask.window not in (None, window):
        problems.append(f"sliding_window={window} differs from the mask's window {mask.window}")
    elif isinstance(mask, LayerMask) and window is not None and mask.window is None and mask.causal:
        problems.append(
            f"the layer passes sliding_window={window} but its mask is full causal: set config.sliding_window or "
            "config.layer_types consistently"
        )
    if options.get("softcap") is not None and options.get("s_aux") is not None:
        problems.append("softcap together with sink logits (s_aux) is not supported")
    given = [name for name, value in options.items() if value is not None]
    unknown = sorted(o for o in given if o not in _KNOWN_OPTIONS and not o.startswith("output_"))
    if unknown:
        problems.append(f"the attention options {unknown} are not supported")
    return problems


#: The attention call's options this implementation honours or may ignore (positions and cache bookkeeping); the
#: ``output_*`` flags models pass down (router logits, hidden states) are bookkeeping too.
_KNOWN_OPTIONS = frozenset(
    {"sliding_window", "softcap", "s_aux", "position_ids", "use_cache", "cache_position", "output_attentions",
     "is_causal", "past_key_values", "position_embeddings"}
)


def layer_pattern(mask: LayerMask, softcap: float | None, scaling: float | None) -> Pattern:
    """The pattern of a whole-sequence call: causal or not, the window, the softcap and the model's scale. A window
    part, not a mask part: the engines run it as a band (no keys gathered per query block)."""
    left = None if mask.window is None else mask.window - 1
    right = 0 if mask.causal else None
    window = None if left is None and right is None else Window(left=left, right=right)
    return Pattern(window=window, softcap=softcap, scale=scaling)


def chunk_ids(mask: LayerMask, positions: torch.Tensor) -> torch.Tensor:
    """``(batch, len(positions))`` the chunk of each position, counted after each example's left padding (what
    transformers' chunked overlay compares)."""
    left = mask.left_padding if mask.left_padding is not None else torch.zeros(1, dtype=torch.long)
    return (positions[None, :] - left.to(positions.device)[:, None]).div(mask.chunk, rounding_mode="floor")


def _with_sink(
    pattern: Pattern, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, sinks: torch.Tensor, scale: float
) -> tuple[Pattern, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sink logits as one extra key at position 0 that every query sees, with a zero value: one more head
    dimension, 1 in the queries and ``sink / scale`` in that key, so its score is the sink logit exactly."""
    batch, heads, _, dim = query.shape
    ones = query.new_ones(batch, heads, query.shape[2], 1)
    zeros = key.new_zeros(batch, heads, key.shape[2], 1)
    sink_key = torch.cat([key.new_zeros(batch, heads, 1, dim), (sinks.to(key.dtype) / scale).view(1, heads, 1, 1)
                          .expand(batch, heads, 1, 1)], dim=-1)
    query = torch.cat([query.new_zeros(batch, heads, 1, dim + 1), torch.cat([query, ones], dim=-1)], dim=2)
    key = torch.cat([sink_key, torch.cat([key, zeros], dim=-1)], dim=2)
    value = torch.cat([value.new_zeros(batch, heads, 1, dim + 1), torch.cat([value, zeros], dim=-1)], dim=2)
    window = pattern.window or Window(None, None)
    band = Band(window.left, window.right)
    shifted = dataclasses.replace(pattern, window=None, mask=band | KeyRange(0, 1), scale=scale)
    return shifted, query, key, value


def _whole_sequence(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: LayerMask,
    options: dict[str, Any],
    dropout: float,
    weights_asked: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Prefill, training and encoders: the whole sequence on attnreg's engines (weights from the reference)."""
    scaling = options["scaling"]
    pattern = layer_pattern(mask, options.get("softcap"), scaling)
    real = mask.padding
    documents = None
    if mask.chunk is not None:
        documents = chunk_ids(mask, torch.arange(query.shape[2], device=query.device)).expand(query.shape[0], -1)
    sinks = options.get("s_aux")
    if sinks is not None:
        if documents is not None:
            raise PatternError(f"attn_implementation={NAME!r}: sink logits with chunked attention are not supported")
        pattern, query, key, value = _with_sink(pattern, query, key, value, sinks, scaling)
        if real is not None:
            real = torch.cat([real.new_ones(real.shape[0], 1), real], dim=1)
    inputs = {"attention_mask": real, "dropout_p": dropout, "document_ids": documents}
    if weights_asked:
        out, probs = attention_weights(query, key, value, pattern, **inputs)
    else:
        out, probs = attention(query, key, value, pattern, **inputs), None
    if sinks is not None:
        out = out[:, :, 1:, :-1]
        probs = None if probs is None else probs[:, :, 1:, 1:]
    return out, probs


def _reachable_keys(
    key: torch.Tensor, value: torch.Tensor, mask: LayerMask
) -> tuple[torch.Tensor, torch.Tensor, LayerMask]:
    """The cached keys a sliding layer's queries can reach, from the first query's window on: a cache that holds the
    whole context (as Mistral's does) then costs a step O(window), not O(context). Unchanged without a window or when
    the positions are a tensor (a static cache under compile, whose slicing would be data-dependent)."""
    if mask.window is None or not isinstance(mask.q_offset, int):
        return key, value, mask
    first = mask.q_offset - mask.window + 1 - mask.kv_offset
    if first <= 0:
        return key, value, mask
    padding = None if mask.padding is None else mask.padding[:, first:]
    reachable = dataclasses.replace(
        mask, kv_offset=mask.kv_offset + first, kv_length=mask.kv_length - first, padding=padding
    )
    return key[:, :, first:], value[:, :, first:], reachable


def _sees_every_key(query: torch.Tensor, key: torch.Tensor, mask: LayerMask) -> bool:
    """Whether every query of this step sees every cached key, known from the positions alone (a decoding step
    without padding or chunks over a cache that holds, or was cut to, its window): then it needs no mask."""
    if mask.padding is not None or mask.chunk is not None or not isinstance(mask.q_offset, int):
        return False
    first_query, last_query = mask.q_offset, mask.q_offset + query.shape[2] - 1
    first_key, last_key = mask.kv_offset, mask.kv_offset + key.shape[2] - 1
    causal_ok = not mask.causal or last_key <= first_query
    window_ok = mask.window is None or first_key > last_query - mask.window
    return causal_ok and window_ok


def _step_mask(query: torch.Tensor, key: torch.Tensor, mask: LayerMask) -> torch.Tensor:
    """``(batch or 1, queries, keys)``: True where a query of this cached step sees a cached key."""
    q_positions = mask.q_offset + torch.arange(query.shape[2], device=query.device)
    k_positions = mask.kv_offset + torch.arange(key.shape[2], device=query.device)
    allowed = torch.ones(query.shape[2], key.shape[2], dtype=torch.bool, device=query.device)[None]
    if mask.causal:
        allowed = allowed & (k_positions[None, :] <= q_positions[:, None])
    if mask.window is not None:
        allowed = allowed & (k_positions[None, :] > q_positions[:, None] - mask.window)
    if mask.chunk is not None:
        allowed = allowed & (chunk_ids(mask, q_positions)[:, :, None] == chunk_ids(mask, k_positions)[:, None, :])
    if mask.padding is not None:
        allowed = allowed & mask.padding[:, None, :]
    return allowed


def _fused_step(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: LayerMask, scale: float, dropout: float
) -> torch.Tensor:
    """The step as one SDPA call: with no mask when the positions show every key is seen; a query that sees no key
    gives zeros."""
    if _sees_every_key(query, key, mask):
        return F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, scale=scale)
    allowed = _step_mask(query, key, mask)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=allowed[:, None], dropout_p=dropout, scale=scale)
    return out.masked_fill(~allowed.any(dim=-1)[:, None, :, None], 0.0)


def _cached_step(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: LayerMask,
    options: dict[str, Any],
    dropout: float,
    weights_asked: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A step with a cache: the queries against the cached keys their layer allows (a sliding layer's step is
    O(window): its cache holds the window, or :func:`_reachable_keys` cuts it).

    One fused SDPA call, unless the step needs what SDPA cannot give: the weights, softcap or sink logits. Where
    reads are allowed (:func:`~attnreg.execution.non_finite.reads_allowed`), a non-finite output means a non-finite
    cached key or value, which SDPA's masking spreads to queries that do not see it: the step then runs explicitly,
    in fp32, keeping it to the queries that see it, as the reference does."""
    if not (weights_asked or options.get("softcap") is not None or options.get("s_aux") is not None):
        out = _fused_step(query, key, value, mask, options["scaling"], dropout)
        if not reads_allowed(out) or all_finite(out):
            return out, None
    allowed = _step_mask(query, key, mask)
    empty = ~allowed.any(dim=-1)[:, None, :, None]  # a query with no key at all attends to nothing
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * options["scaling"]
    if options.get("softcap") is not None:
        scores = options["softcap"] * torch.tanh(scores / options["softcap"])
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    sinks = options.get("s_aux")
    if sinks is not None:
        sink = sinks.float().view(1, -1, 1, 1).expand(*scores.shape[:3], 1)
        scores = torch.cat([scores, sink], dim=-1)
    probs = torch.softmax(scores, dim=-1).masked_fill(empty, 0.0)  # a NaN key a query sees keeps its row NaN
    if sinks is not None:
        probs = probs[..., :-1]
    if dropout:
        probs = F.dropout(probs, p=dropout)
    values = value.float()
    out = torch.matmul(probs, values)
    if reads_allowed(out) and not all_finite(out):
        out = weighted_values(probs, values)  # 0 * nan from a value no query sees must not reach its row
    return out.to(query.dtype), probs.to(query.dtype)


def decoder_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **options: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The ``AttentionInterface`` entry: ``(module, q, k, v, mask, ...) -> ((batch, length, heads, dim), weights)``."""
    _refuse(module, _problems(module, query, key, attention_mask, options))
    dropout = check_dropout_p("dropout", dropout)
    key, value = shared_kv_heads(query, key, value)
    options = {**options, "scaling": query.shape[-1] ** -0.5 if scaling is None else scaling}
    mask: LayerMask = attention_mask
    length = query.shape[2]
    weights_asked = bool(options.get("output_attentions"))
    from_start = mask.kv_offset == 0 and isinstance(mask.q_offset, int) and mask.q_offset == 0
    # a whole sequence; or the first step into a preallocated (static) cache, whose later slots causal queries never see
    if from_start and (key.shape[2] == length or (mask.causal and key.shape[2] > length)):
        key, value = key[:, :, :length], value[:, :, :length]
        if mask.padding is not None:
            mask = dataclasses.replace(mask, padding=mask.padding[:, :length])
        out, weights = _whole_sequence(query, key, value, mask, options, dropout, weights_asked)
    else:
        if not weights_asked:
            key, value, mask = _reachable_keys(key, value, mask)
        out, weights = _cached_step(query, key, value, mask, options, dropout, weights_asked)
    return out.transpose(1, 2).contiguous(), weights

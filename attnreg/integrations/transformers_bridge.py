"""attnreg patterns as Hugging Face transformers attention implementations (``attn_implementation="attnreg:NAME"``).

Each pattern is registered twice under one name: an attention function in ``AttentionInterface`` and a mask
function in ``AttentionMaskInterface``. The mask function is what keeps the model's padding mask: without it
transformers drops the mask for an unknown implementation. It hands the attention function the ``(batch, length)``
padding mask (O(length), no ``length²`` mask is built) and refuses any mask structure that is not plain causal or
bidirectional attention, since that structure could not be merged into the pattern.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from transformers.masking_utils import (
    AttentionMaskInterface,
    bidirectional_mask_function,
    causal_mask_function,
    prepare_padding_mask,
)
from transformers.modeling_utils import AttentionInterface

from attnreg._validation import PatternError, require
from attnreg.execution.dropout import check_dropout_p
from attnreg.functional import attention, attention_weights
from attnreg.pattern.spec import Pattern
from attnreg.registry import get_registry, resolve_pattern

PREFIX = "attnreg:"


def register(name: str, pattern: Pattern | str, **pattern_params: Any) -> str:
    """Register ``pattern`` (a :class:`attnreg.Pattern` or a registered name with ``pattern_params``) as ``name``.

    Afterwards ``Model.from_pretrained(..., attn_implementation=name)`` (or ``model.set_attn_implementation(name)``)
    runs the pattern in every self-attention layer that goes through ``AttentionInterface``. Returns ``name``.
    """
    require(isinstance(name, str) and name.strip() == name and name, "name", name, "expected a non-empty string")
    require("/" not in name, "name", name, "a '/' would make transformers read it as a hub kernel")
    pattern = resolve_pattern(pattern, pattern_params)  # loads the registry now: torch.compile traces a loaded one
    AttentionInterface.register(name, make_attention_function(pattern, name))
    AttentionMaskInterface.register(name, make_mask_function(pattern, name))
    return name


def register_all() -> list[str]:
    """Register ``attnreg`` (each layer's own attention, read from the model: :mod:`attnreg.integrations.decoder`)
    and ``attnreg:<name>`` for every registered pattern whose parameters all have defaults; the names."""
    from attnreg.integrations import decoder

    AttentionInterface.register(decoder.NAME, decoder.decoder_attention)
    AttentionMaskInterface.register(decoder.NAME, decoder.layer_mask)
    registry = get_registry()
    names = [decoder.NAME]
    for pattern_name in registry.list_patterns():
        entry = registry.pattern_entry(pattern_name)
        if any(default is inspect.Parameter.empty for default in entry.parameters().values()):
            continue
        names.append(register(PREFIX + pattern_name, entry.create()))
    return names


def model_problems(pattern: Pattern, *, causal: bool) -> list[str]:
    """Why a transformers self-attention layer (causal or not) cannot run ``pattern``; empty if it can."""
    problems = []
    if causal and not (pattern.window is not None and pattern.window.is_causal):
        window = "no window" if pattern.window is None else f"window right={pattern.window.right}"
        problems.append(f"the model is causal (a decoder) but the pattern sees keys after the query ({window})")
    if causal and pattern.selected_globals is not None:
        problems.append("the model is causal but selected global tokens see (and are seen by) every token")
    if pattern.aggregated_globals is not None:
        problems.append("the pattern needs aggregated global tokens (a norm and their keys/values) the model lacks")
    if pattern.bias is not None or pattern.aggregated_bias is not None:
        problems.append("the pattern needs relative-position bias tables, which the model's layers lack")
    return problems


def _refuse(name: str, where: str, problems: list[str]) -> None:
    if problems:
        raise PatternError(f"attn_implementation={name!r} cannot run in {where}: {'; '.join(problems)}")


def make_mask_function(pattern: Pattern, name: str) -> Callable[..., torch.Tensor]:
    """The ``AttentionMaskInterface`` entry: the ``(batch, length)`` padding mask (True = real) for the attention."""

    def pattern_mask(
        batch_size: int,
        q_length: int,
        kv_length: int,
        q_offset: int = 0,
        kv_offset: int = 0,
        mask_function: Callable = causal_mask_function,
        attention_mask: torch.Tensor | None = None,
        device: torch.device | str = "cpu",
        **kwargs: Any,
    ) -> torch.Tensor:
        if mask_function is causal_mask_function:
            causal = True
        elif mask_function is bidirectional_mask_function:
            causal = False
        else:
            raise PatternError(
                f"attn_implementation={name!r} cannot honour this model's mask: mask_function="
                f"{getattr(mask_function, '__qualname__', mask_function)!r} adds structure (sliding window, chunks, "
                "packed sequences, overlays) beyond padding with causal or bidirectional attention, and it cannot be "
                "merged into the pattern"
            )
        _refuse(name, "this model's mask", model_problems(pattern, causal=causal))
        require(
            isinstance(q_offset, int) and q_offset == 0 and kv_offset == 0 and q_length == kv_length,
            "cache",
            f"q_length={q_length}, kv_length={kv_length}, q_offset={q_offset}, kv_offset={kv_offset}",
            f"{name!r} runs whole sequences; incremental decoding with a cache is not supported (use_cache=False)",
        )
        padding = prepare_padding_mask(attention_mask, kv_length, kv_offset)
        if padding is None:
            return torch.ones(batch_size, kv_length, dtype=torch.bool, device=device)
        return padding[:, :kv_length].to(device=device, dtype=torch.bool)

    pattern_mask.__qualname__ = f"pattern_mask[{name}]"
    return pattern_mask


def make_attention_function(pattern: Pattern, name: str) -> Callable[..., tuple[torch.Tensor, torch.Tensor | None]]:
    """The ``AttentionInterface`` entry: ``(module, q, k, v, mask, ...) -> ((batch, length, heads, dim), weights)``.

    ``dropout`` is what the model passes (its attention dropout in training, 0 in eval): it is applied to the
    attention probabilities on attnreg's engines, and the weights for ``output_attentions`` are the dropped ones,
    as transformers' eager attention returns them.
    """

    def pattern_attention(
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        dropout: float = 0.0,
        scaling: float | None = None,
        is_causal: bool | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        where = type(module).__name__
        causal = bool(getattr(module, "is_causal", False) if is_causal is None else is_causal)
        _refuse(name, where, model_problems(pattern, causal=causal))
        _refuse(name, where, _call_problems(module, query, key, attention_mask, kwargs))
        dropout = check_dropout_p("dropout", dropout)
        key, value = shared_kv_heads(query, key, value)
        run = _scaled(pattern, scaling, query.shape[-1], name, where)
        inputs = {"attention_mask": attention_mask, "dropout_p": dropout}
        if kwargs.get("global_mask") is not None:
            _refuse(name, where, _global_problems(pattern))
            inputs["global_mask"] = kwargs["global_mask"]
        if kwargs.get("output_attentions"):
            out, weights = attention_weights(query, key, value, run, **inputs)
        else:
            out = attention(query, key, value, run, **inputs)
            weights = None
        return out.transpose(1, 2).contiguous(), weights

    pattern_attention.__qualname__ = f"pattern_attention[{name}]"
    return pattern_attention


def shared_kv_heads(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``key`` and ``value`` with each key/value head repeated for the query heads that share it (grouped-query
    attention), as attnreg's engines take one key/value head per query head."""
    heads, kv_heads = query.shape[1], key.shape[1]
    if kv_heads == heads:
        return key, value
    return key.repeat_interleave(heads // kv_heads, dim=1), value.repeat_interleave(heads // kv_heads, dim=1)


def _is_cross_attention(module: torch.nn.Module) -> bool:
    """transformers' cross-attention modules: a ``*CrossAttention`` class (BERT family), or a decoder's non-causal
    attention (BART's ``encoder_attn``)."""
    decoder_non_causal = getattr(module, "is_decoder", False) and not getattr(module, "is_causal", True)
    return "CrossAttention" in type(module).__name__ or decoder_non_causal


def _call_problems(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    kwargs: dict[str, Any],
) -> list[str]:
    problems = []
    if _is_cross_attention(module):
        problems.append("this is cross-attention (keys from another sequence): a pattern relates a sequence to itself")
    if query.shape[2] != key.shape[2]:
        problems.append(
            f"queries ({query.shape[2]}) and keys ({key.shape[2]}) differ in length: cross-attention or decoding "
            "with a cache, where the pattern's query-key positions do not line up"
        )
    if query.shape[1] % key.shape[1]:
        problems.append(f"{query.shape[1]} query heads are not a multiple of {key.shape[1]} key/value heads")
    if attention_mask is not None and attention_mask.dim() != 2:
        problems.append(
            f"a prepared {attention_mask.dim()}-D attention mask {tuple(attention_mask.shape)} cannot be merged into "
            "the pattern; pass the 2-D padding mask (the pattern is the structure)"
        )
    for option in ("softcap", "sliding_window", "s_aux", "position_bias"):
        if kwargs.get(option) is not None:
            problems.append(f"{option}={kwargs[option]!r} is not supported")
    return problems


def _global_problems(pattern: Pattern) -> list[str]:
    """Why global tokens cannot be used with ``pattern`` in a transformers model; empty if they can."""
    if pattern.selected_globals is None:
        return ["a global_mask was passed but the pattern has no selected_globals"]
    if pattern.selected_globals.own_projections:
        return ["global tokens need the pattern's own global query/key/value projections, which the model lacks"]
    return []


def _scaled(pattern: Pattern, scaling: float | None, head_dim: int, name: str, where: str) -> Pattern:
    """``pattern`` with the model's score scale; a pattern with its own, different scale is an error."""
    if scaling is None or math.isclose(scaling, pattern.score_scale(head_dim), rel_tol=1e-9):
        return pattern
    if pattern.scale is not None:
        _refuse(name, where, [f"the pattern's scale={pattern.scale} differs from the model's scaling={scaling}"])
    return dataclasses.replace(pattern, scale=float(scaling))


def unregister(name: str) -> None:
    """Remove ``name`` from both interfaces (tests, notebooks)."""
    AttentionInterface._global_mapping.pop(name, None)
    AttentionMaskInterface._global_mapping.pop(name, None)

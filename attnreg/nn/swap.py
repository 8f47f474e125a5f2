"""``attnreg.swap``: put a pattern into an existing model by replacing its ``nn.MultiheadAttention`` modules.

The weights are kept, so a pattern that allows everything (``Pattern()``) leaves the outputs unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from attnreg._validation import PatternError, require
from attnreg.execution.dropout import check_dropout_p
from attnreg.nn.multihead import MultiheadPatternAttention
from attnreg.pattern.spec import Pattern
from attnreg.registry import resolve_pattern


def swap(
    model: nn.Module,
    pattern: Pattern | str,
    *,
    include: Callable[[str, nn.MultiheadAttention], bool] | None = None,
    dropout: float | None = None,
    dense_weights: bool = False,
    **pattern_params: Any,
) -> nn.Module:
    """Replace, in place, every ``nn.MultiheadAttention`` in ``model`` by a :class:`MultiheadPatternAttention`.

    ``pattern`` is a :class:`attnreg.Pattern` or a registered name built with ``pattern_params``. ``include(name,
    module)`` picks the modules to replace (e.g. leave a decoder's cross-attention alone). Each replacement keeps its
    module's attention dropout (``mha.dropout``, applied in training mode only, on the fast engines) unless
    ``dropout`` overrides it for all. ``dense_weights=True`` makes ``need_weights=True`` (MHA's default) compute the
    dense weights on the reference engine, O(length²); otherwise the weights are ``None`` and the output always comes
    from the fast engines (see :class:`MultiheadPatternAttention`). ``nn.TransformerEncoder`` parents get
    ``use_nested_tensor = False``: its nested-tensor fast path would bypass the pattern.
    """
    require(isinstance(model, nn.Module), "model", type(model).__name__, "expected a torch.nn.Module")
    pattern = resolve_pattern(pattern, pattern_params)
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.MultiheadAttention) and (include is None or include(name, module))
    ]
    require(bool(targets), "model", type(model).__name__, "expected at least one nn.MultiheadAttention to replace")
    for name, module in targets:
        replacement = from_multihead(module, pattern, dropout=dropout, dense_weights=dense_weights, name=name)
        _set_submodule(model, name, replacement)
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoder):
            module.use_nested_tensor = False
    return model


def from_multihead(
    mha: nn.MultiheadAttention,
    pattern: Pattern,
    *,
    dropout: float | None = None,
    dense_weights: bool = False,
    name: str = "module",
) -> MultiheadPatternAttention:
    """A :class:`MultiheadPatternAttention` with ``mha``'s weights, device, dtype, training mode and attention dropout.

    ``dropout`` (a probability in [0, 1)) replaces ``mha.dropout``; what cannot carry over is an error.
    """
    _check_swappable(mha, name)
    if dropout is None:
        dropout = check_dropout_p(f"{name}.dropout", mha.dropout)
    weight = mha.in_proj_weight
    layer = MultiheadPatternAttention(
        mha.embed_dim,
        mha.num_heads,
        pattern,
        bias=mha.in_proj_bias is not None,
        dropout=dropout,
        batch_first=mha.batch_first,
        dense_weights=dense_weights,
        device=weight.device,
        dtype=weight.dtype,
    )
    loaded = layer.load_state_dict(mha.state_dict(), strict=False)
    require(
        not loaded.unexpected_keys,
        name,
        sorted(loaded.unexpected_keys),
        "these nn.MultiheadAttention weights have no place in MultiheadPatternAttention",
    )
    with torch.no_grad():
        if layer.global_in_proj_weight is not None:
            layer.global_in_proj_weight.copy_(mha.in_proj_weight)
        if layer.global_in_proj_bias is not None:
            layer.global_in_proj_bias.copy_(mha.in_proj_bias)
    layer.train(mha.training)
    return layer


def _check_swappable(mha: nn.MultiheadAttention, name: str) -> None:
    reasons = []
    if not mha._qkv_same_embed_dim:
        reasons.append(
            f"kdim={mha.kdim} and vdim={mha.vdim} differ from embed_dim={mha.embed_dim}: that is cross-attention, "
            "and a pattern needs queries and keys of one sequence"
        )
    if mha.bias_k is not None:
        reasons.append("add_bias_kv=True appends a learned key/value that no pattern position stands for")
    if mha.add_zero_attn:
        reasons.append("add_zero_attn=True appends a zero key/value that no pattern position stands for")
    if reasons:
        raise PatternError(
            f"cannot swap {name!r} ({mha!r}): {'; '.join(reasons)}. Leave it out with include=lambda name, m: ..."
        )


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    if not name:
        raise PatternError(
            "model=nn.MultiheadAttention is not allowed: swap replaces modules inside a model; "
            "use attnreg.nn.swap.from_multihead(module, pattern) for a lone module"
        )
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, module)

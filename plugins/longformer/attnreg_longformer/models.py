"""``attnreg.build("longformer", ...)``: transformers' Longformer models with every self-attention layer attnreg's.

The model is the transformers class the checkpoint names (``config.architectures``) or ``head`` asks for, so
state-dict keys, forward arguments (``global_attention_mask`` included), outputs and ``save_pretrained`` are
transformers' own; only ``LongformerSelfAttention`` is replaced, keeping its weights.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import transformers
from transformers import LongformerConfig
from transformers.models.longformer import modeling_longformer

from attnreg import PatternError
from attnreg.execution.host import host_readable
from attnreg.models.inputs import (
    check_batch,
    check_forward_inputs,
    check_like,
    check_tokens,
)
from attnreg.nn import SharedBatch
from attnreg.validation import reject_unknown, require
from attnreg_longformer.layer import LongformerSelfAttention
from attnreg_longformer.pattern import layer_pattern

#: Short head names and the transformers classes they stand for.
HEADS: dict[str, str] = {
    "base": "LongformerModel",
    "masked-lm": "LongformerForMaskedLM",
    "sequence-classification": "LongformerForSequenceClassification",
    "question-answering": "LongformerForQuestionAnswering",
    "token-classification": "LongformerForTokenClassification",
    "multiple-choice": "LongformerForMultipleChoice",
}

#: ``allenai/longformer-base-4096``'s sizes: the paper's base model.
BASE_CONFIG: dict[str, Any] = {
    "vocab_size": 50265,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 4098,
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-5,
    "attention_window": 512,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "sep_token_id": 2,
}


def head_class(head: str) -> type[transformers.PreTrainedModel]:
    """The transformers class for a short head name (``"masked-lm"``) or a class name (``"LongformerForMaskedLM"``)."""
    name = HEADS.get(head, head)
    require(
        isinstance(head, str) and name in HEADS.values(),
        "head",
        head,
        f"expected one of {', '.join(HEADS)} or {', '.join(HEADS.values())}",
    )
    return getattr(transformers, name)


def config_fields() -> list[str]:
    """The fields a ``LongformerConfig`` takes: its constructor's parameters and what it serialises."""
    parameters = inspect.signature(LongformerConfig.__init__).parameters
    named = [name for name, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return sorted({*named, *LongformerConfig().to_dict(), "num_labels"} - {"self", "kwargs"})


def make_config(config: LongformerConfig | dict[str, Any] | None, overrides: dict[str, Any]) -> LongformerConfig:
    """A ``LongformerConfig`` from a config, a dict or ``None`` (base size), with ``overrides`` applied and checked."""
    if config is None:
        config = LongformerConfig(**BASE_CONFIG)
    elif isinstance(config, dict):
        reject_unknown("config", config, config_fields())
        config = LongformerConfig(**config)
    else:
        require(
            isinstance(config, LongformerConfig),
            "config",
            type(config).__name__,
            "expected a LongformerConfig, a dict or None",
        )
        config = LongformerConfig(**config.to_dict())
    reject_unknown("attnreg.build('longformer') overrides", overrides, config_fields())
    for key, value in overrides.items():
        setattr(config, key, value)
    windows = config.attention_window
    if isinstance(windows, (list, tuple)):
        require(
            len(windows) == config.num_hidden_layers,
            "config.attention_window",
            list(windows),
            f"expected one window per layer: {config.num_hidden_layers} (config.num_hidden_layers), or one int",
        )
    for layer_id in range(config.num_hidden_layers if isinstance(windows, (list, tuple)) else 1):
        layer_pattern(windows, layer_id)
    return config


def use_attnreg_attention(model: torch.nn.Module) -> torch.nn.Module:
    """Replace every transformers ``LongformerSelfAttention`` in ``model`` by attnreg's, keeping its weights."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, modeling_longformer.LongformerSelfAttention):
                setattr(parent, name, from_transformers(child))
                replaced += 1
    batch = SharedBatch()  # every layer attends under the same masks: prepared once per forward
    for module in model.modules():
        if isinstance(module, LongformerSelfAttention):
            module.attnreg_batch = batch
    if replaced == 0 and not any(isinstance(m, LongformerSelfAttention) for m in model.modules()):
        raise PatternError(f"model={type(model).__name__} is not allowed: it has no LongformerSelfAttention layer")
    for module in {model, getattr(model, "base_model", model)}:
        if isinstance(module, modeling_longformer.LongformerPreTrainedModel):
            check_forward_inputs(module, check_inputs)
    return model


def check_inputs(model: torch.nn.Module, arguments: dict[str, Any]) -> None:
    """Check a Longformer model's forward arguments as the caller gave them, before transformers pads them.

    Exactly one of ``input_ids`` (integer ids below the vocabulary size) and ``inputs_embeds``; no size 0; every
    mask, ``token_type_ids`` and ``position_ids`` of their shape; labels of their batch; at most as many positions
    as ``config.max_position_embeddings`` holds. :func:`use_attnreg_attention` runs it before every forward.
    """
    multiple_choice = isinstance(model, transformers.LongformerForMultipleChoice)
    axes = ("batch", "num_choices", "length") if multiple_choice else ("batch", "length")
    given, shape = check_tokens(arguments, "input_ids", "inputs_embeds", axes, model.get_input_embeddings())
    for name in ("attention_mask", "global_attention_mask", "token_type_ids", "position_ids"):
        check_like(name, arguments.get(name), shape, axes, given)
    per_token = isinstance(model, (transformers.LongformerForMaskedLM, transformers.LongformerForTokenClassification))
    if per_token:
        check_like("labels", arguments.get("labels"), shape, axes, given)
    for name in ("labels", "start_positions", "end_positions"):
        if not per_token or name != "labels":
            check_batch(name, arguments.get(name), shape[0], given)
    if arguments.get("position_ids") is None:
        _check_positions(model, arguments.get("input_ids"), shape[-1])


def _check_positions(model: torch.nn.Module, ids: torch.Tensor | None, length: int) -> None:
    """Check that transformers' own position ids fit ``config.max_position_embeddings`` (they start after padding).

    From ``input_ids`` only real tokens take positions (read where that costs no device sync); from ``inputs_embeds``
    every token does, those transformers pads on to the window multiple included.
    """
    config = model.config
    limit = config.max_position_embeddings - config.pad_token_id - 1
    why = f"config.max_position_embeddings={config.max_position_embeddings} less config.pad_token_id + 1 = {limit}: "
    why += "Longformer's positions start after the padding id"
    if ids is not None:
        if host_readable(ids):
            count = int(ids.ne(config.pad_token_id).sum(-1).max())
            if count > limit:
                raise PatternError(
                    f"input_ids has {count} tokens that are not config.pad_token_id={config.pad_token_id} in one "
                    f"example, which is not allowed: expected at most {why}"
                )
        return
    base = getattr(model, "base_model", model)
    if "_pad_to_window_size" not in vars(base):  # skip_window_padding puts its own there
        windows = config.attention_window
        window = windows if isinstance(windows, int) else max(windows)
        why += f", and transformers pads inputs_embeds to a multiple of the window {window}"
        why += " (pad_to_window=False skips that)"
        limit -= limit % window
    require(length <= limit, "inputs_embeds.shape[-2]", length, f"expected at most {limit} tokens: {why}")


def from_transformers(layer: torch.nn.Module) -> LongformerSelfAttention:
    """attnreg's layer sharing the parameters (and train/eval mode) of a transformers ``LongformerSelfAttention``."""
    with torch.device("meta"):
        new = LongformerSelfAttention(layer.config, layer.layer_id)
    for name in ("query", "key", "value", "query_global", "key_global", "value_global"):
        setattr(new, name, getattr(layer, name))
    new.dropout = layer.dropout
    return new.train(layer.training)


def build_longformer(
    config: LongformerConfig | dict[str, Any] | None = None,
    *,
    pretrained: str | None = None,
    head: str | None = None,
    pad_to_window: bool = True,
    **overrides: Any,
) -> torch.nn.Module:
    """A transformers Longformer model (the head asked for, or the checkpoint's) with attnreg's attention layers.

    ``pretrained``: a folder written by ``save_pretrained`` or a hub id; ``config``: a ``LongformerConfig``, a dict
    or ``None`` (base size); ``overrides``: config fields (``num_labels=3``, ``attention_window=[256, 512]``).
    ``pad_to_window=False`` skips transformers' padding to a multiple of the window (see :func:`skip_window_padding`).
    """
    require(isinstance(pad_to_window, bool), "pad_to_window", pad_to_window, "expected a bool")
    if pretrained is not None:
        require(config is None, "config", type(config).__name__, "give config or pretrained, not both")
        loaded = LongformerConfig.from_pretrained(pretrained)
        cls = head_class(head or _architecture(loaded))
        model = cls.from_pretrained(pretrained, config=make_config(loaded, overrides))
    else:
        config = make_config(config, overrides)
        cls = head_class(head or _architecture(config))
        model = cls(config)
    model = use_attnreg_attention(model)
    return model if pad_to_window else skip_window_padding(model)


def skip_window_padding(model: torch.nn.Module) -> torch.nn.Module:
    """Stop a Longformer model padding its inputs to a multiple of the window: attnreg's layers take any length.

    Outputs at real tokens are unchanged and so are the shapes transformers cuts back; ``global_attentions``,
    which transformers returns at the padded length, then has the input's length.
    """
    base = getattr(model, "base_model", None)
    require(
        isinstance(base, modeling_longformer.LongformerModel),
        "model",
        type(model).__name__,
        "expected a transformers Longformer model",
    )
    base._pad_to_window_size = _unpadded
    return model


def _unpadded(
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor,
    position_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
    pad_token_id: int,
) -> tuple[int, torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    return 0, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds


def _architecture(config: LongformerConfig) -> str:
    architectures = config.architectures or ["LongformerModel"]
    return architectures[0]

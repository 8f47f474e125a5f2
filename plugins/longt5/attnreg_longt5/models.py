"""Model builders for ``attnreg.build("longt5-local" | "longt5-tglobal", ...)``.

A builder makes (or loads) transformers' own LongT5 model and puts attnreg's drop-in layers in place of its encoder
self-attention, sharing the weights: state-dict keys, forward arguments, outputs, ``generate()`` and
``save_pretrained()`` are transformers', so plain transformers reloads what it saves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from transformers import LongT5Config, LongT5EncoderModel, LongT5ForConditionalGeneration
from transformers.models.longt5 import modeling_longt5

from attnreg.models.inputs import (
    check_batch,
    check_forward_inputs,
    check_ids,
    check_like,
    check_tokens,
)
from attnreg.nn import SharedBatch
from attnreg.validation import reject_unknown, require, require_int
from attnreg_longt5.layers import LongT5LocalAttention, LongT5TransientGlobalAttention

HEADS: dict[str, type[modeling_longt5.LongT5PreTrainedModel]] = {
    "conditional-generation": LongT5ForConditionalGeneration,
    "encoder": LongT5EncoderModel,
}

ATTENTION_TYPE = {"longt5-local": "local", "longt5-tglobal": "transient-global"}

ConfigLike = LongT5Config | Mapping[str, Any] | None
"""What a builder's ``config`` may be: a ``LongT5Config``, a dict of its fields over the base size, or ``None``."""

BASE_CONFIG: dict[str, Any] = {
    "vocab_size": 32128,
    "d_model": 768,
    "d_kv": 64,
    "d_ff": 2048,
    "num_layers": 12,
    "num_decoder_layers": 12,
    "num_heads": 12,
    "local_radius": 127,
    "global_block_size": 16,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "dropout_rate": 0.1,
    "layer_norm_epsilon": 1e-6,
    "feed_forward_proj": "gated-gelu",
    "tie_word_embeddings": False,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}
"""The paper's base size, as ``google/long-t5-tglobal-base`` (``encoder_attention_type`` comes from the name)."""

CONFIG_KEYS = frozenset(
    [f.name for f in dataclasses.fields(LongT5Config)]
    + list(LongT5Config.attribute_map)
    + ["decoder_start_token_id", "output_attentions"]
)
"""The names a ``config`` dict or an override may set: ``LongT5Config``'s own fields and aliases."""

_SAVED_ONLY_KEYS = frozenset(["model_type", "transformers_version", "n_positions", "scale_decoder_outputs"])

_LAYERS: dict[str, tuple[str, type[torch.nn.Module]]] = {
    "local": ("LocalSelfAttention", LongT5LocalAttention),
    "transient-global": ("TransientGlobalSelfAttention", LongT5TransientGlobalAttention),
}


def build_longt5_local(
    config: ConfigLike = None, *, pretrained: str | None = None, head: str = "conditional-generation", **overrides: Any
) -> torch.nn.Module:
    """``attnreg.build("longt5-local")``: transformers' LongT5 on local attention; arguments as :func:`build_longt5`."""
    return build_longt5("longt5-local", config, pretrained=pretrained, head=head, **overrides)


def build_longt5_tglobal(
    config: ConfigLike = None, *, pretrained: str | None = None, head: str = "conditional-generation", **overrides: Any
) -> torch.nn.Module:
    """``attnreg.build("longt5-tglobal")``: LongT5 on Transient-Global attention; arguments as :func:`build_longt5`."""
    return build_longt5("longt5-tglobal", config, pretrained=pretrained, head=head, **overrides)


#: The registered builders, by name: the plugin adds each one as it is.
BUILDERS = {"longt5-local": build_longt5_local, "longt5-tglobal": build_longt5_tglobal}


def build_longt5(
    name: str,
    config: ConfigLike = None,
    *,
    pretrained: str | None = None,
    head: str = "conditional-generation",
    **overrides: Any,
) -> torch.nn.Module:
    """A transformers LongT5 model (``head``: ``"conditional-generation"`` or ``"encoder"``) on attnreg attention.

    ``pretrained``: a folder written by ``save_pretrained`` or a hub id, loaded with ``from_pretrained``;
    ``config``: a ``LongT5Config``, a dict applied over the base size, or ``None`` for the base size (d_model 768,
    12 layers, 12 heads). ``overrides`` are ``LongT5Config`` fields (``dtype`` too when loading). The name sets
    ``encoder_attention_type``; a config or checkpoint that disagrees is an error. ``with attnreg.backend(...)``
    around its calls pins an attnreg engine.
    """
    require(name in ATTENTION_TYPE, "name", name, f"expected one of {sorted(ATTENTION_TYPE)}")
    require(head in HEADS, "head", head, f"expected one of {sorted(HEADS)}")
    _check_keys("overrides", overrides)
    dtype = overrides.pop("dtype", None)
    if pretrained is not None:
        require(
            isinstance(pretrained, str) or hasattr(pretrained, "__fspath__"),
            "pretrained",
            pretrained,
            "expected a folder written by save_pretrained or a hub id",
        )
        loading: dict[str, Any] = {} if dtype is None else {"dtype": dtype}
        if config is not None:
            loading["config"] = make_config(name, config, **overrides)
        else:
            loading.update(overrides)
        model = HEADS[head].from_pretrained(pretrained, **loading)
        _check_attention_type(name, model.config.encoder_attention_type, f"the checkpoint {pretrained!r}")
    else:
        model = HEADS[head](make_config(name, config, **overrides))
        if dtype is not None:
            model = model.to(dtype)
    return use_attnreg_attention(model)


def make_config(name: str, config: ConfigLike = None, **overrides: Any) -> LongT5Config:
    """The ``LongT5Config`` for ``name`` from a config, a dict over the base size, or nothing, plus ``overrides``."""
    attention_type = ATTENTION_TYPE[name]
    _check_keys("overrides", overrides)
    if isinstance(config, LongT5Config):
        _check_attention_type(name, config.encoder_attention_type, "config")
        return LongT5Config.from_dict({**config.to_dict(), **overrides})
    require(
        config is None or isinstance(config, Mapping),
        "config",
        type(config).__name__,
        "expected a transformers LongT5Config, a dict of its fields, or None (the base size)",
    )
    given = dict(config or {})
    _check_keys("config", {k: v for k, v in given.items() if k not in _SAVED_ONLY_KEYS})
    given.pop("model_type", None)
    if "encoder_attention_type" in given:
        _check_attention_type(name, given["encoder_attention_type"], "config['encoder_attention_type']")
    merged = {**BASE_CONFIG, **given, **overrides, "encoder_attention_type": attention_type}
    if "num_layers" in {**given, **overrides} and "num_decoder_layers" not in {**given, **overrides}:
        merged["num_decoder_layers"] = merged["num_layers"]
    require_int("local_radius", merged["local_radius"], minimum=0)
    require_int("global_block_size", merged["global_block_size"], minimum=1)
    return LongT5Config(**merged)


def use_attnreg_attention(model: torch.nn.Module) -> torch.nn.Module:
    """Put attnreg's drop-in layers in place of a transformers LongT5 model's encoder self-attention, in place.

    The new layers take over the old ones' submodules, so weights are shared, not copied, and keep their attention
    dropout rate and train/eval mode. Returns ``model``.
    """
    encoder = getattr(model, "encoder", None)
    require(
        isinstance(encoder, modeling_longt5.LongT5Stack),
        "model",
        type(model).__name__,
        "expected a transformers LongT5 model (LongT5ForConditionalGeneration, LongT5Model or LongT5EncoderModel)",
    )
    attribute, layer_class = _LAYERS[encoder.config.encoder_attention_type]
    batch = SharedBatch()  # every layer attends under the same masks: prepared once per forward
    for index, block in enumerate(encoder.block):
        old = getattr(block.layer[0], attribute)
        if not isinstance(old, layer_class):
            with torch.device("meta"):
                new = layer_class(encoder.config, old.has_relative_attention_bias, layer_idx=index)
            for child_name, child in old.named_children():
                setattr(new, child_name, child)
            new.dropout = old.dropout
            new.train(old.training)
            setattr(block.layer[0], attribute, new)
        getattr(block.layer[0], attribute).attnreg_batch = batch
    check_forward_inputs(encoder, check_encoder_inputs)  # also what generate() calls
    if isinstance(model, (LongT5ForConditionalGeneration, modeling_longt5.LongT5Model)):
        check_forward_inputs(model, check_inputs)
    return model


_AXES = ("batch", "length")


def check_encoder_inputs(encoder: torch.nn.Module, arguments: Mapping[str, Any]) -> tuple[int, int]:
    """Check the encoder's arguments as the caller gave them; the ``(batch, length)`` they describe.

    Exactly one of ``input_ids`` (integer ids below the vocabulary size) and ``inputs_embeds``; no size 0;
    ``attention_mask`` of their shape. :func:`use_attnreg_attention` runs it before every forward of the encoder.
    """
    given, shape = check_tokens(arguments, "input_ids", "inputs_embeds", _AXES, encoder.get_input_embeddings())
    check_like("attention_mask", arguments.get("attention_mask"), shape, _AXES, given)
    return shape


def check_inputs(model: torch.nn.Module, arguments: Mapping[str, Any]) -> None:
    """Check an encoder-decoder LongT5 model's arguments before its encoder runs: both sides, and that they agree.

    The encoder's as :func:`check_encoder_inputs` (or ``attention_mask`` against ``encoder_outputs``); exactly one of
    ``decoder_input_ids`` and ``decoder_inputs_embeds``, or ``labels`` alone; decoder masks and labels of their shape
    (of their batch while a cache is passed: the mask then covers the cached tokens too); one batch size throughout.
    """
    encoder_outputs = arguments.get("encoder_outputs")
    if encoder_outputs is None:
        shape = check_encoder_inputs(model.encoder, arguments)
        encoder_given = "input_ids" if arguments.get("input_ids") is not None else "inputs_embeds"
    else:
        shape, encoder_given = tuple(encoder_outputs[0].shape[:2]), "encoder_outputs[0]"
        check_like("attention_mask", arguments.get("attention_mask"), shape, _AXES, encoder_given)
    ids, embeddings = arguments.get("decoder_input_ids"), arguments.get("decoder_inputs_embeds")
    labels = arguments.get("labels")
    require(
        ids is not None or embeddings is not None or labels is not None,
        "decoder_input_ids",
        None,
        "pass decoder_input_ids, decoder_inputs_embeds or labels (the decoder then reads them shifted right)",
    )
    if ids is None and embeddings is None:
        given, decoder_shape = "labels", check_ids("labels", labels, _AXES)
    else:
        names = ("decoder_input_ids", "decoder_inputs_embeds")
        given, decoder_shape = check_tokens(arguments, *names, _AXES, model.decoder.get_input_embeddings())
    check_batch(given, arguments[given], shape[0], encoder_given)
    cached = arguments.get("cache") is not None or arguments.get("past_key_values") is not None
    for name in ("decoder_attention_mask", "labels"):
        if name != given:
            if cached:
                check_batch(name, arguments.get(name), decoder_shape[0], given)
            else:
                check_like(name, arguments.get(name), decoder_shape, _AXES, given)


def _check_keys(where: str, given: Mapping[str, Any]) -> None:
    reject_unknown(f"{where} (LongT5Config fields)", given, sorted(CONFIG_KEYS))


def _check_attention_type(name: str, found: str, where: str) -> None:
    expected = ATTENTION_TYPE[name]
    other = {v: k for k, v in ATTENTION_TYPE.items()}.get(found)
    hint = f"; build it with attnreg.build({other!r}, ...)" if other else ""
    require(
        found == expected,
        f"{where}.encoder_attention_type" if where == "config" else f"encoder_attention_type of {where}",
        found,
        f"{name!r} needs {expected!r}{hint}",
    )

"""The generic ``encoder`` and ``encoder-decoder`` models: a full trainable transformer for any registered pattern.

Why generic: a plugin that only registers a pattern (a third party's included) gets models for free —
``attnreg.build("encoder", pattern="NAME", d_model=..., n_layers=..., num_heads=...)``. The pattern applies to the
encoder's self-attention; the decoder attends causally to itself and densely to the encoder.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attnreg._deprecation import new_names
from attnreg._validation import PatternError, reject_unknown, require, require_int
from attnreg.execution.dropout import check_dropout_p
from attnreg.models.components import Embeddings, decoder_layer, encoder_layer, norm
from attnreg.models.inputs import check_ids, check_like
from attnreg.pattern.spec import Pattern
from attnreg.registry import resolve_pattern

CONFIG_FILE = "attnreg_config.json"
WEIGHTS_FILE = "attnreg_model.pt"

#: Old names of config fields, still accepted for one release with a DeprecationWarning: old name -> new name.
RENAMED_FIELDS = {"n_heads": "num_heads"}


@dataclass
class GenericConfig:
    """Sizes and pattern of a generic model. ``pattern`` is a registered name (with ``pattern_params``) or a Pattern.

    ``num_labels`` replaces the vocabulary-sized head of the encoder (token classification);
    ``n_decoder_layers`` defaults to ``n_layers``; the decoder starts from ``decoder_start_token_id``.
    ``dropout`` is every dropout of the model, as ``nn.TransformerEncoderLayer``'s: embeddings, residuals,
    feed-forward and the attention probabilities (self- and cross-attention), in training mode only.
    """

    pattern: str | Pattern = ""
    pattern_params: dict[str, Any] = field(default_factory=dict)
    vocab_size: int = 32000
    d_model: int = 512
    n_layers: int = 6
    num_heads: int = 8
    d_ff: int = 2048
    max_length: int = 4096
    dropout: float = 0.0
    norm: str = "layer"
    num_labels: int | None = None
    n_decoder_layers: int | None = None
    decoder_start_token_id: int = 0
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        require(
            isinstance(self.pattern, Pattern) or (isinstance(self.pattern, str) and self.pattern),
            "pattern",
            self.pattern,
            "expected a registered pattern name (see `attnreg list`) or an attnreg.Pattern",
        )
        require(isinstance(self.pattern_params, dict), "pattern_params", self.pattern_params, "expected a dict")
        require(
            isinstance(self.pattern, str) or not self.pattern_params,
            "pattern_params",
            self.pattern_params,
            "only with a pattern name (a Pattern is already built)",
        )
        for name in ("vocab_size", "d_model", "n_layers", "num_heads", "d_ff", "max_length"):
            require_int(name, getattr(self, name), minimum=1)
        for name in ("num_labels", "n_decoder_layers"):
            if getattr(self, name) is not None:
                require_int(name, getattr(self, name), minimum=1)
        for name in ("decoder_start_token_id", "pad_token_id"):
            require_int(name, getattr(self, name), minimum=0)
        require(self.d_model % self.num_heads == 0, "num_heads", self.num_heads, f"must divide d_model={self.d_model}")
        check_dropout_p("dropout", self.dropout)

    def resolve_pattern(self) -> Pattern:
        """The encoder's pattern: the registered one built with ``pattern_params``, or the Pattern given."""
        return resolve_pattern(self.pattern, self.pattern_params)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON); a Pattern object is stored as its spec."""
        data = (
            dataclasses.asdict(self)
            if not isinstance(self.pattern, Pattern)
            else {
                **{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "pattern"},
                "pattern": {"spec": self.pattern.to_dict()},
            }
        )
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenericConfig:
        """The config :meth:`to_dict` wrote."""
        data = _new_names(data, "a config saved under older names (save the model again to update it)")
        if isinstance(data.get("pattern"), dict):
            data["pattern"] = Pattern.from_dict(data["pattern"]["spec"])
        return cls(**data)


def make_config(
    config: GenericConfig | dict[str, Any] | None, overrides: dict[str, Any], where: str = "generic model builder"
) -> GenericConfig:
    """A config from ``config`` (a GenericConfig, a dict or nothing) with ``overrides``; unknown keys are an error."""
    known = [f.name for f in dataclasses.fields(GenericConfig)]
    if config is None:
        base: dict[str, Any] = {}
    elif isinstance(config, GenericConfig):
        base = {name: getattr(config, name) for name in known}
    elif isinstance(config, dict):
        base = _new_names(config, where)
    else:
        raise PatternError(f"config={config!r} is not allowed: expected None, a dict or an attnreg GenericConfig")
    overrides = _new_names(overrides, where)
    reject_unknown(where, [*base, *overrides], known)
    merged = {**base, **overrides}
    require("pattern" in merged, "pattern", None, "name the encoder's pattern, e.g. pattern='longt5-local'")
    return GenericConfig(**merged)


def _new_names(fields: dict[str, Any], where: str) -> dict[str, Any]:
    """A copy of ``fields`` under the new names of :data:`RENAMED_FIELDS`, warning once for each old name used."""
    return new_names(fields, RENAMED_FIELDS, where)


@dataclass
class ModelOutput:
    """What the generic models return, named as Hugging Face's outputs: ``logits``, ``loss`` when labels are given."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    encoder_last_hidden_state: torch.Tensor | None = None


class GenericModel(nn.Module):
    """What both generic models share: the config, saving and loading."""

    kind = ""

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the config (JSON) and the weights to ``directory``, which ``build(kind, pretrained=...)`` reads."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(json.dumps({"builder": self.kind, **self.config.to_dict()}, indent=2))
        torch.save(self.state_dict(), directory / WEIGHTS_FILE)


class PatternEncoder(GenericModel):
    """Embeddings, ``n_layers`` encoder layers under the pattern, a final norm and a token head.

    ``forward(input_ids, attention_mask=None, global_attention_mask=None, labels=None)`` returns logits
    ``(batch, length, num_labels or vocab_size)`` and, with ``labels`` (-100 = ignored), the cross-entropy loss.
    """

    kind = "encoder"

    def __init__(self, config: GenericConfig) -> None:
        super().__init__()
        self.config = config
        self.pattern = config.resolve_pattern()
        self.embeddings = Embeddings(config.vocab_size, config.d_model, config.max_length, config.dropout)
        self.layers = nn.ModuleList(
            encoder_layer(
                config.d_model,
                config.num_heads,
                config.d_ff,
                self.pattern,
                dropout=config.dropout,
                norm_kind=config.norm,
            )
            for _ in range(config.n_layers)
        )
        self.final_norm = norm(config.norm, config.d_model)
        self.head = nn.Linear(config.d_model, config.num_labels or config.vocab_size)

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        global_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The final hidden states ``(batch, length, d_model)``."""
        self.check_inputs(input_ids, attention_mask, global_attention_mask)
        return self._encode(input_ids, attention_mask, global_attention_mask)

    def _encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        global_attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        hidden = self.embeddings(input_ids)
        for layer in self.layers:
            hidden = layer(hidden, attention_mask, global_attention_mask)
        return self.final_norm(hidden)

    def check_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        global_attention_mask: torch.Tensor | None = None,
    ) -> tuple[int, int]:
        """Check the encoder's arguments as the caller gave them, before any computation; their ``(batch, length)``.

        Integer ids below ``vocab_size`` (read where that costs no device sync), 1 to ``max_length`` of them, no
        empty batch; masks of their shape.
        """
        shape = check_ids("input_ids", input_ids, _AXES, vocab_size=self.config.vocab_size)
        _check_length("input_ids", shape, self.config.max_length)
        check_like("attention_mask", attention_mask, shape, _AXES, "input_ids")
        check_like("global_attention_mask", global_attention_mask, shape, _AXES, "input_ids")
        return shape

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        global_attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> ModelOutput:
        shape = self.check_inputs(input_ids, attention_mask, global_attention_mask)
        check_like("labels", labels, shape, _AXES, "input_ids")
        hidden = self._encode(input_ids, attention_mask, global_attention_mask)
        logits = self.head(hidden)
        return ModelOutput(logits=logits, loss=_loss(logits, labels), last_hidden_state=hidden)


class PatternEncoderDecoder(GenericModel):
    """An encoder under the pattern and a decoder (causal self-attention, cross-attention), shared embeddings.

    ``forward(input_ids, attention_mask=None, global_attention_mask=None, decoder_input_ids=None,
    decoder_attention_mask=None, labels=None)``; without ``decoder_input_ids`` the labels shifted right are used.
    """

    kind = "encoder-decoder"

    def __init__(self, config: GenericConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = PatternEncoder(dataclasses.replace(config, num_labels=None))
        del self.encoder.head
        self.decoder_embeddings = Embeddings(config.vocab_size, config.d_model, config.max_length, config.dropout)
        self.decoder_embeddings.tokens = self.encoder.embeddings.tokens
        self.decoder_layers = nn.ModuleList(
            decoder_layer(config.d_model, config.num_heads, config.d_ff, dropout=config.dropout, norm_kind=config.norm)
            for _ in range(config.n_decoder_layers or config.n_layers)
        )
        self.decoder_norm = norm(config.norm, config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size)

    def shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """Decoder inputs from labels: the start token, then the labels but the last (-100 becomes padding)."""
        start = torch.full_like(labels[:, :1], self.config.decoder_start_token_id)
        shifted = torch.cat([start, labels[:, :-1]], dim=1)
        return shifted.masked_fill(shifted == -100, self.config.pad_token_id)

    def check_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        global_attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> None:
        """Check both sides' arguments as the caller gave them, before any computation, and that their batches agree.

        The encoder's as :meth:`PatternEncoder.check_inputs`; ``decoder_input_ids`` (or ``labels`` alone) likewise,
        ``decoder_attention_mask`` and ``labels`` of their shape.
        """
        batch = self.encoder.check_inputs(input_ids, attention_mask, global_attention_mask)[0]
        require(
            decoder_input_ids is not None or labels is not None,
            "decoder_input_ids",
            None,
            "pass decoder_input_ids or labels",
        )
        given = "decoder_input_ids" if decoder_input_ids is not None else "labels"
        vocab_size = self.config.vocab_size if given == "decoder_input_ids" else None  # labels hold -100
        decoder_shape = check_ids(
            given, decoder_input_ids if given != "labels" else labels, _AXES, vocab_size=vocab_size
        )
        _check_length(given, decoder_shape, self.config.max_length)
        require(
            decoder_shape[0] == batch,
            f"{given}.shape",
            decoder_shape,
            f"expected batch size {batch} first, the batch of input_ids",
        )
        check_like("decoder_attention_mask", decoder_attention_mask, decoder_shape, _AXES, given)
        if given != "labels":
            check_like("labels", labels, decoder_shape, _AXES, given)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        global_attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> ModelOutput:
        self.check_inputs(
            input_ids, attention_mask, global_attention_mask, decoder_input_ids, decoder_attention_mask, labels
        )
        if decoder_input_ids is None:
            decoder_input_ids = self.shift_right(labels)
        memory = self.encoder._encode(input_ids, attention_mask, global_attention_mask)
        hidden = self.decoder_embeddings(decoder_input_ids)
        for layer in self.decoder_layers:
            hidden = layer(hidden, decoder_attention_mask, memory, attention_mask)
        hidden = self.decoder_norm(hidden)
        logits = self.head(hidden)
        return ModelOutput(logits, _loss(logits, labels), last_hidden_state=hidden, encoder_last_hidden_state=memory)


_AXES = ("batch", "length")


def _check_length(name: str, shape: tuple[int, int], max_length: int) -> None:
    require(shape[1] <= max_length, f"{name}.shape[1]", shape[1], f"expected 1 to max_length={max_length} tokens")


def _loss(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
    if labels is None:
        return None
    require(
        isinstance(labels, torch.Tensor) and tuple(labels.shape) == tuple(logits.shape[:2]),
        "labels.shape",
        tuple(labels.shape) if isinstance(labels, torch.Tensor) else labels,
        f"expected {tuple(logits.shape[:2])} (-100 = ignored)",
    )
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)


def build_encoder(
    config: GenericConfig | dict[str, Any] | None = None, *, pretrained: str | Path | None = None, **overrides: Any
) -> PatternEncoder:
    """``attnreg.build("encoder")``: a :class:`PatternEncoder` under any registered pattern (``pattern=NAME``).

    ``config``: a :class:`GenericConfig`, a dict of its fields or ``None``; ``overrides``: its fields (``pattern``,
    ``pattern_params``, ``vocab_size``, ``d_model``, ``n_layers``, ``num_heads``, ``d_ff``, ``max_length``, ...);
    ``pretrained``: a folder that ``save_pretrained`` wrote, whose config ``overrides`` then change.
    """
    return _build(PatternEncoder, config, pretrained, overrides)


def build_encoder_decoder(
    config: GenericConfig | dict[str, Any] | None = None, *, pretrained: str | Path | None = None, **overrides: Any
) -> PatternEncoderDecoder:
    """``attnreg.build("encoder-decoder")``: a :class:`PatternEncoderDecoder`, the pattern on its encoder.

    Arguments as :func:`build_encoder`'s; ``n_decoder_layers`` and ``decoder_start_token_id`` apply here only.
    """
    return _build(PatternEncoderDecoder, config, pretrained, overrides)


def _build(
    model_type: type[GenericModel],
    config: GenericConfig | dict[str, Any] | None,
    pretrained: str | Path | None,
    overrides: dict[str, Any],
) -> GenericModel:
    """What both builders do: a new ``model_type`` from the config, or the one saved in ``pretrained``."""
    where = f"attnreg.build({model_type.kind!r})"
    if pretrained is None:
        return model_type(make_config(config, overrides, where))
    directory = Path(pretrained)
    require((directory / CONFIG_FILE).is_file(), "pretrained", pretrained, f"expected a folder with {CONFIG_FILE}")
    saved = json.loads((directory / CONFIG_FILE).read_text())
    require(
        saved.pop("builder", None) == model_type.kind,
        "pretrained",
        pretrained,
        f"was saved by another builder; expected one saved by {model_type.kind!r}",
    )
    model = model_type(make_config(GenericConfig.from_dict(saved) if config is None else config, overrides, where))
    model.load_state_dict(torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    return model

"""attnreg's own plugin: the engines, the part kinds, the gallery of patterns and the generic builders of the core,
through the hooks any plugin uses."""

from __future__ import annotations

from attnreg.execution.blocked import BlockedEngine
from attnreg.execution.dense_sdpa import DenseSdpaEngine
from attnreg.execution.flex import FlexEngine
from attnreg.execution.reference import ReferenceEngine
from attnreg.execution.xformers_engine import XformersEngine
from attnreg.pattern.predicates import CORE_PART_TYPES
from attnreg.registry.hookspecs import hookimpl
from attnreg.registry.registry import PluginRegistrar


@hookimpl
def attnreg_add_engines(registrar: PluginRegistrar) -> None:
    """The dense reference engine and the engines of the core."""
    registrar.add_engine(ReferenceEngine())
    registrar.add_engine(DenseSdpaEngine())
    registrar.add_engine(XformersEngine())
    registrar.add_engine(BlockedEngine())
    registrar.add_engine(FlexEngine())


@hookimpl
def attnreg_add_builders(registrar: PluginRegistrar) -> None:
    """The generic models, for any registered pattern: ``encoder`` and ``encoder-decoder``."""
    from attnreg.models.generic import build_encoder, build_encoder_decoder

    registrar.add_builder("encoder", build_encoder, description="generic encoder for any pattern (pattern=NAME, ...)")
    registrar.add_builder(
        "encoder-decoder", build_encoder_decoder, description="generic encoder-decoder for any pattern (pattern=NAME)"
    )


@hookimpl
def attnreg_add_patterns(registrar: PluginRegistrar) -> None:
    """The gallery: causal, sliding-window, streaming-llm, dilated-window, prefix-lm and bigbird."""
    from attnreg.pattern.gallery import GALLERY

    for name, (factory, description) in GALLERY.items():
        registrar.add_pattern(name, factory, description=description)


@hookimpl
def attnreg_add_parts(registrar: PluginRegistrar) -> None:
    """The core's part kinds: the mask parts of :mod:`attnreg.pattern.predicates` and the score terms (ALiBi)."""
    for part_type in CORE_PART_TYPES:
        registrar.add_part(part_type)

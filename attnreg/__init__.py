"""attnreg: a registry of sparse attention patterns for PyTorch, with fast engines and model builders."""

from attnreg import validation
from attnreg.execution import AttentionCall, BackendUnavailableError, Engine
from attnreg.execution.non_finite import check_non_finite
from attnreg.functional import attention, attention_weights
from attnreg.models import build, list_builders
from attnreg.nn import MultiheadPatternAttention, PatternAttention, swap
from attnreg.pattern import (
    AggregatedGlobals,
    ALiBi,
    AllOf,
    AnyOf,
    Band,
    BlockBand,
    Cost,
    Dilation,
    KeyRange,
    MaskPart,
    Pattern,
    PreparedMask,
    QueryRange,
    RandomBlocks,
    RelativePositionBias,
    ScoreTerm,
    SelectedGlobals,
    Window,
    register_part,
)
from attnreg.pinning import backend
from attnreg.registry import (
    ConflictError,
    PluginError,
    PluginRegistrar,
    UnknownNameError,
    get_pattern,
    get_registry,
    hookimpl,
    list_patterns,
    register_plugin,
    reload_registry,
    unregister_plugin,
)
from attnreg.validation import AttnregError, PatternError

__version__ = "0.1.0"

__all__ = [
    "ALiBi",
    "AggregatedGlobals",
    "AllOf",
    "AnyOf",
    "AttentionCall",
    "AttnregError",
    "BackendUnavailableError",
    "Band",
    "BlockBand",
    "ConflictError",
    "Cost",
    "Dilation",
    "Engine",
    "KeyRange",
    "MaskPart",
    "MultiheadPatternAttention",
    "Pattern",
    "PreparedMask",
    "PatternAttention",
    "PatternError",
    "PluginError",
    "PluginRegistrar",
    "QueryRange",
    "RandomBlocks",
    "RelativePositionBias",
    "ScoreTerm",
    "SelectedGlobals",
    "UnknownNameError",
    "Window",
    "attention",
    "attention_weights",
    "backend",
    "check_non_finite",
    "build",
    "get_pattern",
    "get_registry",
    "hookimpl",
    "list_builders",
    "list_patterns",
    "register_part",
    "register_plugin",
    "reload_registry",
    "swap",
    "unregister_plugin",
    "validation",
]

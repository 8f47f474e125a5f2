"""attnreg: a registry of sparse attention patterns for PyTorch, with fast engines and model builders."""

from attnreg import validation
from attnreg.execution import AttentionCall, BackendUnavailableError, Engine
from attnreg.functional import attention, attention_weights
from attnreg.models import build, list_builders
from attnreg.nn import PatternAttention, swap
from attnreg.pattern import AggregatedGlobals, Cost, Pattern, RelativePositionBias, SelectedGlobals, Window
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
    "AggregatedGlobals",
    "AttentionCall",
    "AttnregError",
    "BackendUnavailableError",
    "ConflictError",
    "Cost",
    "Engine",
    "Pattern",
    "PatternAttention",
    "PatternError",
    "PluginError",
    "PluginRegistrar",
    "RelativePositionBias",
    "SelectedGlobals",
    "UnknownNameError",
    "Window",
    "attention",
    "attention_weights",
    "build",
    "get_pattern",
    "list_builders",
    "get_registry",
    "hookimpl",
    "list_patterns",
    "register_plugin",
    "reload_registry",
    "swap",
    "unregister_plugin",
    "validation",
]

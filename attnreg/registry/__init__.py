"""The process-wide registry of plugins, loaded on first use."""

from __future__ import annotations

import threading
from typing import Any

import torch

from attnreg.pattern.predicates import use_part_kinds
from attnreg.pattern.spec import Pattern
from attnreg.registry.hookspecs import hookimpl, hookspec
from attnreg.registry.registry import (
    BenchmarkEntry,
    BuilderEntry,
    ConflictError,
    PartEntry,
    PatternEntry,
    PluginError,
    PluginInfo,
    PluginRegistrar,
    Registry,
    UnknownNameError,
)
from attnreg.validation import require

__all__ = [
    "BenchmarkEntry",
    "BuilderEntry",
    "ConflictError",
    "PartEntry",
    "PatternEntry",
    "PluginError",
    "PluginInfo",
    "PluginRegistrar",
    "Registry",
    "UnknownNameError",
    "get_pattern",
    "resolve_pattern",
    "get_registry",
    "hookimpl",
    "hookspec",
    "list_patterns",
    "register_plugin",
    "reload_registry",
    "unregister_plugin",
]

_lock = threading.Lock()
_registry: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loading the entry points on first use."""
    if _registry is not None:  # no lock once loaded: torch.compile traces this read, not a lock
        return _registry
    return _load()


@torch.compiler.disable
def _load() -> Registry:
    """Load the registry once, eagerly even when the first use is inside a compiled function: importing plugins
    there would have torch.compile try to trace every function their imports run (transformers' model classes)."""
    global _registry
    with _lock:
        if _registry is None:
            _registry = Registry.load()
        return _registry


def reload_registry() -> Registry:
    """Forget the loaded registry and load it again (after installing a plugin, or changing the environment)."""
    global _registry
    with _lock:
        _registry = None
    return get_registry()


# Which part kinds exist is the process-wide registry's answer, also for Pattern.from_dict below the registry.
use_part_kinds(get_registry)


def list_patterns() -> list[str]:
    """Every registered pattern name, built-ins included."""
    return get_registry().list_patterns()


def get_pattern(name: str, **params: Any) -> Pattern:
    """The pattern ``name`` with ``params``; an unknown name lists close matches and the installed plugins."""
    return get_registry().get_pattern(name, **params)


def resolve_pattern(pattern: Pattern | str, pattern_params: dict[str, Any]) -> Pattern:
    """``pattern`` itself, or the registered pattern of that name built with ``pattern_params`` (which a Pattern
    object does not take)."""
    if isinstance(pattern, str):
        return get_pattern(pattern, **pattern_params)
    require(
        not pattern_params,
        "pattern_params",
        sorted(pattern_params),
        "parameters are only taken with a registered pattern name, not with a Pattern",
    )
    require(isinstance(pattern, Pattern), "pattern", pattern, "expected an attnreg.Pattern or a registered name")
    return pattern


def register_plugin(plugin: object, name: str | None = None) -> str:
    """Register a plugin object at run time; returns the name to unregister it with."""
    return get_registry().register_plugin(plugin, name)


def unregister_plugin(name: str) -> None:
    """Remove a plugin registered at run time (or loaded from an entry point); an unknown plugin name is an
    :class:`UnknownNameError` listing the plugins, the core plugin a :class:`PluginError`."""
    get_registry().unregister_plugin(name)

"""``attnreg.build``: full models from registered builders (plugins' presets and the core's generic builders)."""

from __future__ import annotations

from typing import Any

import torch

from attnreg.registry import get_registry


def build(name: str, config: Any = None, *, pretrained: str | None = None, **overrides: Any) -> torch.nn.Module:
    """The model registered as ``name``, from ``config`` or a ``pretrained`` checkpoint, with ``overrides``.

    What ``config`` and the overrides may be is the builder's to say (see ``attnreg list``); unknown names list
    close matches and the installed plugins.
    """
    return get_registry().builder(name).builder(config, pretrained=pretrained, **overrides)


def list_builders() -> list[str]:
    """Every registered model builder name."""
    return sorted(get_registry().builders)

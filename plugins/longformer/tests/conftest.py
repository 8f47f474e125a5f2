"""Fixtures for the Longformer plugin tests: tiny random checkpoints saved by transformers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import transformers
from longformer_helpers import TINY_CONFIG


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``checkpoint(class_name="LongformerModel", **config)``: a random model saved by transformers, cached per args."""
    saved: dict[tuple, Path] = {}

    def save(class_name: str = "LongformerModel", **config: object) -> Path:
        key = (class_name, tuple(sorted((k, str(v)) for k, v in config.items())))
        if key not in saved:
            torch.manual_seed(len(saved))
            cls = getattr(transformers, class_name)
            model = cls(transformers.LongformerConfig(**{**TINY_CONFIG, **config}))
            path = tmp_path_factory.mktemp(class_name)
            model.save_pretrained(path)
            saved[key] = path
        return saved[key]

    return save


@pytest.fixture(autouse=True)
def _quiet_transformers() -> None:
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

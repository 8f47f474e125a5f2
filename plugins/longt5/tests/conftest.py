"""Fixtures of the LongT5 plugin's tests: tiny random checkpoints that transformers itself saved."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from longt5_helpers import KINDS, tiny_config
from transformers import LongT5ForConditionalGeneration


@pytest.fixture(scope="session", params=list(KINDS))
def checkpoint(request, tmp_path_factory) -> tuple[str, Path]:
    """``(pattern name, folder)`` of a random model that transformers itself saved."""
    torch.manual_seed(0)
    model = LongT5ForConditionalGeneration(tiny_config(request.param))
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    return request.param, folder

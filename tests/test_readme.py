"""The README's examples that need no hub checkpoint run as written (the checkpoint ones run in the plugins' tests)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)


def test_the_readme_has_the_six_examples():
    assert len(_blocks()) == 6


def test_the_pattern_and_model_examples_run_as_written():
    offline = [block for block in _blocks() if "pretrained" not in block]
    assert len(offline) == 3
    layer = torch.nn.TransformerEncoderLayer(64, 4, dim_feedforward=64, batch_first=True)
    namespace = {"torch": torch, "my_transformer": torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)}
    for block in offline:
        exec(compile(block, str(README), "exec"), namespace)
    assert namespace["out"].shape == (1, 8, 5000, 64)
    assert torch.isfinite(namespace["out"]).all()
    assert namespace["y"].shape == (1, 8, 4096, 64) and torch.isfinite(namespace["x"].grad).all()
    logits = namespace["model"](torch.randint(0, 1000, (2, 300))).logits
    assert logits.shape == (2, 300, 1000)

"""Random inputs for one ``attnreg.attention`` call under a pattern: for the bare benchmarks and the engines' tests.

Why here: the benchmark of a pattern without a layer benchmark and the engine tests need the same thing, inputs that
exercise every part the pattern has (padding that differs per example, global tokens that differ per example).
"""

from __future__ import annotations

from typing import Any

import torch

from attnreg._deprecation import renamed_keywords
from attnreg._validation import require, require_int
from attnreg.execution.call import as_keywords, part_tensor_shapes
from attnreg.pattern.spec import Pattern


def example_padding(batch: int, padding: int) -> list[int]:
    """Padded tokens per example: none for the first, ``padding`` for the last, spread in between."""
    if batch == 1:
        return [padding]
    return [round(padding * b / (batch - 1)) for b in range(batch)]


@renamed_keywords(heads="num_heads")
def random_inputs(
    pattern: Pattern,
    length: int,
    *,
    batch: int = 1,
    num_heads: int = 2,
    head_dim: int = 16,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    padding: int = 0,
    num_globals: int = 0,
    requires_grad: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Keyword arguments for ``attnreg.attention(**inputs, pattern=pattern)``: q, k, v and the pattern's extras.

    Example ``b`` has ``example_padding(batch, padding)[b]`` padded tokens at its end and, when the pattern has
    selected globals, ``num_globals`` global tokens (one fewer on odd examples) at random real positions.
    Tensors that can be learned require grad when ``requires_grad``.
    """
    require_int("length", length, minimum=1)
    require_int("batch", batch, minimum=1)
    require(isinstance(padding, int) and 0 <= padding < length, "padding", padding, f"expected an int in [0, {length})")
    generator = torch.Generator().manual_seed(seed)

    def tensor(*shape: int, scale: float = 1.0) -> torch.Tensor:
        value = (torch.randn(*shape, generator=generator) * scale).to(device=device, dtype=dtype)
        return value.requires_grad_(requires_grad)

    shape = (batch, num_heads, length, head_dim)
    inputs: dict[str, Any] = {"q": tensor(*shape), "k": tensor(*shape), "v": tensor(*shape)}
    pads = example_padding(batch, padding)
    real = torch.ones(batch, length, dtype=torch.bool)
    for b, pad in enumerate(pads):
        if pad:
            real[b, length - pad :] = False
    if padding:
        inputs["attention_mask"] = real.to(device)
    if pattern.selected_globals is not None and num_globals:
        chosen = torch.zeros(batch, length, dtype=torch.bool)
        for b, pad in enumerate(pads):
            count = min(num_globals - (b % 2), length - pad)
            chosen[b, torch.randperm(length - pad, generator=generator)[:count]] = True
        inputs["global_mask"] = chosen.to(device)
    parts = part_tensor_shapes(
        pattern,
        batch=batch,
        num_heads=num_heads,
        length=length,
        head_dim=head_dim,
        global_projections=bool(num_globals),
    )
    # bias tables at half scale: scores of the same order as q·k, not dominated by the bias
    made = {
        name: tensor(*part_shape, scale=0.5 if name.endswith("bias_weight") else 1.0)
        for name, part_shape in parts.items()
    }
    return {**inputs, **as_keywords(made)}


def leaves(inputs: dict[str, Any]) -> list[torch.Tensor]:
    """The tensors of ``inputs`` that require grad, in a fixed order (tuples flattened)."""
    found: list[torch.Tensor] = []
    for value in inputs.values():
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, torch.Tensor) and item.requires_grad:
                found.append(item)
    return found

"""A NaN or Inf in a key or value reaches only the queries that see that key, on every engine (as in the reference):
padded keys are seen by none, a key outside a query's window by the queries whose window holds it."""

from __future__ import annotations

import pytest
import torch

import attnreg

LENGTH = 150
PATTERNS = {
    "window": attnreg.Pattern(window=attnreg.Window(8, 3)),
    "window-globals": attnreg.Pattern(window=attnreg.Window(5, 5), selected_globals=attnreg.SelectedGlobals()),
    "sliding-window": attnreg.get_pattern("sliding-window", left=6, right=0),
}
ENGINES = ["reference", "blocked", "dense-sdpa", "flex"]


def _inputs(name: str) -> dict:
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, LENGTH, 16, generator=generator) for _ in range(3))
    real = torch.ones(2, LENGTH, dtype=torch.bool)
    real[1, 130:] = False
    inputs = {"q": q, "k": k, "v": v, "attention_mask": real}
    if PATTERNS[name].selected_globals is not None:
        inputs["global_mask"] = torch.zeros(2, LENGTH, dtype=torch.bool)
        inputs["global_mask"][0, 20] = inputs["global_mask"][1, 100] = True
    return inputs


def _run(name: str, engine: str, inputs: dict) -> torch.Tensor:
    rest = {key: value for key, value in inputs.items() if key not in ("q", "k", "v")}
    with torch.no_grad():
        return attnreg.attention(inputs["q"], inputs["k"], inputs["v"], PATTERNS[name], backend=engine, **rest)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", sorted(PATTERNS))
@pytest.mark.parametrize("tensor", ["k", "v"])
@pytest.mark.parametrize(("example", "key"), [(1, 140), (0, 75)], ids=["padded-key", "real-key"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_a_non_finite_key_or_value_reaches_only_the_rows_that_see_it(engine, name, tensor, example, key, bad):
    inputs = _inputs(name)
    clean = _run(name, engine, inputs)
    inputs[tensor] = inputs[tensor].clone()
    inputs[tensor][example, :, key] = bad
    out = _run(name, engine, inputs)
    layout = PATTERNS[name].materialize(LENGTH, inputs["attention_mask"], inputs.get("global_mask"))
    sees = torch.zeros(2, LENGTH, dtype=torch.bool)
    sees[example] = layout.allowed[example, :, key]
    broken = ~torch.isfinite(out).all(dim=-1).all(dim=1)
    assert torch.equal(broken, sees), f"hit: {broken.nonzero().tolist()}, seeing it: {sees.nonzero().tolist()}"
    if example == 1 and key >= 130:
        assert not sees.any()  # a padded key is seen by no one
    torch.testing.assert_close(out[:, :, ~sees[0]][0], clean[:, :, ~sees[0]][0], atol=1e-5, rtol=1e-5)
    keep = ~sees[1]
    torch.testing.assert_close(out[1][:, keep], clean[1][:, keep], atol=1e-5, rtol=1e-5)

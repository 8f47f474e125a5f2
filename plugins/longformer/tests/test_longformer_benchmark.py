"""The registered layer benchmarks give attnreg's layer and transformers' on the same weights and equal outputs."""

from __future__ import annotations

import pytest
import torch

import attnreg


@pytest.mark.parametrize(("name", "globals_"), [("longformer", 1), ("longformer-noglobal", 0)])
def test_cases_compute_the_same_layer(name: str, globals_: int) -> None:
    make_cases = attnreg.get_registry().benchmark(name).make_cases
    cases = make_cases(300, batch=1, device="cpu", dtype=torch.float32)
    (ours, our_kwargs), (theirs, their_kwargs) = cases["attnreg"], cases["transformers"]
    assert int(our_kwargs["is_index_global_attn"].sum()) == globals_
    with torch.no_grad():
        got, expected = ours(**our_kwargs)[0], theirs(**their_kwargs)[0]
    assert got.shape == (1, 300, 768) and expected.shape == (1, 512, 768)
    torch.testing.assert_close(got, expected[:, :300], atol=1e-4, rtol=1e-4)

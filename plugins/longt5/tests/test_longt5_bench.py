"""The layer benchmarks ``attnreg bench longt5-local|longt5-tglobal`` register: same weights, same results."""

from __future__ import annotations

import pytest
import torch

import attnreg


@pytest.mark.parametrize("name", ["longt5-local", "longt5-tglobal"])
def test_benchmark_cases_run_the_same_layer_on_both_sides(name):
    cases = attnreg.get_registry().benchmark(name).make_cases(150, batch=1, device="cpu", dtype=torch.float32)
    assert set(cases) == {"attnreg", "transformers"}
    (ours, ours_kwargs), (theirs, theirs_kwargs) = cases["attnreg"], cases["transformers"]
    assert ours.d_model == 512 and ours.n_heads == 8 and ours.local_radius == 127
    with torch.no_grad():
        torch.testing.assert_close(ours(**ours_kwargs)[0], theirs(**theirs_kwargs)[0], rtol=1e-4, atol=1e-4)

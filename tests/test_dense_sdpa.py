"""The dense SDPA engine equals the reference on every pattern part, forward and backward, without NaN."""

from __future__ import annotations

import pytest
import torch
from pattern_cases import PATTERNS, case_inputs, gradients, run


@pytest.mark.parametrize("name", sorted(PATTERNS))
@pytest.mark.parametrize("length", [1, 19])
def test_forward_matches_reference(name: str, length: int) -> None:
    inputs = case_inputs(name, length, padding=min(5, length - 1), num_globals=min(2, length))
    expected = run(inputs, PATTERNS[name], "reference")
    actual = run(inputs, PATTERNS[name], "dense-sdpa")
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_backward_matches_reference(name: str) -> None:
    inputs = case_inputs(name, requires_grad=True)
    grads = {
        backend: gradients(inputs, lambda b=backend: run(inputs, PATTERNS[name], b))
        for backend in ("reference", "dense-sdpa")
    }
    for expected, actual in zip(grads["reference"], grads["dense-sdpa"], strict=True):
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-4)


def test_padded_queries_give_zeros() -> None:
    inputs = case_inputs("local-bias")
    out = run(inputs, PATTERNS["local-bias"], "dense-sdpa")
    padded = ~inputs["attention_mask"]
    assert padded.any()
    assert torch.equal(out.transpose(1, 2)[padded], torch.zeros_like(out.transpose(1, 2)[padded]))


@pytest.mark.parametrize("name", ["tglobal", "window-globals-own"])
def test_bfloat16_has_no_nan_and_is_close(name: str) -> None:
    inputs = case_inputs(name, dtype=torch.bfloat16)
    out = run(inputs, PATTERNS[name], "dense-sdpa")
    assert not out.isnan().any()
    expected = run(inputs, PATTERNS[name], "reference")
    torch.testing.assert_close(out.float(), expected.float(), atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("name", ["local-bias", "window-globals-own"])
def test_float16_on_cpu_has_no_nan_and_is_close(name: str) -> None:
    inputs = case_inputs(name, dtype=torch.float16)
    out = run(inputs, PATTERNS[name], "dense-sdpa")
    assert out.dtype == torch.float16 and not out.isnan().any()
    torch.testing.assert_close(out.float(), run(inputs, PATTERNS[name], "reference").float(), atol=1e-2, rtol=1e-2)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(PATTERNS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_matches_reference(name: str, dtype: torch.dtype) -> None:
    inputs = case_inputs(name, 70, device="cuda", dtype=dtype)
    expected = run(inputs, PATTERNS[name], "reference")
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(
        run(inputs, PATTERNS[name], "dense-sdpa").float(), expected.float(), atol=tolerance, rtol=tolerance
    )

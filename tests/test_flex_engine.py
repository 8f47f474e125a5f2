"""The flex engine (FlexAttention) against the dense reference: every part, forward on CPU (compiled), forward and
backward on CUDA; gradients refused on CPU with the reason; compiled once per shape.

Each new shape or set of parts costs a CPU compile of seconds, so the tests share one length (150: two query blocks
of 128, not a multiple) and few shapes.
"""

from __future__ import annotations

import pytest
import torch
from pattern_cases import PATTERNS, case_inputs, gradients, run
from torch._dynamo.utils import counters

import attnreg
from attnreg import ALiBi, Pattern, Window
from attnreg.cli import main
from attnreg.execution.call import make_call
from attnreg.execution.dispatch import BackendUnavailableError, choose, judge
from attnreg.registry import get_registry

LENGTH = 150


def _inputs(name: str, **kwargs) -> dict:
    """Batch 2, padding on one example (past the first block), three globals and two on the other."""
    return case_inputs(name, LENGTH, padding=37, num_globals=3, **kwargs)


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_forward_matches_reference(name: str) -> None:
    inputs = _inputs(name)
    with torch.no_grad():
        expected = run(inputs, PATTERNS[name], "reference")
        actual = run(inputs, PATTERNS[name], "flex")
    assert not actual.isnan().any()
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


GALLERY = {
    "bigbird-softcap-alibi": ("bigbird", {"block": 32, "window_blocks": 1, "random_blocks": 1, "softcap": 2.0}),
    "dilated-window-alibi": ("dilated-window", {"radius": 20, "dilation": 3, "alibi": True}),
}


@pytest.mark.parametrize("label", sorted(GALLERY))
def test_gallery_mask_parts_and_score_terms_match_reference(label: str) -> None:
    name, params = GALLERY[label]
    pattern = attnreg.get_pattern(name, **params)
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, LENGTH, 16, generator=generator) for _ in range(3))
    mask = torch.ones(2, LENGTH, dtype=torch.bool)
    mask[1, 120:] = False
    with torch.no_grad():
        expected = attnreg.attention(q, k, v, pattern, attention_mask=mask, backend="reference")
        actual = attnreg.attention(q, k, v, pattern, attention_mask=mask, backend="flex")
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_documents_match_reference() -> None:
    pattern = Pattern(window=Window(left=30, right=0), softcap=5.0, score_terms=(ALiBi(),))
    generator = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 2, LENGTH, 16, generator=generator) for _ in range(3))
    documents = torch.stack([torch.arange(LENGTH) // 60, torch.arange(LENGTH) // 100])
    with torch.no_grad():
        expected = attnreg.attention(q, k, v, pattern, document_ids=documents, backend="reference")
        actual = attnreg.attention(q, k, v, pattern, document_ids=documents, backend="flex")
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_padded_queries_give_zeros_and_globals_differ_per_example() -> None:
    inputs = _inputs("window-globals-own")
    assert not torch.equal(inputs["global_mask"][0], inputs["global_mask"][1])
    with torch.no_grad():
        out = run(inputs, PATTERNS["window-globals-own"], "flex")
    padded = out.transpose(1, 2)[~inputs["attention_mask"]]
    assert padded.numel() and torch.equal(padded, torch.zeros_like(padded))


def test_bfloat16_has_no_nan_and_is_close() -> None:
    inputs = _inputs("local-bias", dtype=torch.bfloat16)
    with torch.no_grad():
        out = run(inputs, PATTERNS["local-bias"], "flex")
        expected = run(inputs, PATTERNS["local-bias"], "reference")
    assert out.dtype == torch.bfloat16 and not out.isnan().any()
    torch.testing.assert_close(out.float(), expected.float(), atol=5e-2, rtol=5e-2)


def test_a_second_call_with_the_same_shapes_does_not_recompile() -> None:
    inputs = _inputs("window-only")
    with torch.no_grad():
        run(inputs, PATTERNS["window-only"], "flex")
        compiled = counters["stats"]["unique_graphs"]
        again = _inputs("window-only", seed=5)  # new tensors and masks, same shapes: a new block mask, same kernel
        run(again, PATTERNS["window-only"], "flex")
    assert counters["stats"]["unique_graphs"] == compiled


def test_cpu_gradients_are_refused_with_the_reason() -> None:
    inputs = _inputs("local-bias", requires_grad=True)
    with pytest.raises(BackendUnavailableError, match=r"requires grad.*computes gradients on cuda only"):
        run(inputs, PATTERNS["local-bias"], "flex")


def test_dispatch_falls_back_from_flex_when_cpu_gradients_are_needed() -> None:
    inputs = _inputs("local-bias", requires_grad=True)
    q, k, v = inputs.pop("q"), inputs.pop("k"), inputs.pop("v")
    call = make_call(q, k, v, PATTERNS["local-bias"], **inputs)
    engines = get_registry().engines()
    verdict = next(v for v in judge(call, engines) if v.engine.name == "flex")
    assert not verdict.supported and "gradients on cuda only" in " ".join(verdict.reasons)
    assert choose(call, engines).name != "flex"


def test_explain_gives_flex_verdict(capsys: pytest.CaptureFixture) -> None:
    assert main(["explain", "causal", "--length", "300", "--grad"]) == 0
    flex = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("flex"))
    assert "gradients on cuda only" in flex


def test_small_head_dim_is_refused_on_cuda_with_the_reason(capsys: pytest.CaptureFixture) -> None:
    assert main(["explain", "causal", "--device", "cuda", "--head-dim", "8"]) == 0
    flex = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("flex"))
    assert "head_dim=8" in flex


def _longt5_tglobal():
    from transformers import LongT5Config

    config = LongT5Config(
        vocab_size=64,
        d_model=32,
        d_kv=16,
        num_heads=2,
        d_ff=48,
        num_layers=1,
        num_decoder_layers=1,
        local_radius=5,
        global_block_size=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=12,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        decoder_start_token_id=0,
        encoder_attention_type="transient-global",
    )
    return attnreg.build("longt5-tglobal", config=config).eval()


def _longformer():
    config = {
        "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 37, "attention_window": [8], "max_position_embeddings": 200, "type_vocab_size": 1,
        "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, "sep_token_id": 2,
    }  # fmt: skip
    return attnreg.build("longformer", config=config).eval()


def test_built_models_give_the_references_outputs() -> None:
    pytest.importorskip("attnreg_longt5")
    pytest.importorskip("attnreg_longformer")
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 64, (2, LENGTH), generator=generator)
    mask = torch.ones(2, LENGTH, dtype=torch.long)
    mask[1, 110:] = 0
    global_mask = torch.zeros_like(mask)
    global_mask[0, [0, 70]] = 1
    global_mask[1, 3] = 1
    longt5, longformer = _longt5_tglobal(), _longformer()
    runs = {
        "longt5": lambda: longt5.encoder(input_ids=ids, attention_mask=mask).last_hidden_state,
        "longformer": lambda: (
            longformer(input_ids=ids, attention_mask=mask, global_attention_mask=global_mask).last_hidden_state
        ),
    }
    for name, forward in runs.items():
        with torch.no_grad():
            with attnreg.backend("reference"):
                expected = forward()
            with attnreg.backend("flex"):
                actual = forward()
        real = mask.bool()
        torch.testing.assert_close(actual[real], expected[real], atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (flex's backward runs on CUDA only)")
@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_cuda_forward_and_backward_match_reference(name: str) -> None:
    inputs = case_inputs(name, LENGTH, padding=37, num_globals=3, device="cuda", requires_grad=True)
    grads = {b: gradients(inputs, lambda b=b: run(inputs, PATTERNS[name], b)) for b in ("reference", "flex")}
    torch.testing.assert_close(run(inputs, PATTERNS[name], "flex"), run(inputs, PATTERNS[name], "reference"))
    for expected, actual in zip(grads["reference"], grads["flex"], strict=True):  # bias tables included
        torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-3)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bfloat16_forward_and_backward_are_finite() -> None:
    inputs = case_inputs("tglobal", LENGTH, padding=37, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    found = gradients(inputs, lambda: run(inputs, PATTERNS["tglobal"], "flex"))
    assert all(torch.isfinite(grad).all() for grad in found)

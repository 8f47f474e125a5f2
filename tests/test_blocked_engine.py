"""The blocked engine against the dense reference: every part and combination, forward and backward.

Lengths around the block size (1, 2, block-1, block, block+1, primes), per-example padding with an all-padding
example, different global tokens per example; fp64/fp32 tight, bf16/fp16 loose and finite; no n² tensor.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from attnreg import AggregatedGlobals, Pattern, RelativePositionBias, SelectedGlobals, Window
from attnreg.execution.blocked import BlockedEngine, blocked_attention_call, kernel
from attnreg.execution.blocked import window as window_module
from attnreg.execution.blocked.chunks import pieces
from attnreg.execution.blocked.layout import QUERY_BLOCK
from attnreg.execution.call import make_call
from attnreg.execution.dropout import AttentionDropout
from attnreg.execution.reference import reference_attention

T5_BIAS = RelativePositionBias(num_buckets=32, max_distance=128, bidirectional=True)
CAUSAL_BIAS = RelativePositionBias(num_buckets=16, max_distance=64, bidirectional=False)

PATTERNS = {
    "window": Pattern(window=Window(3, 2)),
    "causal": Pattern(window=Window.causal(5)),
    "causal-unbounded": Pattern(window=Window.causal(None), bias=CAUSAL_BIAS),
    "right-only": Pattern(window=Window(0, 4)),
    "dense": Pattern(window=None),
    "local-bias": Pattern(window=Window.symmetric(7), bias=T5_BIAS, scale=1.0),
    "globals": Pattern(window=Window(4, 4), selected_globals=SelectedGlobals()),
    "globals-own": Pattern(window=Window(4, 4), selected_globals=SelectedGlobals(own_projections=True)),
    "globals-bias": Pattern(window=Window(6, 3), selected_globals=SelectedGlobals(), bias=T5_BIAS),
    "tglobal": Pattern(
        window=Window.symmetric(5),
        aggregated_globals=AggregatedGlobals(4),
        bias=T5_BIAS,
        aggregated_bias=T5_BIAS,
        scale=1.0,
    ),
    "aggregated-only": Pattern(window=Window(2, 2), aggregated_globals=AggregatedGlobals(3)),
    "everything": Pattern(
        window=Window(5, 1),
        selected_globals=SelectedGlobals(own_projections=True),
        aggregated_globals=AggregatedGlobals(5),
        bias=T5_BIAS,
        aggregated_bias=T5_BIAS,
    ),
}

SMALL_BLOCK = 8


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 8 queries so short sequences cross several blocks (the code is the same at 128)."""
    monkeypatch.setattr("attnreg.execution.blocked.layout.QUERY_BLOCK", SMALL_BLOCK)


def make_inputs(
    pattern: Pattern, length: int, *, batch: int = 3, dtype=torch.float32, seed: int = 0, heads: int = 2, dim: int = 8
):
    """Random inputs for ``pattern``; example 0 padded at the end, the last one all padding (when batch > 2),
    global tokens: none in example 0, first and last in 1, several in the middle of 2."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=generator).to(dtype).requires_grad_(True)

    q, k, v = (rand(batch, heads, length, dim) for _ in range(3))
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, length // 2 + 1 :] = False
    if batch > 2:
        mask[-1] = False
    kwargs: dict = {"attention_mask": mask}
    if pattern.selected_globals is not None:
        globals_ = torch.zeros(batch, length, dtype=torch.bool)
        if batch > 1:
            globals_[1, [0, length - 1]] = True
        if batch > 2:
            globals_[2, length // 3 :: 4] = True
        kwargs["global_mask"] = globals_
        if pattern.selected_globals.own_projections:
            kwargs["global_qkv"] = tuple(rand(batch, heads, length, dim) for _ in range(3))
    if pattern.aggregated_globals is not None:
        count = pattern.aggregated_count(length)
        kwargs["aggregated_kv"] = (rand(batch, heads, count, dim), rand(batch, heads, count, dim))
    if pattern.bias is not None:
        kwargs["bias_weight"] = rand(pattern.bias.num_buckets, heads)
    if pattern.aggregated_bias is not None:
        kwargs["aggregated_bias_weight"] = rand(pattern.aggregated_bias.num_buckets, heads)
    return make_call(q, k, v, pattern, **kwargs)


def compare(call, *, atol: float, rtol: float) -> None:
    """Blocked output and every input gradient equal the reference's."""
    inputs = {name: t for name, t in call.tensors().items() if t.requires_grad}
    expected = reference_attention(call)
    actual = blocked_attention_call(call)
    assert torch.isfinite(actual).all()
    torch.testing.assert_close(actual.float(), expected.float(), atol=atol, rtol=rtol)
    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1)).to(expected.dtype)
    want = torch.autograd.grad(expected, list(inputs.values()), grad, allow_unused=True)
    got = torch.autograd.grad(actual, list(inputs.values()), grad, allow_unused=True)
    for name, w, g in zip(inputs, want, got, strict=True):
        w = torch.zeros_like(inputs[name]) if w is None else w
        g = torch.zeros_like(inputs[name]) if g is None else g
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g.float(), w.float(), atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")


def with_keep(call, p: float = 0.3, seed: int = 2):
    """``call`` with dropout ``p`` and explicit random keep flags: reference and engine drop the same weights."""
    generator = torch.Generator().manual_seed(seed)
    keep = torch.rand(call.batch, call.num_heads, call.length, call.length + call.count, generator=generator) >= p
    return replace(call, dropout=AttentionDropout(p, keep))


LENGTHS = [1, 2, SMALL_BLOCK - 1, SMALL_BLOCK, SMALL_BLOCK + 1, 13, 29]


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_matches_reference_fp32(name: str, length: int) -> None:
    compare(make_inputs(PATTERNS[name], length), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("length", [*LENGTHS, 5 * SMALL_BLOCK + 3])
@pytest.mark.parametrize("name", ["window", "causal", "right-only", "dense", "local-bias", "tglobal"])
def test_matches_reference_without_attention_mask(name: str, length: int) -> None:
    call = make_inputs(PATTERNS[name], length, batch=2)
    compare(replace(call, attention_mask=None), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("name", ["local-bias", "globals-bias", "tglobal", "everything"])
def test_unfused_path_matches_reference(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plain-matmul forward (what runs off CPU, e.g. CUDA) on CPU in fp32."""
    monkeypatch.setattr("attnreg.execution.blocked.kernel._flash_ok", lambda q, keys: False)
    compare(make_inputs(PATTERNS[name], 29), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("name", ["local-bias", "globals-own", "tglobal", "everything"])
def test_matches_reference_fp64_at_default_block(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("attnreg.execution.blocked.layout.QUERY_BLOCK", QUERY_BLOCK)
    compare(make_inputs(PATTERNS[name], 2 * QUERY_BLOCK + 3, batch=3, dtype=torch.float64), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("eager_cpu", [True, False], ids=["per-head", "batched"])
@pytest.mark.parametrize("length", [1, SMALL_BLOCK - 1, SMALL_BLOCK + 1, 29])
@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_dropout_with_the_reference_keep_flags_matches_it(
    name: str, length: int, eager_cpu: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each part drops its own weights and the merge by the undropped log-sum-exp gives the final ones: outputs and
    every gradient equal the reference's with the same flags, on both strategies (per head on the eager CPU,
    batched as on an accelerator or under torch.compile)."""
    if not eager_cpu:
        monkeypatch.setattr("attnreg.execution.host.eager_on_cpu", lambda x: False)
    compare(with_keep(make_inputs(PATTERNS[name], length)), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("dropout", [False, True], ids=["no dropout", "dropout"])
@pytest.mark.parametrize("eager_cpu", [True, False], ids=["per-head", "batched"])
@pytest.mark.parametrize("name", ["local-bias", "globals-own", "tglobal", "everything", "window"])
def test_softcap_matches_reference(name: str, eager_cpu: bool, dropout: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The soft cap on the scaled scores of every part (window, global and aggregated keys), before the biases."""
    if not eager_cpu:
        monkeypatch.setattr("attnreg.execution.host.eager_on_cpu", lambda x: False)
    call = make_inputs(replace(PATTERNS[name], softcap=1.5), 29, dtype=torch.float64)
    compare(with_keep(call) if dropout else call, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("name", ["local-bias", "globals-own", "tglobal", "everything"])
def test_dropout_matches_reference_in_fp64(name: str) -> None:
    compare(with_keep(make_inputs(PATTERNS[name], 29, dtype=torch.float64), p=0.5), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("dropout", [False, True], ids=["no dropout", "dropout"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["local-bias", "globals-own", "tglobal", "everything", "causal-unbounded"])
def test_half_precision_is_finite_and_close(name: str, dtype: torch.dtype, dropout: bool) -> None:
    call = make_inputs(PATTERNS[name], 29, dtype=dtype)
    compare(with_keep(call) if dropout else call, atol=6e-2, rtol=6e-2)


def test_padded_queries_are_zero_and_all_padding_example_has_no_nan() -> None:
    call = make_inputs(PATTERNS["everything"], 21)
    out = blocked_attention_call(call)
    assert (out[0, :, 11:] == 0).all()
    assert (out[-1] == 0).all()
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in call.tensors().values())


@pytest.mark.parametrize("dropout", [False, True], ids=["no dropout", "dropout"])
@pytest.mark.parametrize("eager_cpu", [True, False], ids=["per-head backward", "batched backward"])
@pytest.mark.parametrize("name", ["local-bias", "everything"])
def test_gradcheck_fp64(name: str, eager_cpu: bool, dropout: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not eager_cpu:
        monkeypatch.setattr("attnreg.execution.host.eager_on_cpu", lambda x: False)
    call = make_inputs(PATTERNS[name], 11, batch=3, dtype=torch.float64, heads=1, dim=2)
    if dropout:
        call = with_keep(call)
    names = list(call.tensors())

    def run(*tensors):
        return blocked_attention_call(replace(call, **dict(zip(names, tensors, strict=True))))

    assert torch.autograd.gradcheck(run, tuple(call.tensors().values()), atol=1e-6, fast_mode=True)


class _LargestTensor(TorchDispatchMode):
    """Records the largest storage (in elements) behind any tensor an operator returns: views count their base."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.untyped_storage().nbytes() // t.element_size())
        return out


@pytest.mark.parametrize("dropout_p", [0.0, 0.1])
@pytest.mark.parametrize("name", ["local-bias", "globals-own", "tglobal"])
def test_no_quadratic_tensor_on_long_input(name: str, dropout_p: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """With dropout too: its keep flags are drawn per chunk and kept as bits, linear in length."""
    monkeypatch.setattr("attnreg.execution.blocked.layout.QUERY_BLOCK", QUERY_BLOCK)
    length = 4096
    pattern = PATTERNS[name]
    call = make_inputs(pattern, length, batch=1)
    if dropout_p:
        call = replace(call, dropout=AttentionDropout(dropout_p))
    with _LargestTensor() as mode:
        out = blocked_attention_call(call)
        out.sum().backward()
    assert mode.largest < length * length


def test_engine_supports_and_estimates_linear_cost() -> None:
    engine = BlockedEngine()
    short = make_inputs(PATTERNS["local-bias"], 64, batch=1)
    long = make_inputs(PATTERNS["local-bias"], 4096, batch=1)
    assert engine.unsupported_reasons(short) == []
    assert 0 < engine.estimated_cost(short) < engine.estimated_cost(long) < 100 * engine.estimated_cost(short)


@pytest.mark.parametrize("bound", [2, 5, 100])
def test_a_bound_on_global_tokens_gives_the_same_result(bound: int) -> None:
    """``max_globals`` fixes the slot count statically (no value read from the device); results are unchanged."""
    call = make_inputs(PATTERNS["globals-own"], 13)  # at most 2 global tokens per example at this length
    compare(replace(call, max_globals=bound), atol=2e-5, rtol=2e-5)


def test_more_global_tokens_than_the_bound_is_an_error() -> None:
    call = make_inputs(PATTERNS["globals-own"], 29)  # example 2 has several global tokens
    with pytest.raises(RuntimeError, match="more global tokens than max_globals"):
        blocked_attention_call(replace(call, max_globals=1))


@pytest.mark.parametrize(("bound", "allowed"), [(-1, "an int >= 0"), (True, "an int >= 0"), (2.0, "an int >= 0")])
def test_a_bad_bound_is_an_error_naming_it(bound, allowed: str) -> None:
    call = make_inputs(PATTERNS["globals"], 9)
    with pytest.raises(ValueError, match=f"max_globals={bound!r} is not allowed: expected None or {allowed}"):
        make_call(call.q, call.k, call.v, call.pattern, global_mask=call.global_mask, max_globals=bound)


def test_a_bound_without_selected_globals_is_an_error() -> None:
    call = make_inputs(PATTERNS["window"], 9)
    with pytest.raises(ValueError, match="max_globals=3 is not allowed: this pattern has no selected_globals"):
        make_call(call.q, call.k, call.v, call.pattern, max_globals=3)


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_matches_reference_off_the_eager_cpu(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """As on an accelerator or under torch.compile: nothing is read back, every block gets the key mask, and the
    backward runs chunks across all examples and heads."""
    monkeypatch.setattr("attnreg.execution.host.eager_on_cpu", lambda x: False)
    compare(make_inputs(PATTERNS[name], 29), atol=2e-5, rtol=2e-5)


def _window_masked_flags(call, monkeypatch: pytest.MonkeyPatch) -> tuple[bool, ...] | None:
    """The per-block ``masked`` flags the window part passes to the kernel for ``call``."""
    seen = []
    original = window_module.blocked_attention

    def spy(*args, **kwargs):
        seen.append(kwargs["masked"])
        return original(*args, **kwargs)

    monkeypatch.setattr(window_module, "blocked_attention", spy)
    blocked_attention_call(call)
    return seen[0]


def test_only_blocks_that_reach_a_padded_key_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Window 7 each side, blocks of 8, so 24 keys per block (whole blocks): block i reaches keys 8i - 7 ... 8i + 16.
    Padding from key 50 on flags the blocks reaching it (5, 6, 7); the first block reaches before the sequence."""
    call = make_inputs(PATTERNS["local-bias"], 64, batch=2)
    mask = torch.ones(2, 64, dtype=torch.bool)
    mask[1, 50:] = False
    flags = _window_masked_flags(replace(call, attention_mask=mask), monkeypatch)
    assert flags == (True, False, False, False, False, True, True, True)


def test_an_all_true_attention_mask_costs_what_no_mask_costs(monkeypatch: pytest.MonkeyPatch) -> None:
    call = make_inputs(PATTERNS["local-bias"], 64, batch=2)
    without = _window_masked_flags(replace(call, attention_mask=None), monkeypatch)
    all_true = _window_masked_flags(replace(call, attention_mask=torch.ones(2, 64, dtype=torch.bool)), monkeypatch)
    assert without == all_true == (True, False, False, False, False, False, True, True)


def test_blocks_are_cut_into_runs_of_masked_and_unmasked() -> None:
    flags = (True, False, False, False, True, True, True)
    assert pieces(7, flags, chunk=2, whole_unmasked=True) == [
        (slice(0, 1), True),
        (slice(1, 4), False),
        (slice(4, 6), True),
        (slice(6, 7), True),
    ]
    assert pieces(3, None, chunk=2, whole_unmasked=True) == [(slice(0, 2), True), (slice(2, 3), True)]
    assert pieces(3, (False,) * 3, chunk=2, whole_unmasked=False) == [(slice(0, 2), False), (slice(2, 3), False)]


@pytest.mark.parametrize("name", ["window", "local-bias", "globals-bias", "tglobal", "everything"])
def test_few_masked_blocks_recomputed_in_place_match_reference(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """483 tokens in 61 blocks of 8, masks only at the ends and around a padded run in the middle of one example: one
    fused call over every block, then the few masked blocks again with their key mask, written in place."""
    taken = []
    original = kernel._few_masked
    monkeypatch.setattr(
        kernel, "_few_masked", lambda masked, blocks: taken.append(original(masked, blocks)) or taken[-1]
    )
    call = make_inputs(PATTERNS[name], 483, batch=2)
    mask = torch.ones(2, 483, dtype=torch.bool)
    mask[1, 240:244] = False
    compare(replace(call, attention_mask=mask), atol=2e-5, rtol=2e-5)
    assert any(taken)


def test_second_order_gradients_are_an_error_not_a_silent_zero() -> None:
    call = make_inputs(PATTERNS["local-bias"], 13, batch=1)
    out = blocked_attention_call(call)
    (grad,) = torch.autograd.grad(out.pow(2).sum(), call.q, create_graph=True)
    with pytest.raises(RuntimeError, match=r"once_differentiable|does not require grad"):
        grad.sum().backward()

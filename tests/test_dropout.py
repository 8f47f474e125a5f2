"""Attention-probability dropout through ``attnreg.attention``: its arguments, which engines run it, and what it is.

The engines' exactness against the reference with the same keep flags is in ``test_blocked_engine.py``; here are the
properties of the random draws themselves (rate, scale, unbiasedness, seeds), dispatch, and tracing.
"""

from __future__ import annotations

import math

import pytest
import torch
from pattern_cases import PATTERNS, case_inputs, gradients, run

import attnreg
from attnreg import Pattern, PatternError, SelectedGlobals, Window
from attnreg.execution import BackendUnavailableError, choose, make_call
from attnreg.execution.blocked import BlockedEngine
from attnreg.execution.dropout import draw_keep, pack_bits, unpack_bits
from attnreg.execution.reference import ReferenceEngine

DROP_ENGINES = ["blocked", "reference"]


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 8 queries so short sequences cross several blocks."""
    monkeypatch.setattr("attnreg.execution.blocked.layout.QUERY_BLOCK", 8)


def _qkv(length: int = 16, batch: int = 1) -> tuple[torch.Tensor, ...]:
    return tuple(torch.randn(batch, 2, length, 4) for _ in range(3))


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, True, "0.1", None])
def test_a_dropout_p_outside_0_1_is_an_error_naming_it(p) -> None:
    with pytest.raises(PatternError, match=rf"dropout_p={p!r} is not allowed: expected a probability 0 <= p < 1"):
        attnreg.attention(*_qkv(), Pattern(window=Window(2, 2)), dropout_p=p)


@pytest.mark.parametrize(
    ("mask", "p", "message"),
    [
        (torch.ones(1, 2, 16, 15, dtype=torch.bool), 0.1, r"expected a bool tensor .* = \(1, 2, 16, 16\)"),
        (torch.ones(1, 2, 16, 16), 0.1, "expected a bool tensor"),
        (torch.ones(1, 2, 16, 16, dtype=torch.bool), 0.0, "a keep mask needs dropout_p > 0"),
    ],
)
def test_a_bad_dropout_mask_is_an_error_naming_it(mask: torch.Tensor, p: float, message: str) -> None:
    with pytest.raises(PatternError, match=rf"dropout_mask='Tensor\(.*\)' is not allowed: {message}"):
        attnreg.attention(*_qkv(), Pattern(window=Window(2, 2)), dropout_p=p, dropout_mask=mask)


def test_zero_dropout_is_the_call_without_dropout() -> None:
    q, k, v = _qkv(29)
    pattern = Pattern(window=Window(3, 3))
    assert make_call(q, k, v, pattern, dropout_p=0.0).dropout is None
    torch.testing.assert_close(attnreg.attention(q, k, v, pattern, dropout_p=0.0), attnreg.attention(q, k, v, pattern))


class _NoDropout(BlockedEngine):
    name = "no-dropout"
    supports_dropout = False


def test_an_engine_without_dropout_is_refused_with_the_reason_and_passed_over() -> None:
    q, k, v = _qkv(64)
    call = make_call(q, k, v, Pattern(window=Window(4, 4)), dropout_p=0.1)
    engines = [_NoDropout(), BlockedEngine(), ReferenceEngine()]
    assert choose(call, engines).name == "blocked"
    refusal = r"backend='no-dropout' cannot run this call: no attention dropout"
    with pytest.raises(BackendUnavailableError, match=refusal):
        choose(call, engines, "no-dropout")


def test_long_inputs_with_dropout_take_the_blocked_engine() -> None:
    q, k, v = _qkv(4096)
    call = make_call(q, k, v, Pattern(window=Window(64, 64)), dropout_p=0.1)
    assert choose(call, attnreg.get_registry().engines()).name == "blocked"


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_draws_keep_a_flag_with_probability_one_minus_p(p: float) -> None:
    torch.manual_seed(0)
    flags = draw_keep((1 << 20,), p, torch.device("cpu"))
    sigma = math.sqrt(p * (1 - p) / flags.numel())
    assert abs(flags.float().mean().item() - (1 - p)) < 5 * sigma


@pytest.mark.parametrize("n", [1, 7, 8, 9, 64, 301])
def test_bits_unpack_to_the_flags_packed(n: int) -> None:
    flags = torch.rand(3, 5, n) > 0.5
    packed = pack_bits(flags)
    assert packed.dtype == torch.uint8 and packed.shape == (3, 5, -(-n // 8))
    assert torch.equal(unpack_bits(packed, n), flags)


@pytest.mark.parametrize("backend", DROP_ENGINES)
def test_kept_weights_are_scaled_by_one_over_keep_rate_and_a_fraction_p_is_dropped(backend: str) -> None:
    """Equal scores and one-hot values make the output the dropped weights themselves: a kept weight is
    ``1 / (count (1 - p))``, a dropped one 0, and about ``p`` of the allowed ones are dropped."""
    p, length, radius = 0.3, 96, 5
    pattern = Pattern(window=Window(radius, radius))
    q = k = torch.zeros(4, 4, length, length)
    v = torch.eye(length).expand(4, 4, length, length)
    allowed = pattern.materialize(length).allowed[0]
    counts = allowed.sum(-1, keepdim=True).float()
    torch.manual_seed(1)
    weights = attnreg.attention(q, k, v, pattern, dropout_p=p, backend=backend)
    assert (weights[..., ~allowed] == 0).all()
    kept = weights != 0
    torch.testing.assert_close(weights[kept], (1 / (counts * (1 - p))).expand_as(weights)[kept])
    dropped = 1 - kept[..., allowed].float().mean().item()
    trials = kept[..., allowed].numel()
    assert abs(dropped - p) < 5 * math.sqrt(p * (1 - p) / trials)


@pytest.mark.parametrize("backend", DROP_ENGINES)
@pytest.mark.parametrize("name", ["tglobal", "window-globals-own"])
def test_the_mean_over_seeds_is_the_output_without_dropout(name: str, backend: str) -> None:
    """Unbiased: over many draws the mean output approaches the undropped one, within six standard errors."""
    inputs = case_inputs(name, 13, num_globals=2)
    expected = run(inputs, PATTERNS[name], backend)
    q, k, v = inputs.pop("q"), inputs.pop("k"), inputs.pop("v")
    draws = 400
    outs = []
    for seed in range(draws):
        torch.manual_seed(seed)
        outs.append(attnreg.attention(q, k, v, PATTERNS[name], dropout_p=0.2, backend=backend, **inputs))
    stacked = torch.stack(outs)
    error = (stacked.mean(0) - expected).abs()
    assert (error <= 6 * stacked.std(0) / math.sqrt(draws) + 1e-6).all()
    assert not torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("eager_cpu", [True, False], ids=["per-head", "batched"])
@pytest.mark.parametrize("backend", DROP_ENGINES)
def test_one_seed_reproduces_a_step_and_another_does_not(
    backend: str, eager_cpu: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not eager_cpu:
        monkeypatch.setattr("attnreg.execution.host.eager_on_cpu", lambda x: False)
    inputs = case_inputs("tglobal", 29, requires_grad=True)
    pattern = PATTERNS["tglobal"]

    def step(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        q, k, v = inputs["q"], inputs["k"], inputs["v"]
        rest = {key: value for key, value in inputs.items() if key not in ("q", "k", "v")}
        return gradients(inputs, lambda: attnreg.attention(q, k, v, pattern, dropout_p=0.3, backend=backend, **rest))

    first, again, other = step(0), step(0), step(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_half_precision_with_drawn_flags_has_no_nan(name: str, dtype: torch.dtype) -> None:
    inputs = case_inputs(name, 29, dtype=dtype, requires_grad=True)
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    rest = {key: value for key, value in inputs.items() if key not in ("q", "k", "v")}
    torch.manual_seed(0)
    out = attnreg.attention(q, k, v, PATTERNS[name], dropout_p=0.1, backend="blocked", **rest)
    out.float().square().sum().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


class _Attention(torch.nn.Module):
    """``attnreg.attention`` with dropout on the blocked engine, the pattern's extra inputs held as constants."""

    def __init__(self, pattern: Pattern, extra: dict) -> None:
        super().__init__()
        self.pattern, self.extra = pattern, extra

    def forward(self, q, k, v, mask, keep=None):
        return attnreg.attention(
            q, k, v, self.pattern, attention_mask=mask, dropout_p=0.25, dropout_mask=keep, backend="blocked",
            **self.extra,
        )


def _step(module, q, k, v, mask, keep=None) -> list[torch.Tensor]:
    """A training step through ``module``: its output, then the gradients of q, k and v."""
    out = module(q, k, v, mask, keep)
    return [out, *torch.autograd.grad(out.square().sum(), (q, k, v))]


_TRACED = {
    "window": (Pattern(window=Window(2, 1)), {}),
    "globals-bounded": (Pattern(window=Window(2, 2), selected_globals=SelectedGlobals()), {"max_globals": 2}),
}


@pytest.mark.parametrize("name", sorted(_TRACED))
def test_a_compiled_training_step_with_dropout_has_no_graph_break(name: str) -> None:
    """``torch.compile(fullgraph=True)``, forward and backward: with explicit keep flags it equals eager; with drawn
    ones a seed reproduces it and another seed does not."""
    attnreg.get_registry()
    torch._dynamo.reset()
    pattern, extra = _TRACED[name]
    torch.manual_seed(3)
    q, k, v = (torch.randn(2, 2, 11, 8, requires_grad=True) for _ in range(3))
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[1, -3:] = False
    if "max_globals" in extra:
        global_mask = torch.zeros(2, 11, dtype=torch.bool)
        global_mask[:, [0, 5]] = True
        extra = {**extra, "global_mask": global_mask}
    module = _Attention(pattern, extra)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    keep = torch.rand(2, 2, 11, 11, generator=torch.Generator().manual_seed(0)) > 0.25
    for got, want in zip(_step(compiled, q, k, v, mask, keep), _step(module, q, k, v, mask, keep), strict=True):
        torch.testing.assert_close(got, want)
    runs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        runs.append(_step(compiled, q, k, v, mask))
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))
    assert not torch.equal(runs[0][0], runs[2][0])
    torch._dynamo.reset()

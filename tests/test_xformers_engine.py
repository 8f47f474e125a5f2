"""The xformers engine: what it would hand to xformers equals the reference, and its plumbing runs on a stand-in.

xformers has no CPU operator and is not installed here. On CPU the tests check (1) that the biases and structural
masks of every plan, spelled out densely, are the reference's allowed matrix and bias, each pair covered once, and
(2) the whole engine against the reference with a stand-in ``xformers.ops.fmha`` whose operators are dense torch.
The CUDA test at the end runs the real library and skips, saying why, without one.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass

import pytest
import torch
from pattern_cases import PATTERNS, case_inputs, gradients, run

import attnreg
from attnreg.execution import make_call
from attnreg.execution.dispatch import capability_reasons
from attnreg.execution.xformers_engine import (
    Features,
    LocalMask,
    XformersEngine,
    build_plan,
    densify,
    probe,
    run_plan,
    strategy,
    xformers_attention,
)

STRUCTURAL = {"window-only", "window-globals", "window-globals-own"}  # no bias: a structural mask may run the window


def _call(name: str, length: int = 19, **kwargs):
    inputs = case_inputs(name, length, **kwargs)
    q, k, v = inputs.pop("q"), inputs.pop("k"), inputs.pop("v")
    return make_call(q, k, v, PATTERNS[name], **inputs)


def _strategies(name: str) -> list[tuple[bool, bool]]:
    found = [(False, False), (True, False)]
    if name in STRUCTURAL:
        found.append((True, True))
    return found


# --- (1) the plan against the reference's dense layout ------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PATTERNS))
@pytest.mark.parametrize("block", [4, 128])
def test_plan_bias_equals_reference(name: str, block: int) -> None:
    for merge, structural in _strategies(name):
        padding = 0 if structural else 5
        call = _call(name, padding=padding)
        plan = build_plan(call, merge=merge, structural=structural, block=block)
        total, covered = densify(plan, call.count)
        layout = PATTERNS[name].materialize(call.length, call.attention_mask, call.global_mask)
        expected = layout.bias(call.bias_weight, call.aggregated_bias_weight, call.heads)
        total, covered, allowed, expected = torch.broadcast_tensors(total, covered, layout.allowed[:, None], expected)
        assert int(covered.max()) <= 1, f"{name} merge={merge}: a key is counted twice"
        assert torch.equal(covered == 1, allowed), f"{name} merge={merge} structural={structural}"
        torch.testing.assert_close(total[allowed], expected[allowed].to(call.dtype).float())


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_tensor_biases_are_aligned_for_xformers(name: str) -> None:
    call = _call(name, length=21)
    for merge in (False, True):
        plan = build_plan(call, merge=merge, structural=False, block=8)
        parts = [*plan.merged, *([plan.global_rows] if plan.global_rows is not None else [])]
        for part in parts:
            assert part.bias.dtype == call.dtype
            assert part.bias.stride(-1) == 1
            assert all(stride % 8 == 0 for stride in part.bias.stride()[:-1]), part.bias.stride()


def test_local_mask_semantics_match_xformers_documentation() -> None:
    # LocalAttentionFromBottomRightMask(window_left=1, window_right=2), the 4x4 and 4x5 examples of its docstring.
    mask = LocalMask(window_left=1, window_right=2)
    square = [[1, 1, 1, 0], [1, 1, 1, 1], [0, 1, 1, 1], [0, 0, 1, 1]]
    wide = [[1, 1, 1, 1, 0], [0, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 1, 1]]
    assert mask.materialize(4, 4).exp().tolist() == square
    assert mask.materialize(4, 5).exp().tolist() == wide


def test_plan_has_no_quadratic_part_for_a_local_window() -> None:
    call = _call("local-bias", length=300)
    plan = build_plan(call, merge=False, structural=False, block=16)
    (part,) = plan.merged
    assert part.keys == 16 + 3 + 3
    assert part.bias.shape[0] * part.bias.shape[2] * part.keys < 300 * 300 / 4


# --- (2) the engine end to end on a stand-in for xformers ---------------------------------------------------------


def _scores(q, k, attn_bias, scale):
    """Dense fp32 scores ``(batch, heads, queries, keys)``; checks the bias as xformers' tensor-bias kernel does."""
    scores = q.transpose(1, 2).float() @ k.transpose(1, 2).float().transpose(-1, -2)
    scores = scores * (q.shape[-1] ** -0.5 if scale is None else scale)
    if isinstance(attn_bias, torch.Tensor):
        alignment = 128 // torch.finfo(attn_bias.dtype).bits
        assert attn_bias.dtype == q.dtype, "xformers wants the bias in the queries' dtype"
        assert all(s % alignment == 0 for s in attn_bias.stride()[:-1]), f"misaligned bias {attn_bias.stride()}"
        assert attn_bias.stride(-1) == 1
        scores = scores + attn_bias.float()
    elif attn_bias is not None:
        scores = scores + attn_bias.materialize(scores.shape[-2:], device=q.device)
    return scores


def _dense(q, k, v, attn_bias, scale):
    scores = _scores(q, k, attn_bias, scale)
    lse = torch.logsumexp(scores, dim=-1)
    weights = torch.exp(scores - lse[..., None])  # a row that sees nothing comes out NaN: the worst a kernel may do
    return (weights @ v.transpose(1, 2).float()).transpose(1, 2).to(q.dtype), lse


@dataclass(frozen=True)
class _StandInLocalMask:
    """xformers' ``LocalAttentionFromBottomRightMask`` semantics, written independently of ``LocalMask``."""

    window_left: int
    window_right: int

    def materialize(self, shape, dtype=torch.float32, device="cpu"):
        ones = torch.ones(shape, dtype=dtype, device=device)
        shift = shape[-1] - shape[-2]
        ones = torch.tril(torch.triu(ones, diagonal=shift - self.window_left), diagonal=shift + self.window_right)
        return torch.log(ones)


def _merge(attn_split, lse_split, write_lse=True, output_dtype=None):
    lse = torch.stack(list(lse_split))  # (chunks, batch, heads, queries)
    total = torch.logsumexp(lse, dim=0)
    weights = torch.exp(lse - total).nan_to_num(0.0)
    out = sum(w.permute(0, 2, 1)[..., None] * a.float() for w, a in zip(weights, attn_split, strict=True))
    return out.to(output_dtype or attn_split[0].dtype), total if write_lse else None


def _partial(q, k, v, attn_bias=None, p=0.0, scale=None):
    out, lse = _dense(q, k, v, attn_bias, scale)
    rounded = -(-lse.shape[-1] // 32) * 32  # like some operators, hand back a log-sum-exp longer than the queries
    padded = torch.full((*lse.shape[:-1], rounded), float("nan"))
    padded[..., : lse.shape[-1]] = lse
    return out.detach(), padded.detach()  # xformers' partial attention has no backward


@pytest.fixture
def fake_fmha(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """A stand-in ``xformers.ops.fmha`` (dense torch operators) put in ``sys.modules``."""
    fmha = types.ModuleType("xformers.ops.fmha")
    fmha.attn_bias = types.ModuleType("xformers.ops.fmha.attn_bias")
    fmha.attn_bias.LocalAttentionFromBottomRightMask = _StandInLocalMask
    fmha.memory_efficient_attention = lambda q, k, v, attn_bias=None, p=0.0, scale=None: _dense(
        q, k, v, attn_bias, scale
    )[0]
    fmha.memory_efficient_attention_partial = _partial
    fmha.merge_attentions = _merge
    ops = types.ModuleType("xformers.ops")
    ops.fmha = fmha
    package = types.ModuleType("xformers")
    package.ops = ops
    modules = {
        "xformers": package,
        "xformers.ops": ops,
        "xformers.ops.fmha": fmha,
        "xformers.ops.fmha.attn_bias": fmha.attn_bias,
    }
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return fmha


ALL_FEATURES = Features(local_mask_dtypes=frozenset({torch.float32, torch.bfloat16}), partial_merge=True)


@pytest.mark.parametrize("name", sorted(PATTERNS))
@pytest.mark.parametrize("length", [1, 19])
def test_engine_forward_on_stand_in_matches_reference(fake_fmha, name: str, length: int) -> None:
    for merge, structural in _strategies(name):
        inputs = case_inputs(name, length, padding=0 if structural else min(5, length - 1), num_globals=min(2, length))
        expected = run(inputs, PATTERNS[name], "reference")
        q, k, v = inputs.pop("q"), inputs.pop("k"), inputs.pop("v")
        call = make_call(q, k, v, PATTERNS[name], **inputs)
        plan = build_plan(call, merge=merge, structural=structural, block=4)
        actual = run_plan(fake_fmha, plan, call)
        assert not actual.isnan().any()
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5, msg=f"{name} merge={merge}")


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_engine_backward_on_stand_in_matches_reference(fake_fmha, name: str) -> None:
    inputs = case_inputs(name, requires_grad=True)
    pattern = PATTERNS[name]
    expected = gradients(inputs, lambda: run(inputs, pattern, "reference"))
    call = make_call(
        **{k: v for k, v in inputs.items() if k in ("q", "k", "v")},
        pattern=pattern,
        **{k: v for k, v in inputs.items() if k not in ("q", "k", "v")},
    )
    assert strategy(call, ALL_FEATURES)[0] is False, "a call that needs gradients must not use partial attention"
    actual = gradients(inputs, lambda: xformers_attention(call, fake_fmha, ALL_FEATURES, block=4))
    for want, got in zip(expected, actual, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_bfloat16_on_stand_in_has_no_nan(fake_fmha) -> None:
    inputs = case_inputs("tglobal", dtype=torch.bfloat16)
    call = make_call(inputs.pop("q"), inputs.pop("k"), inputs.pop("v"), PATTERNS["tglobal"], **inputs)
    out = xformers_attention(call, fake_fmha, ALL_FEATURES, block=4)
    assert out.dtype == torch.bfloat16 and not out.isnan().any()


def test_structural_mask_without_an_operator_falls_back_to_the_tensor_bias(fake_fmha) -> None:
    dense = fake_fmha.memory_efficient_attention

    def refuse_masks(q, k, v, attn_bias=None, p=0.0, scale=None):
        if attn_bias is not None and not isinstance(attn_bias, torch.Tensor):
            raise NotImplementedError("No operator found for this attention")
        return dense(q, k, v, attn_bias, p, scale)

    fake_fmha.memory_efficient_attention = refuse_masks
    inputs = case_inputs("window-only", padding=0, requires_grad=True)
    call = make_call(inputs.pop("q"), inputs.pop("k"), inputs.pop("v"), PATTERNS["window-only"], **inputs)
    assert strategy(call, ALL_FEATURES) == (False, True)
    expected = run({"q": call.q, "k": call.k, "v": call.v, **inputs}, PATTERNS["window-only"], "reference")
    torch.testing.assert_close(xformers_attention(call, fake_fmha, ALL_FEATURES, block=4), expected)


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_dropout_is_the_operators_own_p_on_plans_of_one_call(fake_fmha, name: str) -> None:
    """xformers drops out inside ``memory_efficient_attention`` (``p``); its partial attention cannot, so a call with
    dropout never takes the partial + merge plan, even without gradients."""
    seen = []
    dense = fake_fmha.memory_efficient_attention

    def recording(q, k, v, attn_bias=None, p=0.0, scale=None):
        seen.append(p)
        return dense(q, k, v, attn_bias, p, scale)

    def no_partial(*args, **kwargs):
        raise AssertionError("partial attention has no dropout")

    fake_fmha.memory_efficient_attention, fake_fmha.memory_efficient_attention_partial = recording, no_partial
    inputs = case_inputs(name, num_globals=2)
    call = make_call(inputs.pop("q"), inputs.pop("k"), inputs.pop("v"), PATTERNS[name], dropout_p=0.25, **inputs)
    assert strategy(call, ALL_FEATURES)[0] is False
    assert torch.isfinite(xformers_attention(call, fake_fmha, ALL_FEATURES, block=4)).all()
    assert seen and set(seen) == {0.25}


def test_explicit_keep_flags_are_refused_with_the_reason() -> None:
    call = _call("window-only")
    keep = torch.ones(call.batch, call.heads, call.length, call.length, dtype=torch.bool)
    call = make_call(call.q, call.k, call.v, call.pattern, dropout_p=0.1, dropout_mask=keep)
    (reason,) = capability_reasons(XformersEngine(), call)
    assert "cannot take dropout_mask" in reason


def test_probe_reads_the_module_not_the_version(fake_fmha) -> None:
    assert probe(fake_fmha).partial_merge
    assert probe(fake_fmha).local_mask_dtypes == {torch.float16, torch.bfloat16}
    del fake_fmha.merge_attentions
    assert not probe(fake_fmha).partial_merge


# --- support and dispatch -------------------------------------------------------------------------------------------


def test_engine_is_registered_and_says_why_it_cannot_run_on_cpu() -> None:
    call = _call("local-bias")
    engine = attnreg.get_registry().engine_table["xformers"]
    reasons = " ".join(engine.unsupported_reasons(call))
    assert "device is cpu" in reasons
    if "xformers" not in sys.modules:
        assert "xformers is not installed" in reasons
    with pytest.raises(attnreg.BackendUnavailableError, match="device is cpu"):
        run(case_inputs("local-bias"), PATTERNS["local-bias"], "xformers")


def test_with_xformers_present_cpu_is_the_only_reason(fake_fmha) -> None:
    assert XformersEngine().unsupported_reasons(_call("tglobal")) == ["device is cpu: xformers runs on CUDA only"]


def _real_xformers_reason() -> str | None:
    if not torch.cuda.is_available():
        return "needs a CUDA device"
    from attnreg.execution.xformers_engine import installed

    return None if installed() else "needs xformers installed"


@pytest.mark.cuda
@pytest.mark.skipif(_real_xformers_reason() is not None, reason=str(_real_xformers_reason()))
@pytest.mark.parametrize("name", sorted(PATTERNS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_real_xformers_matches_reference(name: str, dtype: torch.dtype) -> None:
    inputs = case_inputs(name, 200, device="cuda", dtype=dtype)
    expected = run(inputs, PATTERNS[name], "reference")
    actual = run(inputs, PATTERNS[name], "xformers")
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(actual.float(), expected.float(), atol=tolerance, rtol=tolerance)


@pytest.mark.cuda
@pytest.mark.skipif(_real_xformers_reason() is not None, reason=str(_real_xformers_reason()))
@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_real_xformers_gradients_match_reference(name: str) -> None:
    inputs = case_inputs(name, 200, device="cuda", requires_grad=True)
    grads = {b: gradients(inputs, lambda b=b: run(inputs, PATTERNS[name], b)) for b in ("reference", "xformers")}
    for expected, actual in zip(grads["reference"], grads["xformers"], strict=True):
        torch.testing.assert_close(actual, expected, atol=2e-4, rtol=2e-3)


@pytest.mark.parametrize("name", ["window-globals", "window-globals-own"])
def test_a_bound_on_global_tokens_without_a_global_mask_keeps_the_window(fake_fmha, name: str) -> None:
    """No ``global_mask``: the pattern is its window, whatever ``max_globals`` says (every strategy, and the one
    ``strategy`` picks for a call that needs gradients: a structural window without merging)."""
    inputs = case_inputs(name, padding=0, num_globals=0, requires_grad=True)
    inputs.pop("global_qkv", None)
    expected = run(inputs, PATTERNS[name], "reference")
    q, k, v = inputs.pop("q"), inputs.pop("k"), inputs.pop("v")
    call = make_call(q, k, v, PATTERNS[name], max_globals=2, **inputs)
    assert strategy(call, ALL_FEATURES) == (False, True)
    for merge, structural in [*_strategies(name), (False, True)]:
        actual = run_plan(fake_fmha, build_plan(call, merge=merge, structural=structural, block=4), call)
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5, msg=f"merge={merge} structural={structural}")
    torch.testing.assert_close(
        xformers_attention(call, fake_fmha, ALL_FEATURES, block=4), expected, atol=1e-5, rtol=1e-5
    )

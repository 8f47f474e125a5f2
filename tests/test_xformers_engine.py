"""The xformers engine: what it hands to xformers equals the reference, and the real library would run it.

xformers' operators do not run on CPU. On CPU the tests check (1) that the biases and structural masks of every
plan, spelled out densely, are the reference's allowed matrix and bias, each pair covered once; (2) that xformers'
own operators (``not_supported_reasons`` of cutlass and flash, reasons about the machine set aside) accept every
call the engine plans; (3) the whole engine against the reference with a stand-in ``memory_efficient_attention``
made of dense torch that refuses what the real operators refuse. The CUDA tests at the end run the real library.
"""

from __future__ import annotations

import sys
import types
from dataclasses import replace

import pytest
import torch
from pattern_cases import PATTERNS, case_inputs, gradients, run

import attnreg
from attnreg.execution import make_call
from attnreg.execution.dispatch import capability_reasons, choose, refusals
from attnreg.execution.dispatch import run as dispatch_run
from attnreg.execution.xformers_engine import (
    LocalMask,
    XformersEngine,
    build_plan,
    densify,
    input_reasons,
    kernel_arguments,
    operator_reasons,
    run_plan,
    strategy,
    xformers_attention,
)

NO_BIAS = {"window-only", "window-globals", "window-globals-own"}  # no bias: a structural mask may run the window
REAL = "the real xformers package (installed by the test extra on Linux x86-64)"


def _call(name: str, length: int = 19, **kwargs):
    inputs = case_inputs(name, length, **kwargs)
    q, k, v = inputs.pop("q"), inputs.pop("k"), inputs.pop("v")
    return make_call(q, k, v, PATTERNS[name], **inputs)


def _structural_cases(name: str) -> list[bool]:
    return [False, True] if name == "window-only" else [False]


@pytest.fixture(scope="module")
def real_fmha() -> types.ModuleType:
    pytest.importorskip("xformers", reason=f"needs {REAL}")
    import xformers.ops.fmha as fmha

    return fmha


# --- (1) the plan against the reference's dense layout ------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PATTERNS))
@pytest.mark.parametrize("block", [4, 128])
def test_plan_bias_equals_reference(name: str, block: int) -> None:
    for structural in _structural_cases(name):
        call = _call(name, padding=0 if structural else 5)
        plan = build_plan(call, structural=structural, block=block)
        total, covered = densify(plan, call.count)
        layout = PATTERNS[name].materialize(call.length, call.attention_mask, call.global_mask)
        expected = layout.bias(call.bias_weight, call.aggregated_bias_weight, call.num_heads)
        total, covered, allowed, expected = torch.broadcast_tensors(total, covered, layout.allowed[:, None], expected)
        assert int(covered.max()) <= 1, f"{name}: a key is counted twice"
        assert torch.equal(covered == 1, allowed), f"{name} structural={structural}"
        torch.testing.assert_close(total[allowed], expected[allowed].to(call.dtype).float())


def test_structural_plan_is_refused_where_a_tensor_is_needed() -> None:
    with pytest.raises(ValueError, match="structural=True needs a window without bias or extra keys"):
        build_plan(_call("tglobal"), structural=True)


def test_local_mask_semantics_match_xformers_documentation() -> None:
    # LocalAttentionFromBottomRightMask(window_left=1, window_right=2), the 4x4 and 4x5 examples of its docstring.
    mask = LocalMask(window_left=1, window_right=2)
    square = [[1, 1, 1, 0], [1, 1, 1, 1], [0, 1, 1, 1], [0, 0, 1, 1]]
    wide = [[1, 1, 1, 1, 0], [0, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 1, 1]]
    assert mask.materialize(4, 4).exp().tolist() == square
    assert mask.materialize(4, 5).exp().tolist() == wide


@pytest.mark.parametrize("shape", [(6, 6), (4, 9), (9, 4)])
def test_local_mask_equals_the_real_bias_class(real_fmha, shape: tuple[int, int]) -> None:
    real = real_fmha.attn_bias.LocalAttentionFromBottomRightMask(window_left=2, window_right=1)
    torch.testing.assert_close(LocalMask(2, 1).materialize(*shape), real.materialize(shape))


def test_plan_has_no_quadratic_part_for_a_local_window() -> None:
    call = _call("local-bias", length=300)
    plan = build_plan(call, structural=False, block=16)
    assert plan.global_rows is None and plan.tokens.keys == 16 + 3 + 3
    assert plan.tokens.bias.shape[0] * plan.tokens.bias.shape[2] * plan.tokens.keys < 300 * 300 / 4


# --- (2) xformers' own operators on every call the engine plans ----------------------------------------------------


def _accepted(fmha, inputs: dict, backward: bool) -> list[str]:
    """Why xformers' cutlass and flash operators refuse ``inputs`` (asked directly; machine reasons set aside)."""
    real = fmha.Inputs(**inputs)
    real.validate_inputs()
    device = real.query.device.type
    why = []
    for family in (fmha.cutlass, fmha.flash):
        ops = [family.FwOp, family.BwOp] if backward else [family.FwOp]
        reasons = [r for op in ops for r in input_reasons(op.not_supported_reasons(real), device)]
        if not reasons:
            return []
        why.append(f"{family.__name__}: {reasons}")
    return why


@pytest.mark.parametrize("name", sorted(PATTERNS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("grad", [False, True], ids=["no-grad", "grad"])
def test_real_operators_accept_every_call_the_engine_makes(real_fmha, name: str, dtype, grad: bool) -> None:
    """No plan that no real operator runs: no partial attention with a tensor bias, no fp32 local mask, biases of
    xformers' shape, aligned storage, no broadcast bias that needs a gradient."""
    inputs = case_inputs(name, 21, dtype=dtype, padding=0, requires_grad=grad)
    call = make_call(inputs.pop("q"), inputs.pop("k"), inputs.pop("v"), PATTERNS[name], **inputs)
    structural = strategy(call, real_fmha, block=8)
    assert structural == (name == "window-only" and dtype != torch.float32), "flash runs local masks in half only"
    plan = build_plan(call, structural=structural, block=8)
    for kernel, arguments in kernel_arguments(real_fmha, plan, call):
        assert _accepted(real_fmha, arguments, backward=grad) == [], f"{name}: {kernel.name}"


def test_machine_reasons_are_set_aside_only_off_cuda() -> None:
    reasons = ["device=cpu (supported: {'cuda'})", "bf16 is only supported on A100+ GPUs", "attn_bias type is X"]
    assert input_reasons(reasons, "cpu") == ["attn_bias type is X"]
    assert input_reasons(reasons, "cuda") == reasons


class _AnyDevice(XformersEngine):
    """The engine with its device rule lifted: what its build and operators alone refuse."""

    devices = None


@pytest.fixture
def working_build(monkeypatch: pytest.MonkeyPatch, real_fmha) -> None:
    monkeypatch.setattr("attnreg.execution.xformers_engine.engine.build_reasons", lambda: [])


def test_engine_reports_the_operators_reasons(working_build) -> None:
    """A head size no operator takes: every family's reason, named per kernel call."""
    q = torch.randn(1, 1, 3, 65544)
    call = make_call(q, q, q, PATTERNS["local-bias"], bias_weight=torch.zeros(8, 1))
    (reason,) = _AnyDevice().unsupported_reasons(call)
    assert reason.startswith("no xformers operator runs its window call (")
    assert "fa2F" in reason and "cutlassF-pt: max(query.shape[-1], value.shape[-1]) > 65536" in reason


def test_an_operator_refusal_makes_the_dispatcher_fall_back(working_build) -> None:
    q = torch.randn(1, 1, 3, 65544)
    call = make_call(q, q, q, PATTERNS["window-only"])
    engines = [_AnyDevice(), *attnreg.get_registry().engine_table.values()]
    engines = [engine for engine in engines if not (engine.name == "xformers" and engine.devices)]
    assert choose(call, engines).name != "xformers"
    with pytest.raises(attnreg.BackendUnavailableError, match=r"no xformers operator runs its window call \(.*> 65536"):
        choose(call, engines, backend="xformers")


def test_a_build_whose_operators_did_not_load_is_refused(real_fmha, monkeypatch: pytest.MonkeyPatch) -> None:
    import xformers

    monkeypatch.setattr(xformers, "_has_cpp_library", False)
    (reason,) = _AnyDevice().unsupported_reasons(_call("window-only"))
    assert reason.startswith("its C++ operators did not load")


# --- (3) the engine end to end on a stand-in for xformers' arithmetic ---------------------------------------------


def _dense(q, k, v, attn_bias, scale):
    scores = q.transpose(1, 2).float() @ k.transpose(1, 2).float().transpose(-1, -2)
    scores = scores * (q.shape[-1] ** -0.5 if scale is None else scale)
    if isinstance(attn_bias, torch.Tensor):
        scores = scores + attn_bias.float()
    elif attn_bias is not None:
        scores = scores + attn_bias.materialize(scores.shape[-2:], device=q.device)
    weights = torch.softmax(scores, dim=-1)  # a row that sees nothing comes out NaN: the worst a kernel may do
    return (weights @ v.transpose(1, 2).float()).transpose(1, 2).to(q.dtype)


def _stand_in(real):
    """``memory_efficient_attention`` as dense torch that refuses what xformers' operators refuse and, like xformers,
    takes its autograd path only when q, k or v requires grad (otherwise nothing flows back, not even to a bias)."""

    def memory_efficient_attention(query, key, value, attn_bias=None, p=0.0, scale=None):
        autograd = any(t.requires_grad for t in (query, key, value))
        inputs = {"query": query, "key": key, "value": value, "attn_bias": attn_bias, "p": p, "scale": scale}
        refused = operator_reasons(real, real.Inputs(**inputs), backward=autograd and torch.is_grad_enabled())
        if refused:
            raise NotImplementedError(f"No operator found: {refused}")
        with torch.enable_grad() if autograd else torch.no_grad():
            return _dense(query, key, value, attn_bias, scale)

    return memory_efficient_attention


@pytest.fixture
def fake_fmha(monkeypatch: pytest.MonkeyPatch, real_fmha) -> types.ModuleType:
    """xformers with its arithmetic replaced by :func:`_stand_in` and its build marked working, in ``sys.modules``."""
    import xformers

    fmha = types.ModuleType("xformers.ops.fmha")
    fmha.__dict__.update(real_fmha.__dict__)
    fmha.memory_efficient_attention = _stand_in(real_fmha)
    ops = types.ModuleType("xformers.ops")
    ops.fmha = fmha
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)
    monkeypatch.setitem(sys.modules, "xformers.ops.fmha", fmha)
    monkeypatch.setattr(xformers, "_has_cpp_library", True)
    monkeypatch.setattr(xformers._cpp_lib, "_built_with_cuda", True)
    return fmha


@pytest.mark.parametrize("name", sorted(PATTERNS))
@pytest.mark.parametrize("length", [1, 19])
def test_engine_forward_on_stand_in_matches_reference(fake_fmha, name: str, length: int) -> None:
    for dtype in (torch.float32, torch.bfloat16):
        inputs = case_inputs(name, length, padding=min(5, length - 1), num_globals=min(2, length), dtype=dtype)
        expected = run(inputs, PATTERNS[name], "reference")
        call = make_call(inputs.pop("q"), inputs.pop("k"), inputs.pop("v"), PATTERNS[name], **inputs)
        actual = xformers_attention(call, fake_fmha, block=4)
        assert not actual.isnan().any()
        tolerance = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(actual, expected, atol=tolerance, rtol=tolerance, msg=f"{name} {dtype}")


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_engine_backward_on_stand_in_matches_reference(fake_fmha, name: str) -> None:
    inputs = case_inputs(name, requires_grad=True)
    pattern = PATTERNS[name]
    expected = gradients(inputs, lambda: run(inputs, pattern, "reference"))
    rest = {key: value for key, value in inputs.items() if key not in ("q", "k", "v")}
    call = make_call(inputs["q"], inputs["k"], inputs["v"], pattern, **rest)
    actual = gradients(inputs, lambda: xformers_attention(call, fake_fmha, block=4))
    for want, got in zip(expected, actual, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_global_tokens_without_gradients_need_no_partial_attention(fake_fmha) -> None:
    """Finding 1: partial attention has no operator for a tensor bias; global and aggregated keys join the window's
    call instead (the stand-in has no ``memory_efficient_attention_partial`` at all)."""
    del fake_fmha.memory_efficient_attention_partial, fake_fmha.merge_attentions
    for name in ("tglobal", "window-globals-own"):
        inputs = case_inputs(name)
        with torch.no_grad():
            expected = run(inputs, PATTERNS[name], "reference")
            call = make_call(inputs.pop("q"), inputs.pop("k"), inputs.pop("v"), PATTERNS[name], **inputs)
            torch.testing.assert_close(xformers_attention(call, fake_fmha, block=4), expected)


def test_trainable_bias_with_frozen_qkv_gets_its_gradient(fake_fmha) -> None:
    """Finding 3: with q, k and v frozen the bias's gradient still comes through xformers' autograd function."""
    inputs = case_inputs("local-bias")
    inputs["bias_weight"].requires_grad_(True)
    (expected,) = gradients(inputs, lambda: run(inputs, PATTERNS["local-bias"], "reference"))
    call = make_call(
        inputs["q"],
        inputs["k"],
        inputs["v"],
        PATTERNS["local-bias"],
        **{key: value for key, value in inputs.items() if key not in ("q", "k", "v")},
    )
    (actual,) = gradients(inputs, lambda: xformers_attention(call, fake_fmha, block=4))
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["window-only", "tglobal"])
def test_a_call_without_gradients_hands_xformers_nothing_that_requires_grad(fake_fmha, name: str) -> None:
    """Finding 4: under ``torch.no_grad()`` views of trainable inputs still say ``requires_grad``; xformers would
    compute the log-sum-exp and pick a backward operator for nothing."""
    seen = []
    dense = fake_fmha.memory_efficient_attention

    def recording(query, key, value, **kwargs):
        seen.append(any(t.requires_grad for t in (query, key, value)))
        return dense(query, key, value, **kwargs)

    fake_fmha.memory_efficient_attention = recording
    inputs = case_inputs(name, padding=0, requires_grad=True, dtype=torch.bfloat16)
    call = make_call(inputs.pop("q"), inputs.pop("k"), inputs.pop("v"), PATTERNS[name], **inputs)
    with torch.no_grad():
        xformers_attention(call, fake_fmha, block=4)
    assert seen and not any(seen)


def _refusal(fmha, **change) -> list[str]:
    q = torch.randn(2, 8, 2, 16)
    bias = torch.zeros(2, 2, 8, 8)
    inputs = {"query": q, "key": q, "value": q, "attn_bias": bias, **change}
    backward = inputs.pop("backward", False)
    return operator_reasons(fmha, fmha.Inputs(**inputs), backward=backward)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"is_partial": True}, "Partial attention not supported"),
        ({"query": torch.randn(2, 8, 2, 16), "attn_bias": "local"}, "dtype=torch.float32"),
        ({"attn_bias": torch.zeros(2, 1, 8, 8)}, "Invalid shape for attention bias"),
        ({"attn_bias": torch.zeros(1, 2, 8, 8, requires_grad=True), "backward": True}, "Invalid shape"),
        ({"attn_bias": torch.zeros(2, 2, 8, 9)[..., :8]}, "attn_bias.stride(-2) % 4 != 0"),
    ],
    ids=["partial-with-tensor-bias", "fp32-local-mask", "bias-shape", "broadcast-trainable-bias", "unaligned-bias"],
)
def test_stand_in_refuses_what_the_real_library_refuses(real_fmha, change: dict, reason: str) -> None:
    """Finding 5: the stand-in asks the real operators, so what they refuse fails a CPU test."""
    if change.get("attn_bias") == "local":
        change["attn_bias"] = real_fmha.attn_bias.LocalAttentionFromBottomRightMask(window_left=1, window_right=1)
    assert reason in " ".join(_refusal(real_fmha, **change))


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_dropout_is_the_operators_own_p(fake_fmha, name: str) -> None:
    """xformers drops out inside ``memory_efficient_attention`` (``p``), in every call of the plan."""
    seen = []
    dense = fake_fmha.memory_efficient_attention

    def recording(query, key, value, attn_bias=None, p=0.0, scale=None):
        seen.append(p)
        return dense(query, key, value, attn_bias=attn_bias, scale=scale)

    fake_fmha.memory_efficient_attention = recording
    inputs = case_inputs(name, num_globals=2)
    call = make_call(inputs.pop("q"), inputs.pop("k"), inputs.pop("v"), PATTERNS[name], dropout_p=0.25, **inputs)
    assert torch.isfinite(xformers_attention(call, fake_fmha, block=4)).all()
    assert seen and set(seen) == {0.25}


def test_explicit_keep_flags_are_refused_with_the_reason() -> None:
    call = _call("window-only")
    keep = torch.ones(call.batch, call.num_heads, call.length, call.length, dtype=torch.bool)
    call = make_call(call.q, call.k, call.v, call.pattern, dropout_p=0.1, dropout_mask=keep)
    assert any("cannot take dropout_mask" in reason for reason in capability_reasons(XformersEngine(), call))


@pytest.mark.parametrize("name", ["window-globals", "window-globals-own"])
def test_a_bound_on_global_tokens_without_a_global_mask_keeps_the_window(fake_fmha, name: str) -> None:
    """No ``global_mask``: the pattern is its window, whatever ``max_globals`` says (both plans, and the one the engine
    picks: a structural window in half precision)."""
    inputs = case_inputs(name, padding=0, num_globals=0, requires_grad=True, dtype=torch.bfloat16)
    inputs.pop("global_qkv", None)
    expected = run(inputs, PATTERNS[name], "reference")
    call = make_call(inputs.pop("q"), inputs.pop("k"), inputs.pop("v"), PATTERNS[name], max_globals=2, **inputs)
    assert strategy(call, fake_fmha)
    for structural in (False, True):
        actual = run_plan(fake_fmha, build_plan(call, structural=structural, block=4), call)
        torch.testing.assert_close(actual, expected, atol=2e-2, rtol=2e-2, msg=f"structural={structural}")
    torch.testing.assert_close(xformers_attention(call, fake_fmha, block=4), expected, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("name", ["window-only", "tglobal", "window-globals"])
def test_a_non_finite_value_reaches_only_the_rows_that_see_it(fake_fmha, name: str) -> None:
    """Through the dispatcher, whose probe (``attnreg.execution.non_finite``) finds the rows that see a bad key."""
    inputs = case_inputs(name, length=40, padding=3, num_globals=1)
    pattern = PATTERNS[name]
    clean = make_call(inputs.pop("q"), inputs.pop("k"), inputs.pop("v"), pattern, **inputs)
    is_global = torch.zeros(clean.length, dtype=torch.bool) if clean.global_mask is None else clean.global_mask[0]
    key = int((~is_global[15:]).nonzero()[0]) + 15  # a global key is seen by every row
    v = clean.v.clone()
    v[0, :, key] = float("nan")
    with torch.no_grad():
        expected, out = (dispatch_run(_AnyDevice(), replace(clean, v=values)) for values in (clean.v, v))
    layout = pattern.materialize(clean.length, clean.attention_mask, clean.global_mask)
    sees = torch.zeros(clean.batch, clean.length, dtype=torch.bool)
    sees[0] = layout.allowed[0, :, key]
    assert 0 < int(sees.sum()) < clean.length
    assert torch.equal(~torch.isfinite(out).all(dim=-1).all(dim=1), sees)
    torch.testing.assert_close(out.transpose(1, 2)[~sees], expected.transpose(1, 2)[~sees])


# --- support and dispatch -------------------------------------------------------------------------------------------


def test_engine_is_registered_and_says_why_it_cannot_run_on_cpu() -> None:
    call = _call("local-bias")
    engine = attnreg.get_registry().engine_table["xformers"]
    reasons = " ".join(refusals(engine, call))
    assert "device is cpu" in reasons
    if "xformers" not in sys.modules and not _importable("xformers"):
        assert "xformers is not installed" in reasons
    with pytest.raises(attnreg.BackendUnavailableError, match="device is cpu"):
        run(case_inputs("local-bias"), PATTERNS["local-bias"], "xformers")


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_with_a_working_xformers_cpu_is_the_only_reason(fake_fmha) -> None:
    assert refusals(XformersEngine(), _call("tglobal")) == ("device is cpu: it runs on cuda only",)


def _real_xformers_reason() -> str | None:
    if not torch.cuda.is_available():
        return "needs a CUDA device"
    return None if _importable("xformers") else f"needs {REAL}"


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

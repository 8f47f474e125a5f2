"""The conformance suite catches wrong engines, each with a report that says what is wrong and where.

Each planted engine is the dense reference with one deliberate bug, registered at run time as a plugin; a
pattern with every part (asymmetric window, selected globals with own projections, aggregated globals, both
biases) is registered the same way, so the suite is tested on what any third party could register.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

import attnreg
from attnreg.cli import main as cli_main
from attnreg.execution.reference import reference_attention
from attnreg.testing import check_pattern

pytestmark = pytest.mark.usefixtures("one_thread")


PROBE = "conformance-probe"


def probe_pattern(left: int = 2, right: int = 1, global_block_size: int = 4) -> attnreg.Pattern:
    """Every part at once, small: the window, both kinds of globals, both biases."""
    for name, value in (("left", left), ("right", right), ("global_block_size", global_block_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < (name == "global_block_size"):
            raise attnreg.PatternError(f"{name}={value!r} is not allowed: expected a non-negative int")
    bias = attnreg.RelativePositionBias(num_buckets=8, max_distance=16)
    return attnreg.Pattern(
        window=attnreg.Window(left, right),
        selected_globals=attnreg.SelectedGlobals(own_projections=True),
        aggregated_globals=attnreg.AggregatedGlobals(global_block_size),
        bias=bias,
        aggregated_bias=bias,
    )


class Planted(attnreg.Engine):
    """The reference with a hook to break it."""

    name = "planted"
    quadratic_memory = True

    def unsupported_reasons(self, call: attnreg.AttentionCall) -> list[str]:
        return []

    def estimated_cost(self, call: attnreg.AttentionCall) -> float:
        return 1e9  # never chosen by the dispatcher for anyone else's call

    def __call__(self, call: attnreg.AttentionCall) -> torch.Tensor:
        return reference_attention(call)


class OffByOneWindow(Planted):
    name = "planted-off-by-one"

    def __call__(self, call):
        window = attnreg.Window(call.pattern.window.left + 1, call.pattern.window.right)
        return reference_attention(dataclasses.replace(call, pattern=dataclasses.replace(call.pattern, window=window)))


class DroppedPaddingMask(Planted):
    name = "planted-no-padding"

    def __call__(self, call):
        out = reference_attention(dataclasses.replace(call, attention_mask=None, global_mask=call.global_mask))
        return out if call.attention_mask is None else out * call.attention_mask[:, None, :, None]


class NanInHalf(Planted):
    name = "planted-nan-half"

    def __call__(self, call):
        out = reference_attention(call)
        if call.dtype in (torch.float16, torch.bfloat16) and call.attention_mask is not None:
            out = out.masked_fill(~call.attention_mask.bool()[:, None, :, None], float("nan"))
        return out


class _HalveGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight):
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad):
        return grad * 0.5


class WrongBiasGradient(Planted):
    name = "planted-bias-grad"

    def __call__(self, call):
        return reference_attention(dataclasses.replace(call, bias_weight=_HalveGradient.apply(call.bias_weight)))


class BatchMixing(Planted):
    name = "planted-batch-mixing"

    def __call__(self, call):
        out = reference_attention(call)
        return out + 1e-3 * out.mean(dim=0, keepdim=True) if call.batch > 1 else out


class Nondeterministic(Planted):
    name = "planted-nondeterministic"

    def __call__(self, call):
        return reference_attention(call) * (1 + 1e-5 * torch.rand(()))


class ForwardOnly(Planted):
    name = "planted-forward-only"

    def unsupported_reasons(self, call):
        return ["no backward"] if call.requires_grad else []


class QuadraticFastEngine(Planted):
    name = "planted-quadratic"
    quadratic_memory = False


PLANTED = [
    Planted,
    OffByOneWindow,
    DroppedPaddingMask,
    NanInHalf,
    WrongBiasGradient,
    BatchMixing,
    Nondeterministic,
    ForwardOnly,
    QuadraticFastEngine,
]


class ProbePlugin:
    @staticmethod
    @attnreg.hookimpl
    def attnreg_add_patterns(registrar):
        registrar.add_pattern(PROBE, probe_pattern, description="every part at once (conformance tests)")

    @staticmethod
    @attnreg.hookimpl
    def attnreg_add_engines(registrar):
        for engine in PLANTED:
            registrar.add_engine(engine())


@pytest.fixture(scope="module", autouse=True)
def planted():
    name = attnreg.register_plugin(ProbePlugin, "conformance-test-plugin")
    yield
    attnreg.unregister_plugin(name)


def failures(engine: str, **options) -> dict[str, str]:
    report = check_pattern(PROBE, engines=[engine], quick=True, **options)
    return {o.check: o.detail for o in report.failures}


def test_an_honest_engine_passes_every_check():
    report = check_pattern(PROBE, engines=["planted"], quick=True)
    assert report.ok, report.format()
    assert {o.check for o in report.outcomes if o.status == "pass"} >= {
        "reference",
        "padding",
        "half-precision",
        "locality",
        "batch-independence",
        "determinism",
        "round-trip",
        "bad-parameters",
    }


@pytest.mark.parametrize(
    ("engine", "checks", "words"),
    [
        ("planted-off-by-one", {"reference", "locality"}, "may not see"),
        ("planted-no-padding", {"reference", "padding", "locality"}, "padded key"),
        ("planted-nan-half", {"half-precision"}, "non-finite"),
        ("planted-bias-grad", {"reference"}, "grad bias_weight"),
        ("planted-batch-mixing", {"batch-independence"}, "batched vs alone"),
        ("planted-nondeterministic", {"determinism"}, "two identical runs"),
    ],
)
def test_a_wrong_engine_fails_the_checks_that_concern_its_bug(engine, checks, words):
    found = failures(engine, checks=[*checks, "reference", "determinism"])
    assert checks <= set(found), found
    assert any(words in detail for detail in found.values()), found


def test_a_quadratic_engine_fails_the_memory_check():
    # Blocks of 64 keep the aggregated keys few, so the pattern's own pairs grow about linearly.
    found = failures("planted-quadratic", checks=["linear-memory"], params={"global_block_size": 64})
    assert "peak memory grew" in found["linear-memory"] and "quadratic" in found["linear-memory"]


def test_memory_check_skips_engines_quadratic_by_design():
    report = check_pattern(PROBE, engines=["reference", "planted"], checks=["linear-memory"])
    assert [o.status for o in report.outcomes] == ["skip", "skip"]
    assert "quadratic by design" in report.outcomes[0].detail


def test_a_failure_says_which_tensor_differs_where_and_by_how_much():
    detail = failures("planted-bias-grad", checks=["reference"])["reference"]
    assert "grad bias_weight: max |diff|" in detail
    assert "bucket" in detail and "head" in detail and "allowed" in detail
    assert "grad q" not in detail


def test_a_nan_is_located():
    detail = failures("planted-nan-half", checks=["half-precision"])["half-precision"]
    assert "bfloat16" in detail
    assert re.search(r"output has \d+ non-finite value\(s\), first nan at example \d, head \d, position \d+", detail)


def test_check_command_prints_the_table_and_fails(capsys):
    status = cli_main(
        [
            "check",
            PROBE,
            "--engines",
            "planted",
            "planted-off-by-one",
            "--quick",
            "--checks",
            "reference",
            "locality",
            "round-trip",
        ]
    )
    out = capsys.readouterr().out
    assert status == 1
    header, _, row = out.splitlines()[:3]
    assert header.split() == ["pattern", "spec", "planted", "planted-off-by-one"]
    assert row.startswith(PROBE) and "FAIL: reference, locality" in row
    assert f"FAIL {PROBE} / planted-off-by-one / reference" in out
    assert " failed" in out


def test_check_command_passes_on_a_correct_engine(capsys):
    assert cli_main(["check", PROBE, "--engines", "planted", "--quick", "--checks", "reference"]) == 0
    assert "ok (1)" in capsys.readouterr().out


def test_bad_parameter_check_catches_a_factory_that_accepts_anything():
    def careless(radius: int = 2) -> attnreg.Pattern:
        return attnreg.Pattern(window=attnreg.Window(abs(int(radius)), abs(int(radius))))

    class Careless:
        @staticmethod
        @attnreg.hookimpl
        def attnreg_add_patterns(registrar):
            registrar.add_pattern("careless", careless)

    name = attnreg.register_plugin(Careless, "careless-plugin")
    try:
        report = check_pattern("careless", engines=[], checks=["bad-parameters"])
    finally:
        attnreg.unregister_plugin(name)
    (failure,) = report.failures
    assert "radius=-1" in failure.detail and "was accepted" in failure.detail


def test_a_forward_only_engine_has_its_output_checked_and_says_gradients_were_not():
    report = check_pattern(PROBE, engines=["planted-forward-only"], quick=True, checks=["reference", "padding"])
    reference, padding = report.outcomes
    assert reference.status == "pass" and "refused" in reference.detail
    assert padding.status == "skip" and "no backward" in padding.detail


def test_check_command_refuses_unknown_names_before_running(capsys):
    assert cli_main(["check", PROBE, "no-such-pattern"]) == 2
    captured = capsys.readouterr()
    assert "unknown pattern 'no-such-pattern'" in captured.err and "checking" not in captured.err


def test_unknown_engine_is_a_clear_error():
    with pytest.raises(attnreg.PatternError, match=r"no-such-engine.*registered engines"):
        check_pattern(PROBE, engines=["no-such-engine"])

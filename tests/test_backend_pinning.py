"""``attnreg.backend()`` pins the engine of every call inside it; engines declare what they support; which engine ran
each call is visible in the log and in torch's profiler."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import torch
from pattern_cases import PATTERNS, case_inputs

import attnreg
from attnreg.execution import choose, make_call
from attnreg.execution.dispatch import capability_reasons
from attnreg.execution.reference import ReferenceEngine

PATTERN = PATTERNS["local-bias"]


def _inputs(length: int = 19) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    inputs = case_inputs("local-bias", length)
    return inputs.pop("q"), inputs.pop("k"), inputs.pop("v"), inputs


@pytest.fixture
def ran(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    """The engines that have run so far, call by call, read from the ``attnreg.dispatch`` DEBUG log."""
    caplog.set_level(logging.DEBUG, logger="attnreg")
    return lambda: [r.getMessage().split("'")[1] for r in caplog.records if r.name == "attnreg.dispatch"]


def test_a_pinned_engine_runs_every_call_inside_the_block_and_only_there(ran: Callable[[], list[str]]) -> None:
    q, k, v, inputs = _inputs()
    attnreg.attention(q, k, v, PATTERN, **inputs)
    with attnreg.backend("reference"):
        attnreg.attention(q, k, v, PATTERN, **inputs)
        with attnreg.backend("blocked"):
            attnreg.attention(q, k, v, PATTERN, **inputs)
        attnreg.attention(q, k, v, PATTERN, **inputs)
    attnreg.attention(q, k, v, PATTERN, **inputs)
    assert ran() == ["dense-sdpa", "reference", "blocked", "reference", "dense-sdpa"]


def test_several_names_let_the_dispatcher_choose_among_them_and_none_undoes_a_pin(ran: Callable[[], list[str]]) -> None:
    q, k, v, inputs = _inputs()
    with attnreg.backend(["reference", "blocked"]):
        attnreg.attention(q, k, v, PATTERN, **inputs)  # the reference is the last resort: blocked is chosen
        with attnreg.backend(None):
            attnreg.attention(q, k, v, PATTERN, **inputs)
    assert ran() == ["blocked", "dense-sdpa"]


def test_an_explicit_backend_argument_overrides_the_block(ran: Callable[[], list[str]]) -> None:
    q, k, v, inputs = _inputs()
    with attnreg.backend("blocked"):
        attnreg.attention(q, k, v, PATTERN, backend="reference", **inputs)
    assert ran() == ["reference"]


def test_the_pin_is_released_when_the_block_raises() -> None:
    with pytest.raises(ValueError), attnreg.backend("reference"):
        raise ValueError("inside")
    assert attnreg.pinning.pinned_backend() is None


def test_an_engine_that_cannot_run_a_pinned_call_says_why_and_nothing_falls_back() -> None:
    q, k, v, inputs = _inputs()
    refusal = r"backend='xformers' cannot run this call: .*device is cpu"
    with attnreg.backend("xformers"), pytest.raises(attnreg.BackendUnavailableError, match=refusal):
        attnreg.attention(q, k, v, PATTERN, **inputs)
    softcapped = make_call(q, k, v, attnreg.get_pattern("causal", softcap=5.0))  # which SDPA cannot do
    refusal = r"no engine among backend=\('xformers', 'dense-sdpa'\) can run this call \(xformers: .*device is cpu"
    with attnreg.backend(["xformers", "dense-sdpa"]), pytest.raises(attnreg.BackendUnavailableError, match=refusal):
        choose(softcapped, attnreg.get_registry().engines(), attnreg.pinning.pinned_backend())


@pytest.mark.parametrize(
    ("names", "match"),
    [
        ("bloked", r"unknown engine 'bloked'; did you mean 'blocked'"),
        ([], r"attnreg.backend\(\[\]\) is not allowed"),
        ([3], r"attnreg.backend\(\[3\]\) is not allowed: name one or more of blocked"),
    ],
)
def test_a_bad_name_is_refused_on_entering_the_block(names: object, match: str) -> None:
    with pytest.raises(attnreg.AttnregError, match=match), attnreg.backend(names):
        pass
    assert attnreg.pinning.pinned_backend() is None


def test_the_pin_reaches_a_compiled_function_and_changing_it_retraces() -> None:
    """torch.compile guards on the pin: a graph traced under one engine runs only under that pin, and is reused."""
    graphs: list[torch.fx.GraphModule] = []
    q, k, v, inputs = _inputs()

    def attend(q: torch.Tensor) -> torch.Tensor:
        return attnreg.attention(q, k, v, PATTERN, **inputs)

    compiled = torch.compile(attend, fullgraph=True, backend=lambda graph, example: graphs.append(graph) or graph)
    outs, counts = {}, []
    for name in ("blocked", "reference", "blocked", "reference"):
        with attnreg.backend(name):
            outs[name] = compiled(q)
        counts.append(len(graphs))
    assert counts == [1, 2, 2, 2] and graphs[0].code != graphs[1].code
    torch.testing.assert_close(outs["blocked"], outs["reference"], atol=1e-5, rtol=1e-5)
    with attnreg.backend("reference"):
        torch.testing.assert_close(outs["blocked"], attend(q), atol=1e-5, rtol=1e-5)


def test_the_profiler_labels_each_call_with_its_engine() -> None:
    q, k, v, inputs = _inputs()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        with attnreg.backend("blocked"):
            attnreg.attention(q, k, v, PATTERN, **inputs)
        attnreg.attention(q, k, v, PATTERN, backend="reference", **inputs)
    names = [event.name for event in profile.events() if event.name.startswith("attnreg:")]
    assert names == ["attnreg:blocked", "attnreg:reference"]


def test_the_log_line_names_the_engine_and_the_call(caplog: pytest.LogCaptureFixture) -> None:
    q, k, v, inputs = _inputs()
    q = q.detach().requires_grad_()
    with caplog.at_level(logging.DEBUG, logger="attnreg"):
        attnreg.attention(q, k, v, PATTERN, backend="blocked", **inputs)
    assert caplog.messages == [f"engine 'blocked' runs q {'x'.join(map(str, q.shape))} float32 on cpu, grad"]


class _Declared(ReferenceEngine):
    """The reference with narrower declared capabilities."""

    name = "declared"
    last_resort = False
    devices = frozenset({"cuda"})
    dtypes = frozenset({torch.float16})
    gradient_devices = frozenset()
    supports_dropout = False


def test_declared_capabilities_are_refused_with_the_reason() -> None:
    q, k, v, inputs = _inputs()
    q = q.detach().requires_grad_()
    call = make_call(q, k, v, PATTERN, dropout_p=0.1, **inputs)
    assert capability_reasons(_Declared(), call) == [
        "device is cpu: it runs on cuda only",
        "dtype torch.float32 is not supported (float16)",
        "an input requires grad and it computes gradients on no device only (not cpu); run under torch.no_grad() or "
        "on another engine",
        "no attention dropout (dropout_p=0.1); run with dropout_p=0 or on another engine",
    ]
    with torch.no_grad():
        reasons = capability_reasons(_Declared(), make_call(q, k, v, PATTERN, **inputs))
    assert not any("requires grad" in reason for reason in reasons)
    assert capability_reasons(ReferenceEngine(), call) == []


def test_the_dense_engines_declare_quadratic_memory_and_the_linear_ones_do_not() -> None:
    declared = {engine.name: engine.quadratic_memory for engine in attnreg.get_registry().engines()}
    assert declared["reference"] and declared["dense-sdpa"]
    assert not declared["blocked"] and not declared["xformers"]

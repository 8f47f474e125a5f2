"""A NaN or Inf in a key or value reaches only the queries that see that key, on every engine (as in the reference):
padded keys are seen by none, a key outside a query's window by the queries whose window holds it.

Whether any key is bad is read from the data: always on the CPU, where it is free; elsewhere (an accelerator, where it
would sync, and torch.compile) only inside ``attnreg.check_non_finite()``, and otherwise only padded keys are
cleaned."""

from __future__ import annotations

import pytest
import torch

import attnreg
from attnreg.execution import host

LENGTH = 150
PATTERNS = {
    "window": attnreg.Pattern(window=attnreg.Window(8, 3)),
    "window-globals": attnreg.Pattern(window=attnreg.Window(5, 5), selected_globals=attnreg.SelectedGlobals()),
    "sliding-window": attnreg.get_pattern("sliding-window", left=6, right=0),
}
ENGINES = ["reference", "blocked", "dense-sdpa", "flex"]
CASES = [(1, 140), (0, 75)]
CASE_IDS = ["padded-key", "real-key"]


def _inputs(name: str, device: str = "cpu") -> dict:
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, LENGTH, 16, generator=generator).to(device) for _ in range(3))
    real = torch.ones(2, LENGTH, dtype=torch.bool, device=device)
    real[1, 130:] = False
    inputs = {"q": q, "k": k, "v": v, "attention_mask": real}
    if PATTERNS[name].selected_globals is not None:
        inputs["global_mask"] = torch.zeros(2, LENGTH, dtype=torch.bool, device=device)
        inputs["global_mask"][0, 20] = inputs["global_mask"][1, 100] = True
    return inputs


def _run(name: str, engine: str, inputs: dict) -> torch.Tensor:
    rest = {key: value for key, value in inputs.items() if key not in ("q", "k", "v")}
    with torch.no_grad():
        return attnreg.attention(inputs["q"], inputs["k"], inputs["v"], PATTERNS[name], backend=engine, **rest)


def check_contained(
    name: str, engine: str, tensor: str, example: int, key: int, bad: float, device: str = "cpu"
) -> None:
    """Put ``bad`` in ``tensor`` at one key (every head) and compare with the clean run: the rows that see the key,
    and only those, are not finite; every other row is unchanged."""
    inputs = _inputs(name, device)
    clean = _run(name, engine, inputs).cpu()
    inputs[tensor] = inputs[tensor].clone()
    inputs[tensor][example, :, key] = bad
    out = _run(name, engine, inputs).cpu()
    layout = PATTERNS[name].materialize(
        LENGTH, inputs["attention_mask"].cpu(), None if "global_mask" not in inputs else inputs["global_mask"].cpu()
    )
    sees = torch.zeros(2, LENGTH, dtype=torch.bool)
    sees[example] = layout.allowed[example, :, key]
    broken = ~torch.isfinite(out).all(dim=-1).all(dim=1)
    assert torch.equal(broken, sees), f"hit: {broken.nonzero().tolist()}, seeing it: {sees.nonzero().tolist()}"
    if example == 1 and key >= 130:
        assert not sees.any()  # a padded key is seen by no one
    for row in (0, 1):
        keep = ~sees[row]
        torch.testing.assert_close(out[row][:, keep], clean[row][:, keep], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", sorted(PATTERNS))
@pytest.mark.parametrize("tensor", ["k", "v"])
@pytest.mark.parametrize(("example", "key"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_a_non_finite_key_or_value_reaches_only_the_rows_that_see_it(engine, name, tensor, example, key, bad):
    check_contained(name, engine, tensor, example, key, bad)


@pytest.fixture
def accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on an accelerator: reading tensor values would cost a device sync, so the fast paths do not."""
    monkeypatch.setattr(host, "host_readable", lambda x: False)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("tensor", ["k", "v"])
def test_without_reads_padded_keys_are_still_hidden(accelerator, engine, tensor):
    """With no read, padded keys are cleaned by a fill that needs none; a bad real key is then outside the promise
    unless check_non_finite() is on (the docstring of ``attnreg.execution.non_finite`` says so)."""
    check_contained("window", engine, tensor, *CASES[0], float("nan"))


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", sorted(PATTERNS))
@pytest.mark.parametrize("tensor", ["k", "v"])
def test_check_non_finite_contains_a_real_key_where_reads_cost_a_sync(accelerator, engine, name, tensor):
    with attnreg.check_non_finite():
        check_contained(name, engine, tensor, *CASES[1], float("nan"))


def test_only_check_non_finite_reads_the_data_where_that_costs_a_sync(accelerator, monkeypatch):
    inputs = _inputs("window")
    reads = []
    original = torch.Tensor.__bool__
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda self: reads.append(1) or original(self))
    _run("window", "blocked", inputs)
    assert not reads  # the fast path makes no host sync
    with attnreg.check_non_finite():
        _run("window", "blocked", inputs)
    assert len(reads) == 1  # one read per call while every key is finite


def test_the_probe_runs_only_when_a_key_is_bad(monkeypatch: pytest.MonkeyPatch) -> None:
    """The second run costs a whole call: it happens only when a key is bad."""
    engine = attnreg.get_registry().engine("blocked")
    calls = []
    original = type(engine).__call__
    monkeypatch.setattr(type(engine), "__call__", lambda self, call: calls.append(1) or original(self, call))
    inputs = _inputs("window")
    _run("window", "blocked", inputs)
    assert len(calls) == 1
    inputs["v"] = inputs["v"].clone()
    inputs["v"][0, :, 75] = float("nan")
    _run("window", "blocked", inputs)
    assert len(calls) == 3


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("engine", ["blocked", "dense-sdpa", "flex"])
@pytest.mark.parametrize("tensor", ["k", "v"])
@pytest.mark.parametrize(("example", "key"), CASES, ids=CASE_IDS)
def test_cuda_engines_contain_it_under_check_non_finite(engine, tensor, example, key):
    with attnreg.check_non_finite():
        check_contained("window-globals", engine, tensor, example, key, float("nan"), device="cuda")


def test_under_torch_compile_check_non_finite_reads_at_a_graph_break() -> None:
    """Compiled, the read is a graph break, and the block's promise still holds."""
    pattern = attnreg.Pattern(window=attnreg.Window(4, 4))
    compiled = torch.compile(lambda q, k, v: attnreg.attention(q, k, v, pattern, backend="blocked"))
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 64, 16, generator=generator) for _ in range(3))
    v[0, :, 40] = float("nan")
    torch._dynamo.reset()
    with attnreg.check_non_finite():
        out = compiled(q, k, v)
    torch._dynamo.reset()
    broken = out[0].isnan().any(dim=-1).any(dim=0)
    assert broken.nonzero().flatten().tolist() == list(range(36, 45))


@pytest.mark.parametrize("engine", ["reference", "blocked", "dense-sdpa"])
def test_a_far_key_that_alibi_weighs_to_nothing_is_still_seen(engine: str) -> None:
    """ALiBi gives key 0 a weight that underflows to 0 for the last queries of 1800 (slope 1/16 in head 0), yet they
    see it: their rows are NaN, as the dense definition's (a NaN score) are."""
    pattern = attnreg.get_pattern("sliding-window", left=1800, right=0, alibi=True)
    q, k, v = torch.randn(3, 1, 2, 1800, 8, generator=torch.Generator().manual_seed(0))
    k[0, :, 0] = float("nan")
    with torch.no_grad():
        out = attnreg.attention(q, k, v, pattern, backend=engine)
    assert out.isnan().any(dim=-1).all()


@pytest.mark.parametrize("engine", ["reference", "blocked"])
def test_gradients_stay_finite_and_the_other_rows_give_those_of_the_clean_keys(engine: str) -> None:
    """A NaN value in a real key, the NaN rows left out of the loss: every gradient is finite and equals the one of
    the same loss with that value zeroed (the bad key itself gets none)."""
    inputs = _inputs("window")
    leaves = {name: inputs[name].clone().requires_grad_() for name in ("q", "k", "v")}
    bad_v = leaves["v"].detach().clone()
    bad_v[0, :, 75] = float("nan")
    layout = PATTERNS["window"].materialize(LENGTH, inputs["attention_mask"])
    keep = ~layout.allowed[:, :, 75]  # (batch, queries): 0's rows that see key 75 are NaN
    keep[1] = True
    weight = keep[:, None, :, None].float()

    def gradients(v: torch.Tensor, zero_key: bool) -> list[torch.Tensor]:
        values = v.clone()
        if zero_key:
            values[0, :, 75] = 0.0
        values = leaves["v"] + (values - leaves["v"]).detach()  # the values asked for, gradients to leaves["v"]
        out = attnreg.attention(leaves["q"], leaves["k"], values, PATTERNS["window"], backend=engine,
                                attention_mask=inputs["attention_mask"])
        (out.nan_to_num(0.0) * weight).sum().backward()
        found = [leaves[name].grad.clone() for name in ("q", "k", "v")]
        for tensor in leaves.values():
            tensor.grad = None
        return found

    got = gradients(bad_v, zero_key=False)
    expected = gradients(leaves["v"].detach(), zero_key=True)
    expected[2][0, :, 75] = 0.0  # the bad key gets no gradient
    for name, want, have in zip("qkv", expected, got, strict=True):
        assert torch.isfinite(have).all(), name
        torch.testing.assert_close(have, want, atol=1e-5, rtol=1e-5, msg=name)

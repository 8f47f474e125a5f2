"""One attention-dropout policy everywhere: ``PatternAttention``, ``attnreg.swap``, the transformers bridge and the
generic builders drop attention probabilities in training mode, on the fast engine, with no warning; eval mode is
exactly dropout-free.

Each surface is a tiny model whose only randomness is its attention dropout (hidden dropouts are off), so what
differs between seeds is the attention dropout. Each test runs with the dispatcher's choice of engine and with the
blocked engine pinned by ``attnreg.backend``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import attnreg
import attnreg.functional
from attnreg import Pattern, PatternAttention, PatternError, Window
from attnreg.execution import dispatch
from attnreg.nn import MultiheadPatternAttention

pytestmark = pytest.mark.usefixtures("one_thread")

EMBED, HEADS, LENGTH, BATCH, VOCAB = 16, 4, 11, 2, 60
P = 0.3
PATTERN = Pattern(window=Window(2, 1))
BRIDGE_NAME = "attnreg:test-dropout-policy"


@dataclass
class Surface:
    """A model whose only randomness is its attention dropout, and its forward on fixed inputs."""

    model: nn.Module
    forward: Callable[[nn.Module], torch.Tensor]

    def run(self, *, training: bool, seed: int = 0) -> torch.Tensor:
        """The output in training or eval mode, with the default generator seeded by ``seed``."""
        self.model.train(training)
        torch.manual_seed(seed)
        with torch.no_grad():
            return self.forward(self.model)


def _hidden(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states ``(batch, length, embed)`` and PyTorch's padding mask (True = pad), the second example padded."""
    generator = torch.Generator().manual_seed(seed)
    padding = torch.zeros(BATCH, LENGTH, dtype=torch.bool)
    padding[1, -3:] = True
    return torch.randn(BATCH, LENGTH, EMBED, generator=generator), padding


def _tokens(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and Hugging Face's attention mask (1 = real token), the second example padded."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(BATCH, LENGTH, dtype=torch.long)
    mask[1, -3:] = 0
    return torch.randint(3, VOCAB, (BATCH, LENGTH), generator=generator), mask


def _only_attention_dropout(model: nn.Module) -> nn.Module:
    """``model`` with its ``nn.Dropout`` modules (hidden states) switched off; attention dropout is left alone."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


def pattern_attention(p: float, request: pytest.FixtureRequest) -> Surface:
    torch.manual_seed(0)
    layer = MultiheadPatternAttention(EMBED, HEADS, PATTERN, dropout=p)
    x, padding = _hidden()
    return Surface(layer, lambda m: m(x, x, x, key_padding_mask=padding, need_weights=False)[0])


def swapped_encoder(p: float, request: pytest.FixtureRequest) -> Surface:
    """An ``nn.TransformerEncoder`` built with ``dropout=p``: after the swap its attention keeps ``mha.dropout``."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(EMBED, HEADS, dim_feedforward=32, dropout=p, batch_first=True)
    model = _only_attention_dropout(nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False))
    attnreg.swap(model, PATTERN)
    x, padding = _hidden()
    return Surface(model, lambda m: m(x, src_key_padding_mask=padding))


def built(kind: str) -> Callable[[float, pytest.FixtureRequest], Surface]:
    """A generic ``kind`` model built with ``dropout=p`` (attention dropout included, as torch's layers do)."""

    def surface(p: float, request: pytest.FixtureRequest) -> Surface:
        torch.manual_seed(0)
        sizes = {"vocab_size": VOCAB, "d_model": EMBED, "n_layers": 1, "num_heads": HEADS, "d_ff": 32, "max_length": 16}
        model = _only_attention_dropout(attnreg.build(kind, pattern=PATTERN, dropout=p, **sizes))
        ids, mask = _tokens()
        decoder = {"decoder_input_ids": ids.flip(1)} if kind == "encoder-decoder" else {}
        return Surface(model, lambda m: m(ids, attention_mask=mask, **decoder).logits)

    return surface


def bridged(key: str) -> Callable[[float, pytest.FixtureRequest], Surface]:
    """A tiny random ``key`` model (test_transformers_bridge's) with ``attention_probs_dropout_prob=p``, bridged."""

    def surface(p: float, request: pytest.FixtureRequest) -> Surface:
        pytest.importorskip("transformers")
        from test_transformers_bridge import MODELS

        name = request.getfixturevalue("bridge_name")
        model_cls, config = MODELS[key]()
        config.hidden_dropout_prob = 0.0
        config.attention_probs_dropout_prob = p
        torch.manual_seed(0)
        model = model_cls(config)
        model.set_attn_implementation(name)
        ids, mask = _tokens()
        return Surface(model, lambda m: m(input_ids=ids, attention_mask=mask).last_hidden_state)

    return surface


SURFACES = {
    "pattern-attention": pattern_attention,
    "swap": swapped_encoder,
    "encoder": built("encoder"),
    "encoder-decoder": built("encoder-decoder"),
    "bridge-bert": bridged("bert"),
    "bridge-roberta": bridged("roberta"),
}


@pytest.fixture(scope="module")
def bridge_name():
    """``BRIDGE_NAME`` registered with transformers for this module's tests."""
    from attnreg.integrations import transformers_bridge

    yield transformers_bridge.register(BRIDGE_NAME, PATTERN)
    transformers_bridge.unregister(BRIDGE_NAME)


@pytest.fixture(params=[None, "blocked"], ids=["dispatcher", "blocked"])
def backend(request) -> Iterator[str | None]:
    """The engine the test runs on: the dispatcher's choice, or the blocked engine pinned by ``attnreg.backend``."""
    if request.param is None:
        yield None
        return
    with attnreg.backend(request.param):
        yield request.param


@pytest.fixture(params=list(SURFACES))
def make_surface(request, backend) -> Callable[[float], Surface]:
    """Build the surface under test with attention dropout ``p``, the same weights for every ``p``."""
    return lambda p: SURFACES[request.param](p, request)


def test_training_draws_fresh_dropout_per_seed_and_repeats_for_one(make_surface):
    surface = make_surface(P)
    first = surface.run(training=True, seed=0)
    assert torch.equal(surface.run(training=True, seed=0), first)
    assert not torch.allclose(surface.run(training=True, seed=1), first)
    assert not torch.allclose(surface.run(training=False), first)


def test_a_training_step_backpropagates_through_the_dropout(make_surface):
    surface = make_surface(P)
    torch.manual_seed(0)
    surface.forward(surface.model.train()).square().sum().backward()
    grads = [p.grad for p in surface.model.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(grad).all()) for grad in grads)


def test_training_warns_about_nothing(make_surface):
    surface = make_surface(P)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        surface.run(training=True)


def test_eval_mode_is_exactly_the_model_without_dropout(make_surface):
    assert torch.equal(make_surface(P).run(training=False), make_surface(0.0).run(training=False))


def test_mean_over_draws_is_the_eval_output(backend):
    """Inverted dropout is unbiased: kept weights are scaled by ``1 / (1 - p)``, so outputs average to eval's.

    Every copy of an example in a batch draws its own keep flags: one call with many copies is many draws. The mean
    is within five standard errors of the eval output; without the rescaling it would be some hundred away.
    """
    draws, p = 4000, 0.5
    torch.manual_seed(0)
    layer = MultiheadPatternAttention(EMBED, HEADS, PATTERN, dropout=p)
    x, _ = _hidden()
    x = x[:1]
    with torch.no_grad():
        expected = layer.eval()(x, x, x, need_weights=False)[0]
        copies = x.expand(draws, LENGTH, EMBED)
        dropped = layer.train()(copies, copies, copies, need_weights=False)[0]
    assert not torch.allclose(dropped[:1], expected, atol=0.05)
    error = (dropped.mean(dim=0, keepdim=True) - expected).abs()
    standard_error = dropped.std(dim=0, keepdim=True) / draws**0.5
    assert bool((error <= 5 * standard_error + 1e-6).all()), (error / standard_error).max()


@pytest.fixture
def chosen(monkeypatch) -> list[str]:
    """The names of the engines the dispatcher picks, call by call, for ``attnreg.attention``."""
    names: list[str] = []

    def record(call, engines, backend=None):
        engine = dispatch.choose(call, engines, backend)
        names.append(engine.name)
        return engine

    monkeypatch.setattr(attnreg.functional, "choose", record)
    return names


def test_training_stays_on_the_engine_eval_uses(chosen):
    """At a length where the dispatcher picks the blocked engine, dropout does not send the call to a dense one."""
    length = 1024
    torch.manual_seed(0)
    layer = MultiheadPatternAttention(EMBED, HEADS, PATTERN, dropout=P)
    x = torch.randn(1, length, EMBED)
    with torch.no_grad():
        layer.eval()(x, x, x, need_weights=False)
        layer.train()(x, x, x, need_weights=False)
    assert chosen == ["blocked", "blocked"], chosen


def _bridge_attention(bad: object) -> None:
    from attnreg.integrations import transformers_bridge

    q = torch.randn(1, HEADS, LENGTH, EMBED // HEADS)
    transformers_bridge.make_attention_function(PATTERN, BRIDGE_NAME)(nn.Module(), q, q, q, None, dropout=bad)


ENTRY_POINTS = {
    "PatternAttention": lambda bad: PatternAttention(EMBED, HEADS, PATTERN, dropout=bad),
    "swap": lambda bad: attnreg.swap(nn.Sequential(nn.MultiheadAttention(EMBED, HEADS)), PATTERN, dropout=bad),
    "build": lambda bad: attnreg.build("encoder", pattern=PATTERN, d_model=EMBED, num_heads=HEADS, dropout=bad),
    "bridge": _bridge_attention,
}


@pytest.mark.parametrize("bad", [1.0, -0.1, "0.1"], ids=["one", "negative", "string"])
@pytest.mark.parametrize("entry_point", list(ENTRY_POINTS))
def test_dropout_outside_zero_to_one_fails_naming_it(entry_point, bad):
    if entry_point == "bridge":
        pytest.importorskip("transformers")
    message = re.escape(f"dropout={bad!r} is not allowed: expected a probability 0 <= p < 1")
    with pytest.raises(PatternError, match=message):
        ENTRY_POINTS[entry_point](bad)

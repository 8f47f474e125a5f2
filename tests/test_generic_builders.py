"""``attnreg.build("encoder" | "encoder-decoder", pattern=NAME, ...)``: a trainable model for any registered pattern.

A pattern registered at run time (as a third party's would be) with every part gets a model that learns a tiny
task; every installed pattern builds and runs forward and backward; bad arguments fail naming them.
"""

from __future__ import annotations

import pytest
import torch

import attnreg
from attnreg.execution.reference import reference_attention
from attnreg.models.components import CAUSAL, CrossAttention
from attnreg.nn import PatternAttention

pytestmark = pytest.mark.usefixtures("one_thread")


VOCAB = 12
SIZES = {"vocab_size": VOCAB, "d_model": 32, "n_layers": 2, "num_heads": 4, "d_ff": 64, "max_length": 64}


def third_party_pattern(radius: int = 2) -> attnreg.Pattern:
    """A window, selected globals with own projections, aggregated globals and both biases."""
    if not isinstance(radius, int) or radius < 0:
        raise attnreg.PatternError(f"radius={radius!r} is not allowed: expected an int >= 0")
    bias = attnreg.RelativePositionBias(num_buckets=8, max_distance=16)
    return attnreg.Pattern(
        window=attnreg.Window.symmetric(radius),
        selected_globals=attnreg.SelectedGlobals(own_projections=True),
        aggregated_globals=attnreg.AggregatedGlobals(4),
        bias=bias,
        aggregated_bias=bias,
    )


class ThirdParty:
    @staticmethod
    @attnreg.hookimpl
    def attnreg_add_patterns(registrar):
        registrar.add_pattern("third-party-everything", third_party_pattern)


@pytest.fixture(scope="module", autouse=True)
def third_party():
    name = attnreg.register_plugin(ThirdParty, "generic-builders-test-plugin")
    yield
    attnreg.unregister_plugin(name)


def batch(length: int = 16, size: int = 8, seed: int = 0):
    """Random tokens, each example padded differently, the first token global."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (size, length), generator=generator)
    mask = torch.ones(size, length, dtype=torch.long)
    for b in range(size):
        mask[b, length - (b % 4) :] = 0
    globals_ = torch.zeros_like(mask)
    globals_[:, 0] = 1
    return ids, mask, globals_


def train(model: torch.nn.Module, step, steps: int = 40) -> list[float]:
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        loss = step(model)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_encoder_learns_to_copy_its_left_neighbour():
    torch.manual_seed(0)
    model = attnreg.build("encoder", pattern="third-party-everything", **SIZES)
    ids, mask, globals_ = batch()
    labels = torch.roll(ids, 1, dims=1).masked_fill(mask == 0, -100)
    labels[:, 0] = -100

    losses = train(model, lambda m: m(ids, attention_mask=mask, global_attention_mask=globals_, labels=labels).loss)
    assert losses[-1] < 0.5 * losses[0], losses


def test_encoder_decoder_learns_to_reverse():
    torch.manual_seed(0)
    model = attnreg.build("encoder-decoder", pattern="third-party-everything", pattern_params={"radius": 1}, **SIZES)
    ids, mask, globals_ = batch(length=8)
    mask[:] = 1
    labels = ids.flip(1)

    losses = train(model, lambda m: m(ids, attention_mask=mask, global_attention_mask=globals_, labels=labels).loss)
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("builder", ["encoder", "encoder-decoder"])
@pytest.mark.parametrize("name", attnreg.list_patterns())
def test_every_installed_pattern_builds_a_model_that_runs_forward_and_backward(builder, name):
    model = attnreg.build(builder, pattern=name, **{**SIZES, "n_layers": 1})
    ids, mask, globals_ = batch(length=12, size=2)
    pattern = model.pattern if builder == "encoder" else model.encoder.pattern
    kwargs = {"global_attention_mask": globals_} if pattern.selected_globals is not None else {}
    out = model(ids, attention_mask=mask, labels=ids, **kwargs)
    assert out.logits.shape == (2, 12, VOCAB)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_every_attention_module_runs_on_the_pinned_backend(monkeypatch):
    model = attnreg.build("encoder-decoder", pattern="third-party-everything", **SIZES)
    attentions = [m for m in model.modules() if isinstance(m, PatternAttention)]
    assert len(attentions) == 4 and {m.pattern for m in attentions} == {third_party_pattern(), CAUSAL}
    ran = []
    engine = type(attnreg.get_registry().engine("reference"))
    monkeypatch.setattr(engine, "__call__", lambda self, call: ran.append(call) or reference_attention(call))
    ids, mask, globals_ = batch(size=2)
    with attnreg.backend("reference"):
        model(ids, attention_mask=mask, global_attention_mask=globals_, labels=ids)
    assert len(ran) == 4


def test_dropout_reaches_every_attention_as_in_torchs_transformer_layers():
    """``dropout`` is also the attention dropout, as ``nn.TransformerEncoderLayer(dropout=...)`` makes it."""
    model = attnreg.build("encoder-decoder", pattern="third-party-everything", dropout=0.25, **SIZES)
    attentions = [m for m in model.modules() if isinstance(m, (PatternAttention, CrossAttention))]
    assert len(attentions) == 6 and {m.dropout for m in attentions} == {0.25}


def test_cross_attention_drops_attention_probabilities_in_training_only():
    torch.manual_seed(0)
    crossed = CrossAttention(32, 4, dropout=0.5)
    plain = CrossAttention(32, 4)
    plain.load_state_dict(crossed.state_dict())
    hidden, memory = torch.randn(2, 5, 32), torch.randn(2, 7, 32)

    def run(module: CrossAttention, seed: int = 0) -> torch.Tensor:
        torch.manual_seed(seed)
        return module(hidden, memory, None)

    crossed.train()
    assert torch.equal(run(crossed), run(crossed)) and not torch.allclose(run(crossed), run(crossed, seed=1))
    assert torch.equal(run(crossed.eval()), run(plain.eval()))


def test_a_padded_example_is_unaffected_by_its_padding_tokens():
    model = attnreg.build("encoder", pattern="third-party-everything", **SIZES).eval()
    ids, mask, globals_ = batch(size=2)
    changed = ids.masked_fill(mask == 0, 5)
    first = model(ids, attention_mask=mask, global_attention_mask=globals_).logits
    second = model(changed, attention_mask=mask, global_attention_mask=globals_).logits
    real = mask.bool()
    torch.testing.assert_close(first[real], second[real])


def test_save_and_load_pretrained(tmp_path):
    model = attnreg.build("encoder-decoder", pattern="third-party-everything", **SIZES).eval()
    model.save_pretrained(tmp_path)
    loaded = attnreg.build("encoder-decoder", pretrained=str(tmp_path)).eval()
    ids, mask, globals_ = batch(size=2)
    args = {"attention_mask": mask, "global_attention_mask": globals_, "labels": ids}
    torch.testing.assert_close(model(ids, **args).logits, loaded(ids, **args).logits)


def test_a_pattern_object_works_as_well_as_a_name():
    pattern = attnreg.Pattern(window=attnreg.Window.causal(3))
    model = attnreg.build("encoder", pattern=pattern, **SIZES)
    ids, mask, _ = batch(size=2)
    assert model(ids, attention_mask=mask).logits.shape == (2, 16, VOCAB)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"pattern": "third-party-everything", "d_modle": 32}, "unknown parameter.*'d_modle'.*allowed: pattern"),
        ({"pattern": "third-party-everything", "num_heads": 5}, "num_heads=5.*must divide d_model=32"),
        ({"pattern": "third-party-everything", "pattern_params": {"radius": -1}}, "radius=-1"),
        ({"pattern": "third-party-everything", "n_layers": 0}, "n_layers=0"),
        ({"vocab_size": 10}, "pattern"),
    ],
)
def test_bad_arguments_fail_naming_them(kwargs, words):
    with pytest.raises(attnreg.PatternError, match=words):
        attnreg.build("encoder", **{**SIZES, **kwargs})


def test_unknown_pattern_name_lists_the_known_ones():
    with pytest.raises(attnreg.UnknownNameError, match="third-party-everything"):
        attnreg.build("encoder", pattern="third-party-everythin", **SIZES)


def test_too_long_input_fails_naming_max_length():
    model = attnreg.build("encoder", pattern="third-party-everything", **{**SIZES, "max_length": 8})
    with pytest.raises(attnreg.PatternError, match="max_length=8"):
        model(torch.ones(1, 9, dtype=torch.long))

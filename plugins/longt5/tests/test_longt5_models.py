"""``attnreg.build("longt5-local" | "longt5-tglobal")`` against transformers on checkpoints transformers saved."""

from __future__ import annotations

import inspect

import attnreg_longt5
import pytest
import torch
from attnreg_longt5 import LongT5LocalAttention, LongT5TransientGlobalAttention
from attnreg_longt5.models import BASE_CONFIG, make_config, use_attnreg_attention
from longt5_helpers import KINDS, padded_batch, tiny_config
from transformers import LongT5Config, LongT5EncoderModel, LongT5ForConditionalGeneration
from transformers.models.longt5 import modeling_longt5

import attnreg
from attnreg.testing.dropout import inject_keep_flags

# shorter than a block (5) and than a global block (3); one block; neither a multiple of 5 nor of 3; mixed padding
BATCHES = [[2], [5], [23], [23, 17, 4, 1]]


# the dispatcher's choice, the blocked engine (linear in length), the dense reference
ENGINES = [None, "blocked", "reference"]
FAST_ENGINES = [None, "blocked"]


@pytest.fixture
def engine(request):
    """The engine the test runs on, pinned by ``attnreg.backend`` for its whole body (None: the dispatcher's)."""
    with attnreg.backend(request.param):
        yield request.param


def _pair(checkpoint, **kwargs):
    name, folder = checkpoint
    theirs = LongT5ForConditionalGeneration.from_pretrained(folder, **kwargs).eval()
    ours = attnreg.build(name, pretrained=str(folder), **kwargs).eval()
    return theirs, ours


def _forward(model, ids, mask):
    labels = torch.randint(2, 64, (ids.shape[0], 6), generator=torch.Generator().manual_seed(1))
    return model(input_ids=ids, attention_mask=mask, labels=labels)


def test_encoder_self_attention_is_attnregs_and_weights_are_the_checkpoints(checkpoint):
    theirs, ours = _pair(checkpoint)
    layer_class = LongT5LocalAttention if checkpoint[0] == "longt5-local" else LongT5TransientGlobalAttention
    attentions = [m for m in ours.encoder.modules() if isinstance(m, modeling_longt5.LongT5LocalAttention)]
    attentions += [m for m in ours.encoder.modules() if isinstance(m, modeling_longt5.LongT5TransientGlobalAttention)]
    assert len(attentions) == 2 and all(type(m) is layer_class for m in attentions)
    assert isinstance(ours, LongT5ForConditionalGeneration)
    theirs_state, ours_state = theirs.state_dict(), ours.state_dict()
    assert list(ours_state) == list(theirs_state)
    assert all(torch.equal(ours_state[key], theirs_state[key]) for key in theirs_state)


@pytest.mark.parametrize("engine", ENGINES, indirect=True)
@pytest.mark.parametrize("lengths", BATCHES, ids=str)
def test_logits_equal_transformers(checkpoint, lengths, engine):
    theirs, ours = _pair(checkpoint)
    ids, mask = padded_batch(lengths)
    with torch.no_grad():
        expected, got = _forward(theirs, ids, mask), _forward(ours, ids, mask)
    assert (got.logits - expected.logits).abs().max() <= 1e-4
    real = mask.bool()
    torch.testing.assert_close(
        got.encoder_last_hidden_state[real], expected.encoder_last_hidden_state[real], rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("engine", FAST_ENGINES, indirect=True)
def test_gradients_of_every_parameter_equal_transformers(checkpoint, engine):
    theirs, ours = _pair(checkpoint)
    ids, mask = padded_batch([23, 17, 4, 1])
    _forward(theirs, ids, mask).loss.backward()
    _forward(ours, ids, mask).loss.backward()
    ours_parameters = dict(ours.named_parameters())
    for name, parameter in theirs.named_parameters():
        expected, got = parameter.grad, ours_parameters[name].grad
        assert got is not None, name
        assert (got - expected).norm() <= 1e-4 * expected.norm() + 1e-7, name


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_gradient_checkpointing_keeps_the_shared_bias_gradients(checkpoint, use_reentrant):
    """Later layers reach layer 0's bias tables through ``position_bias``, also when their blocks are recomputed."""
    theirs, ours = _pair(checkpoint)
    ids, mask = padded_batch([23, 17, 4])
    for model in (theirs, ours):
        model.train()
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
        _forward(model, ids, mask).loss.backward()
    ours_parameters = dict(ours.named_parameters())
    for name, parameter in theirs.named_parameters():
        got = ours_parameters[name].grad
        assert got is not None, name
        assert (got - parameter.grad).norm() <= 1e-4 * parameter.grad.norm() + 1e-7, name


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generate_gives_the_same_tokens(checkpoint, num_beams):
    theirs, ours = _pair(checkpoint)
    ids, mask = padded_batch([23, 9])
    settings = {"max_new_tokens": 8, "num_beams": num_beams, "do_sample": False}
    expected = theirs.generate(input_ids=ids, attention_mask=mask, **settings)
    torch.testing.assert_close(ours.generate(input_ids=ids, attention_mask=mask, **settings), expected)


@pytest.mark.parametrize("engine", FAST_ENGINES, indirect=True)
def test_bf16_forward_and_backward_with_padding_give_no_nan(checkpoint, engine):
    _, ours = _pair(checkpoint, dtype=torch.bfloat16)
    ids, mask = padded_batch([23, 17, 4, 1])
    output = _forward(ours, ids, mask)
    output.loss.backward()
    assert output.logits.dtype == torch.bfloat16 and torch.isfinite(output.logits).all()
    assert all(torch.isfinite(p.grad).all() for p in ours.parameters() if p.grad is not None)


def test_eval_mode_ignores_the_dropout_rate(checkpoint):
    theirs, ours = _pair(checkpoint, dropout_rate=0.1)
    ids, mask = padded_batch([23, 17, 4])
    with torch.no_grad():
        assert (_forward(ours, ids, mask).logits - _forward(theirs, ids, mask).logits).abs().max() <= 1e-4


def test_training_drops_every_encoder_layers_attention_at_the_configs_rate(checkpoint, monkeypatch):
    _, ours = _pair(checkpoint, dropout_rate=0.1)
    flags = inject_keep_flags(monkeypatch, 0.1)  # fails a call that asks for another rate
    ids, mask = padded_batch([23, 17, 4])
    _forward(ours.train(), ids, mask).loss.backward()
    assert len(flags) == ours.config.num_layers


def test_training_with_dropout_runs_on_the_pinned_blocked_engine(checkpoint):
    _, ours = _pair(checkpoint, dropout_rate=0.1)
    ids, mask = padded_batch([23, 17, 4, 1])
    torch.manual_seed(0)
    with attnreg.backend("blocked"):
        output = _forward(ours.train(), ids, mask)
    output.loss.backward()
    assert torch.isfinite(output.loss)
    assert all(torch.isfinite(p.grad).all() for p in ours.parameters() if p.grad is not None)


def test_switching_a_model_in_place_keeps_each_layers_dropout_and_mode(checkpoint):
    _, folder = checkpoint
    model = LongT5ForConditionalGeneration.from_pretrained(folder, dropout_rate=0.1).train()
    kinds = (modeling_longt5.LongT5LocalAttention, modeling_longt5.LongT5TransientGlobalAttention)
    next(m for m in model.encoder.modules() if isinstance(m, kinds)).dropout = 0.3
    use_attnreg_attention(model)
    layers = [
        m for m in model.encoder.modules() if isinstance(m, (LongT5LocalAttention, LongT5TransientGlobalAttention))
    ]
    assert [layer.dropout for layer in layers] == [0.3, 0.1]
    assert all(layer.training for layer in layers)


def test_save_pretrained_reloads_in_plain_transformers(checkpoint, tmp_path):
    theirs, ours = _pair(checkpoint)
    ours.save_pretrained(tmp_path)
    reloaded = LongT5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    attention = next(reloaded.encoder.block[0].layer[0].children())  # LocalSelfAttention / TransientGlobal...
    assert type(attention).__module__ == modeling_longt5.__name__
    ids, mask = padded_batch([23, 4])
    with torch.no_grad():
        torch.testing.assert_close(_forward(reloaded, ids, mask).logits, _forward(theirs, ids, mask).logits)


def test_encoder_head_matches_transformers_encoder(checkpoint):
    name, folder = checkpoint
    theirs = LongT5EncoderModel.from_pretrained(folder).eval()
    ours = attnreg.build(name, pretrained=str(folder), head="encoder").eval()
    assert isinstance(ours, LongT5EncoderModel)
    ids, mask = padded_batch([23, 17])
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ours(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(KINDS))
def test_config_defaults_to_the_base_size_with_the_names_attention(name):
    config = make_config(name)
    assert config.encoder_attention_type == KINDS[name]
    assert (config.d_model, config.num_layers, config.num_heads, config.d_kv, config.d_ff) == (768, 12, 12, 64, 2048)
    assert config.feed_forward_proj == BASE_CONFIG["feed_forward_proj"] == "gated-gelu"


@pytest.mark.parametrize("name", list(KINDS))
def test_build_from_a_config_or_a_dict_with_overrides(name):
    from_config = attnreg.build(name, tiny_config(name), num_layers=1)
    from_dict = attnreg.build(
        name, {"d_model": 16, "d_kv": 4, "num_heads": 2, "d_ff": 8, "vocab_size": 10}, num_layers=1
    )
    assert from_config.config.num_layers == 1 and from_dict.config.num_decoder_layers == 1
    assert from_dict.config.d_model == 16 and from_dict.config.encoder_attention_type == KINDS[name]


@pytest.mark.parametrize("name", list(KINDS))
def test_each_builder_is_a_plain_function_with_its_real_signature(name):
    builder = attnreg.get_registry().builder(name).builder
    assert builder is getattr(attnreg_longt5, f"build_{name.replace('-', '_')}")
    assert builder.__qualname__ == builder.__name__ and not hasattr(builder, "__wrapped__")
    parameters = inspect.signature(builder).parameters.values()
    assert [(p.name, p.kind, p.default) for p in parameters] == [
        ("config", inspect.Parameter.POSITIONAL_OR_KEYWORD, None),
        ("pretrained", inspect.Parameter.KEYWORD_ONLY, None),
        ("head", inspect.Parameter.KEYWORD_ONLY, "conditional-generation"),
        ("overrides", inspect.Parameter.VAR_KEYWORD, inspect.Parameter.empty),
    ]


@pytest.mark.parametrize("name", list(KINDS))
def test_each_builder_called_directly_sets_its_attention_and_head(name):
    builder = getattr(attnreg_longt5, f"build_{name.replace('-', '_')}")
    model = builder(tiny_config(name), head="encoder", num_layers=1)
    assert isinstance(model, LongT5EncoderModel) and model.config.encoder_attention_type == KINDS[name]


def test_a_config_for_the_other_attention_is_an_error():
    with pytest.raises(attnreg.PatternError, match="longt5-local"):
        attnreg.build("longt5-tglobal", tiny_config("longt5-local"))
    with pytest.raises(attnreg.PatternError, match="encoder_attention_type"):
        attnreg.build("longt5-local", {"encoder_attention_type": "transient-global"})


def test_a_checkpoint_for_the_other_attention_is_an_error(checkpoint):
    name, folder = checkpoint
    other = next(n for n in KINDS if n != name)
    with pytest.raises(attnreg.PatternError, match=f"attnreg.build\\('{name}'"):
        attnreg.build(other, pretrained=str(folder))


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"num_layer": 2}, "num_layer"),
        ({"head": "classification"}, "head"),
        ({"config": LongT5Config()}, "config"),  # a t5-style default: encoder_attention_type "local"
        ({"config": 3}, "config"),
        ({"config": {"d_modle": 8}}, "d_modle"),
        ({"local_radius": -2}, "local_radius"),
    ],
)
def test_bad_build_arguments_are_errors_that_name_them(kwargs, named):
    with pytest.raises(attnreg.PatternError, match=named):
        attnreg.build("longt5-tglobal", **kwargs)


def test_pretrained_takes_config_overrides_or_a_whole_config(checkpoint):
    name, folder = checkpoint
    assert attnreg.build(name, pretrained=str(folder), dropout_rate=0.3).config.dropout_rate == 0.3
    given = tiny_config(name, dropout_rate=0.2)
    assert attnreg.build(name, given, pretrained=folder, head="encoder").config.dropout_rate == 0.2


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_the_encoder_prepares_its_masks_once_per_forward(checkpoint, training, monkeypatch):
    """Every layer attends under the same padding: the pattern is prepared by the first layer and reused by the
    others (attnreg.nn.SharedBatch), so the engines build their key masks once per forward."""
    _, ours = _pair(checkpoint)
    ours.train(training)
    prepared = []
    original = attnreg.Pattern.prepare
    monkeypatch.setattr(
        attnreg.Pattern, "prepare", lambda self, *a, **k: prepared.append(self) or original(self, *a, **k)
    )
    ids, mask = padded_batch([17, 11])
    for _forward_pass in range(2):
        with attnreg.backend("blocked"):
            _forward(ours, ids, mask.clone())
    assert len(prepared) == 2  # one per forward, not one per layer

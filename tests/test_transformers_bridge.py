"""The transformers bridge: ``attn_implementation="attnreg:NAME"`` runs the pattern, equal to the dense reference.

The expectation is the same model with eager attention and an explicit 4-D mask equal to the pattern's
materialised allowed matrix; padded positions are left out (attnreg gives zeros there, eager a value). BERT and
RoBERTa keep transformers' default attention dropout (0.1): the models are compared in eval mode, where it is off.
Training with it is tests/test_dropout_policy.py's subject.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from attnreg import AggregatedGlobals, Pattern, PatternError, RelativePositionBias, SelectedGlobals, Window  # noqa: E402
from attnreg.integrations import transformers_bridge as bridge  # noqa: E402

LENGTH = 13
ATTENTION_DROPOUT = 0.1


def _bert_config(cls):
    return cls(
        vocab_size=60,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=32,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=ATTENTION_DROPOUT,
    )


def _llama_config(kv_heads: int = 2):
    return transformers.LlamaConfig(
        vocab_size=60,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=64,
        use_cache=False,
    )


MODELS = {
    "bert": lambda: (transformers.BertModel, _bert_config(transformers.BertConfig)),
    "roberta": lambda: (transformers.RobertaModel, _bert_config(transformers.RobertaConfig)),
    "llama": lambda: (transformers.LlamaModel, _llama_config()),
    "llama-mha": lambda: (transformers.LlamaModel, _llama_config(kv_heads=4)),
}


@pytest.fixture
def registered():
    names = []

    def add(pattern: Pattern, name: str | None = None) -> str:
        names.append(bridge.register(name or f"attnreg:test-{len(names)}", pattern))
        return names[-1]

    yield add
    for name in names:
        bridge.unregister(name)


def _saved(tmp_path, key: str) -> tuple[type, str]:
    model_cls, config = MODELS[key]()
    torch.manual_seed(0)
    model_cls(config).save_pretrained(tmp_path)
    return model_cls, str(tmp_path)


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    input_ids = torch.randint(3, 60, (2, LENGTH))
    attention_mask = torch.ones(2, LENGTH, dtype=torch.long)
    attention_mask[1, -4:] = 0
    return input_ids, attention_mask


def _dense_expected(
    model_cls, path: str, pattern: Pattern, input_ids, attention_mask, global_mask=None
) -> torch.Tensor:
    """The eager model's output under the pattern's dense allowed matrix, as an additive mask."""
    eager = model_cls.from_pretrained(path, attn_implementation="eager").eval()
    allowed = pattern.materialize(LENGTH, attention_mask.bool(), global_mask).allowed[:, None]
    mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    with torch.no_grad():
        return eager(input_ids=input_ids, attention_mask=mask).last_hidden_state


@pytest.mark.parametrize(
    ("key", "pattern"),
    [
        ("bert", Pattern(window=Window(2, 1))),
        ("roberta", Pattern(window=Window(1, 3))),
        ("llama", Pattern(window=Window.causal(3))),
        ("llama-mha", Pattern(window=Window.causal(None))),
    ],
)
def test_model_runs_the_pattern_like_the_dense_reference(tmp_path, registered, key, pattern):
    model_cls, path = _saved(tmp_path, key)
    name = registered(pattern)
    model = model_cls.from_pretrained(path, attn_implementation=name).eval()
    assert model.config._attn_implementation == name
    input_ids, attention_mask = _inputs()
    with torch.no_grad():
        got = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        unmasked = model_cls.from_pretrained(path, attn_implementation="eager").eval()(
            input_ids=input_ids, attention_mask=attention_mask
        )
    expected = _dense_expected(model_cls, path, pattern, input_ids, attention_mask)
    real = attention_mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-5)
    if pattern.window.left is not None:  # a narrow window does change the model
        assert not torch.allclose(got[real], unmasked.last_hidden_state[real], atol=1e-3)


def test_full_pattern_without_padding_equals_sdpa(tmp_path, registered):
    model_cls, path = _saved(tmp_path, "llama")
    name = registered(Pattern(window=Window.causal(None)))
    input_ids, _ = _inputs()
    with torch.no_grad():
        got = model_cls.from_pretrained(path, attn_implementation=name).eval()(input_ids=input_ids)
        expected = model_cls.from_pretrained(path, attn_implementation="sdpa").eval()(input_ids=input_ids)
    torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, atol=1e-5, rtol=1e-5)


def test_gradients_flow(tmp_path, registered):
    model_cls, path = _saved(tmp_path, "bert")
    model = model_cls.from_pretrained(path, attn_implementation=registered(Pattern(window=Window(1, 1))))
    input_ids, attention_mask = _inputs()
    model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.sum().backward()
    grad = model.encoder.layer[0].attention.self.query.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        (Pattern(window=Window(2, 2)), "model is causal"),
        (Pattern(window=None), "model is causal"),
        (Pattern(window=Window.causal(2), selected_globals=SelectedGlobals()), "selected global tokens"),
    ],
    ids=["bidirectional-window", "full", "globals"],
)
def test_decoder_refuses_patterns_that_see_the_future(tmp_path, registered, pattern, message):
    model_cls, path = _saved(tmp_path, "llama")
    model = model_cls.from_pretrained(path, attn_implementation=registered(pattern)).eval()
    with pytest.raises(PatternError, match=message):
        model(input_ids=_inputs()[0])


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        (Pattern(window=Window(2, 2), aggregated_globals=AggregatedGlobals(4)), "aggregated"),
        (Pattern(window=Window(2, 2), bias=RelativePositionBias(8, 16)), "bias tables"),
        (Pattern(window=Window(2, 2), scale=1.0), "scale"),
    ],
    ids=["aggregated", "bias", "scale"],
)
def test_encoder_refuses_patterns_needing_what_it_lacks(tmp_path, registered, pattern, message):
    model_cls, path = _saved(tmp_path, "bert")
    model = model_cls.from_pretrained(path, attn_implementation=registered(pattern)).eval()
    with pytest.raises(PatternError, match=message):
        model(*_inputs())


def test_prepared_4d_mask_is_refused_not_dropped(tmp_path, registered):
    model_cls, path = _saved(tmp_path, "bert")
    model = model_cls.from_pretrained(path, attn_implementation=registered(Pattern(window=Window(2, 2)))).eval()
    input_ids, _ = _inputs()
    with pytest.raises(PatternError, match="4-D attention mask"):
        model(input_ids=input_ids, attention_mask=torch.zeros(2, 1, LENGTH, LENGTH))


def test_decoding_with_a_cache_is_refused(tmp_path, registered):
    model_cls, path = _saved(tmp_path, "llama")
    model = model_cls.from_pretrained(path, attn_implementation=registered(Pattern(window=Window.causal(2)))).eval()
    input_ids, _ = _inputs()
    with torch.no_grad():
        past = model(input_ids=input_ids, use_cache=True).cache
        with pytest.raises(PatternError, match="cache"):
            model(input_ids=input_ids[:, :1], cache=past, use_cache=True)


def test_register_all_registers_every_default_pattern():
    from attnreg import list_patterns

    names = bridge.register_all()
    try:
        assert names[0] == "attnreg"  # each layer's own attention, read from the model (test_decoder_llms)
        assert set(names[1:]) <= {bridge.PREFIX + name for name in list_patterns()}
        assert all(name in transformers.AttentionInterface() for name in names)
    finally:
        for name in names:
            bridge.unregister(name)


def test_register_rejects_hub_kernel_like_names():
    with pytest.raises(PatternError, match="hub kernel"):
        bridge.register("org/kernel", Pattern())


def test_global_tokens_pass_through_the_model_kwargs(tmp_path, registered):
    model_cls, path = _saved(tmp_path, "bert")
    pattern = Pattern(window=Window(1, 1), selected_globals=SelectedGlobals())
    model = model_cls.from_pretrained(path, attn_implementation=registered(pattern)).eval()
    input_ids, attention_mask = _inputs()
    global_mask = torch.zeros(2, LENGTH, dtype=torch.bool)
    global_mask[0, 0] = global_mask[1, 5] = True
    expected = _dense_expected(model_cls, path, pattern, input_ids, attention_mask, global_mask)
    with torch.no_grad():
        got = model(input_ids=input_ids, attention_mask=attention_mask, global_mask=global_mask).last_hidden_state
    real = attention_mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-5)


def test_output_attentions_gives_the_pattern_weights(tmp_path, registered):
    model_cls, path = _saved(tmp_path, "bert")
    pattern = Pattern(window=Window(2, 0))
    model = model_cls.from_pretrained(path, attn_implementation=registered(pattern)).eval()
    input_ids, attention_mask = _inputs()
    with torch.no_grad():
        weights = model(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True).attentions
    allowed = pattern.materialize(LENGTH, attention_mask.bool()).allowed[:, None]
    assert len(weights) == 2 and weights[0].shape == (2, 4, LENGTH, LENGTH)
    assert bool((weights[0][~allowed.expand_as(weights[0])] == 0).all())
    real_rows = attention_mask.bool()[:, None, :, None].expand_as(weights[0])
    torch.testing.assert_close(weights[0].sum(-1)[real_rows[..., 0]], torch.ones(int(real_rows[..., 0].sum())))


def test_output_attentions_in_training_gives_the_dropped_weights(tmp_path, registered):
    """As eager attention returns them: the eval weights, some zeroed, the kept ones scaled by ``1 / (1 - p)``."""
    model_cls, path = _saved(tmp_path, "bert")
    pattern = Pattern(window=Window(2, 0))
    model = model_cls.from_pretrained(path, attn_implementation=registered(pattern))
    input_ids, attention_mask = _inputs()
    with torch.no_grad():
        full = model.eval()(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True).attentions[0]
        torch.manual_seed(0)
        dropped = model.train()(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True)
    dropped = dropped.attentions[0]  # the first layer's inputs are the same in both modes (no hidden dropout)
    allowed = pattern.materialize(LENGTH, attention_mask.bool()).allowed[:, None].expand_as(dropped)
    assert bool((dropped[allowed] == 0).any())
    torch.testing.assert_close(dropped, torch.where(dropped == 0, 0.0, full / (1 - ATTENTION_DROPOUT)))


def test_bridged_model_compiles_without_graph_break(tmp_path, registered):
    model_cls, path = _saved(tmp_path, "bert")
    model = model_cls.from_pretrained(path, attn_implementation=registered(Pattern(window=Window(1, 1)))).eval()
    input_ids, attention_mask = _inputs()
    torch._dynamo.reset()
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        got = compiled(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    torch._dynamo.reset()
    torch.testing.assert_close(got, expected)


def test_global_tokens_needing_own_projections_are_refused(tmp_path, registered):
    """Without a global_mask such a pattern is its window; global rows would need projections BERT lacks."""
    model_cls, path = _saved(tmp_path, "bert")
    pattern = Pattern(window=Window(1, 1), selected_globals=SelectedGlobals(own_projections=True))
    model = model_cls.from_pretrained(path, attn_implementation=registered(pattern)).eval()
    input_ids, attention_mask = _inputs()
    with torch.no_grad():
        got = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    expected = _dense_expected(model_cls, path, pattern, input_ids, attention_mask)
    real = attention_mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-5)
    global_mask = torch.zeros(2, LENGTH, dtype=torch.bool)
    global_mask[:, 0] = True
    with pytest.raises(PatternError, match="own global query/key/value projections"):
        model(input_ids=input_ids, attention_mask=attention_mask, global_mask=global_mask)


def test_cross_attention_of_equal_length_is_refused(registered, tmp_path):
    """BART's decoder cross-attention with source and target of one length is still cross-attention."""
    config = transformers.BartConfig(
        vocab_size=60,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=64,
        use_cache=False,
    )
    torch.manual_seed(0)
    transformers.BartModel(config).save_pretrained(tmp_path)
    name = registered(Pattern(window=Window.causal(3)))
    model = transformers.BartModel.from_pretrained(tmp_path, attn_implementation=name)
    ids = torch.randint(3, 60, (1, 8))
    with pytest.raises(PatternError, match="cross-attention"):
        model(input_ids=ids, decoder_input_ids=ids)

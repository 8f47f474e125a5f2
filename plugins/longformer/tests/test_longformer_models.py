"""``attnreg.build("longformer")`` against transformers on checkpoints transformers saved: outputs, gradients, heads."""

from __future__ import annotations

import pytest
import torch
import transformers
from attnreg_longformer import LongformerSelfAttention, use_attnreg_attention
from longformer_helpers import TINY_CONFIG, make_batch
from transformers.models.longformer import modeling_longformer

import attnreg
from attnreg.testing.dropout import inject_keep_flags

# lengths are never a multiple of the windows (4 and 8: transformers pads to a multiple of 8)
CASES = {
    "no-global": ([21, 21], [[], []]),
    "one-global": ([21, 21], [[0], [0]]),
    "several-globals": ([21, 21], [[0, 5, 11], [0, 5, 11]]),
    "different-per-example": ([21, 21, 21], [[0], [3, 4], []]),
    "first-and-last": ([21, 17], [[0, 20], [0, 16]]),
    "inside-a-window": ([21, 21], [[9, 10], [2, 12]]),
    "different-lengths": ([21, 13, 6], [[0], [12], [2, 5]]),
    "short": ([3, 1], [[1], [0]]),
    "an-empty-example": ([21, 0, 6], [[0], [], [5]]),
}


def pair(checkpoint, class_name: str = "LongformerModel", **config) -> tuple[torch.nn.Module, torch.nn.Module]:
    path = checkpoint(class_name, **config)
    theirs = getattr(transformers, class_name).from_pretrained(path).eval()
    ours = attnreg.build("longformer", pretrained=str(path)).eval()
    return ours, theirs


def test_every_attention_layer_is_attnregs(checkpoint) -> None:
    ours, theirs = pair(checkpoint)
    assert type(ours) is type(theirs)
    layers = [m for m in ours.modules() if isinstance(m, modeling_longformer.LongformerSelfAttention)]
    assert layers == []
    assert sum(isinstance(m, LongformerSelfAttention) for m in ours.modules()) == TINY_CONFIG["num_hidden_layers"]
    assert [layer.attention.self.one_sided_attn_window_size for layer in ours.encoder.layer] == [2, 4]
    assert list(ours.state_dict()) == list(theirs.state_dict())


@pytest.mark.parametrize("case", CASES)
def test_outputs_equal_transformers(checkpoint, case: str) -> None:
    ours, theirs = pair(checkpoint)
    batch = make_batch(*CASES[case])
    with torch.no_grad():
        got = ours(**batch, output_attentions=True, output_hidden_states=True)
        expected = theirs(**batch, output_attentions=True, output_hidden_states=True)
    keep = batch["attention_mask"].bool()
    assert (got.last_hidden_state - expected.last_hidden_state)[keep].abs().max() <= 1e-4
    for ours_state, their_state in zip(got.hidden_states, expected.hidden_states, strict=True):
        assert (ours_state - their_state)[keep].abs().max() <= 1e-4
    for ours_probs, their_probs in zip(got.attentions, expected.attentions, strict=True):
        torch.testing.assert_close(ours_probs, their_probs, atol=1e-5, rtol=1e-4)
    assert (got.global_attentions is None) == (expected.global_attentions is None)
    for ours_probs, their_probs in zip(got.global_attentions or (), expected.global_attentions or (), strict=True):
        torch.testing.assert_close(ours_probs, their_probs, atol=1e-5, rtol=1e-4)


def test_gradients_equal_transformers(checkpoint) -> None:
    ours, theirs = pair(checkpoint, "LongformerForMaskedLM")
    batch = make_batch([21, 13, 6], [[0, 20], [3, 4], []])
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    for model in (ours, theirs):
        model(**batch, labels=labels).loss.backward()
    expected = dict(theirs.named_parameters())
    for name, parameter in ours.named_parameters():
        torch.testing.assert_close(parameter.grad, expected[name].grad, atol=1e-5, rtol=1e-4, msg=name)


HEAD_OUTPUTS = {
    "LongformerForMaskedLM": ("masked-lm", ["logits"]),
    "LongformerForSequenceClassification": ("sequence-classification", ["logits"]),
    "LongformerForQuestionAnswering": ("question-answering", ["start_logits", "end_logits"]),
    "LongformerForTokenClassification": ("token-classification", ["logits"]),
    "LongformerForMultipleChoice": ("multiple-choice", ["logits"]),
}


@pytest.mark.parametrize("class_name", HEAD_OUTPUTS)
def test_heads_from_the_checkpoint_and_by_name(checkpoint, class_name: str) -> None:
    short, fields = HEAD_OUTPUTS[class_name]
    ours, theirs = pair(checkpoint, class_name)
    by_short_name = attnreg.build("longformer", pretrained=str(checkpoint(class_name)), head=short)
    assert type(ours) is type(theirs) is type(by_short_name)
    batch = make_batch([13, 9], [[0], [2, 3]])
    if class_name == "LongformerForMultipleChoice":
        batch = {key: value[None].repeat(2, 1, 1) for key, value in batch.items()}
    with torch.no_grad():
        got, expected = ours(**batch), theirs(**batch)
    for field in fields:
        difference = getattr(got, field) - getattr(expected, field)
        if difference.dim() == 3:
            difference = difference[batch["attention_mask"].bool()]
        assert difference.abs().max() <= 1e-4, field


def test_save_pretrained_reloads_in_plain_transformers(checkpoint, tmp_path) -> None:
    ours, theirs = pair(checkpoint, "LongformerForMaskedLM")
    ours.save_pretrained(tmp_path)
    reloaded = transformers.LongformerForMaskedLM.from_pretrained(tmp_path).eval()
    batch = make_batch([21, 10], [[0], [4]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, theirs(**batch).logits)
    for name, tensor in reloaded.state_dict().items():
        torch.testing.assert_close(tensor, ours.state_dict()[name], msg=name)


def test_config_dict_and_overrides() -> None:
    model = attnreg.build(
        "longformer", {**TINY_CONFIG, "attention_window": 4}, head="LongformerForMaskedLM", num_labels=5
    )
    assert isinstance(model, transformers.LongformerForMaskedLM)
    assert model.config.num_labels == 5
    assert model.config.attention_window == [4, 4]


def test_default_config_is_the_base_size() -> None:
    model = attnreg.build("longformer", num_hidden_layers=1, vocab_size=8)
    assert isinstance(model, transformers.LongformerModel)
    config = model.config
    assert (config.hidden_size, config.num_attention_heads, config.max_position_embeddings) == (768, 12, 4098)
    assert model.encoder.layer[0].attention.self.one_sided_attn_window_size == 256


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"head": "summarization"}, "head='summarization'.*masked-lm.*LongformerForMaskedLM"),
        ({"head": "LongformerForCausalLM"}, "head='LongformerForCausalLM'"),
        ({"no_such_field": 1}, "no_such_field"),
        ({"config": {"hidden_sise": 32}}, "hidden_sise"),
        ({"config": 3}, "config='int'"),
        ({"config": {**TINY_CONFIG, "attention_window": [4, 5]}}, r"config.attention_window\[1\]=5"),
        ({"config": {**TINY_CONFIG, "attention_window": [4, 8, 8]}}, r"config.attention_window=\[4, 8, 8\]"),
    ],
)
def test_bad_arguments_are_errors_naming_them(kwargs: dict, named: str) -> None:
    config = kwargs.pop("config", TINY_CONFIG)
    with pytest.raises(attnreg.PatternError, match=named):
        attnreg.build("longformer", config, **kwargs)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_forward_and_backward_have_no_nan(checkpoint, dtype: torch.dtype) -> None:
    ours, reference = pair(checkpoint, "LongformerForMaskedLM")
    ours.to(dtype)
    batch = make_batch([21, 13, 6], [[0, 20], [3, 4], [5]])
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    output = ours(**batch, labels=labels, output_hidden_states=True)
    output.loss.backward()
    assert torch.isfinite(output.logits).all() and torch.isfinite(output.loss)
    for name, parameter in ours.named_parameters():
        assert parameter.grad is None or torch.isfinite(parameter.grad).all(), name
    with torch.no_grad():
        expected = reference(**batch).logits
    keep = batch["attention_mask"].bool()
    assert (output.logits.float() - expected)[keep].abs().max() < 0.1


def test_training_drops_every_layers_attention_at_the_configs_rate(checkpoint, monkeypatch) -> None:
    path = checkpoint("LongformerForMaskedLM")
    ours = attnreg.build("longformer", pretrained=str(path), attention_probs_dropout_prob=0.2).train()
    flags = inject_keep_flags(monkeypatch, 0.2)  # fails a call that asks for another rate
    batch = make_batch([21, 13, 6], [[0, 20], [3, 4], []])
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    ours(**batch, labels=labels).loss.backward()
    assert len(flags) == TINY_CONFIG["num_hidden_layers"]


def test_training_with_dropout_runs_on_the_pinned_blocked_engine(checkpoint) -> None:
    ours, _ = pair(checkpoint, "LongformerForMaskedLM")
    for layer in ours.modules():
        if isinstance(layer, LongformerSelfAttention):
            assert layer.dropout == 0.1  # transformers' default attention_probs_dropout_prob
    batch = make_batch([21, 13, 6], [[0, 20], [3, 4], []])
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    torch.manual_seed(0)
    with attnreg.backend("blocked"):
        output = ours.train()(**batch, labels=labels)
    output.loss.backward()
    assert torch.isfinite(output.loss)
    assert all(torch.isfinite(p.grad).all() for p in ours.parameters() if p.grad is not None)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_matches_transformers_and_half_is_finite(checkpoint, dtype: torch.dtype) -> None:
    ours, theirs = pair(checkpoint, "LongformerForMaskedLM")
    ours.to("cuda", dtype)
    theirs.to("cuda")
    batch = {key: value.cuda() for key, value in make_batch([21, 13, 6], [[0, 20], [3, 4], [5]]).items()}
    output = ours(**batch, labels=batch["input_ids"])
    output.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in ours.parameters() if p.grad is not None)
    with torch.no_grad():
        expected = theirs(**batch).logits
    keep = batch["attention_mask"].bool()
    tolerance = 1e-4 if dtype == torch.float32 else 0.1
    assert (output.logits.float() - expected)[keep].abs().max() <= tolerance


def test_switching_a_loaded_model_in_place(checkpoint) -> None:
    ours, _ = pair(checkpoint)
    switched = use_attnreg_attention(transformers.LongformerModel.from_pretrained(checkpoint()).eval())
    assert not any(isinstance(m, modeling_longformer.LongformerSelfAttention) for m in switched.modules())
    batch = make_batch([21, 9], [[0], [8]])
    with torch.no_grad():
        torch.testing.assert_close(switched(**batch).last_hidden_state, ours(**batch).last_hidden_state)
    with pytest.raises(attnreg.PatternError, match="model=Linear"):
        use_attnreg_attention(torch.nn.Linear(2, 2))


def test_without_padding_to_the_window(checkpoint) -> None:
    path = checkpoint()
    theirs = transformers.LongformerModel.from_pretrained(path).eval()
    ours = attnreg.build("longformer", pretrained=str(path), pad_to_window=False).eval()
    batch = make_batch([21, 13], [[0, 20], [3]])
    with torch.no_grad():
        got, expected = ours(**batch, output_attentions=True), theirs(**batch, output_attentions=True)
    keep = batch["attention_mask"].bool()
    assert (got.last_hidden_state - expected.last_hidden_state)[keep].abs().max() <= 1e-4
    assert got.global_attentions[0].shape[2] == 21 and expected.global_attentions[0].shape[2] == 24
    for layer, expected_probs in zip(got.global_attentions, expected.global_attentions, strict=True):
        expected_probs = expected_probs[:, :, :21]  # slot 1 of example 1 holds transformers' uniform filler
        torch.testing.assert_close(layer[0], expected_probs[0], atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(layer[1, :, :, 0], expected_probs[1, :, :, 0], atol=1e-6, rtol=1e-4)
    with pytest.raises(attnreg.PatternError, match="pad_to_window='no'"):
        attnreg.build("longformer", TINY_CONFIG, pad_to_window="no")


def test_the_encoder_prepares_its_masks_once_per_forward(checkpoint, monkeypatch) -> None:
    """Every layer attends under the same padding and global tokens: the pattern is prepared by the first layer and
    reused by the others (attnreg.nn.SharedBatch), so the engines build their key masks and slots once per forward."""
    ours, _ = pair(checkpoint)
    prepared = []
    original = attnreg.Pattern.prepare
    monkeypatch.setattr(
        attnreg.Pattern, "prepare", lambda self, *a, **k: prepared.append(self) or original(self, *a, **k)
    )
    batch = make_batch([21, 13], [[0], [3, 4]])
    for _forward_pass in range(2):
        ours(**{name: value.clone() for name, value in batch.items()})
    windows = {m.pattern for m in ours.modules() if isinstance(m, LongformerSelfAttention)}
    assert len(windows) == 2  # the tiny config's two layers have windows 4 and 8
    assert len(prepared) == 2 * len(windows)  # one per forward and window, not one per layer

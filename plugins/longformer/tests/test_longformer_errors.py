"""A built Longformer model refuses bad inputs at its entry, in the caller's shapes (before transformers pads them)."""

from __future__ import annotations

import pickle

import pytest
import torch
import transformers
from longformer_helpers import TINY_CONFIG, make_batch

import attnreg

# length 21: transformers would pad it to 24 (a multiple of the largest window, 8) before any layer saw it
BATCH = make_batch([21, 13], [[0], [3, 4]])
IDS, MASK, GLOBALS = BATCH["input_ids"], BATCH["attention_mask"], BATCH["global_attention_mask"]
EMBEDS = torch.randn(2, 21, TINY_CONFIG["hidden_size"])


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return attnreg.build("longformer", dict(TINY_CONFIG)).eval()


BAD_INPUTS = {
    "attention_mask-too-short": (
        {"input_ids": IDS, "attention_mask": MASK[:, :18]},
        r"attention_mask\.shape=\(2, 18\) .*expected \(batch, length\) = \(2, 21\), the shape of input_ids",
    ),
    "global_attention_mask-too-short": (
        {"input_ids": IDS, "attention_mask": MASK, "global_attention_mask": GLOBALS[:, :18]},
        r"global_attention_mask\.shape=\(2, 18\) .*expected \(batch, length\) = \(2, 21\)",
    ),
    "global_attention_mask-of-another-batch": (
        {"input_ids": IDS, "global_attention_mask": GLOBALS[:1]},
        r"global_attention_mask\.shape=\(1, 21\) .*\(2, 21\)",
    ),
    "attention_mask-of-another-batch": (
        {"input_ids": IDS, "attention_mask": MASK[:1]},
        r"attention_mask\.shape=\(1, 21\) .*\(2, 21\)",
    ),
    "token_type_ids-too-short": (
        {"input_ids": IDS, "token_type_ids": torch.zeros(2, 5, dtype=torch.long)},
        r"token_type_ids\.shape=\(2, 5\) .*\(2, 21\)",
    ),
    "attention_mask-against-inputs_embeds": (
        {"inputs_embeds": EMBEDS, "attention_mask": MASK[:, :18]},
        r"attention_mask\.shape=\(2, 18\) .*\(2, 21\), the shape of inputs_embeds",
    ),
    "empty-length": ({"input_ids": IDS[:, :0]}, r"input_ids\.shape=\(2, 0\) .*every size at least 1"),
    "empty-batch": ({"input_ids": IDS[:0]}, r"input_ids\.shape=\(0, 21\) .*every size at least 1"),
    "one-dimensional-ids": ({"input_ids": IDS[0]}, r"input_ids\.shape=\(21,\) .*expected \(batch, length\)"),
    "float-ids": ({"input_ids": IDS.float()}, r"input_ids\.dtype=torch\.float32 .*integer token ids"),
    "ids-as-a-list": ({"input_ids": IDS.tolist()}, r"input_ids=<list> .*tensor of integer token ids"),
    "ids-past-the-vocabulary": ({"input_ids": IDS + 64}, r"input_ids\.max\(\)=\d+ .*below the vocabulary size 64"),
    "negative-ids": ({"input_ids": IDS - 10}, r"input_ids\.min\(\)=-\d+ .*>= 0"),
    "ids-and-embeds": ({"input_ids": IDS, "inputs_embeds": EMBEDS}, r"exactly one of input_ids or inputs_embeds"),
    "neither-ids-nor-embeds": ({"attention_mask": MASK}, r"input_ids=None and inputs_embeds=None .*exactly one"),
    "embeds-of-another-width": (
        {"inputs_embeds": EMBEDS[..., :31]},
        r"inputs_embeds\.shape=\(2, 21, 31\) .*hidden_size=32",
    ),
    "more-tokens-than-positions": (
        {"input_ids": torch.randint(3, 64, (1, 63))},
        r"input_ids has 63 tokens that are not config\.pad_token_id=1 .*at most .*= 62",
    ),
    "embeds-that-padding-makes-too-long": (
        {"inputs_embeds": torch.randn(1, 60, 32)},
        r"inputs_embeds\.shape\[-2\]=60 .*at most 56 tokens.*multiple of the window 8",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_fail_naming_the_argument_and_the_callers_shapes(model, case: str) -> None:
    arguments, words = BAD_INPUTS[case]
    with pytest.raises(attnreg.PatternError, match=words):
        model(**arguments)


def test_inputs_are_checked_before_any_layer_runs(model, monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("the embeddings ran")

    monkeypatch.setattr(model.embeddings, "forward", fail)
    with pytest.raises(attnreg.PatternError, match="attention_mask"):
        model(input_ids=IDS, attention_mask=MASK[:, :18])


def test_positional_arguments_are_checked_by_name(model) -> None:
    with pytest.raises(attnreg.PatternError, match=r"attention_mask\.shape=\(2, 3\)"):
        model(IDS, MASK[:, :3])


def test_without_window_padding_the_embeds_limit_is_the_positions(model) -> None:
    unpadded = attnreg.build("longformer", dict(TINY_CONFIG), pad_to_window=False).eval()
    with torch.no_grad():
        unpadded(inputs_embeds=torch.randn(1, 60, 32))
    with pytest.raises(attnreg.PatternError, match=r"inputs_embeds\.shape\[-2\]=63 .*at most 62 tokens"):
        unpadded(inputs_embeds=torch.randn(1, 63, 32))


@pytest.mark.parametrize(
    ("head", "arguments", "words"),
    [
        ("masked-lm", {"input_ids": IDS, "labels": IDS[:, :5]}, r"labels\.shape=\(2, 5\) .*\(2, 21\)"),
        ("sequence-classification", {"input_ids": IDS, "labels": torch.zeros(3, dtype=torch.long)}, r"labels"),
        ("question-answering", {"input_ids": IDS, "start_positions": torch.zeros(1, dtype=torch.long)}, r"start_"),
        (
            "multiple-choice",
            {"input_ids": IDS[:, None].expand(2, 3, 21), "global_attention_mask": GLOBALS[:, None, :18]},
            r"global_attention_mask\.shape=\(2, 1, 18\) .*\(batch, num_choices, length\) = \(2, 3, 21\)",
        ),
    ],
)
def test_every_head_checks_its_inputs(head: str, arguments: dict, words: str) -> None:
    model = attnreg.build("longformer", dict(TINY_CONFIG), head=head).eval()
    with pytest.raises(attnreg.PatternError, match=words):
        model(**arguments)


def test_the_base_model_of_a_head_checks_its_inputs_too() -> None:
    model = attnreg.build("longformer", dict(TINY_CONFIG), head="masked-lm").eval()
    with pytest.raises(attnreg.PatternError, match=r"attention_mask\.shape=\(2, 5\)"):
        model.longformer(input_ids=IDS, attention_mask=MASK[:, :5])


def test_the_check_keeps_the_class_the_state_dict_and_pickling(model) -> None:
    assert type(model) is transformers.LongformerModel
    assert list(model.state_dict()) == list(transformers.LongformerModel(model.config).state_dict())
    again = pickle.loads(pickle.dumps(model))
    with pytest.raises(attnreg.PatternError, match="attention_mask"):
        again(input_ids=IDS, attention_mask=MASK[:, :18])


def test_rebuilding_registers_one_check(model) -> None:
    from attnreg_longformer import use_attnreg_attention

    assert len(use_attnreg_attention(model)._forward_pre_hooks) == 1


def test_valid_padded_batches_with_globals_still_run(model) -> None:
    with torch.no_grad():
        out = model(**BATCH)
        assert out.last_hidden_state.shape == (2, 21, TINY_CONFIG["hidden_size"])
        model(inputs_embeds=EMBEDS, attention_mask=MASK, global_attention_mask=GLOBALS)
        model(input_ids=torch.randint(3, 64, (1, 62)))  # as many positions as there are

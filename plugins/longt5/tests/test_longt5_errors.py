"""Built LongT5 models refuse bad inputs at their entry, naming the argument and the caller's shapes."""

from __future__ import annotations

import pickle

import pytest
import torch
from longt5_helpers import KINDS, padded_batch, tiny_config

import attnreg

IDS, MASK = padded_batch([13, 7])
EMBEDS = torch.randn(2, 13, 32)
DECODER_IDS = torch.ones(2, 3, dtype=torch.long)


@pytest.fixture(scope="module", params=list(KINDS))
def models(request) -> dict[str, torch.nn.Module]:
    """The conditional-generation and encoder models of one kind."""
    return {
        head: attnreg.build(request.param, tiny_config(request.param), head=head).eval()
        for head in ("conditional-generation", "encoder")
    }


ENCODER_INPUTS = {
    "attention_mask-too-short": (
        {"input_ids": IDS, "attention_mask": MASK[:, :10]},
        r"attention_mask\.shape=\(2, 10\) .*expected \(batch, length\) = \(2, 13\), the shape of input_ids",
    ),
    "attention_mask-of-another-batch": (
        {"input_ids": IDS, "attention_mask": MASK[:1]},
        r"attention_mask\.shape=\(1, 13\) .*\(2, 13\)",
    ),
    "attention_mask-against-inputs_embeds": (
        {"inputs_embeds": EMBEDS, "attention_mask": MASK[:, :10]},
        r"attention_mask\.shape=\(2, 10\) .*\(2, 13\), the shape of inputs_embeds",
    ),
    "empty-length": ({"input_ids": IDS[:, :0]}, r"input_ids\.shape=\(2, 0\) .*every size at least 1"),
    "empty-batch": ({"input_ids": IDS[:0]}, r"input_ids\.shape=\(0, 13\) .*every size at least 1"),
    "float-ids": ({"input_ids": IDS.float()}, r"input_ids\.dtype=torch\.float32 .*integer token ids"),
    "ids-past-the-vocabulary": ({"input_ids": IDS + 64}, r"input_ids\.max\(\)=\d+ .*below the vocabulary size 64"),
    "ids-and-embeds": ({"input_ids": IDS, "inputs_embeds": EMBEDS}, r"exactly one of input_ids or inputs_embeds"),
    "neither-ids-nor-embeds": ({"attention_mask": MASK}, r"input_ids=None and inputs_embeds=None .*exactly one"),
    "embeds-of-another-width": ({"inputs_embeds": EMBEDS[..., :31]}, r"inputs_embeds\.shape=\(2, 13, 31\)"),
}


@pytest.mark.parametrize("head", ["conditional-generation", "encoder"])
@pytest.mark.parametrize("case", ENCODER_INPUTS)
def test_bad_encoder_inputs_fail_naming_the_argument_and_the_callers_shapes(models, head: str, case: str) -> None:
    arguments, words = ENCODER_INPUTS[case]
    if head == "conditional-generation":
        arguments = {**arguments, "decoder_input_ids": DECODER_IDS}
    with pytest.raises(attnreg.PatternError, match=words):
        models[head](**arguments)


DECODER_INPUTS = {
    "decoder_input_ids-of-another-batch": (
        {"decoder_input_ids": DECODER_IDS[:1]},
        r"decoder_input_ids\.shape=\(1, 3\) .*batch size 2 first, the batch of input_ids",
    ),
    "labels-of-another-batch": ({"labels": DECODER_IDS[:1]}, r"labels\.shape=\(1, 3\) .*batch size 2"),
    "labels-against-decoder_input_ids": (
        {"decoder_input_ids": DECODER_IDS, "labels": DECODER_IDS[:, :2]},
        r"labels\.shape=\(2, 2\) .*\(2, 3\), the shape of decoder_input_ids",
    ),
    "decoder_attention_mask-too-long": (
        {"decoder_input_ids": DECODER_IDS, "decoder_attention_mask": MASK},
        r"decoder_attention_mask\.shape=\(2, 13\) .*\(2, 3\), the shape of decoder_input_ids",
    ),
    "empty-decoder_input_ids": (
        {"decoder_input_ids": DECODER_IDS[:, :0]},
        r"decoder_input_ids\.shape=\(2, 0\) .*every size at least 1",
    ),
    "float-decoder_input_ids": ({"decoder_input_ids": DECODER_IDS.float()}, r"decoder_input_ids\.dtype"),
    "no-decoder-input": ({}, r"decoder_input_ids=None .*decoder_inputs_embeds or labels"),
}


@pytest.mark.parametrize("case", DECODER_INPUTS)
def test_bad_decoder_inputs_fail_before_the_encoder_runs(models, case: str, monkeypatch) -> None:
    arguments, words = DECODER_INPUTS[case]
    model = models["conditional-generation"]

    def fail(*args, **kwargs):
        raise AssertionError("the encoder ran")

    monkeypatch.setattr(model.encoder, "forward", fail)
    with pytest.raises(attnreg.PatternError, match=words):
        model(input_ids=IDS, attention_mask=MASK, **arguments)


def test_attention_mask_is_checked_against_encoder_outputs(models) -> None:
    with pytest.raises(attnreg.PatternError, match=r"attention_mask\.shape=\(2, 4\) .*the shape of encoder_outputs"):
        models["conditional-generation"](
            encoder_outputs=(torch.randn(2, 13, 32),), attention_mask=MASK[:, :4], decoder_input_ids=DECODER_IDS
        )


def test_generate_checks_the_encoder_inputs(models) -> None:
    with pytest.raises(attnreg.PatternError, match=r"attention_mask\.shape=\(2, 4\) .*\(2, 13\)"):
        models["conditional-generation"].generate(input_ids=IDS, attention_mask=MASK[:, :4], max_new_tokens=2)


def test_valid_inputs_still_run(models) -> None:
    model = models["conditional-generation"]
    with torch.no_grad():
        assert model(input_ids=IDS, attention_mask=MASK, labels=DECODER_IDS).logits.shape == (2, 3, 64)
        model(inputs_embeds=EMBEDS, attention_mask=MASK, decoder_input_ids=DECODER_IDS)
        assert model.generate(input_ids=IDS, attention_mask=MASK, max_new_tokens=3, num_beams=2).shape[0] == 2
        models["encoder"](input_ids=IDS, attention_mask=MASK)


def test_the_checked_model_still_pickles(models) -> None:
    again = pickle.loads(pickle.dumps(models["encoder"]))
    with pytest.raises(attnreg.PatternError, match="attention_mask"):
        again(input_ids=IDS, attention_mask=MASK[:, :4])

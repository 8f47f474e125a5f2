"""The generic ``encoder`` and ``encoder-decoder`` models refuse bad inputs at their entry, in the caller's terms."""

from __future__ import annotations

import pytest
import torch

import attnreg

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = {"vocab_size": 12, "d_model": 32, "n_layers": 2, "num_heads": 4, "d_ff": 64, "max_length": 64}
IDS = torch.randint(1, 12, (2, 16), generator=torch.Generator().manual_seed(0))
MASK = torch.ones(2, 16, dtype=torch.long)
GLOBALS = torch.zeros(2, 16, dtype=torch.long)
DECODER_IDS = IDS[:, :5]


@pytest.fixture(scope="module", params=["encoder", "encoder-decoder"])
def model(request) -> torch.nn.Module:
    return attnreg.build(request.param, pattern="longformer", pattern_params={"attention_window": 4}, **SIZES).eval()


ENCODER_INPUTS = {
    "attention_mask-too-short": (
        {"attention_mask": MASK[:, :10]},
        r"attention_mask\.shape=\(2, 10\) .*expected \(batch, length\) = \(2, 16\), the shape of input_ids",
    ),
    "attention_mask-of-another-batch": ({"attention_mask": MASK[:1]}, r"attention_mask\.shape=\(1, 16\) .*\(2, 16\)"),
    "global_attention_mask-too-short": (
        {"global_attention_mask": GLOBALS[:, :10]},
        r"global_attention_mask\.shape=\(2, 10\) .*\(2, 16\), the shape of input_ids",
    ),
    "global_attention_mask-of-another-batch": (
        {"global_attention_mask": GLOBALS[:1]},
        r"global_attention_mask\.shape=\(1, 16\)",
    ),
    "empty-length": ({"input_ids": IDS[:, :0]}, r"input_ids\.shape=\(2, 0\) .*every size at least 1"),
    "empty-batch": ({"input_ids": IDS[:0]}, r"input_ids\.shape=\(0, 16\) .*every size at least 1"),
    "float-ids": ({"input_ids": IDS.float()}, r"input_ids\.dtype=torch\.float32 .*integer token ids"),
    "one-dimensional-ids": ({"input_ids": IDS[0]}, r"input_ids\.shape=\(16,\) .*expected \(batch, length\)"),
    "ids-past-the-vocabulary": ({"input_ids": IDS + 12}, r"input_ids\.max\(\)=\d+ .*below the vocabulary size 12"),
    "too-long": ({"input_ids": torch.ones(1, 65, dtype=torch.long)}, r"input_ids\.shape\[1\]=65 .*max_length=64"),
}


@pytest.mark.parametrize("case", ENCODER_INPUTS)
def test_bad_encoder_inputs_fail_naming_the_argument_and_the_callers_shapes(model, case: str) -> None:
    arguments, words = ENCODER_INPUTS[case]
    arguments = {"input_ids": IDS, **arguments}
    if model.kind == "encoder-decoder":
        arguments["decoder_input_ids"] = DECODER_IDS[: arguments["input_ids"].shape[0]]
    with pytest.raises(attnreg.PatternError, match=words):
        model(**arguments)


def test_encoder_labels_must_have_the_inputs_shape() -> None:
    model = attnreg.build("encoder", pattern="longformer", pattern_params={"attention_window": 4}, **SIZES)
    with pytest.raises(attnreg.PatternError, match=r"labels\.shape=\(2, 3\) .*\(2, 16\), the shape of input_ids"):
        model(IDS, labels=IDS[:, :3])


DECODER_INPUTS = {
    "decoder_input_ids-of-another-batch": (
        {"decoder_input_ids": DECODER_IDS[:1]},
        r"decoder_input_ids\.shape=\(1, 5\) .*batch size 2 first, the batch of input_ids",
    ),
    "labels-alone-of-another-batch": ({"labels": DECODER_IDS[:1]}, r"labels\.shape=\(1, 5\) .*batch size 2"),
    "labels-against-decoder_input_ids": (
        {"decoder_input_ids": DECODER_IDS, "labels": DECODER_IDS[:, :3]},
        r"labels\.shape=\(2, 3\) .*\(2, 5\), the shape of decoder_input_ids",
    ),
    "decoder_attention_mask-too-short": (
        {"decoder_input_ids": DECODER_IDS, "decoder_attention_mask": MASK[:, :3]},
        r"decoder_attention_mask\.shape=\(2, 3\) .*\(2, 5\), the shape of decoder_input_ids",
    ),
    "empty-decoder_input_ids": (
        {"decoder_input_ids": DECODER_IDS[:, :0]},
        r"decoder_input_ids\.shape=\(2, 0\) .*every size at least 1",
    ),
    "float-decoder_input_ids": ({"decoder_input_ids": DECODER_IDS.float()}, r"decoder_input_ids\.dtype"),
    "no-decoder-input": ({}, r"decoder_input_ids=None .*pass decoder_input_ids or labels"),
}


@pytest.mark.parametrize("case", DECODER_INPUTS)
def test_bad_decoder_inputs_fail_before_the_encoder_runs(case: str, monkeypatch) -> None:
    arguments, words = DECODER_INPUTS[case]
    model = attnreg.build("encoder-decoder", pattern="longformer", pattern_params={"attention_window": 4}, **SIZES)

    def fail(*args, **kwargs):
        raise AssertionError("the encoder ran")

    monkeypatch.setattr(model.encoder.embeddings, "forward", fail)
    with pytest.raises(attnreg.PatternError, match=words):
        model(IDS, MASK, **arguments)


def test_valid_padded_inputs_with_globals_still_run(model) -> None:
    mask = MASK.clone()
    mask[1, 10:] = 0
    globals_ = GLOBALS.clone()
    globals_[:, 0] = 1
    extra = {"labels": DECODER_IDS} if model.kind == "encoder-decoder" else {"labels": IDS}
    with torch.no_grad():
        out = model(IDS, mask, globals_, **extra)
    assert out.loss is not None and torch.isfinite(out.loss)

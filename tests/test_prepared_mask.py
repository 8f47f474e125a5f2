"""``pattern.prepare(...)``: one batch's masks checked once and bound to the pattern; every layer's
``attnreg.attention`` reuses it, and the engines build what they derive from the masks once."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import attnreg
from attnreg import Pattern, PatternError, SelectedGlobals, Window
from attnreg.execution import make_call
from attnreg.execution.blocked import engine as blocked_engine
from attnreg.execution.blocked import sparse

BATCH, HEADS, LENGTH, DIM = 2, 2, 37, 8


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("attnreg.execution.blocked.layout.QUERY_BLOCK", 8)


def _batch() -> dict:
    mask = torch.ones(BATCH, LENGTH, dtype=torch.bool)
    mask[1, -6:] = False
    global_mask = torch.zeros(BATCH, LENGTH, dtype=torch.bool)
    global_mask[0, [0, 9]] = global_mask[1, 3] = True
    documents = torch.zeros(BATCH, LENGTH, dtype=torch.long)
    documents[0, 20:] = 1
    return {"attention_mask": mask, "global_mask": global_mask, "document_ids": documents}


PATTERNS = {
    "window-globals": (
        Pattern(window=Window(4, 4), selected_globals=SelectedGlobals()),
        ("attention_mask", "global_mask"),
    ),
    "streaming-documents": (
        attnreg.get_pattern("streaming-llm", window=6, sinks=2),
        ("attention_mask", "document_ids"),
    ),
}


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_layers_sharing_a_prepared_mask_equal_unprepared_calls(name: str) -> None:
    pattern, keys = PATTERNS[name]
    batch = {key: value for key, value in _batch().items() if key in keys}
    prepared = pattern.prepare(LENGTH, **batch)
    torch.manual_seed(0)
    for _layer in range(3):
        q, k, v = (torch.randn(BATCH, HEADS, LENGTH, DIM) for _ in range(3))
        torch.testing.assert_close(
            attnreg.attention(q, k, v, prepared, backend="blocked"),
            attnreg.attention(q, k, v, pattern, backend="reference", **batch),
        )


def test_the_blocked_engine_builds_its_per_batch_structures_once(monkeypatch: pytest.MonkeyPatch) -> None:
    built = {"keys": 0, "layout": 0}
    keys, layout = blocked_engine._keys, sparse._layout

    def count(name, function):
        def counted(*args):
            built[name] += 1
            return function(*args)

        return counted

    monkeypatch.setattr(blocked_engine, "_keys", count("keys", keys))
    monkeypatch.setattr(sparse, "_layout", count("layout", layout))
    pattern, names = PATTERNS["streaming-documents"]
    batch = {key: value for key, value in _batch().items() if key in names}
    prepared = pattern.prepare(LENGTH, **batch)
    q = torch.randn(BATCH, HEADS, LENGTH, DIM)
    for _layer in range(4):
        attnreg.attention(q, q, q, prepared, backend="blocked")
    assert built == {"keys": 1, "layout": 1}
    attnreg.attention(q, q, q, pattern, backend="blocked", **batch)  # a bare pattern is prepared for that call alone
    assert built == {"keys": 2, "layout": 2}


def test_a_call_changed_after_preparing_builds_afresh() -> None:
    pattern, names = PATTERNS["streaming-documents"]
    batch = {key: value for key, value in _batch().items() if key in names}
    q = torch.randn(BATCH, HEADS, LENGTH, DIM)
    call = make_call(q, q, q, pattern.prepare(LENGTH, **batch))
    attnreg.execution.blocked.blocked_attention_call(call)  # fills the prepared mask's store
    other = torch.ones(BATCH, LENGTH, dtype=torch.bool)
    changed = replace(call, attention_mask=other)
    torch.testing.assert_close(
        attnreg.execution.blocked.blocked_attention_call(changed),
        attnreg.attention(
            q, q, q, pattern, backend="reference", attention_mask=other, document_ids=batch["document_ids"]
        ),
    )


@pytest.mark.parametrize(("batch", "length"), [(BATCH, LENGTH + 1), (BATCH + 1, LENGTH)])
def test_a_prepared_mask_for_another_batch_or_length_is_an_error(batch: int, length: int) -> None:
    prepared = Pattern(window=Window(2, 2)).prepare(LENGTH, attention_mask=_batch()["attention_mask"])
    q = torch.randn(batch, HEADS, length, DIM)
    with pytest.raises(PatternError, match=rf"prepared mask for batch={BATCH}, length={LENGTH} is not allowed"):
        attnreg.attention(q, q, q, prepared)


def test_per_batch_inputs_are_given_once() -> None:
    batch = _batch()
    prepared = Pattern(window=Window(2, 2)).prepare(LENGTH, attention_mask=batch["attention_mask"])
    q = torch.randn(BATCH, HEADS, LENGTH, DIM)
    with pytest.raises(PatternError, match=r"attention_mask=.* is not allowed: the prepared mask holds it already"):
        attnreg.attention(q, q, q, prepared, attention_mask=batch["attention_mask"])


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"attention_mask": torch.ones(2, 5, dtype=torch.bool)}, r"attention_mask.shape=\(2, 5\) is not allowed"),
        ({"document_ids": torch.zeros(2, LENGTH)}, "document_ids.dtype=torch.float32 is not allowed"),
        ({"global_mask": torch.zeros(2, LENGTH, dtype=torch.bool)}, "this pattern has no selected_globals"),
        ({"max_globals": 2}, "max_globals=2 is not allowed: this pattern has no selected_globals"),
    ],
)
def test_prepare_checks_the_batch_once(inputs: dict, message: str) -> None:
    with pytest.raises(PatternError, match=message):
        Pattern(window=Window(2, 2)).prepare(LENGTH, **inputs)


def test_dropout_and_a_prepared_mask() -> None:
    pattern, names = PATTERNS["window-globals"]
    batch = {key: value for key, value in _batch().items() if key in names}
    prepared = pattern.prepare(LENGTH, **batch)
    q = torch.randn(BATCH, HEADS, LENGTH, DIM)
    keep = torch.rand(BATCH, HEADS, LENGTH, LENGTH) > 0.2
    torch.testing.assert_close(
        attnreg.attention(q, q, q, prepared, dropout_p=0.2, dropout_mask=keep, backend="blocked"),
        attnreg.attention(q, q, q, pattern, dropout_p=0.2, dropout_mask=keep, backend="reference", **batch),
    )

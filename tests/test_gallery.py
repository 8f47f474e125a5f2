"""The open part vocabulary and the gallery: each pattern's mask against its definition written out here, never
from attnreg; block coverage sound against the predicate; the blocked engine against the reference with padding,
documents, score terms and dropout, forward and backward; patterns as data; errors that name the problem.
"""

from __future__ import annotations

import json
import pickle

import pytest
import torch

import attnreg
from attnreg import Pattern, PatternError, RelativePositionBias, SelectedGlobals, Window
from attnreg.execution import make_call
from attnreg.execution.blocked import blocked_attention_call
from attnreg.execution.reference import reference_attention
from attnreg.pattern import gallery
from attnreg.pattern.predicates import (
    EMPTY,
    FULL,
    AllOf,
    AnyOf,
    Band,
    BlockBand,
    Dilation,
    KeyRange,
    MaskPart,
    QueryRange,
    RandomBlocks,
    part_from_dict,
    part_to_dict,
    register_part,
)
from attnreg.pattern.scores import alibi_slopes


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of 8 queries so short sequences cross several blocks."""
    monkeypatch.setattr("attnreg.execution.blocked.layout.QUERY_BLOCK", 8)


def _random_blocks(length: int, block: int, count: int, seed: int) -> torch.Tensor:
    blocks = -(-length // block)
    table = torch.zeros(blocks, blocks, dtype=torch.bool)
    for qb in range(blocks):
        table[qb, torch.randperm(blocks, generator=torch.Generator().manual_seed(seed + qb))[:count]] = True
    return table


def _definition(name: str, params: dict, i: torch.Tensor, j: torch.Tensor, length: int) -> torch.Tensor:
    """``allowed(i, j)`` as the issue's gallery table states it."""
    if name == "causal":
        return j <= i
    if name == "sliding-window":
        return (i - params["left"] <= j) & (j <= i + params["right"])
    if name == "streaming-llm":
        return ((i - params["window"] <= j) & (j <= i)) | ((j < params["sinks"]) & (j <= i))
    if name == "dilated-window":
        r, d = params["radius"], params["dilation"]
        inside = ((i - j).abs() <= r * d) & ((i - j) % d == 0)
        return inside & (j <= i) if params.get("causal") else inside
    if name == "prefix-lm":
        return (j <= i) | (j < params["prefix"])
    if name == "bigbird":
        b = params["block"]
        qb, kb = i // b, j // b
        seen = ((qb - kb).abs() <= params["window_blocks"]) | (qb < params["global_blocks"])
        seen = seen | (kb < params["global_blocks"])
        if params.get("random_blocks"):
            seen = seen | _random_blocks(length, b, params["random_blocks"], params.get("seed", 0))[qb, kb]
        return seen
    raise AssertionError(name)


CASES = [
    ("causal", {}),
    ("sliding-window", {"left": 5, "right": 2}),
    ("sliding-window", {"left": 6, "right": 0}),
    ("streaming-llm", {"window": 6, "sinks": 3}),
    ("streaming-llm", {"window": 4, "sinks": 0}),
    ("dilated-window", {"radius": 3, "dilation": 2}),
    ("dilated-window", {"radius": 2, "dilation": 3, "causal": True}),
    ("prefix-lm", {"prefix": 9}),
    ("bigbird", {"block": 4, "window_blocks": 1, "global_blocks": 1, "random_blocks": 2, "seed": 3}),
    ("bigbird", {"block": 5, "window_blocks": 0, "global_blocks": 2}),
]
IDS = [f"{name}-{'-'.join(map(str, params.values()))}" for name, params in CASES]


@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
@pytest.mark.parametrize("length", [1, 7, 29, 64])
def test_registered_pattern_allows_exactly_its_definition(name: str, params: dict, length: int) -> None:
    pattern = attnreg.get_pattern(name, **params)
    positions = torch.arange(length)
    expected = _definition(name, params, positions[:, None], positions[None, :], length)
    assert torch.equal(pattern.materialize(length).allowed[0], expected)
    assert pattern.cost(length).allowed_pairs == int(expected.sum())


def _inputs(pattern: Pattern, length: int, *, documents: bool, dtype=torch.float64) -> dict:
    generator = torch.Generator().manual_seed(length)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(dtype).requires_grad_()

    batch, heads = 2, 3
    inputs: dict = {name: rand(batch, heads, length, 4) for name in ("q", "k", "v")}
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[1, length - length // 4 :] = False
    inputs["attention_mask"] = mask
    if documents:
        ids = torch.zeros(batch, length, dtype=torch.long)
        ids[0, length // 3 :] = 1
        ids[0, length // 2 :] = 2
        ids[1, length // 5 :] = 7
        inputs["document_ids"] = ids
    if pattern.bias is not None:
        inputs["bias_weight"] = rand(pattern.bias.num_buckets, heads)
    return inputs


def _compare(pattern: Pattern, inputs: dict, **extra) -> None:
    """Blocked output and every gradient equal the reference's (fp64)."""
    call = make_call(pattern=pattern, **inputs, **extra)
    leaves = [t for t in call.tensors().values() if t.requires_grad]
    expected, actual = reference_attention(call), blocked_attention_call(call)
    torch.testing.assert_close(actual, expected, atol=1e-10, rtol=1e-10)
    ramp = torch.linspace(-1, 1, expected.numel(), dtype=expected.dtype).view_as(expected)
    for want, got in zip(
        torch.autograd.grad((expected * ramp).sum(), leaves), torch.autograd.grad((actual * ramp).sum(), leaves),
        strict=True,
    ):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("alibi", [False, True], ids=["plain", "alibi"])
@pytest.mark.parametrize("documents", [False, True], ids=["one document", "documents"])
@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
@pytest.mark.parametrize("length", [1, 9, 37])
def test_blocked_engine_matches_reference(name: str, params: dict, length: int, documents: bool, alibi: bool) -> None:
    pattern = attnreg.get_pattern(name, **params, alibi=alibi)
    _compare(pattern, _inputs(pattern, length, documents=documents))


@pytest.mark.parametrize(("name", "params"), CASES[3:6], ids=IDS[3:6])
def test_blocked_engine_matches_reference_with_the_same_dropout(name: str, params: dict) -> None:
    pattern = attnreg.get_pattern(name, **params)
    keep = torch.rand(2, 3, 37, 37, generator=torch.Generator().manual_seed(0)) > 0.3
    _compare(pattern, _inputs(pattern, 37, documents=True), dropout_p=0.3, dropout_mask=keep)


@pytest.mark.parametrize(
    "pattern",
    [
        Pattern(window=Window(4, 4), mask=Dilation(2), bias=RelativePositionBias(8, 16)),
        Pattern(window=Window(3, 3)),
        Pattern(window=Window(2, 5), bias=RelativePositionBias(8, 16)),
    ],
    ids=["window-dilation-bias", "window", "window-bias"],
)
def test_document_ids_restrict_the_existing_parts_too(pattern: Pattern) -> None:
    _compare(pattern, _inputs(pattern, 29, documents=True))


def test_a_mask_part_composes_with_selected_globals() -> None:
    pattern = Pattern(window=Window(4, 4), selected_globals=SelectedGlobals(), mask=Dilation(3))
    inputs = _inputs(pattern, 29, documents=False)
    global_mask = torch.zeros(2, 29, dtype=torch.bool)
    global_mask[0, [0, 9]] = global_mask[1, 3] = True
    _compare(pattern, inputs, global_mask=global_mask)


def test_softcap_is_on_the_scaled_scores_before_the_bias() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 11, 4, dtype=torch.float64) for _ in range(3))
    pattern = attnreg.get_pattern("causal", softcap=2.0, alibi=True)
    scores = 2.0 * torch.tanh(q @ k.transpose(-1, -2) / 4**0.5 / 2.0)
    positions = torch.arange(11)
    scores = scores - alibi_slopes(2).view(2, 1, 1) * (positions[:, None] - positions[None, :]).abs()
    scores = scores.masked_fill(positions[None, :] > positions[:, None], float("-inf"))
    expected = torch.softmax(scores, dim=-1) @ v
    torch.testing.assert_close(attnreg.attention(q, k, v, pattern, backend="reference"), expected)


@pytest.mark.parametrize("eager_cpu", [True, False], ids=["per-head", "batched"])
@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
def test_blocked_engine_matches_reference_with_softcap(
    name: str, params: dict, eager_cpu: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not eager_cpu:
        monkeypatch.setattr("attnreg.execution.host.eager_on_cpu", lambda x: False)
    pattern = attnreg.get_pattern(name, **params, softcap=1.5, alibi=True)
    _compare(pattern, _inputs(pattern, 37, documents=True))


def test_dense_sdpa_refuses_softcap_with_the_reason() -> None:
    q = k = v = torch.randn(1, 2, 11, 4)
    with pytest.raises(attnreg.BackendUnavailableError, match="softcap transforms the scores"):
        attnreg.attention(q, k, v, attnreg.get_pattern("causal", softcap=30.0), backend="dense-sdpa")


@pytest.mark.parametrize(
    ("heads", "expected"),
    [
        (8, [2 ** -(h + 1) for h in range(8)]),
        (4, [2 ** (-2 * (h + 1)) for h in range(4)]),
        (6, [2 ** -(2 * (h + 1)) for h in range(4)] + [2**-1, 2**-3]),
    ],
)
def test_alibi_slopes_follow_the_paper_including_head_counts_that_are_not_powers_of_two(
    heads: int, expected: list[float]
) -> None:
    torch.testing.assert_close(alibi_slopes(heads), torch.tensor(expected, dtype=torch.float64))


PARTS = [
    Band(3, 1),
    Band(None, 0),
    Band(2, None),
    KeyRange(2, 9),
    KeyRange(5),
    QueryRange(0, 6),
    Dilation(3),
    BlockBand(4, 1),
    RandomBlocks(5, 2, 1),
    AnyOf((Band(2, 0), KeyRange(0, 3))),
    AllOf((Band(6, 6), Dilation(2))),
]


@pytest.mark.parametrize("part", PARTS, ids=lambda p: p.kind)
def test_block_coverage_is_sound_against_the_predicate(part: MaskPart) -> None:
    """For any ranges of queries and keys: FULL means every pair is allowed, EMPTY means none is."""
    length = 40
    generator = torch.Generator().manual_seed(0)
    positions = torch.arange(length)
    allowed = part.allowed(positions[:, None], positions[None, :], length)
    for _ in range(300):
        q0, q1 = sorted(torch.randint(0, length, (2,), generator=generator).tolist())
        k0, k1 = sorted(torch.randint(0, length, (2,), generator=generator).tolist())
        bounds = [torch.tensor(x) for x in (q0, q1, k0, k1)]
        verdict = int(part.coverage(*bounds, length))
        inside = allowed[q0 : q1 + 1, k0 : k1 + 1]
        assert verdict != FULL or bool(inside.all()), (q0, q1, k0, k1)
        assert verdict != EMPTY or not bool(inside.any()), (q0, q1, k0, k1)


@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
def test_gallery_patterns_are_data(name: str, params: dict) -> None:
    pattern = attnreg.get_pattern(name, **params, softcap=50.0, alibi=True)
    assert Pattern.from_dict(pattern.to_dict()) == pattern
    assert Pattern.from_json(json.dumps(json.loads(pattern.to_json()))) == pattern
    assert pickle.loads(pickle.dumps(pattern)) == pattern
    assert hash(pattern) == hash(Pattern.from_json(pattern.to_json()))


def test_a_part_from_data_names_an_unknown_kind_or_parameter() -> None:
    with pytest.raises(PatternError, match=r"part kind='strided' is not allowed: known MaskPart kinds are .*band"):
        part_from_dict({"kind": "strided", "stride": 4})
    with pytest.raises(PatternError, match=r"unknown parameter\(s\) 'lefft'"):
        part_from_dict({"kind": "band", "lefft": 3})
    assert part_from_dict(part_to_dict(PARTS[-1])) == PARTS[-1]


def test_a_kind_claimed_twice_is_an_error_naming_both() -> None:
    class OtherBand(Band):
        kind = "band"

    with pytest.raises(PatternError, match=r"kind 'band' is claimed twice: by .*Band and by .*OtherBand"):
        register_part(OtherBand)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("streaming-llm", {"window": -1}, r"window=-1 is not allowed: expected an int >= 0"),
        ("dilated-window", {"dilation": 0}, r"dilation=0 is not allowed: expected an int >= 1"),
        ("bigbird", {"block": 0}, r"block=0 is not allowed"),
        ("causal", {"alibi": "yes"}, r"alibi='yes' is not allowed: expected True or False"),
        ("causal", {"softcap": -1.0}, r"softcap=-1.0 is not allowed"),
    ],
)
def test_bad_gallery_parameters_are_errors_naming_them(name: str, params: dict, message: str) -> None:
    with pytest.raises(PatternError, match=message):
        attnreg.get_pattern(name, **params)


@pytest.mark.parametrize(
    ("documents", "message"),
    [
        (torch.zeros(2, 10, dtype=torch.long), r"expected an integer tensor \(batch, length\) = \(2, 11\)"),
        (torch.zeros(2, 11), "expected an integer dtype"),
    ],
)
def test_bad_document_ids_are_errors_naming_them(documents: torch.Tensor, message: str) -> None:
    q = k = v = torch.randn(2, 1, 11, 4)
    with pytest.raises(PatternError, match=f"document_ids.* is not allowed: {message}"):
        attnreg.attention(q, k, v, Pattern(window=Window(2, 2)), document_ids=documents)


def test_documents_and_aggregated_tokens_cannot_be_composed() -> None:
    pattern = attnreg.get_pattern("longt5-tglobal", local_radius=2, global_block_size=4)
    q = k = v = torch.randn(1, 2, 12, 4)
    with pytest.raises(PatternError, match="aggregated_globals, whose block tokens sum across document boundaries"):
        attnreg.attention(
            q, k, v, pattern, document_ids=torch.zeros(1, 12, dtype=torch.long),
            aggregated_kv=(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)), bias_weight=torch.zeros(32, 2),
            aggregated_bias_weight=torch.zeros(32, 2),
        )


def test_the_blocked_engine_visits_only_non_empty_blocks() -> None:
    """A causal window of 8 over 64 blocks of 8: each query block visits its own and the one before, not all 64."""
    from attnreg.execution.blocked.layout import Blocks
    from attnreg.execution.blocked.sparse import EMPTY, _coverage, _groups

    q = torch.randn(1, 1, 512, 4)
    call = make_call(q, q, q, attnreg.get_pattern("streaming-llm", window=8, sinks=0))
    visited = _coverage(call, Blocks.for_length(512, 8)) > EMPTY
    assert visited.sum(-1).tolist() == [[1] + [2] * 63]
    assert [(rows.tolist(), width) for rows, width in _groups(visited)] == [([0], 1), (list(range(1, 64)), 2)]


def test_one_wide_query_block_widens_only_its_own_group() -> None:
    """BigBird's global query block visits every key block; the others keep their few (no quadratic padding)."""
    from attnreg.execution.blocked.layout import Blocks
    from attnreg.execution.blocked.sparse import EMPTY, _coverage, _groups

    q = torch.randn(1, 1, 512, 4)
    call = make_call(q, q, q, attnreg.get_pattern("bigbird", block=8, window_blocks=1, global_blocks=1))
    groups = {width: rows.tolist() for rows, width in _groups(_coverage(call, Blocks.for_length(512, 8)) > EMPTY)}
    assert groups[64] == [0] and max(w for w in groups if w < 64) <= 4


def test_gallery_descriptions_name_every_registered_gallery_pattern() -> None:
    assert set(gallery.GALLERY) <= set(attnreg.list_patterns())


@pytest.mark.parametrize(
    ("name", "params"),
    [("streaming-llm", {"window": 512}), ("dilated-window", {"radius": 128}), ("bigbird", {}), ("prefix-lm", {})],
)
def test_the_dispatcher_estimates_the_blocked_engine_from_the_blocks_it_visits(name: str, params: dict) -> None:
    """Sparse gallery patterns at 4096 tokens run on the blocked engine, not on dense SDPA."""
    from attnreg.execution import choose

    q = torch.randn(1, 8, 4096, 64)
    call = make_call(q, q, q, attnreg.get_pattern(name, **params))
    assert choose(call, attnreg.get_registry().engines()).name == "blocked"

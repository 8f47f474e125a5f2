"""The reference engine against a naive per-query loop, for every part of the pattern model and their combinations.

The loop is written from the semantics in DESIGN.md, independently of the dense materialisation: for each real
query it gathers the keys it may see, adds the bias (buckets from transformers' T5 code, blocks from transformers'
LongT5 helper), takes the softmax and the weighted sum. Padded queries give zeros.
"""

from __future__ import annotations

import pytest
import torch
from transformers.models.longt5.modeling_longt5 import LongT5Attention, _make_global_fixed_block_ids

import attnreg
from attnreg import AggregatedGlobals, Pattern, RelativePositionBias, SelectedGlobals, Window

BATCH, HEADS, LENGTH, DIM = 2, 2, 11, 4


def t5_bucket(part: RelativePositionBias, relative: int) -> int:
    return int(
        LongT5Attention._relative_position_bucket(
            torch.tensor(relative), part.bidirectional, part.num_buckets, part.max_distance
        )
    )


def naive_attention(q, k, v, pattern, inputs):
    """The output of ``pattern`` computed one query at a time, in float64."""
    batch, heads, length, _ = q.shape
    real = inputs.get("attention_mask", torch.ones(batch, length)).bool()
    globals_ = inputs.get("global_mask", torch.zeros(batch, length)).bool() & real
    global_qkv = inputs.get("global_qkv")
    aggregated_k, aggregated_v = inputs.get("aggregated_kv", (None, None))
    count = 0 if aggregated_k is None else aggregated_k.shape[2]
    if pattern.aggregated_globals is not None:
        block_ids, valid = _make_global_fixed_block_ids(real.double(), pattern.aggregated_globals.global_block_size)
    scale = pattern.score_scale(q.shape[-1])
    window = pattern.window
    out = torch.zeros(q.shape, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            for i in range(length):
                if not real[b, i]:
                    continue
                own = bool(globals_[b, i]) and global_qkv is not None
                query, keys_of, values_of = global_qkv if own else (q, k, v)
                scores, values = [], []
                for j in range(length):
                    in_window = window is None or (
                        (window.left is None or j >= i - window.left)
                        and (window.right is None or j <= i + window.right)
                    )
                    if not real[b, j] or not (in_window or globals_[b, j] or globals_[b, i]):
                        continue
                    score = float(query[b, h, i].double() @ keys_of[b, h, j].double()) * scale
                    if pattern.bias is not None:
                        score += float(inputs["bias_weight"][t5_bucket(pattern.bias, j - i), h])
                    scores.append(score)
                    values.append(values_of[b, h, j].double())
                for g in range(count):
                    if not valid[b, g]:
                        continue
                    score = float(query[b, h, i].double() @ aggregated_k[b, h, g].double()) * scale
                    if pattern.aggregated_bias is not None:
                        relative = g - int(block_ids[b, i])
                        bucket = t5_bucket(pattern.aggregated_bias, relative)
                        score += float(inputs["aggregated_bias_weight"][bucket, h])
                    scores.append(score)
                    values.append(aggregated_v[b, h, g].double())
                if scores:
                    weights = torch.softmax(torch.tensor(scores, dtype=torch.float64), dim=0)
                    out[b, h, i] = weights @ torch.stack(values)
    return out


def make_inputs(pattern: Pattern, *, padding: bool, dtype=torch.float64, seed: int = 0):
    """Random q, k, v and every extra input ``pattern`` takes; example 1 is padded when ``padding``."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)

    q, k, v = (randn(BATCH, HEADS, LENGTH, DIM) for _ in range(3))
    inputs = {}
    if padding:
        attention_mask = torch.ones(BATCH, LENGTH, dtype=torch.bool)
        attention_mask[1, [0, 5, 9, 10]] = False
        inputs["attention_mask"] = attention_mask
    if pattern.selected_globals is not None:
        global_mask = torch.zeros(BATCH, LENGTH, dtype=torch.bool)
        global_mask[0, [0, 6]] = True
        global_mask[1, [3, 9]] = True  # 9 is padded when padding: not a global token then
        inputs["global_mask"] = global_mask
        if pattern.selected_globals.own_projections:
            inputs["global_qkv"] = tuple(randn(BATCH, HEADS, LENGTH, DIM) for _ in range(3))
    if pattern.aggregated_globals is not None:
        count = pattern.aggregated_count(LENGTH)
        inputs["aggregated_kv"] = (randn(BATCH, HEADS, count, DIM), randn(BATCH, HEADS, count, DIM))
    if pattern.bias is not None:
        inputs["bias_weight"] = randn(pattern.bias.num_buckets, HEADS)
    if pattern.aggregated_bias is not None:
        inputs["aggregated_bias_weight"] = randn(pattern.aggregated_bias.num_buckets, HEADS)
    return q, k, v, inputs


TGLOBAL = Pattern(
    window=Window(2, 2),
    aggregated_globals=AggregatedGlobals(3),
    bias=RelativePositionBias(8, 16),
    aggregated_bias=RelativePositionBias(8, 16),
    scale=1.0,
)
PATTERNS = {
    "full": Pattern(),
    "symmetric": Pattern(window=Window(2, 2)),
    "asymmetric": Pattern(window=Window(3, 1)),
    "causal": Pattern(window=Window(2, 0)),
    "unbounded-left": Pattern(window=Window(None, 1)),
    "scale": Pattern(window=Window(1, 1), scale=0.7),
    "globals": Pattern(window=Window(1, 1), selected_globals=SelectedGlobals()),
    "globals-own-projections": Pattern(window=Window(1, 2), selected_globals=SelectedGlobals(own_projections=True)),
    "aggregated": Pattern(window=Window(1, 1), aggregated_globals=AggregatedGlobals(4)),
    "aggregated-only": Pattern(window=Window(0, 0), aggregated_globals=AggregatedGlobals(2)),
    "bias": Pattern(window=Window(3, 3), bias=RelativePositionBias(8, 16)),
    "bias-unidirectional": Pattern(window=Window(4, 0), bias=RelativePositionBias(6, 10, bidirectional=False)),
    "aggregated-bias": Pattern(
        aggregated_globals=AggregatedGlobals(3), aggregated_bias=RelativePositionBias(4, 8), window=Window(1, 1)
    ),
    "tglobal": TGLOBAL,
    "everything": Pattern(
        window=Window(2, 1),
        selected_globals=SelectedGlobals(own_projections=True),
        aggregated_globals=AggregatedGlobals(4),
        bias=RelativePositionBias(8, 16),
        aggregated_bias=RelativePositionBias(4, 8),
    ),
}


@pytest.mark.parametrize("padding", [False, True], ids=["no-padding", "padding"])
@pytest.mark.parametrize("name", list(PATTERNS))
def test_reference_matches_the_naive_loop(name, padding):
    pattern = PATTERNS[name]
    q, k, v, inputs = make_inputs(pattern, padding=padding)
    out = attnreg.attention(q, k, v, pattern, backend="reference", **inputs)
    torch.testing.assert_close(out, naive_attention(q, k, v, pattern, inputs), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["globals-own-projections", "everything"])
def test_global_rows_use_their_own_projections_and_the_others_do_not(name):
    pattern = PATTERNS[name]
    q, k, v, inputs = make_inputs(pattern, padding=False)
    with_own = attnreg.attention(q, k, v, pattern, backend="reference", **inputs)
    inputs.pop("global_qkv")
    without = attnreg.attention(q, k, v, pattern, backend="reference", **inputs)
    rows = inputs["global_mask"][:, None, :, None].expand_as(with_own)
    assert not torch.allclose(with_own[rows], without[rows])


@pytest.mark.parametrize("name", ["symmetric", "globals-own-projections", "tglobal", "everything"])
def test_attention_weights_are_the_dense_softmax_of_the_output(name):
    pattern = PATTERNS[name]
    q, k, v, inputs = make_inputs(pattern, padding=True)
    out, weights = attnreg.attention_weights(q, k, v, pattern, **inputs)
    layout = pattern.materialize(LENGTH, inputs["attention_mask"], inputs.get("global_mask"))
    real = inputs["attention_mask"][:, None, :]
    assert weights.shape == (BATCH, HEADS, LENGTH, LENGTH + layout.count)
    assert not weights[~layout.allowed[:, None].expand_as(weights)].any()
    torch.testing.assert_close(weights.sum(-1), real.expand(BATCH, HEADS, LENGTH).double())
    torch.testing.assert_close(out, naive_attention(q, k, v, pattern, inputs), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["symmetric", "globals", "tglobal", "everything"])
def test_padded_queries_give_zeros_and_finite_gradients(name, dtype):
    pattern = PATTERNS[name]
    q, k, v, inputs = make_inputs(pattern, padding=True, dtype=dtype)
    inputs["attention_mask"][0] = False  # an example with no real token at all
    leaves = [q, k, v, *inputs.get("global_qkv", ()), *inputs.get("aggregated_kv", ())]
    for tensor in leaves:
        tensor.requires_grad_(True)
    out = attnreg.attention(q, k, v, pattern, backend="reference", **inputs)
    out.float().square().sum().backward()
    padded = ~inputs["attention_mask"][:, None, :, None].expand_as(out)
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    assert not out[padded].any()
    for tensor in leaves:
        assert torch.isfinite(tensor.grad).all()
    assert not q.grad[padded].any()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_match_the_float64_result(dtype):
    pattern = PATTERNS["everything"]
    q, k, v, inputs = make_inputs(pattern, padding=True, dtype=dtype)
    expected = naive_attention(q, k, v, pattern, inputs)
    out = attnreg.attention(q, k, v, pattern, backend="reference", **inputs)
    torch.testing.assert_close(out.double(), expected, rtol=0.02, atol=0.02)


def test_gradcheck_in_float64_for_every_differentiable_input():
    pattern = Pattern(
        window=Window(1, 1),
        selected_globals=SelectedGlobals(own_projections=True),
        aggregated_globals=AggregatedGlobals(2),
        bias=RelativePositionBias(6, 8),
        aggregated_bias=RelativePositionBias(4, 6),
    )
    generator = torch.Generator().manual_seed(1)

    def leaf(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64, requires_grad=True)

    batch, heads, length, dim = 1, 2, 6, 3
    q, k, v, gq, gk, gv = (leaf(batch, heads, length, dim) for _ in range(6))
    ak, av = leaf(batch, heads, 3, dim), leaf(batch, heads, 3, dim)
    bias_weight, aggregated_bias_weight = leaf(6, heads), leaf(4, heads)
    attention_mask = torch.tensor([[True, True, True, True, True, False]])
    global_mask = torch.tensor([[False, True, False, False, False, False]])

    def run(q, k, v, gq, gk, gv, ak, av, bias_weight, aggregated_bias_weight):
        return attnreg.attention(
            q,
            k,
            v,
            pattern,
            attention_mask=attention_mask,
            global_mask=global_mask,
            global_qkv=(gq, gk, gv),
            aggregated_kv=(ak, av),
            bias_weight=bias_weight,
            aggregated_bias_weight=aggregated_bias_weight,
            backend="reference",
        )

    assert torch.autograd.gradcheck(run, (q, k, v, gq, gk, gv, ak, av, bias_weight, aggregated_bias_weight))


@pytest.mark.parametrize("backend", ["reference", "dense-sdpa"])
def test_dense_engines_run_on_the_device_of_their_inputs_without_masks(backend):
    pattern = PATTERNS["tglobal"]
    q = torch.randn(1, 2, 7, 4, device="meta")
    aggregated = torch.randn(1, 2, 2, 4, device="meta")
    table = torch.randn(8, 2, device="meta")
    out = attnreg.attention(
        q,
        q,
        q,
        pattern,
        aggregated_kv=(aggregated, aggregated),
        bias_weight=table,
        aggregated_bias_weight=table,
        backend=backend,
    )
    assert out.shape == q.shape
    assert out.device.type == "meta"

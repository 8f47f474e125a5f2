"""``attn_implementation="attnreg"`` in transformers' decoder LLMs: each layer's own pattern (causal, sliding window,
chunks, softcap, sinks) read from the model, equal to eager on left-padded batches, and cached generation (greedy,
sampling, beam) giving eager's tokens."""

from __future__ import annotations

import logging

import pytest
import torch

transformers = pytest.importorskip("transformers")

import attnreg  # noqa: E402
from attnreg.integrations import decoder, transformers_bridge  # noqa: E402

SIZES = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2}
ALTERNATING = ["sliding_attention", "full_attention"]


def _configs() -> dict[str, tuple[str, str, dict]]:
    """Per family: the model class, the config class and its fields (a window of 4 tokens, so that the test lengths
    cross it; sliding and full layers alternate where the family has both)."""
    return {
        "llama": ("LlamaForCausalLM", "LlamaConfig", {}),
        "mistral": ("MistralForCausalLM", "MistralConfig", {"sliding_window": 4}),
        "qwen2": ("Qwen2ForCausalLM", "Qwen2Config",
                  {"use_sliding_window": True, "sliding_window": 4, "layer_types": ALTERNATING}),
        "qwen3": ("Qwen3ForCausalLM", "Qwen3Config",
                  {"head_dim": 8, "use_sliding_window": True, "sliding_window": 4, "layer_types": ALTERNATING}),
        "gemma2": ("Gemma2ForCausalLM", "Gemma2Config",
                   {"head_dim": 8, "sliding_window": 4, "attn_logit_softcapping": 2.0, "final_logit_softcapping": 5.0}),
        "gemma3": ("Gemma3ForCausalLM", "Gemma3TextConfig",
                   {"head_dim": 8, "sliding_window": 4, "layer_types": ALTERNATING}),
        "cohere2": ("Cohere2ForCausalLM", "Cohere2Config", {"sliding_window": 4, "layer_types": ALTERNATING}),
        "gpt-oss": ("GptOssForCausalLM", "GptOssConfig",
                    {"head_dim": 8, "sliding_window": 4, "layer_types": ALTERNATING, "num_local_experts": 2,
                     "num_experts_per_tok": 1}),
        "llama4-chunked": ("Llama4ForCausalLM", "Llama4TextConfig",
                           {"head_dim": 8, "attention_chunk_size": 4, "num_local_experts": 2, "num_experts_per_tok": 1,
                            "intermediate_size_mlp": 64, "no_rope_layers": [1, 0], "interleave_moe_layer_step": 1}),
    }


FAMILIES = [name for name, (model, config, _) in _configs().items() if hasattr(transformers, model)]


@pytest.fixture(scope="module", autouse=True)
def registered() -> None:
    transformers_bridge.register_all()


def make_model(family: str) -> torch.nn.Module:
    model_name, config_name, fields = _configs()[family]
    config = getattr(transformers, config_name)(**SIZES, **fields)
    torch.manual_seed(0)
    model = getattr(transformers, model_name)(config).eval()
    if family == "gpt-oss":
        with torch.no_grad():
            for module in model.modules():
                if hasattr(module, "sinks"):
                    module.sinks.normal_(0.0, 2.0)  # sink logits that matter
    return model


def left_padded(batch: int = 3, length: int = 13) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and a mask with 0, 4 and 9 padded tokens on the left: windows and chunks crossed."""
    ids = torch.randint(3, 60, (batch, length), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    for row, pad in enumerate((0, 4, 9)[:batch]):
        mask[row, :pad] = 0
    return ids, mask


def _run(model: torch.nn.Module, implementation: str, fn):
    model.set_attn_implementation(implementation)
    with torch.no_grad():
        return fn(model)


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_equal_eager_on_a_left_padded_batch(family: str) -> None:
    model = make_model(family)
    ids, mask = left_padded()
    expected = _run(model, "eager", lambda m: m(ids, attention_mask=mask).logits)
    got = _run(model, "attnreg", lambda m: m(ids, attention_mask=mask).logits)
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("search", ["greedy", "beam", "sampling"])
def test_cached_generation_gives_eagers_tokens(family: str, search: str) -> None:
    model = make_model(family)
    ids, mask = left_padded()
    options = {"greedy": {"do_sample": False}, "beam": {"do_sample": False, "num_beams": 3},
               "sampling": {"do_sample": True, "top_k": 0, "top_p": 1.0}}[search]

    def generate(m: torch.nn.Module) -> torch.Tensor:
        torch.manual_seed(0)
        return m.generate(ids, attention_mask=mask, max_new_tokens=9, use_cache=True, pad_token_id=0, **options)

    expected = _run(model, "eager", generate)
    got = _run(model, "attnreg", generate)
    assert got.shape[1] > ids.shape[1] and torch.equal(got, expected)


@pytest.mark.parametrize(("family", "cache"), [("gemma3", "the model's"), ("mistral", "whole context")])
def test_a_sliding_layer_decodes_over_its_window_not_the_context(family, cache, monkeypatch) -> None:
    """Each cached step of a sliding layer sees at most its window of keys, whether its cache holds the window (the
    model's own) or the whole context (a ``DynamicCache()`` made without the config); a full layer sees it all.
    The tokens are eager's."""
    model = make_model(family)
    seen: list[tuple[int | None, int]] = []
    step = decoder._cached_step

    def record(query, key, value, mask, *args):
        seen.append((mask.window, key.shape[2]))
        return step(query, key, value, mask, *args)

    def generate(model):
        given = {} if cache == "the model's" else {"cache": transformers.DynamicCache()}
        return model.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False, **given)

    monkeypatch.setattr(decoder, "_cached_step", record)
    ids, mask = left_padded(batch=1, length=13)
    got = _run(model, "attnreg", generate)
    sliding = {keys for window, keys in seen if window == 4}
    full = [keys for window, keys in seen if window is None]
    assert sliding and max(sliding) <= 4
    if family == "mistral":
        assert not full  # every Mistral layer slides
    else:
        assert max(full) == 13 + 19
    assert torch.equal(got, _run(model, "eager", generate))


def test_whole_sequences_run_on_a_linear_engine(caplog: pytest.LogCaptureFixture) -> None:
    """A long prefill's sliding layers run on the blocked engine (the dispatcher's choice, in linear memory)."""
    model = make_model("mistral")
    ids = torch.randint(3, 60, (1, 2048))
    with caplog.at_level(logging.DEBUG, logger="attnreg"):
        _run(model, "attnreg", lambda m: m(ids, use_cache=False))
    engines = {message.split("'")[1] for message in caplog.messages if message.startswith("engine ")}
    assert engines == {"blocked"}


def _gradients_per_implementation(model: torch.nn.Module, power: int) -> dict[str, dict[str, torch.Tensor]]:
    """Per implementation (eager, attnreg): the parameters' gradients of the sum of the real tokens' logits raised
    to ``power``, on a left-padded batch."""
    ids, mask = left_padded()
    grads = {}
    for implementation in ("eager", "attnreg"):
        model.set_attn_implementation(implementation)
        model.zero_grad()
        model(ids, attention_mask=mask).logits[mask.bool()].pow(power).sum().backward()
        grads[implementation] = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return grads


def test_training_gradients_equal_eagers() -> None:
    grads = _gradients_per_implementation(make_model("gemma2").train(), power=2)
    assert grads["eager"].keys() == grads["attnreg"].keys()
    for name, grad in grads["attnreg"].items():
        torch.testing.assert_close(grad, grads["eager"][name], atol=1e-5, rtol=1e-4, msg=name)


def test_sink_logits_get_their_gradient() -> None:
    grads = _gradients_per_implementation(make_model("gpt-oss").train(), power=1)
    sinks = {which: [g for name, g in found.items() if name.endswith(".sinks")] for which, found in grads.items()}
    assert sinks["attnreg"] and all(bool(g.abs().sum() > 0) for g in sinks["attnreg"])
    for got, expected in zip(sinks["attnreg"], sinks["eager"], strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_the_compiled_decode_step_with_a_static_cache_gives_eagers_tokens() -> None:
    """transformers compiles the decode step with a static cache: attnreg's layers trace without a graph break."""
    model = make_model("gemma2")
    ids, mask = left_padded()
    config = transformers.CompileConfig(fullgraph=True, backend="eager")
    config._compile_all_devices = True  # transformers compiles on CUDA by default; here on CPU too

    def generate(m: torch.nn.Module) -> torch.Tensor:
        return m.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, cache_implementation="static",
                          compile_config=config)

    expected = _run(model, "eager", generate)
    torch._dynamo.reset()
    got = _run(model, "attnreg", generate)
    assert torch.equal(got, expected)


def test_packed_sequences_are_refused_naming_the_mask() -> None:
    model = make_model("mistral")
    ids = torch.randint(3, 60, (1, 10))
    packed = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4]])
    with pytest.raises(attnreg.PatternError, match="mask function 'remap_positions_for_packed_sequence"):
        _run(model, "attnreg", lambda m: m(ids, position_ids=packed, use_cache=False))


def test_a_prepared_4d_mask_is_refused_naming_the_layer() -> None:
    model = make_model("llama")
    ids = torch.randint(3, 60, (1, 6))
    dense = torch.zeros(1, 1, 6, 6)
    with pytest.raises(attnreg.PatternError, match=r"cannot run LlamaAttention \(layer 0\): its attention mask"):
        _run(model, "attnreg", lambda m: m(ids, attention_mask=dense, use_cache=False))


def test_bidirectional_encoders_still_run() -> None:
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64)
    torch.manual_seed(0)
    model = transformers.BertModel(config).eval()
    ids, mask = left_padded()
    expected = _run(model, "eager", lambda m: m(ids, attention_mask=mask).last_hidden_state)
    got = _run(model, "attnreg", lambda m: m(ids, attention_mask=mask).last_hidden_state)
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], atol=1e-5, rtol=1e-5)


BAD = {
    "outside-window": ("value", 0, 5, float("nan")),
    "padded": ("value", 1, 1, float("inf")),
    "seen-key": ("key", 0, 10, float("nan")),
    "seen-inf-key": ("key", 0, 9, float("inf")),
    "seen-value": ("value", 0, 10, float("nan")),
}


def _step_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, decoder.LayerMask]:
    """One decode step against 12 cached keys of a sliding layer (window 4) in a left-padded batch of 2."""
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(2, 2, 1, 8, generator=generator)
    key, value = (torch.randn(2, 2, 12, 8, generator=generator) for _ in range(2))
    padding = torch.ones(2, 12, dtype=torch.bool)
    padding[1, :3] = False
    return query, key, value, decoder.LayerMask(True, 4, None, None, padding, q_offset=11, kv_offset=0, kv_length=12)


@pytest.mark.parametrize("where", sorted(BAD))
@pytest.mark.parametrize("softcap", [None, 2.0], ids=["sdpa", "explicit"])
def test_a_cached_step_keeps_a_non_finite_key_or_value_in_the_rows_that_see_it(where: str, softcap) -> None:
    """A NaN or Inf outside the window or in the padding leaves the step exact; one the query sees makes its row
    non-finite; the other example is untouched (on the fused SDPA path, and on the explicit one softcap needs)."""
    query, key, value, mask = _step_inputs()
    options = {"scaling": 8**-0.5, "softcap": softcap}
    clean, _ = decoder._cached_step(query, key, value, mask, options, 0.0)
    tensors = {"key": key.clone(), "value": value.clone()}
    name, example, position, bad = BAD[where]
    tensors[name][example, :, position] = bad
    out, _ = decoder._cached_step(query, tensors["key"], tensors["value"], mask, options, 0.0)
    if where.startswith("seen"):
        assert not out[0].isfinite().any()
        torch.testing.assert_close(out[1], clean[1])
    else:
        torch.testing.assert_close(out, clean)


def test_a_cached_step_reads_nothing_where_reads_cost_a_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on an accelerator: the step makes no host read (a NaN outside the window may then spread, as in SDPA)."""
    monkeypatch.setattr("attnreg.execution.host.host_readable", lambda x: False)
    query, key, value, mask = _step_inputs()

    def sync(*args, **kwargs):
        raise AssertionError("host sync in the cached step")

    for name in ("item", "tolist", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, sync)
    out, weights = decoder._cached_step(query, key, value, mask, {"scaling": 8**-0.5}, 0.0)
    monkeypatch.undo()
    assert out.shape == (2, 2, 1, 8) and weights is None and out.isfinite().all()

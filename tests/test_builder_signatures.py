"""Model builders are plain functions with real signatures; the generic ones still take ``n_heads``, warning.

``inspect.signature``, ``help()`` and the registry see each builder as written: a module-level function, not a
closure with a patched name. ``num_heads`` is the head count's one name; ``n_heads`` works for one release.
"""

from __future__ import annotations

import importlib
import inspect
import json

import pytest
import torch

import attnreg
import attnreg.nn
from attnreg.bench.cases import bare_variants
from attnreg.bench.inputs import random_inputs
from attnreg.execution.call import make_call, part_tensor_shapes
from attnreg.models.generic import CONFIG_FILE, build_encoder, build_encoder_decoder
from attnreg.pattern.scores import alibi_slopes
from attnreg.testing.inputs import make_inputs

SIZES = {"pattern": "causal", "vocab_size": 12, "d_model": 16, "n_layers": 1, "d_ff": 32, "max_length": 16}
GENERIC = {"encoder": build_encoder, "encoder-decoder": build_encoder_decoder}


@pytest.mark.parametrize("name", attnreg.list_builders())
def test_every_registered_builder_is_a_plain_module_level_function(name: str) -> None:
    builder = attnreg.get_registry().builder(name).builder
    assert inspect.isfunction(builder) and "<locals>" not in builder.__qualname__
    assert getattr(importlib.import_module(builder.__module__), builder.__qualname__) is builder
    assert not hasattr(builder, "__wrapped__") and "__signature__" not in vars(builder)
    assert builder.__doc__ and builder.__doc__.strip()


@pytest.mark.parametrize("name", GENERIC)
def test_the_generic_builders_are_registered_as_written(name: str) -> None:
    builder = attnreg.get_registry().builder(name).builder
    assert builder is GENERIC[name] and builder.__name__ == f"build_{name.replace('-', '_')}"
    parameters = inspect.signature(builder).parameters.values()
    assert [(p.name, p.kind, p.default) for p in parameters] == [
        ("config", inspect.Parameter.POSITIONAL_OR_KEYWORD, None),
        ("pretrained", inspect.Parameter.KEYWORD_ONLY, None),
        ("overrides", inspect.Parameter.VAR_KEYWORD, inspect.Parameter.empty),
    ]


@pytest.mark.parametrize("name", GENERIC)
def test_num_heads_sets_the_head_count_without_a_warning(name: str, recwarn: pytest.WarningsRecorder) -> None:
    model = attnreg.build(name, **SIZES, num_heads=2)
    assert model.config.num_heads == 2
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]


@pytest.mark.parametrize("name", GENERIC)
@pytest.mark.parametrize("where", ["override", "config"])
def test_the_old_n_heads_still_works_with_a_warning_naming_num_heads(name: str, where: str) -> None:
    arguments = {"config": {**SIZES, "n_heads": 2}} if where == "config" else {**SIZES, "n_heads": 2}
    with pytest.warns(DeprecationWarning, match="n_heads is renamed num_heads") as caught:
        model = attnreg.build(name, **arguments)
    assert model.config.num_heads == 2
    assert caught[0].filename == __file__  # the warning points at the caller's line, not at attnreg


def test_n_heads_and_num_heads_together_are_an_error() -> None:
    with pytest.raises(attnreg.PatternError, match=r"n_heads=2 .*pass num_heads alone"):
        attnreg.build("encoder", **SIZES, n_heads=2, num_heads=4)


def test_a_model_saved_under_n_heads_loads_with_a_warning(tmp_path) -> None:
    attnreg.build("encoder", **SIZES, num_heads=2).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / CONFIG_FILE).read_text())
    saved["n_heads"] = saved.pop("num_heads")
    (tmp_path / CONFIG_FILE).write_text(json.dumps(saved))
    with pytest.warns(DeprecationWarning, match="save the model again"):
        loaded = attnreg.build("encoder", pretrained=str(tmp_path))
    assert loaded.config.num_heads == 2


# --- heads is num_heads in the execution layer too ------------------------------------------------------------------

WINDOW = attnreg.Pattern(window=attnreg.Window(2, 2), bias=attnreg.RelativePositionBias(8, 16))
BARE = {"batch": 1, "device": torch.device("cpu"), "dtype": torch.float32, "grad": False, "engines": ["reference"]}


def _old_heads_calls() -> dict:
    """Each public helper that took ``heads=``, called under the old name: what it returns."""
    linear = torch.nn.Linear(6, 12)
    x = torch.randn(1, 5, 6)
    return {
        "project_heads": lambda **kw: attnreg.nn.project_heads(x, linear.weight, linear.bias, head_dim=3, **kw)[0],
        "project_linears": lambda **kw: attnreg.nn.project_linears(x, [linear], head_dim=3, **kw)[0],
        "part_tensor_shapes": lambda **kw: part_tensor_shapes(WINDOW, batch=1, length=5, head_dim=3, **kw),
        "make_inputs": lambda **kw: make_inputs(WINDOW, batch=1, length=5, **kw).tensors["q"].shape,
        "random_inputs": lambda **kw: random_inputs(WINDOW, 5, **kw)["q"].shape,
        "alibi_slopes": lambda **kw: alibi_slopes(**kw),
        "ALiBi.term": lambda **kw: attnreg.ALiBi().term(torch.arange(3)[:, None], torch.arange(3)[None], **kw),
        "bare_variants": lambda **kw: [v.label for v in bare_variants(WINDOW, 5, **BARE, **kw)],
    }


@pytest.mark.parametrize("helper", sorted(_old_heads_calls()))
def test_the_old_heads_keyword_still_works_with_a_warning_naming_num_heads(helper: str) -> None:
    call = _old_heads_calls()[helper]
    expected = call(num_heads=4)
    with pytest.warns(DeprecationWarning, match=r"heads is renamed num_heads") as caught:
        got = call(heads=4)
    if isinstance(expected, torch.Tensor):
        torch.testing.assert_close(got, expected)
    else:
        assert got == expected
    assert caught[0].filename == __file__
    with pytest.raises(attnreg.PatternError, match=r"heads=4 .*pass num_heads alone"):
        call(heads=4, num_heads=4)


def test_attention_call_heads_is_num_heads_with_a_warning() -> None:
    q = torch.randn(1, 3, 5, 4)
    call = make_call(q, q, q, attnreg.Pattern(window=attnreg.Window(1, 1)))
    assert call.num_heads == 3
    with pytest.warns(DeprecationWarning, match="AttentionCall.heads is renamed num_heads") as caught:
        assert call.heads == 3
    assert caught[0].filename == __file__


def test_explain_takes_num_heads_and_its_old_name_with_a_note(capsys: pytest.CaptureFixture[str]) -> None:
    from attnreg.cli import main

    for option, note in (("--num-heads", ""), ("--heads", "attnreg: --heads is renamed --num-heads")):
        assert main(["explain", "longt5-local", "--length", "64", option, "3"]) == 0
        out, err = capsys.readouterr()
        assert "3 heads" in out and note in err and (note or not err)

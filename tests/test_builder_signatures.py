"""Model builders are plain functions with real signatures; the generic ones still take ``n_heads``, warning.

``inspect.signature``, ``help()`` and the registry see each builder as written: a module-level function, not a
closure with a patched name. ``num_heads`` is the head count's one name; ``n_heads`` works for one release.
"""

from __future__ import annotations

import importlib
import inspect
import json

import pytest

import attnreg
from attnreg.models.generic import CONFIG_FILE, build_encoder, build_encoder_decoder

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

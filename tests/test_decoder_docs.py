"""The decoder examples of ``docs/integrations.md``, each run as written on a tiny random checkpoint of its family."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from test_decoder_llms import FAMILIES, make_model

PAGE = Path(__file__).resolve().parents[1] / "docs" / "integrations.md"
#: The hub id each example loads, and the family of the tiny checkpoint the test saves in its place.
CHECKPOINTS = {
    "mistralai/Mistral-7B-v0.1": "mistral",
    "meta-llama/Llama-3.2-1B": "llama",
    "Qwen/Qwen2.5-0.5B": "qwen2",
    "google/gemma-2-2b": "gemma2",
    "google/gemma-3-1b-pt": "gemma3",
    "openai/gpt-oss-20b": "gpt-oss",
}


def examples() -> dict[str, str]:
    """The page's python blocks that load one of :data:`CHECKPOINTS`, by hub id."""
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.DOTALL)
    return {hub: block for block in blocks for hub in CHECKPOINTS if f'"{hub}"' in block}


def test_the_page_has_an_example_per_family() -> None:
    assert sorted(examples()) == sorted(CHECKPOINTS)


def _run(code: str, name: str) -> dict:
    namespace: dict = {}
    exec(compile(code, name, "exec"), namespace)  # the documented example itself
    return namespace


@pytest.mark.parametrize("hub", sorted(CHECKPOINTS))
def test_the_example_runs_as_written_and_gives_eagers_result(hub: str, tmp_path: Path, capsys) -> None:
    family = CHECKPOINTS[hub]
    if family not in FAMILIES:
        pytest.skip(f"the installed transformers has no {family} model")
    make_model(family).save_pretrained(tmp_path)
    code = examples()[hub].replace(f'"{hub}"', repr(str(tmp_path)))
    ours = _run(code, f"{PAGE.name}[{hub}]")
    assert ours["model"].config._attn_implementation == "attnreg"
    assert capsys.readouterr().out.strip()
    eager = _run(code.replace('attn_implementation="attnreg"', 'attn_implementation="eager"'), "eager")
    result = next(name for name in ("tokens", "logits", "loss") if name in ours)
    torch.testing.assert_close(ours[result], eager[result], atol=1e-5, rtol=1e-5)
    if family == "gpt-oss":
        assert ours["model"].model.layers[0].self_attn.sinks.grad.abs().sum() > 0


def test_the_readmes_decoder_example_runs_as_written(tmp_path: Path) -> None:
    readme = PAGE.parents[1] / "README.md"
    hub = "mistralai/Mistral-7B-v0.1"
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", readme.read_text(), re.DOTALL) if f'"{hub}"' in b]
    make_model("mistral").save_pretrained(tmp_path)
    llm = _run(block.replace(f'"{hub}"', repr(str(tmp_path))), "README.md")["llm"]
    assert llm.config._attn_implementation == "attnreg"
    assert llm.generate(torch.tensor([[1, 5, 9]]), max_new_tokens=3, do_sample=False).shape == (1, 6)

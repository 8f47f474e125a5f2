"""docs/gallery.md says what the code does today: every picture is what its ``attnreg show`` command prints, every
cost is what ``pattern.cost(16384)`` gives, every engine verdict is the engine's own, and its Python runs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch

import attnreg
from attnreg.cli import main
from attnreg.execution import make_call
from attnreg.pattern.gallery import GALLERY

DOC = Path(__file__).resolve().parents[1] / "docs" / "gallery.md"
TEXT = DOC.read_text()
SHOWN = re.findall(r"^```text\n\$ (attnreg show [^\n]*)\n(.*?)^```", TEXT, re.MULTILINE | re.DOTALL)
COSTS = re.findall(
    r"^## `([\w-]+)`\n.*?\*\*Cost at 16,384 tokens\*\* \(default parameters\): ([\d,]+) allowed pairs, density "
    r"([\d.]+)\.",
    TEXT,
    re.MULTILINE | re.DOTALL,
)
ENGINE_TABLE = re.findall(r"^\| `([\w-]+)` \| (\w+) \| (\w+) \| (\w+) \| (\w+) \|$", TEXT, re.MULTILINE)
ENGINES = ("blocked", "dense-sdpa", "reference", "xformers")


def verdict(engine: str, pattern: attnreg.Pattern) -> str:
    """What the engine says of a small call: ``yes``, or ``no`` when it refuses the pattern (a refusal of this
    machine, a CPU or no xformers installed, does not count: the page's xformers column is for CUDA)."""
    q = torch.zeros(1, 2, 16, 8)
    reasons = attnreg.get_registry().engine_table[engine].unsupported_reasons(make_call(q, q, q, pattern))
    return "no" if [reason for reason in reasons if "CUDA" not in reason] else "yes"


def test_the_page_has_a_section_a_picture_a_cost_and_engines_for_every_gallery_pattern():
    assert [name for name, *_ in COSTS] == list(GALLERY)
    assert [command.split()[2] for command, _ in SHOWN] == list(GALLERY)
    assert [row[0] for row in ENGINE_TABLE] == list(GALLERY)


@pytest.mark.parametrize(("command", "output"), SHOWN, ids=[command.split()[2] for command, _ in SHOWN])
def test_each_picture_is_what_attnreg_show_prints(command, output, capsys):
    assert main(shlex.split(command)[1:]) == 0
    assert capsys.readouterr().out == output


@pytest.mark.parametrize(("name", "pairs", "density"), COSTS, ids=[name for name, *_ in COSTS])
def test_each_cost_is_what_the_pattern_computes_with_its_defaults(name, pairs, density):
    cost = attnreg.get_pattern(name).cost(16384)
    assert (f"{cost.allowed_pairs:,}", f"{cost.density:.4f}") == (pairs, density)


@pytest.mark.parametrize("row", ENGINE_TABLE, ids=[row[0] for row in ENGINE_TABLE])
def test_each_engine_verdict_is_the_engines_own(row):
    name, *verdicts = row
    pattern = attnreg.get_pattern(name)
    assert dict(zip(ENGINES, verdicts, strict=True)) == {engine: verdict(engine, pattern) for engine in ENGINES}


@pytest.mark.parametrize(
    ("options", "verdicts"),
    [
        ({"softcap": 30.0}, {"blocked": "yes", "dense-sdpa": "no", "reference": "yes", "xformers": "no"}),
        ({"alibi": True}, {"blocked": "yes", "dense-sdpa": "yes", "reference": "yes", "xformers": "no"}),
    ],
    ids=["softcap", "alibi"],
)
def test_the_options_run_on_the_engines_the_page_names(options, verdicts):
    pattern = attnreg.get_pattern("sliding-window", left=4, right=0, **options)
    assert {engine: verdict(engine, pattern) for engine in ENGINES} == verdicts


def test_the_python_on_the_page_runs(capsys):
    (block,) = re.findall(r"^```python\n(.*?)^```", TEXT, re.MULTILINE | re.DOTALL)
    exec(compile(block, str(DOC), "exec"), {})
    assert "allowed_pairs=" in capsys.readouterr().out

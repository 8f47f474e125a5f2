"""The summarisation example of ``docs/longt5.md`` (and the README's), run as written on a saved random checkpoint."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from attnreg_longt5 import LongT5TransientGlobalAttention
from longt5_helpers import tiny_config
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LongT5ForConditionalGeneration, PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parents[3]
HUB_ID = '"pszemraj/long-t5-tglobal-base-16384-book-summary"'
READ_DOCUMENT = 'open("long_report.txt").read()'
WORDS = [
    "the",
    "a",
    "report",
    "finds",
    "that",
    "revenue",
    "grew",
    "while",
    "costs",
    "fell",
    "in",
    "every",
    "region",
    "this",
    "year",
    "and",
    "next",
]


def _example_code(path: Path) -> str | None:
    """The first python block of ``path`` that loads the hub checkpoint, or ``None``."""
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(), re.DOTALL)
    return next((block for block in blocks if HUB_ID in block), None)


def _save_tiny_checkpoint(folder: Path) -> None:
    """A random LongT5-TGlobal model and a word-level tokenizer over its vocabulary, as a hub folder would hold."""
    LongT5ForConditionalGeneration(tiny_config("longt5-tglobal")).save_pretrained(folder)
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {word: i + 3 for i, word in enumerate(WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_input_names=["input_ids", "attention_mask"],
    )
    tokenizer.save_pretrained(folder)


def test_the_docs_page_has_the_example():
    assert _example_code(ROOT / "docs" / "longt5.md") is not None


@pytest.mark.parametrize("page", ["docs/longt5.md", "README.md"])
def test_the_summarisation_example_runs_as_written(page, tmp_path):
    code = _example_code(ROOT / page)
    assert code is not None, f"{page} has no LongT5 summarisation example"
    _save_tiny_checkpoint(tmp_path)
    document = " ".join(WORDS[i % len(WORDS)] for i in range(97))
    for written in (HUB_ID, READ_DOCUMENT, "max_new_tokens=256"):
        assert written in code, f"the docs example no longer contains {written}"
    code = code.replace(HUB_ID, repr(str(tmp_path))).replace(READ_DOCUMENT, repr(document))
    code = code.replace("max_new_tokens=256", "max_new_tokens=6")
    namespace: dict = {}
    exec(compile(code, page, "exec"), namespace)
    model = namespace["model"]
    assert namespace["inputs"]["input_ids"].shape == (1, 97)
    assert isinstance(model.encoder.block[0].layer[0].TransientGlobalSelfAttention, LongT5TransientGlobalAttention)
    assert isinstance(namespace["summary"], str)

"""The code in ``docs/longformer.md`` runs as written, on random checkpoints and a word-level tokenizer saved here."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers.models.longformer import modeling_longformer

DOC = Path(__file__).resolve().parents[3] / "docs" / "longformer.md"
HUB_IDS = {
    "allenai/longformer-base-4096": "LongformerForMaskedLM",
    "allenai/longformer-large-4096-finetuned-triviaqa": "LongformerForQuestionAnswering",
}
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
WORDS = (
    "Paris is the capital of France . It a long document Who proposed Longformer ? was by Beltagy , Peters and Cohan"
)


def save_tokenizer(path: Path) -> None:
    """A word-level tokenizer with RoBERTa's special tokens and pair template, saved next to a checkpoint."""
    vocab = {token: index for index, token in enumerate([*SPECIALS, *WORDS.split()])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[(token, vocab[token]) for token in ("<s>", "</s>")],
    )
    wrapped = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
    )
    wrapped.save_pretrained(path)


def code_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_the_documented_code_runs(checkpoint) -> None:
    text = DOC.read_text()
    for hub_id, class_name in HUB_IDS.items():
        path = checkpoint(class_name, max_position_embeddings=1200)
        save_tokenizer(path)
        text = text.replace(hub_id, str(path))
    blocks = code_blocks(text)
    assert len(blocks) >= 4
    namespace: dict = {}
    printed = io.StringIO()
    original = modeling_longformer.LongformerSelfAttention
    try:
        with contextlib.redirect_stdout(printed):
            for block in blocks:
                exec(compile(block, str(DOC), "exec"), namespace)
    finally:
        modeling_longformer.LongformerSelfAttention = original
    assert len(printed.getvalue().splitlines()) == 2  # the filled mask and the answer span (random: any words)
    assert isinstance(namespace["qa"], transformers.LongformerForQuestionAnswering)
    assert isinstance(namespace["model"], transformers.LongformerForMaskedLM)
    question_tokens = len(namespace["question"].split()) + 1  # <s> and the question's words are global
    assert namespace["global_attention_mask"][0].tolist()[: question_tokens + 2] == [1] * question_tokens + [0, 0]


def test_documented_pattern_block() -> None:
    namespace: dict = {}
    exec(code_blocks(DOC.read_text())[2], namespace)
    assert namespace["pattern"].window == namespace["attnreg"].Window(256, 256)
    assert namespace["skewed"].window == namespace["attnreg"].Window(384, 128)

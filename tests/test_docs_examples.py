"""Every Python block of README.md and docs/*.md runs as written, and names nothing it does not define or import.

A reader copies one block into a file and runs it, so each block is checked on its own: ruff's undefined-name and
unused-import rules (F821, F401) on the block written alone to a file, then the block executed in a fresh module.
What cannot be on this machine is swapped in at the edges only: each hub id becomes a tiny random checkpoint (and
tokenizer) saved once per session, a file the block reads is written into a temporary working directory, and the
training script of docs/distributed.md gets torchrun's environment for one process on gloo.

plugin-authoring.md marks two kinds of block that are not programs of their own, and runs them as the page says:
``file=PATH`` blocks are the files of a plugin package (imported and registered here; tests/test_example_plugin.py
also installs them), with the ``run`` block run against it; the three ``part`` blocks are one module in three
cells, run in order in one module.
"""

from __future__ import annotations

import importlib
import logging
import re
import shutil
import socket
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import attnreg

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python([^\n]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
HUB_ID = re.compile(r"\"([\w.-]+/[\w.-]+)\"")
#: Words of the documents the examples read; the tiny tokenizers know them.
WORDS = [
    "the", "a", "report", "finds", "that", "revenue", "grew", "while", "costs", "fell", "in", "every", "region",
    "this", "year", "and", "next", "Paris", "is", "capital", "of", "France", ".", "It", "long", "document", "Who",
    "proposed", "Longformer", "?", "was", "by", "Beltagy", ",", "Peters", "Cohan",
]
#: The files the examples open, written into their working directory.
FILES = {"long_report.txt": " ".join(WORDS[:17] * 6)}  # the report's words, six times


@dataclass(frozen=True)
class Block:
    """One fenced ``python`` block: its page, its index among the page's python blocks, its marker and its code."""

    page: Path
    index: int
    marker: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}[{self.index}]"


def blocks() -> list[Block]:
    return [
        Block(page, index, marker.strip(), code)
        for page in PAGES
        for index, (marker, code) in enumerate(FENCE.findall(page.read_text()))
    ]


BLOCKS = blocks()
STANDALONE = [block for block in BLOCKS if not block.marker]
PACKAGE_FILES = [block for block in BLOCKS if block.marker.startswith("file=")]
RUN_WITH_PACKAGE = [block for block in BLOCKS if block.marker == "run"]
PARTS = [block for block in BLOCKS if block.marker == "part"]


def test_every_python_block_is_run_here() -> None:
    assert len(STANDALONE) + len(PACKAGE_FILES) + len(RUN_WITH_PACKAGE) + len(PARTS) == len(BLOCKS)
    assert {block.page.name for block in PACKAGE_FILES + RUN_WITH_PACKAGE + PARTS} <= {"plugin-authoring.md"}
    assert len(PARTS) == 3 and RUN_WITH_PACKAGE


# --- names -----------------------------------------------------------------------------------------------------


def _ruff() -> str:
    beside = Path(sys.executable).parent / "ruff"
    found = str(beside) if beside.exists() else shutil.which("ruff")
    if found is None:
        pytest.skip("ruff is not installed")
    return found


@pytest.mark.parametrize("block", BLOCKS, ids=[block.id for block in BLOCKS])
def test_the_block_alone_imports_every_name_it_uses_and_no_other(block: Block, tmp_path: Path) -> None:
    path = tmp_path / "block.py"
    path.write_text(block.code)
    command = [_ruff(), "check", "--isolated", "--no-cache", "--select", "F821,F401", "--output-format", "concise"]
    result = subprocess.run([*command, str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{block.id}:\n{result.stdout}{result.stderr}"


# --- the tiny checkpoints that stand for the hub ids ---------------------------------------------------------------


def _save_word_tokenizer(folder: Path, specials: dict[str, str], *, pair_template: bool) -> None:
    """A word-level tokenizer over :data:`WORDS` with ``specials`` (role -> token), saved as a hub folder holds one."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate([*dict.fromkeys(specials.values()), *dict.fromkeys(WORDS)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=specials["unk_token"]))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if pair_template:  # RoBERTa's: <s> A </s> </s> B </s>
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>",
            pair="<s> $A </s> </s> $B </s>",
            special_tokens=[(token, vocab[token]) for token in ("<s>", "</s>")],
        )
    PreTrainedTokenizerFast(tokenizer_object=backend, **specials).save_pretrained(folder)


def _longt5(folder: Path) -> None:
    from transformers import LongT5Config, LongT5ForConditionalGeneration

    config = LongT5Config(
        vocab_size=64, d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=2, num_decoder_layers=2, local_radius=4,
        global_block_size=3, relative_attention_num_buckets=8, relative_attention_max_distance=12,
        encoder_attention_type="transient-global", decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )
    model = LongT5ForConditionalGeneration(config)
    model.generation_config.suppress_tokens = [0, *range(2, config.vocab_size)]  # only </s>: a summary ends at once
    model.save_pretrained(folder)
    _save_word_tokenizer(folder, {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}, pair_template=False)


def _longformer(class_name: str) -> Callable[[Path], None]:
    def save(folder: Path) -> None:
        import transformers

        config = transformers.LongformerConfig(
            vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            attention_window=[4, 8], max_position_embeddings=1024, type_vocab_size=1, pad_token_id=1,
            bos_token_id=0, eos_token_id=2, sep_token_id=2, architectures=[class_name],
        )
        getattr(transformers, class_name)(config).save_pretrained(folder)
        specials = {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
                    "mask_token": "<mask>", "sep_token": "</s>", "cls_token": "<s>"}
        _save_word_tokenizer(folder, specials, pair_template=True)

    return save


def _bert(folder: Path) -> None:
    import transformers

    config = transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37
    )
    transformers.BertModel(config).save_pretrained(folder)


def _decoder(family: str) -> Callable[[Path], None]:
    def save(folder: Path) -> None:
        from test_decoder_llms import FAMILIES, make_model

        if family not in FAMILIES:
            pytest.skip(f"the installed transformers has no {family} model")
        make_model(family).save_pretrained(folder)

    return save


#: Each hub id a block loads, and how to save the tiny random checkpoint the test loads in its place.
CHECKPOINTS: dict[str, Callable[[Path], None]] = {
    "pszemraj/long-t5-tglobal-base-16384-book-summary": _longt5,
    "allenai/longformer-base-4096": _longformer("LongformerForMaskedLM"),
    "allenai/longformer-large-4096-finetuned-triviaqa": _longformer("LongformerForQuestionAnswering"),
    "google-bert/bert-base-uncased": _bert,
    "mistralai/Mistral-7B-v0.1": _decoder("mistral"),
    "meta-llama/Llama-3.2-1B": _decoder("llama"),
    "meta-llama/Llama-3.1-8B": _decoder("llama"),
    "Qwen/Qwen2.5-0.5B": _decoder("qwen2"),
    "google/gemma-2-2b": _decoder("gemma2"),
    "google/gemma-3-1b-pt": _decoder("gemma3"),
    "openai/gpt-oss-20b": _decoder("gpt-oss"),
}


def test_every_hub_id_in_a_block_has_a_tiny_checkpoint() -> None:
    used = {hub for block in BLOCKS for hub in HUB_ID.findall(block.code)}
    assert used == set(CHECKPOINTS)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``checkpoint(hub_id)``: the folder of the tiny checkpoint standing for ``hub_id``, saved on first use."""
    saved: dict[str, Path] = {}

    def folder(hub_id: str) -> Path:
        if hub_id not in saved:
            path = tmp_path_factory.mktemp(hub_id.replace("/", "--"))
            torch.manual_seed(0)
            CHECKPOINTS[hub_id](path)
            saved[hub_id] = path
        return saved[hub_id]

    return folder


# --- running ---------------------------------------------------------------------------------------------------


def run_as_module(code: str, name: str) -> dict:
    """Execute ``code`` as the body of a fresh module ``name``, in ``sys.modules`` while it runs as a script's
    ``__main__`` is (so that ``sys.modules[__name__]`` and dataclasses work), and return its namespace."""
    module = types.ModuleType(name)
    sys.modules[name] = module
    try:
        exec(compile(code, name, "exec"), module.__dict__)
    finally:
        del sys.modules[name]
    return module.__dict__


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A working directory holding :data:`FILES`; the logging set-up and transformers' classes a block changes
    for the whole process are put back afterwards."""
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    try:
        from transformers.models.longformer import modeling_longformer
    except ImportError:
        pass
    else:  # docs/longformer.md's drop-in example replaces transformers' layer class
        monkeypatch.setattr(modeling_longformer, "LongformerSelfAttention", modeling_longformer.LongformerSelfAttention)
    root, library = logging.getLogger(), logging.getLogger("attnreg")
    handlers, level = root.handlers[:], library.level
    yield tmp_path
    root.handlers[:] = handlers
    library.setLevel(level)


def _free_port() -> int:
    """A TCP port free on the loopback now, for the process group's rendezvous."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _one_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchrun's environment for a world of one process."""
    for name, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0",
                        "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(name, value)


def run_block(block: Block, checkpoint: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch) -> dict:
    """Run ``block`` as written, its hub ids replaced by the tiny checkpoints' folders."""
    code = block.code
    for hub_id in HUB_ID.findall(code):
        code = code.replace(f'"{hub_id}"', repr(str(checkpoint(hub_id))))
    if "init_process_group" in code:
        import torch.distributed as dist

        _one_process_group(monkeypatch)
        try:
            return run_as_module(code, block.id)
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
    return run_as_module(code, block.id)


@pytest.mark.parametrize("block", STANDALONE, ids=[block.id for block in STANDALONE])
def test_the_block_runs_as_written(block: Block, checkpoint, sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    if "transformers" in block.code:
        pytest.importorskip("transformers")
    run_block(block, checkpoint, monkeypatch)


def test_the_training_script_runs_under_fully_shard_too(checkpoint, sandbox, monkeypatch) -> None:
    (script,) = [block for block in STANDALONE if "fully_shard" in block.code]
    monkeypatch.setenv("WRAP", "fsdp")
    namespace = run_block(script, checkpoint, monkeypatch)
    assert namespace["wrap"] == "fsdp" and torch.isfinite(namespace["loss"])


def test_the_part_blocks_run_in_order_as_one_module(sandbox, capsys) -> None:
    """The page's three cells: the plugin module, its registration at run time, and the pattern on two engines."""
    try:
        namespace = run_as_module("\n".join(block.code for block in PARTS), "chunked_doc")
    finally:
        if "chunked" in attnreg.get_registry().plugins:
            attnreg.unregister_plugin("chunked")
    assert capsys.readouterr().out.startswith("chunked chunk Chunk\n")
    assert namespace["pattern"] == namespace["chunked_causal"](size=4)


@pytest.fixture
def doc_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Block]]:
    """The plugin package of plugin-authoring.md's ``file=`` blocks, written to a folder, imported and registered."""
    files = {block.marker.removeprefix("file="): block for block in PACKAGE_FILES}
    for name, block in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(block.code)
    monkeypatch.syspath_prepend(str(tmp_path))
    attnreg.register_plugin(importlib.import_module("attnreg_bandglobal.plugin"), "bandglobal")
    try:
        yield files
    finally:
        attnreg.unregister_plugin("bandglobal")
        for module in [name for name in sys.modules if name.split(".")[0] == "attnreg_bandglobal"]:
            del sys.modules[module]


def test_the_plugin_files_and_the_run_block_run(doc_plugin: dict[str, Block], capsys) -> None:
    """The package's files import and register, the ``run`` block trains on its pattern, and its test file's own
    behaviour test passes; its conformance test (about a minute here) is run by tests/test_example_plugin.py, on the
    installed package."""
    assert attnreg.get_pattern("band-global", radius=2) == sys.modules["attnreg_bandglobal"].band_global(radius=2)
    for block in RUN_WITH_PACKAGE:
        run_as_module(block.code, block.id)
    assert "torch.Size([2, 40, 100])" in capsys.readouterr().out
    tests = run_as_module(doc_plugin["tests/test_bandglobal.py"].code, "test_bandglobal")
    tests["test_a_global_token_sees_everything"]()
    assert callable(tests["test_passes_the_conformance_suite"])

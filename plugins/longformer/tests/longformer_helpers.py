"""Helpers shared by the Longformer plugin tests: the tiny model sizes and batches with padding and global tokens."""

from __future__ import annotations

from collections.abc import Sequence

import torch

TINY_CONFIG = {
    "vocab_size": 64,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 37,
    "attention_window": [4, 8],
    "max_position_embeddings": 64,
    "type_vocab_size": 1,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "sep_token_id": 2,
}


def make_batch(
    lengths: Sequence[int], globals_: Sequence[Sequence[int]], *, length: int | None = None, seed: int = 0
) -> dict[str, torch.Tensor]:
    """``input_ids``, ``attention_mask`` and ``global_attention_mask`` for examples of ``lengths`` (right-padded)."""
    length = length or max(lengths)
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, TINY_CONFIG["vocab_size"], (len(lengths), length), generator=generator)
    positions = torch.arange(length)
    attention_mask = (positions[None, :] < torch.tensor(lengths)[:, None]).long()
    input_ids = input_ids.masked_fill(attention_mask == 0, TINY_CONFIG["pad_token_id"])
    global_attention_mask = torch.zeros_like(attention_mask)
    for row, positions_ in enumerate(globals_):
        global_attention_mask[row, list(positions_)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "global_attention_mask": global_attention_mask}


def layer_inputs(
    real: Sequence[int],
    globals_: Sequence[Sequence[int]],
    length: int,
    dtype: torch.dtype = torch.float32,
    *,
    hidden_size: int = 16,
    seed: int = 1,
) -> dict:
    """A self-attention layer's arguments as transformers 5's encoder builds them: finfo.min for padding,
    finfo.max for global tokens, the index masks derived from it."""
    mask = torch.zeros(len(real), length, dtype=dtype)
    for row, (count, positions) in enumerate(zip(real, globals_, strict=True)):
        mask[row, list(positions)] = torch.finfo(dtype).max
        mask[row, count:] = torch.finfo(dtype).min
    hidden = torch.randn(len(real), length, hidden_size, generator=torch.Generator().manual_seed(seed)).to(dtype)
    return {
        "hidden_states": hidden,
        "attention_mask": mask,
        "is_index_masked": mask < 0,
        "is_index_global_attn": mask > 0,
        "is_global_attn": bool((mask > 0).any()),
    }


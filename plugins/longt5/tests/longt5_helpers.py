"""Helpers shared by the LongT5 plugin's tests: tiny configs with odd block sizes and padded batches."""

from __future__ import annotations

import torch
from transformers import LongT5Config

LOCAL_RADIUS = 4  # blocks of 5 tokens
GLOBAL_BLOCK_SIZE = 3
KINDS = {"longt5-local": "local", "longt5-tglobal": "transient-global"}


def tiny_config(kind: str, **overrides) -> LongT5Config:
    """A 2-layer LongT5 config small enough for the dense reference, with odd block sizes."""
    fields = {
        "vocab_size": 64,
        "d_model": 32,
        "d_kv": 8,
        "num_heads": 4,
        "d_ff": 48,
        "num_layers": 2,
        "num_decoder_layers": 2,
        "local_radius": LOCAL_RADIUS,
        "global_block_size": GLOBAL_BLOCK_SIZE,
        "relative_attention_num_buckets": 8,
        "relative_attention_max_distance": 12,
        "dropout_rate": 0.0,
        "feed_forward_proj": "gated-gelu",
        "decoder_start_token_id": 0,
        "encoder_attention_type": KINDS[kind],
    }
    return LongT5Config(**{**fields, **overrides})


def padded_batch(lengths: list[int], vocab: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``input_ids`` (no pad or eos ids) right-padded to the longest, and their attention mask."""
    generator = torch.Generator().manual_seed(seed)
    longest = max(lengths)
    ids = torch.randint(2, vocab, (len(lengths), longest), generator=generator)
    mask = (torch.arange(longest)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids * mask, mask


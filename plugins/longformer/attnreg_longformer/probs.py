"""Dense attention weights rearranged into the local and global probabilities transformers' Longformer returns.

Only for ``output_attentions``: it reads the O(length²) weights of :func:`attnreg.attention_weights`.
"""

from __future__ import annotations

import torch

from attnreg import SelectedGlobals


def transformers_probs(
    weights: torch.Tensor, global_mask: torch.Tensor | None, one_sided_window: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Local ``(batch, length, heads, count + 2w + 1)`` and global ``(batch, heads, count, length)`` probabilities.

    ``weights`` is ``(batch, heads, length, length)``; ``count`` is the batch's largest number of global tokens.
    Local: the columns are the global keys (in position order), then keys ``i - w .. i + w``; a global key
    inside the window is in its global column only; rows of global and padded tokens are zeros. Global: each
    global token's row over all keys. Slots past an example's own global count hold transformers' filler: zeros
    in the local probabilities and a uniform ``1 / length`` row in the global ones.
    """
    batch, heads, length, _ = weights.shape
    if global_mask is None:
        global_mask = torch.zeros(batch, length, dtype=torch.bool, device=weights.device)
    count = int(global_mask.sum(dim=-1).max()) if batch else 0
    positions, slot_is_global = SelectedGlobals.slots(global_mask, count)

    offsets = torch.arange(-one_sided_window, one_sided_window + 1, device=weights.device)
    keys = torch.arange(length, device=weights.device)[:, None] + offsets
    in_range = (keys >= 0) & (keys < length)
    keys = keys.clamp(0, length - 1)
    window = weights.gather(-1, keys.expand(batch, heads, length, -1))
    in_window_only = in_range & ~global_mask[:, keys]
    window = window.masked_fill(~in_window_only[:, None], 0.0)

    to_globals = weights.gather(-1, positions[:, None, None, :].expand(batch, heads, length, count))
    to_globals = to_globals.masked_fill(~slot_is_global[:, None, None, :], 0.0)
    local = torch.cat([to_globals, window], dim=-1).masked_fill(global_mask[:, None, :, None], 0.0)

    from_globals = weights.gather(2, positions[:, None, :, None].expand(batch, heads, count, length))
    from_globals = from_globals.masked_fill(~slot_is_global[:, None, :, None], 1.0 / length)
    return local.transpose(1, 2), from_globals

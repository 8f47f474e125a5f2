"""``attnreg.attention``: run a pattern on the fastest engine that supports the inputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from attnreg._validation import require
from attnreg.execution.call import make_call
from attnreg.execution.dispatch import choose, run
from attnreg.execution.reference import reference_weights
from attnreg.pattern.prepared import PreparedMask
from attnreg.pattern.spec import Pattern
from attnreg.pinning import pinned_backend
from attnreg.registry import get_registry


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern | PreparedMask,
    *,
    attention_mask: torch.Tensor | None = None,
    global_mask: torch.Tensor | None = None,
    global_qkv: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    aggregated_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    bias_weight: torch.Tensor | None = None,
    aggregated_bias_weight: torch.Tensor | None = None,
    max_globals: int | None = None,
    dropout_p: float = 0.0,
    dropout_mask: torch.Tensor | None = None,
    document_ids: torch.Tensor | None = None,
    backend: str | Sequence[str] | None = None,
) -> torch.Tensor:
    """Attention of ``(batch, heads, length, head_dim)`` queries, keys and values under ``pattern``.

    ``pattern`` is a :class:`Pattern` with this batch's masks as keywords, or a :class:`PreparedMask` from
    ``pattern.prepare(length, attention_mask=..., document_ids=..., global_mask=..., max_globals=...)``, made once per
    batch and passed to every layer (engines keep what they build from the masks in it); the per-batch keywords
    are then not passed again.

    ``attention_mask`` is ``(batch, length)``, True (or 1) for real tokens; ``global_mask`` marks selected global
    tokens; ``global_qkv`` are the global rows' own projections; ``aggregated_kv`` the keys and values of the
    aggregated tokens; ``bias_weight`` and ``aggregated_bias_weight`` the ``(num_buckets, heads)`` tables of the
    pattern's relative-position biases. ``max_globals`` bounds the global tokens of an example: the fast engines
    then read nothing back from the device (no CUDA sync; ``torch.compile`` traces them). ``backend`` names an
    engine (or several, to choose among), as a ``with attnreg.backend(...)`` block does; one that cannot run the
    call is an error that says why. Padded queries give zeros.

    ``dropout_p`` is dropout of the attention probabilities, as ``scaled_dot_product_attention``'s: inverted dropout
    on the final normalised weights over all of a query's keys, applied whenever it is > 0 (a module passes 0 in
    eval mode), keep flags from torch's default generator. ``dropout_mask`` ``(batch, heads, length, length +
    count)`` bool gives the keep flags instead of drawing them (O(length²): for comparing engines exactly).
    ``document_ids`` ``(batch, length)`` integers pack several documents in one row: a token key of another
    document than the query's is never seen, whatever the pattern.
    """
    call = make_call(
        q,
        k,
        v,
        pattern,
        attention_mask=attention_mask,
        global_mask=global_mask,
        global_qkv=global_qkv,
        aggregated_kv=aggregated_kv,
        bias_weight=bias_weight,
        aggregated_bias_weight=aggregated_bias_weight,
        max_globals=max_globals,
        dropout_p=dropout_p,
        dropout_mask=dropout_mask,
        document_ids=document_ids,
    )
    engine = choose(call, get_registry().engines(), pinned_backend() if backend is None else backend)
    return run(engine, call)


def attention_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern | PreparedMask,
    **inputs: torch.Tensor | tuple[torch.Tensor, ...] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The output and the dense attention weights ``(batch, heads, length, length + count)``, from the reference.

    Takes the same keyword inputs as :func:`attention` (no ``backend``). O(length²): for ``output_attentions``,
    inspection and tests, never the fast path. Keys are the tokens followed by the aggregated tokens. With
    ``dropout_p`` the weights are the dropped ones the output was computed from (as transformers returns them).
    """
    require("backend" not in inputs, "backend", inputs.get("backend"), "attention_weights always uses the reference")
    weights, output = reference_weights(make_call(q, k, v, pattern, **inputs))
    return output, weights.to(q.dtype)

"""``AttentionCall``: the checked inputs of one attention call, the single thing every engine receives."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnreg._validation import PatternError, describe, require
from attnreg.execution.dropout import AttentionDropout, make_dropout
from attnreg.pattern.spec import Pattern

#: The floating inputs of a call, which engines may differentiate, in the order they are reported.
TENSOR_NAMES = (
    "q",
    "k",
    "v",
    "global_q",
    "global_k",
    "global_v",
    "aggregated_k",
    "aggregated_v",
    "bias_weight",
    "aggregated_bias_weight",
)


def part_tensor_shapes(
    pattern: Pattern, *, batch: int, heads: int, length: int, head_dim: int, global_projections: bool = True
) -> dict[str, tuple[int, ...]]:
    """The shapes of the tensors ``pattern``'s parts take beyond q, k and v, by name, in :data:`TENSOR_NAMES` order:
    global projections (own projections, with ``global_projections``), aggregated keys and values, bias tables."""
    shapes: dict[str, tuple[int, ...]] = {}
    selected = pattern.selected_globals
    if selected is not None and selected.own_projections and global_projections:
        shapes.update(dict.fromkeys(("global_q", "global_k", "global_v"), (batch, heads, length, head_dim)))
    if pattern.aggregated_globals is not None:
        count = pattern.aggregated_count(length)
        shapes.update(dict.fromkeys(("aggregated_k", "aggregated_v"), (batch, heads, count, head_dim)))
    if pattern.bias is not None:
        shapes["bias_weight"] = (pattern.bias.num_buckets, heads)
    if pattern.aggregated_bias is not None:
        shapes["aggregated_bias_weight"] = (pattern.aggregated_bias.num_buckets, heads)
    return shapes


def as_keywords(tensors: dict[str, torch.Tensor]) -> dict[str, object]:
    """Part tensors by name (as :func:`part_tensor_shapes` names them) as ``attnreg.attention``'s keywords:
    ``global_qkv`` and ``aggregated_kv`` tuples, the bias tables as they are."""
    keywords: dict[str, object] = {}
    if "global_q" in tensors:
        keywords["global_qkv"] = (tensors["global_q"], tensors["global_k"], tensors["global_v"])
    if "aggregated_k" in tensors:
        keywords["aggregated_kv"] = (tensors["aggregated_k"], tensors["aggregated_v"])
    keywords.update({name: tensors[name] for name in ("bias_weight", "aggregated_bias_weight") if name in tensors})
    return keywords


@dataclass(frozen=True)
class AttentionCall:
    """One pattern applied to ``(batch, heads, length, head_dim)`` queries, keys and values, inputs checked.

    - ``attention_mask``: ``(batch, length)`` bool, True for real tokens (padding is False), or ``None``;
    - ``global_mask``: ``(batch, length)`` bool, True for selected global tokens, or ``None``;
    - ``global_q/k/v``: the global rows' own projections, shaped as ``q`` (selected globals with own projections);
    - ``aggregated_k/v``: ``(batch, heads, count, head_dim)`` keys and values of the aggregated tokens;
    - ``bias_weight`` / ``aggregated_bias_weight``: ``(num_buckets, heads)`` learned relative-position tables;
    - ``max_globals``: a bound on selected global tokens per example, or ``None`` (see :meth:`global_slots`);
    - ``dropout``: dropout of the attention probabilities, or ``None`` (see :class:`AttentionDropout`);
    - ``document_ids``: ``(batch, length)`` int64 document of each token (packed sequences), or ``None``: a token
      key of another document than the query's is never seen.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    pattern: Pattern
    attention_mask: torch.Tensor | None = None
    global_mask: torch.Tensor | None = None
    global_q: torch.Tensor | None = None
    global_k: torch.Tensor | None = None
    global_v: torch.Tensor | None = None
    aggregated_k: torch.Tensor | None = None
    aggregated_v: torch.Tensor | None = None
    bias_weight: torch.Tensor | None = None
    aggregated_bias_weight: torch.Tensor | None = None
    max_globals: int | None = None
    dropout: AttentionDropout | None = None
    document_ids: torch.Tensor | None = None

    @property
    def batch(self) -> int:
        return self.q.shape[0]

    @property
    def heads(self) -> int:
        return self.q.shape[1]

    @property
    def length(self) -> int:
        return self.q.shape[2]

    @property
    def head_dim(self) -> int:
        return self.q.shape[3]

    @property
    def count(self) -> int:
        """Aggregated keys after the token keys."""
        return self.pattern.aggregated_count(self.length)

    @property
    def dtype(self) -> torch.dtype:
        return self.q.dtype

    @property
    def device(self) -> torch.device:
        return self.q.device

    @property
    def scale(self) -> float:
        return self.pattern.score_scale(self.head_dim)

    @property
    def has_global_projections(self) -> bool:
        return self.global_q is not None

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor input by name (``None`` ones left out)."""
        return {name: getattr(self, name) for name in TENSOR_NAMES if getattr(self, name) is not None}

    def global_slots(self, counts: torch.Tensor) -> int:
        """How many global slots per example engines lay out, from ``(batch,)`` global token ``counts``.

        With ``max_globals`` the count is static (nothing is read back from the device, so CUDA never waits and
        ``torch.compile`` traces it; more globals than the bound fail an asynchronous device assert); without it,
        the batch's largest count is read back once.
        """
        if self.max_globals is None:
            return int(counts.max()) if counts.numel() else 0
        torch._assert_async((counts <= self.max_globals).all(), "an example has more global tokens than max_globals")
        return min(self.max_globals, self.length)

    def materialize(self):  # -> DenseLayout
        """The pattern spelled out densely for this call's masks and documents (O(length²): reference engines)."""
        return self.pattern.materialize(
            self.length, self.attention_mask, self.global_mask, document_ids=self.document_ids, device=self.device
        )

    def with_aggregated(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``k`` and ``v`` followed by the aggregated tokens' keys and values along the length (the key order of the
        dense layout: tokens, then aggregated tokens); unchanged without them."""
        if self.aggregated_k is None:
            return k, v
        return torch.cat([k, self.aggregated_k], dim=2), torch.cat([v, self.aggregated_v], dim=2)

    @property
    def requires_grad(self) -> bool:
        """Whether any floating input needs a gradient (so an engine must support backward)."""
        return torch.is_grad_enabled() and any(t.requires_grad for t in self.tensors().values())


def general_part_reasons(call: AttentionCall) -> list[str]:
    """Why an engine built for the window, global and bias parts alone cannot run ``call``: the open parts it has
    (a mask part, score terms, a softcap, document ids), each named."""
    pattern = call.pattern
    reasons = []
    if pattern.mask is not None:
        reasons.append(f"mask part {pattern.mask.kind!r} is not supported")
    if pattern.score_terms:
        reasons.append(f"score terms {[t.kind for t in pattern.score_terms]} are not supported")
    if pattern.softcap is not None:
        reasons.append("softcap is not supported")
    if call.document_ids is not None:
        reasons.append("document_ids are not supported")
    return reasons


def make_call(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern,
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
) -> AttentionCall:
    """Check every input against ``pattern`` and each other; errors name the argument, value and what is allowed."""
    require(isinstance(pattern, Pattern), "pattern", pattern, "expected an attnreg.Pattern (see attnreg.get_pattern)")
    _check_qkv(q, k, v)
    batch, heads, length, head_dim = q.shape
    attention_mask = _check_mask("attention_mask", attention_mask, q)
    global_mask = _check_mask("global_mask", global_mask, q)
    document_ids = _check_documents(document_ids, q, pattern)

    selected = pattern.selected_globals
    if global_mask is not None:
        require(selected is not None, "global_mask", "a tensor", "this pattern has no selected_globals")
    if max_globals is not None:
        require(selected is not None, "max_globals", max_globals, "this pattern has no selected_globals; pass None")
        require(
            isinstance(max_globals, int) and not isinstance(max_globals, bool) and max_globals >= 0,
            "max_globals",
            max_globals,
            "expected None or an int >= 0 (a bound on global tokens per example)",
        )
    global_q = global_k = global_v = None
    if global_qkv is not None:
        require(
            selected is not None and selected.own_projections,
            "global_qkv",
            "a tuple of tensors",
            "only patterns whose selected_globals have own_projections=True take global projections",
        )
        require(
            isinstance(global_qkv, (tuple, list)) and len(global_qkv) == 3,
            "global_qkv",
            type(global_qkv).__name__,
            "expected a (global_q, global_k, global_v) tuple",
        )
        for name, tensor in zip(("global_q", "global_k", "global_v"), global_qkv, strict=True):
            _check_like(name, tensor, q, tuple(q.shape))
        global_q, global_k, global_v = global_qkv
        require(global_mask is not None, "global_qkv", "a tuple of tensors", "needs a global_mask saying which rows")

    aggregated_k = aggregated_v = None
    if pattern.aggregated_globals is not None:
        count = pattern.aggregated_count(length)
        require(
            aggregated_kv is not None,
            "aggregated_kv",
            None,
            f"this pattern has aggregated_globals: pass (keys, values) of shape {(batch, heads, count, head_dim)}",
        )
        require(
            isinstance(aggregated_kv, (tuple, list)) and len(aggregated_kv) == 2,
            "aggregated_kv",
            type(aggregated_kv).__name__,
            "expected an (aggregated_k, aggregated_v) tuple",
        )
        for name, tensor in zip(("aggregated_k", "aggregated_v"), aggregated_kv, strict=True):
            _check_like(name, tensor, q, (batch, heads, count, head_dim))
        aggregated_k, aggregated_v = aggregated_kv
    else:
        require(aggregated_kv is None, "aggregated_kv", "a tuple of tensors", "this pattern has no aggregated_globals")

    bias_weight = _check_bias("bias_weight", bias_weight, pattern.bias, q)
    aggregated_bias_weight = _check_bias("aggregated_bias_weight", aggregated_bias_weight, pattern.aggregated_bias, q)
    keys = length + (0 if aggregated_k is None else aggregated_k.shape[2])
    dropout = make_dropout(
        dropout_p, dropout_mask, batch=batch, heads=heads, length=length, keys=keys, device=q.device
    )
    return AttentionCall(
        q=q,
        k=k,
        v=v,
        pattern=pattern,
        attention_mask=attention_mask,
        global_mask=global_mask,
        global_q=global_q,
        global_k=global_k,
        global_v=global_v,
        aggregated_k=aggregated_k,
        aggregated_v=aggregated_v,
        bias_weight=bias_weight,
        aggregated_bias_weight=aggregated_bias_weight,
        max_globals=max_globals,
        dropout=dropout,
        document_ids=document_ids,
    )


def _check_documents(document_ids: torch.Tensor | None, q: torch.Tensor, pattern: Pattern) -> torch.Tensor | None:
    """``(batch, length)`` integer document ids on q's device, as int64; documents and aggregated tokens (which
    sum blocks that may cross documents) cannot be composed."""
    if document_ids is None:
        return None
    shape = (q.shape[0], q.shape[2])
    require(
        isinstance(document_ids, torch.Tensor) and tuple(document_ids.shape) == shape,
        "document_ids",
        describe(document_ids),
        f"expected an integer tensor (batch, length) = {shape}",
    )
    require(
        not document_ids.is_floating_point() and document_ids.dtype != torch.bool and not document_ids.is_complex(),
        "document_ids.dtype",
        document_ids.dtype,
        "expected an integer dtype (a document number per token)",
    )
    device = document_ids.device
    require(device == q.device, "document_ids.device", device, f"expected q's device {q.device}")
    require(
        pattern.aggregated_globals is None,
        "document_ids",
        describe(document_ids),
        "this pattern has aggregated_globals, whose block tokens sum across document boundaries; the two cannot be "
        "composed",
    )
    return document_ids.long()


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    require(
        isinstance(q, torch.Tensor) and q.dim() == 4,
        "q",
        describe(q),
        "expected a (batch, heads, length, head_dim) tensor",
    )
    require(
        q.is_floating_point(), "q.dtype", q.dtype, "expected a floating dtype (float32, bfloat16, float16, float64)"
    )
    require(all(q.shape), "q.shape", tuple(q.shape), "every dimension must be at least 1")
    _check_like("k", k, q, tuple(q.shape))
    _check_like("v", v, q, tuple(q.shape))


def _check_like(name: str, tensor: object, q: torch.Tensor, shape: tuple[int, ...]) -> None:
    """``tensor`` must have ``shape`` and share ``q``'s dtype and device."""
    require(isinstance(tensor, torch.Tensor), name, describe(tensor), f"expected a tensor of shape {shape}")
    require(tuple(tensor.shape) == shape, f"{name}.shape", tuple(tensor.shape), f"expected {shape}")
    require(tensor.dtype == q.dtype, f"{name}.dtype", tensor.dtype, f"expected q's dtype {q.dtype}")
    require(tensor.device == q.device, f"{name}.device", tensor.device, f"expected q's device {q.device}")


def _check_mask(name: str, mask: torch.Tensor | None, q: torch.Tensor) -> torch.Tensor | None:
    if mask is None:
        return None
    shape = (q.shape[0], q.shape[2])
    require(isinstance(mask, torch.Tensor), name, describe(mask), f"expected a bool tensor of shape {shape}")
    require(tuple(mask.shape) == shape, f"{name}.shape", tuple(mask.shape), f"expected (batch, length) = {shape}")
    require(mask.device == q.device, f"{name}.device", mask.device, f"expected q's device {q.device}")
    require(
        mask.dtype == torch.bool or not mask.is_floating_point(),
        f"{name}.dtype",
        mask.dtype,
        "expected bool (or integer 0/1); float masks are ambiguous",
    )
    return mask.bool()


def _check_bias(name: str, weight: torch.Tensor | None, term: object, q: torch.Tensor) -> torch.Tensor | None:
    if term is None:
        require(weight is None, name, describe(weight), "this pattern has no such bias term; pass None")
        return None
    shape = (term.num_buckets, q.shape[1])
    if weight is None:
        raise PatternError(
            f"{name}=None is not allowed: this pattern has a relative-position bias; "
            f"pass its learned table of shape (num_buckets, heads) = {shape}"
        )
    require(
        isinstance(weight, torch.Tensor) and tuple(weight.shape) == shape,
        f"{name}.shape",
        tuple(weight.shape) if isinstance(weight, torch.Tensor) else weight,
        f"expected {shape}",
    )
    require(weight.is_floating_point(), f"{name}.dtype", weight.dtype, "expected a floating dtype")
    require(
        weight.dtype in (q.dtype, torch.float32),
        f"{name}.dtype",
        weight.dtype,
        f"expected q's dtype {q.dtype} or torch.float32",
    )
    require(weight.device == q.device, f"{name}.device", weight.device, f"expected q's device {q.device}")
    return weight

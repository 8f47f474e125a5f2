"""``AttentionCall``: the checked inputs of one attention call, the single thing every engine receives."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TypeVar

import torch

from attnreg._deprecation import first_caller_outside_attnreg, renamed_keywords
from attnreg._validation import PatternError, describe, require
from attnreg.execution.dropout import AttentionDropout, make_dropout
from attnreg.pattern.prepared import BATCH_INPUTS, PreparedMask, prepare
from attnreg.pattern.spec import Pattern

T = TypeVar("T")

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


@renamed_keywords(heads="num_heads")
def part_tensor_shapes(
    pattern: Pattern, *, batch: int, num_heads: int, length: int, head_dim: int, global_projections: bool = True
) -> dict[str, tuple[int, ...]]:
    """The shapes of the tensors ``pattern``'s parts take beyond q, k and v, by name, in :data:`TENSOR_NAMES` order:
    global projections (own projections, with ``global_projections``), aggregated keys and values, bias tables."""
    shapes: dict[str, tuple[int, ...]] = {}
    selected = pattern.selected_globals
    if selected is not None and selected.own_projections and global_projections:
        shapes.update(dict.fromkeys(("global_q", "global_k", "global_v"), (batch, num_heads, length, head_dim)))
    if pattern.aggregated_globals is not None:
        count = pattern.aggregated_count(length)
        shapes.update(dict.fromkeys(("aggregated_k", "aggregated_v"), (batch, num_heads, count, head_dim)))
    if pattern.bias is not None:
        shapes["bias_weight"] = (pattern.bias.num_buckets, num_heads)
    if pattern.aggregated_bias is not None:
        shapes["aggregated_bias_weight"] = (pattern.aggregated_bias.num_buckets, num_heads)
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
      key of another document than the query's is never seen;
    - ``prepared``: the :class:`PreparedMask` these per-batch inputs came from, where engines keep what they derive
      from them for the next layer (see :meth:`per_batch`).
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
    prepared: PreparedMask | None = None

    @property
    def batch(self) -> int:
        return self.q.shape[0]

    @property
    def num_heads(self) -> int:
        return self.q.shape[1]

    @property
    def heads(self) -> int:
        """Deprecated name of :attr:`num_heads`."""
        warnings.warn(
            "AttentionCall.heads is renamed num_heads (heads will stop working in a later release)",
            DeprecationWarning,
            stacklevel=first_caller_outside_attnreg(),
        )
        return self.num_heads

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

    def per_batch(self, key: Hashable, build: Callable[[], T]) -> T:
        """``build()``, kept in the prepared mask for the next layer when this call's per-batch inputs are that mask's
        (a call changed with ``dataclasses.replace`` builds afresh): structures derived from masks, never from
        tensors that carry gradients."""
        prepared = self.prepared
        if prepared is None or any(getattr(prepared, name) is not getattr(self, name) for name in BATCH_INPUTS):
            return build()
        return prepared.per_batch(key, build)

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


def slot_count_reasons(call: AttentionCall) -> list[str]:
    """Why an engine that lays out global slots cannot trace ``call``: without ``max_globals`` the slot count is read
    from the data (see :meth:`AttentionCall.global_slots`)."""
    if call.pattern.selected_globals is not None and call.global_mask is not None and call.max_globals is None:
        return ["the number of selected global tokens is read from the data; pass max_globals= to fix it"]
    return []


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
) -> AttentionCall:
    """Check every input against ``pattern`` and each other; errors name the argument, value and what is allowed.

    ``pattern`` is a :class:`Pattern` with this batch's ``attention_mask``, ``global_mask``, ``document_ids`` and
    ``max_globals`` (prepared here), or a :class:`PreparedMask` that already holds them.
    """
    require(
        isinstance(pattern, (Pattern, PreparedMask)),
        "pattern",
        pattern,
        "expected an attnreg.Pattern (see attnreg.get_pattern) or a PreparedMask (pattern.prepare(...))",
    )
    _check_qkv(q, k, v)
    batch, heads, length, head_dim = q.shape
    given = {"attention_mask": attention_mask, "global_mask": global_mask, "document_ids": document_ids}
    given["max_globals"] = max_globals
    if isinstance(pattern, PreparedMask):
        prepared = pattern
        for name, value in given.items():
            require(value is None, name, describe(value), "the prepared mask holds it already; pass it to prepare()")
        prepared.check_fits(batch, length, q.device)
    else:
        prepared = prepare(pattern, length, **given, batch=batch, device=q.device, device_name="q's device")
    pattern = prepared.pattern
    attention_mask, global_mask, document_ids = prepared.attention_mask, prepared.global_mask, prepared.document_ids
    max_globals = prepared.max_globals
    selected = pattern.selected_globals
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
        dropout_p, dropout_mask, batch=batch, num_heads=heads, length=length, keys=keys, device=q.device
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
        prepared=prepared,
    )


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

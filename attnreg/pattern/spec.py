"""``Pattern``: one attention pattern as a frozen value made of the parts in :mod:`attnreg.pattern.parts`.

A pattern states what each query may see and what is added to its scores; engines decide how to run it.
It validates itself, round-trips through plain dicts (JSON) and pickle, compares by value, and reports its cost.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from typing import Any

import torch

from attnreg._validation import only_keys, require
from attnreg.pattern.parts import AggregatedGlobals, RelativePositionBias, SelectedGlobals, Window
from attnreg.pattern.predicates import MaskPart, ScoreTerm, part_from_dict, part_to_dict

_PART_TYPES: dict[str, type] = {
    "window": Window,
    "selected_globals": SelectedGlobals,
    "aggregated_globals": AggregatedGlobals,
    "bias": RelativePositionBias,
    "aggregated_bias": RelativePositionBias,
}


def _positive(name: str, value: object, default: str) -> float:
    """``value`` as a float after checking it is a finite number > 0 (errors name ``name`` and say ``default``)."""
    require(
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0,
        name,
        value,
        f"expected {default} or a finite number > 0",
    )
    return float(value)


@dataclass(frozen=True)
class Cost:
    """What a pattern costs at one length, computed without materialising it."""

    length: int
    allowed_pairs: int
    flops: int
    density: float


@dataclass(frozen=True, repr=False)
class Pattern:
    """An attention pattern: which keys each query sees, the extra global keys, the additive bias, the scale.

    - ``window``: keys ``i - left <= j <= i + right``; ``None`` lets every query see every key.
    - ``selected_globals``: per-example global tokens from a run-time ``global_mask`` (symmetric).
    - ``aggregated_globals``: one extra key per fixed block of tokens (LongT5 TGlobal).
    - ``bias``: relative-position bias over token keys, by ``j - i``.
    - ``aggregated_bias``: relative-position bias over aggregated keys, by ``g - block(i)``.
    - ``scale``: the score scale; ``None`` means ``1 / sqrt(head_dim)`` (LongT5 uses ``1.0``).
    - ``mask``: a :class:`~attnreg.pattern.predicates.MaskPart` (any registered kind, composed with ``&`` / ``|``)
      that token pairs must also satisfy: ``allowed = window ∧ mask``, then the global parts.
    - ``score_terms``: registered :class:`~attnreg.pattern.predicates.ScoreTerm` parts added to the scores (ALiBi).
    - ``softcap``: scores become ``softcap * tanh(score / softcap)``, on the scaled ``q·k`` before any bias.

    Key padding is always honoured: padded keys are never seen, a padded query's output is zeros. A call's
    ``document_ids`` restrict every pattern's token keys to the query's own document.
    """

    window: Window | None = None
    selected_globals: SelectedGlobals | None = None
    aggregated_globals: AggregatedGlobals | None = None
    bias: RelativePositionBias | None = None
    aggregated_bias: RelativePositionBias | None = None
    scale: float | None = None
    mask: MaskPart | None = None
    score_terms: tuple[ScoreTerm, ...] = ()
    softcap: float | None = None

    def __post_init__(self) -> None:
        for name, part_type in _PART_TYPES.items():
            value = getattr(self, name)
            require(
                value is None or isinstance(value, part_type),
                f"Pattern.{name}",
                value,
                f"expected None or an attnreg {part_type.__name__}",
            )
        require(
            self.aggregated_bias is None or self.aggregated_globals is not None,
            "Pattern.aggregated_bias",
            self.aggregated_bias,
            "needs aggregated_globals: a bias over aggregated keys without aggregated keys means nothing",
        )
        if self.scale is not None:
            object.__setattr__(self, "scale", _positive("Pattern.scale", self.scale, "None (1/sqrt(head_dim))"))
        require(
            self.mask is None or isinstance(self.mask, MaskPart),
            "Pattern.mask",
            self.mask,
            "expected None or a mask part (attnreg.MaskPart: Band, KeyRange, ... composed with & and |)",
        )
        if isinstance(self.score_terms, list):
            object.__setattr__(self, "score_terms", tuple(self.score_terms))
        require(
            isinstance(self.score_terms, tuple) and all(isinstance(t, ScoreTerm) for t in self.score_terms),
            "Pattern.score_terms",
            self.score_terms,
            "expected a tuple of score terms (attnreg.ScoreTerm, e.g. ALiBi())",
        )
        if self.softcap is not None:
            object.__setattr__(self, "softcap", _positive("Pattern.softcap", self.softcap, "None"))

    def __repr__(self) -> str:
        parts = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if getattr(self, f.name) not in (None, ())]
        return f"Pattern({', '.join(parts)})"

    # --- what a run needs -------------------------------------------------------------------------------

    @property
    def has_score_mods(self) -> bool:
        """Whether scores are modified beyond the learned tables: score terms or a softcap."""
        return bool(self.score_terms) or self.softcap is not None

    @property
    def is_causal(self) -> bool:
        """True when no query sees anything after itself: a causal window or mask, and no global tokens (both look
        ahead)."""
        causal = (self.window is not None and self.window.is_causal) or (self.mask is not None and self.mask.causal)
        return causal and self.selected_globals is None and self.aggregated_globals is None

    def score_scale(self, head_dim: int) -> float:
        """The factor applied to ``q @ k^T``."""
        return 1.0 / math.sqrt(head_dim) if self.scale is None else self.scale

    def aggregated_count(self, length: int) -> int:
        """How many aggregated global keys a sequence of ``length`` tokens has (0 without aggregated globals)."""
        return 0 if self.aggregated_globals is None else self.aggregated_globals.count(length)

    def materialize(
        self,
        length: int,
        attention_mask: torch.Tensor | None = None,
        global_mask: torch.Tensor | None = None,
        *,
        document_ids: torch.Tensor | None = None,
        device: torch.device | str | None = None,
    ):  # -> DenseLayout; imported lazily to keep the spec free of the dense code
        """The dense ground truth at ``length``: allowed matrix, bias positions, aggregation. O(length²): tests only.

        ``document_ids`` keep token keys within the query's document. Without masks the layout is built on
        ``device`` (default: the CPU); with masks, on theirs.
        """
        from attnreg.pattern.dense import materialize

        return materialize(
            self, length, attention_mask=attention_mask, global_mask=global_mask, document_ids=document_ids,
            device=device,
        )

    def prepare(
        self,
        length: int,
        *,
        attention_mask: torch.Tensor | None = None,
        global_mask: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        max_globals: int | None = None,
    ):  # -> PreparedMask
        """This pattern bound to one batch's per-batch inputs, checked once, for every layer's ``attnreg.attention``.

        ``attention_mask`` / ``global_mask`` ``(batch, length)`` bool (True: real token / global token),
        ``document_ids`` ``(batch, length)`` integers, ``max_globals`` a bound on global tokens per example. Engines
        keep what they build from these in the prepared mask, so later layers reuse it.
        """
        from attnreg.pattern.prepared import prepare

        return prepare(
            self,
            length,
            attention_mask=attention_mask,
            global_mask=global_mask,
            document_ids=document_ids,
            max_globals=max_globals,
        )

    def cost(self, length: int, *, num_globals: int = 0, head_dim: int = 64, num_heads: int = 1) -> Cost:
        """Allowed query-key pairs, FLOPs (``q @ k^T`` and ``p @ v``) and density at ``length``, no padding.

        ``num_globals`` selected global tokens sit at the first positions. O(length) work, nothing quadratic.
        """
        from attnreg.pattern.dense import allowed_pairs

        require(isinstance(length, int) and length >= 1, "length", length, "expected an int >= 1")
        pairs = allowed_pairs(self, length, num_globals=num_globals)
        keys = length + self.aggregated_count(length)
        return Cost(
            length=length,
            allowed_pairs=pairs,
            flops=4 * pairs * head_dim * num_heads,
            density=pairs / (length * keys),
        )

    # --- plain data -------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (JSON-ready) from which :meth:`from_dict` rebuilds an equal pattern."""
        data: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or value == ():
                continue
            if f.name in ("scale", "softcap"):
                data[f.name] = value
            elif f.name == "mask":
                data[f.name] = part_to_dict(value)
            elif f.name == "score_terms":
                data[f.name] = [part_to_dict(term) for term in value]
            else:
                data[f.name] = {p.name: getattr(value, p.name) for p in fields(value)}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Pattern:
        """Rebuild a pattern from :meth:`to_dict`'s output; unknown keys are an error, never ignored."""
        only_keys("Pattern.from_dict", data, [f.name for f in fields(cls)])
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            if name in ("scale", "softcap") or value is None:
                kwargs[name] = value
                continue
            if name == "mask":
                kwargs[name] = part_from_dict(value, MaskPart)
                continue
            if name == "score_terms":
                require(isinstance(value, list), "Pattern.from_dict['score_terms']", value, "expected a list")
                kwargs[name] = tuple(part_from_dict(term, ScoreTerm) for term in value)
                continue
            part_type = _PART_TYPES[name]
            only_keys(f"Pattern.from_dict[{name!r}]", value, [p.name for p in fields(part_type)])
            kwargs[name] = part_type(**value)
        return cls(**kwargs)

    def to_json(self) -> str:
        """The pattern as a JSON string."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Pattern:
        """Rebuild a pattern from :meth:`to_json`'s output."""
        return cls.from_dict(json.loads(text))

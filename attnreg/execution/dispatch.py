"""Choosing an engine: the cheapest one that supports the call, or the one asked for, and why the others are not."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from attnreg._validation import PatternError
from attnreg.execution.call import AttentionCall
from attnreg.execution.engine import Engine


class BackendUnavailableError(PatternError):
    """An engine asked for by ``backend=`` cannot run the call; the message says why."""


@dataclass(frozen=True)
class Verdict:
    """One engine's answer for a call: the reasons it refuses (empty if it runs) and its estimated cost."""

    engine: Engine
    reasons: tuple[str, ...]
    cost: float | None

    @property
    def supported(self) -> bool:
        return not self.reasons


def capability_reasons(engine: Engine, call: AttentionCall) -> list[str]:
    """Why ``engine``'s declared capabilities do not cover ``call`` (dropout, explicit keep flags)."""
    if call.dropout is None:
        return []
    if not engine.supports_dropout:
        return [f"no attention dropout (dropout_p={call.dropout.p}); run with dropout_p=0 or on another engine"]
    if call.dropout.keep is not None and not engine.supports_dropout_mask:
        return ["it draws its own dropout keep flags and cannot take dropout_mask"]
    return []


def refusals(engine: Engine, call: AttentionCall) -> tuple[str, ...]:
    """Why ``engine`` cannot run ``call``: its declared capabilities, its own reasons, plus, while torch.compile
    traces, why it cannot be traced (:meth:`Engine.untraceable_reasons`, never asked outside tracing)."""
    reasons = capability_reasons(engine, call)
    reasons.extend(engine.unsupported_reasons(call))
    if torch.compiler.is_compiling():
        reasons.extend(f"under torch.compile: {reason}" for reason in engine.untraceable_reasons(call))
    return tuple(reasons)


def judge(call: AttentionCall, engines: Sequence[Engine]) -> list[Verdict]:
    """Every engine's verdict on ``call``: supported cheapest first (last-resort engines after), refusals last."""
    verdicts = []
    for engine in engines:
        reasons = refusals(engine, call)
        verdicts.append(Verdict(engine, reasons, None if reasons else engine.estimated_cost(call)))
    return sorted(
        verdicts,
        key=lambda v: (not v.supported, v.engine.last_resort, v.cost if v.cost is not None else 0.0),
    )


def choose(call: AttentionCall, engines: Sequence[Engine], backend: str | None = None) -> Engine:
    """The engine to run ``call``: ``backend`` if given (an error says why it cannot), else the cheapest."""
    if backend is not None:
        by_name = {engine.name: engine for engine in engines}
        if backend not in by_name:
            raise BackendUnavailableError(
                f"backend={backend!r} is not allowed: known engines are {', '.join(sorted(by_name))}"
            )
        reasons = refusals(by_name[backend], call)
        if reasons:
            raise BackendUnavailableError(f"backend={backend!r} cannot run this call: {'; '.join(reasons)}")
        return by_name[backend]
    verdicts = judge(call, engines)
    if not verdicts or not verdicts[0].supported:
        detail = "; ".join(f"{v.engine.name}: {', '.join(v.reasons)}" for v in verdicts) or "no engine is registered"
        raise BackendUnavailableError(f"no engine can run this call ({detail})")
    return verdicts[0].engine

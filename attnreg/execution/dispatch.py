"""Choosing an engine: the cheapest one that supports the call, or the one asked for, and why the others are not."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from attnreg._validation import PatternError
from attnreg.execution.call import AttentionCall
from attnreg.execution.engine import Engine
from attnreg.execution.non_finite import contained, hide_padded

#: Which engine ran each call, at DEBUG: ``logging.getLogger("attnreg").setLevel(logging.DEBUG)`` shows them.
logger = logging.getLogger("attnreg.dispatch")


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


def _names(values: frozenset) -> str:
    return ", ".join(sorted(str(value).removeprefix("torch.") for value in values))


def capability_reasons(engine: Engine, call: AttentionCall) -> list[str]:
    """Why ``engine``'s declared capabilities (devices, dtypes, gradients, dropout) do not cover ``call``."""
    reasons = []
    device = call.device.type
    if engine.devices is not None and device not in engine.devices:
        reasons.append(f"device is {device}: it runs on {_names(engine.devices)} only")
    if engine.dtypes is not None and call.dtype not in engine.dtypes:
        reasons.append(f"dtype {call.dtype} is not supported ({_names(engine.dtypes)})")
    gradient_devices = engine.gradient_devices
    if call.requires_grad and gradient_devices is not None and device not in gradient_devices:
        reasons.append(
            f"an input requires grad and it computes gradients on {_names(gradient_devices) or 'no device'} only "
            f"(not {device}); run under torch.no_grad() or on another engine"
        )
    if call.dropout is None:
        return reasons
    if not engine.supports_dropout:
        reasons.append(f"no attention dropout (dropout_p={call.dropout.p}); run with dropout_p=0 or on another engine")
    elif call.dropout.keep is not None and not engine.supports_dropout_mask:
        reasons.append("it draws its own dropout keep flags and cannot take dropout_mask")
    return reasons


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


def choose(call: AttentionCall, engines: Sequence[Engine], backend: str | Sequence[str] | None = None) -> Engine:
    """The engine to run ``call``: the cheapest that supports it, among those named by ``backend`` if given (one name:
    that engine, or an error saying why it cannot; several: the cheapest of them)."""
    by_name = {engine.name: engine for engine in engines}
    names = (backend,) if isinstance(backend, str) else None if backend is None else tuple(backend)
    if names is not None:
        unknown = [name for name in names if name not in by_name]
        if unknown or not names:
            raise BackendUnavailableError(
                f"backend={backend!r} is not allowed: known engines are {', '.join(sorted(by_name))}"
            )
        if len(names) == 1:
            reasons = refusals(by_name[names[0]], call)
            if reasons:
                raise BackendUnavailableError(f"backend={names[0]!r} cannot run this call: {'; '.join(reasons)}")
            return by_name[names[0]]
        engines = [by_name[name] for name in names]
    verdicts = judge(call, engines)
    if not verdicts or not verdicts[0].supported:
        detail = "; ".join(f"{v.engine.name}: {', '.join(v.reasons)}" for v in verdicts) or "no engine is registered"
        among = "" if names is None else f" among backend={names!r}"
        raise BackendUnavailableError(f"no engine{among} can run this call ({detail})")
    return verdicts[0].engine


def describe_call(call: AttentionCall) -> str:
    """One line naming a call's shape, dtype, device and what it needs, for the dispatch log."""
    needs = {"grad": call.requires_grad, "dropout": call.dropout is not None}
    shape = "x".join(str(size) for size in call.q.shape)
    text = f"q {shape} {str(call.dtype).removeprefix('torch.')} on {call.device}"
    return text + "".join(f", {need}" for need, present in needs.items() if present)


def run(engine: Engine, call: AttentionCall) -> torch.Tensor:
    """``engine(call)``, visible from outside: logged on ``attnreg.dispatch`` at DEBUG and labelled
    ``attnreg:<engine>`` for torch's profiler (neither while torch.compile traces: the graph has no Python to run);
    a non-finite key or value reaches only the rows that see it (:mod:`attnreg.execution.non_finite`)."""
    call = hide_padded(call)
    if torch.compiler.is_compiling():
        return contained(engine, call)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("engine %r runs %s", engine.name, describe_call(call))
    with torch.profiler.record_function(f"attnreg:{engine.name}"):
        return contained(engine, call)

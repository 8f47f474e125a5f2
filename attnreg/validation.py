"""Argument checks whose errors name the argument, the value and what is allowed, and the errors attnreg raises.

Public for plugin authors: a pattern factory or builder that checks its arguments with these helpers fails the way
attnreg's own do, which is what the conformance suite's ``bad-parameters`` check asks for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

__all__ = ["AttnregError", "PatternError", "describe", "only_keys", "reject_unknown", "require", "require_int"]


class AttnregError(Exception):
    """The base of every error attnreg raises: ``except attnreg.AttnregError`` catches any of them.

    Each subclass also keeps the built-in base that fits it (``PatternError`` is a ``ValueError``, an unknown name a
    ``KeyError``), so ordinary ``except`` clauses keep working.
    """


class PatternError(AttnregError, ValueError):
    """A pattern, or an argument passed to run one, is not valid."""


def describe(value: object) -> object:
    """``value`` as an error message shows it: a tensor by its shape, anything else as it is."""
    return f"Tensor{tuple(value.shape)}" if isinstance(value, torch.Tensor) else value


def require(condition: bool, name: str, value: Any, allowed: str) -> None:
    """Raise :class:`PatternError` naming ``name``, ``value`` and what is ``allowed`` unless ``condition``."""
    if not condition:
        raise PatternError(f"{name}={value!r} is not allowed: {allowed}")


def require_int(name: str, value: Any, *, minimum: int) -> None:
    """Check that ``value`` is an int (not a bool) no smaller than ``minimum``."""
    require(
        isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
        name,
        value,
        f"expected an int >= {minimum}",
    )


def reject_unknown(where: str, given: Iterable[str], known: Iterable[str]) -> None:
    """Fail on keys that ``where`` does not take, listing the ones it does: nothing is silently ignored."""
    known = list(known)
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise PatternError(
            f"{where} got unknown parameter(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(known) or '(none)'}"
        )


def only_keys(where: str, data: Mapping[str, Any], known: Iterable[str]) -> Mapping[str, Any]:
    """Return ``data`` after checking it holds no key outside ``known``."""
    require(isinstance(data, Mapping), where, data, "expected a mapping (dict)")
    reject_unknown(where, data.keys(), known)
    return data

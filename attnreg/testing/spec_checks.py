"""Checks of a pattern itself, whatever engine runs it: its spec round-trips, and bad parameters fail clearly.

Why derived from the factory signature: a third party's pattern gets the same scrutiny as the built-ins without
declaring anything; each parameter's default (or annotation) says what a wrong value is.
"""

from __future__ import annotations

import inspect
import json
import pickle
from typing import Any

from attnreg._validation import PatternError
from attnreg.pattern.spec import Pattern
from attnreg.registry.registry import PatternEntry
from attnreg.testing.context import Cases
from attnreg.testing.results import FAIL, PASS

#: A parameter name no factory takes.
UNKNOWN_PARAMETER = "no_such_parameter"

#: What a clear refusal may be: attnreg's own error or the ValueError/TypeError families.
CLEAR_ERRORS = (PatternError, ValueError, TypeError)


def round_trips(entry: PatternEntry, params: dict[str, Any]) -> tuple[str, str]:
    """The pattern survives JSON, ``to_dict``/``from_dict`` and pickle round trips, equal and equally hashed."""
    pattern = entry.create(**params)
    problems = []
    copies = {
        "JSON": lambda: Pattern.from_json(json.dumps(json.loads(pattern.to_json()))),
        "dict": lambda: Pattern.from_dict(pattern.to_dict()),
        "pickle": lambda: pickle.loads(pickle.dumps(pattern)),
    }
    for how, copy in copies.items():
        try:
            again = copy()
        except Exception as error:
            problems.append(f"{how} round trip raised {type(error).__name__}: {error}")
            continue
        if again != pattern or hash(again) != hash(pattern):
            problems.append(f"{how} round trip changed the pattern: {pattern!r} became {again!r}")
    if entry.create(**params) != pattern:
        problems.append("the factory gives unequal patterns for equal parameters")
    return (FAIL, "\n".join(problems)) if problems else (PASS, repr(pattern))


def bad_values(default: Any, annotation: Any) -> list[tuple[str, Any]]:
    """Values that must be refused for a parameter with this default or annotation: a wrong type, a negative int."""
    kind = type(default) if default not in (None, inspect.Parameter.empty) else None
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    if kind is bool or (kind is None and text.startswith("bool")):
        return [("a string", "yes")]
    if kind is int or (kind is None and text.startswith("int")):
        return [("a string", "seven"), ("a negative int", -1), ("a float", 2.5)]
    if kind is float or (kind is None and text.startswith("float")):
        return [("a string", "seven"), ("NaN", float("nan"))]
    return []


def bad_parameters(entry: PatternEntry, params: dict[str, Any]) -> tuple[str, str]:
    """An unknown parameter, a wrongly typed one and a negative int each raise a clear error naming the parameter."""
    cases = Cases()
    trials: list[tuple[str, str, dict[str, Any]]] = [
        (UNKNOWN_PARAMETER, "an unknown parameter", {**params, UNKNOWN_PARAMETER: 1})
    ]
    signature = inspect.signature(entry.factory).parameters
    for name, default in entry.parameters().items():
        for what, value in bad_values(default, signature[name].annotation):
            trials.append((name, f"{what} ({value!r})", {**params, name: value}))
    for name, what, trial in trials:
        label = f"{name}={trial[name]!r}"
        cases.ran += 1
        try:
            pattern = entry.create(**trial)
        except CLEAR_ERRORS as error:
            if name not in str(error):
                cases.failed(label, f"{what} raised {type(error).__name__} without naming {name!r}: {error}")
            continue
        except Exception as error:
            cases.failed(label, f"{what} raised {type(error).__name__} (expected attnreg.PatternError): {error}")
            continue
        cases.failed(label, f"{what} was accepted, giving {pattern!r}; expected attnreg.PatternError naming {name!r}")
    return cases.verdict()

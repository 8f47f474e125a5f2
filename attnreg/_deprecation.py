"""Old names that still work for one release, with a ``DeprecationWarning`` pointing at the caller's own line."""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from attnreg._validation import require

F = TypeVar("F", bound=Callable[..., Any])


def first_caller_outside_attnreg() -> int:
    """The ``stacklevel`` that points a warning at the caller's code, past attnreg's own frames."""
    frame, level = sys._getframe(2), 2
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] == "attnreg":
        frame, level = frame.f_back, level + 1
    return level


def new_names(values: Mapping[str, Any], renamed: Mapping[str, str], where: str) -> dict[str, Any]:
    """A copy of ``values`` under the new names of ``renamed`` (old name -> new name), warning once for each old
    name used; passing both names is an error."""
    values = dict(values)
    for old, new in renamed.items():
        if old in values:
            require(new not in values, old, values[old], f"pass {new} alone ({old} is its old name)")
            warnings.warn(
                f"{where}: {old} is renamed {new}; pass {new} ({old} will stop working in a later release)",
                DeprecationWarning,
                stacklevel=first_caller_outside_attnreg(),
            )
            values[new] = values.pop(old)
    return values


def renamed_keywords(**renamed: str) -> Callable[[F], F]:
    """Decorate a function whose keyword arguments were renamed (``old="new"``): the old names still work, with a
    warning (:func:`new_names`)."""

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def accepting_old_names(*args: Any, **kwargs: Any) -> Any:
            if not renamed.keys() & kwargs.keys():
                return function(*args, **kwargs)
            return function(*args, **new_names(kwargs, renamed, f"{function.__qualname__}()"))

        return accepting_old_names  # type: ignore[return-value]

    return decorate

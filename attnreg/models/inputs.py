"""Checks of a model's forward arguments, in the caller's terms, before anything is computed.

Why at the model's entry: past it, transformers pads inputs to a window multiple and layers see derived masks, so a
wrong shape would be reported in shapes the caller never passed (or broadcast silently). Public for plugin authors:
a builder registers :func:`check_forward_inputs` with its own check and its models fail the way attnreg's do.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from attnreg.execution.host import host_readable
from attnreg.validation import PatternError, require

__all__ = [
    "check_batch",
    "check_embeddings",
    "check_forward_inputs",
    "check_ids",
    "check_like",
    "check_one_of",
    "check_size",
    "check_tokens",
    "layout",
]

#: A check of a module's forward arguments by name (given ones only): raises :class:`PatternError` or returns.
InputCheck = Callable[[nn.Module, Mapping[str, Any]], None]


def layout(axes: Sequence[str]) -> str:
    """``("batch", "length")`` as messages write it: ``(batch, length)``."""
    return f"({', '.join(axes)})"


def check_one_of(**given: Any) -> str:
    """The name of the one argument of ``given`` that is not ``None``; none or several is an error naming them."""
    present = [name for name, value in given.items() if value is not None]
    if len(present) != 1:
        shown = " and ".join(f"{name}={_shown(value)}" for name, value in given.items())
        raise PatternError(f"{shown} is not allowed: pass exactly one of {' or '.join(given)}")
    return present[0]


def check_ids(name: str, ids: Any, axes: Sequence[str], *, vocab_size: int | None = None) -> tuple[int, ...]:
    """Check token ids: an integer tensor of shape ``axes``, no size 0, ids below ``vocab_size``; its shape.

    The ids' range is read only where reading costs no device sync (:func:`attnreg.execution.host.host_readable`);
    elsewhere an id out of range still fails in the embedding.
    """
    require(
        isinstance(ids, torch.Tensor),
        name,
        _shown(ids),
        f"expected a {layout(axes)} tensor of integer token ids",
    )
    require(
        not ids.is_floating_point() and not ids.is_complex() and ids.dtype is not torch.bool,
        f"{name}.dtype",
        ids.dtype,
        "expected integer token ids (torch.long or torch.int)",
    )
    shape = check_size(name, ids, axes)
    if vocab_size is not None and host_readable(ids):
        low, high = int(ids.min()), int(ids.max())
        require(low >= 0, f"{name}.min()", low, "expected token ids >= 0")
        require(high < vocab_size, f"{name}.max()", high, f"expected token ids below the vocabulary size {vocab_size}")
    return shape


def check_embeddings(name: str, embeddings: Any, axes: Sequence[str], *, hidden_size: int) -> tuple[int, ...]:
    """Check input embeddings: a floating tensor ``(*axes, hidden_size)``, no size 0; the shape of ``axes``."""
    require(
        isinstance(embeddings, torch.Tensor) and embeddings.is_floating_point(),
        name,
        _shown(embeddings),
        f"expected a floating-point tensor {layout([*axes, str(hidden_size)])}",
    )
    shape = check_size(name, embeddings, [*axes, "hidden_size"])
    require(
        shape[-1] == hidden_size,
        f"{name}.shape",
        shape,
        f"expected {layout([*axes, 'hidden_size'])} with hidden_size={hidden_size}",
    )
    return shape[:-1]


def check_tokens(
    arguments: Mapping[str, Any], ids_name: str, embeddings_name: str, axes: Sequence[str], embedding: nn.Embedding
) -> tuple[str, tuple[int, ...]]:
    """Check that exactly one of the token ids ``arguments[ids_name]`` and the input embeddings
    ``arguments[embeddings_name]`` is given, against ``embedding``'s vocabulary and width; the name given and the
    shape of ``axes`` it has."""
    ids, embeddings = arguments.get(ids_name), arguments.get(embeddings_name)
    given = check_one_of(**{ids_name: ids, embeddings_name: embeddings})
    if given == ids_name:
        return given, check_ids(given, ids, axes, vocab_size=embedding.num_embeddings)
    return given, check_embeddings(given, embeddings, axes, hidden_size=embedding.embedding_dim)


def check_size(name: str, value: torch.Tensor, axes: Sequence[str]) -> tuple[int, ...]:
    """Check that ``value`` has one dimension per axis and none of size 0; its shape."""
    shape = tuple(value.shape)
    require(len(shape) == len(axes), f"{name}.shape", shape, f"expected {layout(axes)}")
    require(min(shape, default=1) >= 1, f"{name}.shape", shape, f"expected {layout(axes)} with every size at least 1")
    return shape


def check_like(name: str, value: Any, shape: tuple[int, ...], axes: Sequence[str], of: str) -> None:
    """Check that ``value`` (``None`` passes) is a tensor of ``shape``: the shape of the argument named ``of``."""
    if value is None:
        return
    require(
        isinstance(value, torch.Tensor) and tuple(value.shape) == tuple(shape),
        f"{name}.shape" if isinstance(value, torch.Tensor) else name,
        tuple(value.shape) if isinstance(value, torch.Tensor) else _shown(value),
        f"expected {layout(axes)} = {tuple(shape)}, the shape of {of}",
    )


def check_batch(name: str, value: Any, batch: int, of: str) -> None:
    """Check that ``value`` (``None`` passes) is a tensor whose first dimension is ``batch``, the batch of ``of``."""
    if value is None:
        return
    require(
        isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == batch,
        f"{name}.shape" if isinstance(value, torch.Tensor) else name,
        tuple(value.shape) if isinstance(value, torch.Tensor) else _shown(value),
        f"expected batch size {batch} first, the batch of {of}",
    )


def check_forward_inputs(module: nn.Module, check: InputCheck) -> nn.Module:
    """Run ``check(module, arguments)`` before every forward of ``module``; ``arguments`` maps names to values.

    A forward pre-hook: the module keeps its class and state dict. Registering the same check twice runs it once.
    ``check`` should be a module-level function, so the model still pickles.
    """
    hooks = module._forward_pre_hooks.values()
    if not any(isinstance(hook, _ForwardInputsHook) and hook.check is check for hook in hooks):
        parameters = inspect.signature(type(module).forward).parameters.values()
        positional = tuple(p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
        module.register_forward_pre_hook(_ForwardInputsHook(positional[1:], check), with_kwargs=True)
    return module


@dataclass(frozen=True)
class _ForwardInputsHook:
    """The pre-hook :func:`check_forward_inputs` registers: names the positional arguments, then checks."""

    positional: tuple[str, ...]
    check: InputCheck

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.check(module, {**dict(zip(self.positional, args, strict=False)), **kwargs})


class _Shown(str):
    """Text that an error message shows as it is (``require`` shows values by their ``repr``)."""

    def __repr__(self) -> str:
        return str(self)


def _shown(value: Any) -> _Shown:
    """A value as an input error shows it: a tensor by its shape and dtype, anything else by its type."""
    if isinstance(value, torch.Tensor):
        return _Shown(f"Tensor{tuple(value.shape)} of {value.dtype}")
    if value is None:
        return _Shown("None")
    return _Shown(f"<{type(value).__name__}>")

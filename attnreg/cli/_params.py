"""What the commands say about registered things: a pattern's parameters (as ``--kebab-case`` options or as text),
and descriptions as plain text.

Options come from the factory's signature (``PatternEntry.parameters()``), typed by each default's type; only the
options given on the command line reach the factory, so its own defaults stay the single source of truth.
Descriptions come from docstrings, so their reStructuredText markup is taken off before they are printed.
"""

from __future__ import annotations

import argparse
import inspect
import re
from typing import Any

import torch

from attnreg.pattern.spec import Pattern
from attnreg.registry import BuilderEntry, PatternEntry, get_registry
from attnreg.validation import AttnregError

_DEST_PREFIX = "pattern_param_"

#: reStructuredText inline markup: an optional role (:class:, :py:func:, ...), then text in single or double
#: backticks, then an optional _ or __ (a link).
_MARKUP = re.compile(r"(?P<role>(?::[\w.+-]+)+:)?(?P<ticks>``|`)(?P<text>[^`]+)(?P=ticks)_{0,2}")
_TITLED = re.compile(r"(?P<title>.+?)\s*<[^<>]+>", re.DOTALL)


def plain_text(text: str) -> str:
    """``text`` without reStructuredText's inline markup, as Sphinx would show it: code and roles keep their text,
    a ``~``-prefixed target only its last name, a ``title <target>`` reference only its title."""
    return _MARKUP.sub(_plain_markup, text)


def _plain_markup(match: re.Match[str]) -> str:
    text = match["text"]
    if match["role"] is None:
        return text
    titled = _TITLED.fullmatch(text)
    if titled:
        return titled["title"]
    text = text.lstrip("!")
    return text[1:].rsplit(".", 1)[-1] if text.startswith("~") else text


def parameter_text(parameter: inspect.Parameter) -> str:
    """``radius: int = 16`` (``right=None`` without an annotation; ``radius: int (required)`` without a default;
    ``**overrides: Any`` for keyword arguments collected into a dict)."""
    stars = {parameter.VAR_KEYWORD: "**", parameter.VAR_POSITIONAL: "*"}.get(parameter.kind, "")
    text = stars + parameter.name
    annotated = parameter.annotation is not parameter.empty
    if annotated:
        annotation = parameter.annotation
        text += f": {annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)}"
    if stars:
        return text
    if parameter.default is parameter.empty:
        return f"{text} (required)"
    return f"{text}{' = ' if annotated else '='}{parameter.default!r}"


def parameters_text(entry: PatternEntry | BuilderEntry) -> str:
    """Every keyword parameter of a registered pattern or builder on one line, as declared, or ``(none)``; for a
    builder whose ``config`` is a dataclass, the fields ``**overrides`` may set follow in brackets."""
    text = ", ".join(map(parameter_text, entry.keyword_parameters().values())) or "(none)"
    fields = entry.config_fields() if isinstance(entry, BuilderEntry) else {}
    if fields:
        text += f" (overrides: {', '.join(map(parameter_text, fields.values()))})"
    return text


def option_name(parameter: str) -> str:
    """``global_block_size`` -> ``--global-block-size``."""
    return "--" + parameter.replace("_", "-")


def parse_literal(text: str) -> Any:
    """A value typed on the command line for a parameter without a typed default: int, float, bool, None or str."""
    lowered = text.strip().lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def add_pattern_options(parser: argparse.ArgumentParser, name: str) -> None:
    """Add one ``--kebab-case`` option per parameter of pattern ``name`` to ``parser`` (in an argument group).

    A parameter whose option the command already has (``--length``, say) becomes ``--pattern-length``. The group's
    description shows the pattern the defaults build, so a default of None (the factory decides) is not a mystery.
    """
    entry = get_registry().pattern_entry(name)
    group = parser.add_argument_group(f"parameters of pattern {name!r}", _defaults_text(entry))
    for parameter, default in entry.parameters().items():
        kwargs: dict[str, Any] = {"dest": _DEST_PREFIX + parameter, "default": argparse.SUPPRESS}
        if not isinstance(default, bool):
            kwargs["metavar"] = parameter.upper()
        if default is inspect.Parameter.empty:
            kwargs.update(type=parse_literal, required=True, help="required")
        elif isinstance(default, bool):
            kwargs.update(action=argparse.BooleanOptionalAction, help=f"default: {default}")
        elif isinstance(default, (int, float, str)):
            kwargs.update(type=type(default), help=f"default: {default!r}")
        elif default is None:
            kwargs.update(type=parse_literal, help="default: None, left to the pattern (what it builds: see above)")
        else:
            kwargs.update(type=parse_literal, help=f"default: {default!r}")
        option = option_name(parameter)
        if option in parser._option_string_actions:  # the command has an option of that name already
            option = "--pattern-" + option[2:]
        group.add_argument(option, **kwargs)


def _defaults_text(entry: PatternEntry) -> str | None:
    """What the pattern is with every default (None if it has required parameters or its defaults fail)."""
    if inspect.Parameter.empty in entry.parameters().values():
        return None
    try:
        pattern = entry.create()
    except (AttnregError, TypeError, ValueError):
        return None
    return f"With every default the pattern is {pattern!r}."


def call_text(name: str, args: argparse.Namespace) -> str:
    """``name(parameter=value, ...)`` with every parameter the factory receives or defaults to (required ones given)."""
    entry = get_registry().pattern_entry(name)
    values = {key: value for key, value in entry.parameters().items() if value is not inspect.Parameter.empty}
    values.update(pattern_params(args))
    return f"{name}({', '.join(f'{key}={value!r}' for key, value in values.items())})"


def pattern_params(args: argparse.Namespace) -> dict[str, Any]:
    """The pattern parameters given on the command line (those left out keep the factory's defaults)."""
    return {key[len(_DEST_PREFIX) :]: value for key, value in vars(args).items() if key.startswith(_DEST_PREFIX)}


def pattern_from_args(name: str, args: argparse.Namespace) -> Pattern:
    """Build pattern ``name`` from the options that :func:`add_pattern_options` added and the user gave."""
    return get_registry().get_pattern(name, **pattern_params(args))


#: ``--dtype`` choices of the commands that build a call.
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def add_named_command(
    subparsers: argparse._SubParsersAction,
    command: str,
    *,
    run: Any,
    help: str,
    description: str,
    usage: str,
    name_help: str,
    options_help: str,
) -> None:
    """Add ``attnreg COMMAND NAME [options ...]``, whose options ``run`` parses with NAME's own parser (they depend on
    NAME); ``-h`` before NAME is this command's help (see :func:`command_help`)."""
    parser = subparsers.add_parser(command, help=help, description=description, usage=usage, add_help=False)
    parser.add_argument("-h", "--help", action="store_true", help="show this help (or NAME's, after NAME) and exit")
    parser.add_argument("name", nargs="?", help=name_help)
    parser.add_argument("options", nargs=argparse.REMAINDER, help=options_help)
    parser.set_defaults(func=run, command_parser=parser)


def command_help(args: argparse.Namespace) -> int | None:
    """For ``-h`` or a missing NAME: print the command's help and return the exit status (0, or 2 without NAME);
    otherwise None."""
    if args.help or args.name is None:
        args.command_parser.print_help()
        return 0 if args.help else 2
    return None

"""Command-line flags generated from an options schema (a pydantic model): each flag takes its field's type,
default and description, so a command that exposes engine options cannot drift from the engine's own.

A command declares an ``options`` parameter and decorates itself with :func:`schema_flags`; typer then sees
one option per :class:`Flag` in its place, and the command receives their values as ``options``, a dict by
field name, ready for the schema.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

import typer
from pydantic import BaseModel

from rooflens.cli.common import fail

__all__ = ["Flag", "flag_names", "schema_flags"]

_PLAIN = (bool, int, float, str)


@dataclass(frozen=True)
class Flag:
    """One field of an options schema as a command-line flag."""

    field: str
    name: Optional[str] = None  # the parameter, ``--name`` with '-' for '_'; default: the field's name
    help: Optional[str] = None  # default: the field's description
    parse: Optional[Callable[[str], Any]] = None
    """For a field no plain flag holds (a list, a union): the flag takes text and this turns it into the field's
    value (``None``: leave the field to the schema's default); a ValueError's message says what is allowed."""

    @property
    def param(self) -> str:
        return self.name or self.field

    @property
    def option(self) -> str:
        return "--" + self.param.replace("_", "-")


def flag_names(flags: Sequence[Flag]) -> dict[str, str]:
    """Field name -> its flag (``train_prompts`` -> ``--prompts``), for naming a field's error as the user typed it."""
    return {f.field: f.option for f in flags}


def _plain_type(annotation: Any, field: str) -> tuple[type, bool]:
    """The click type of a field's annotation, and whether it may be None."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if len(members) == 1:
            return _plain_type(members[0], field)[0], True
    elif origin is Literal and len({type(a) for a in args}) == 1 and type(args[0]) in _PLAIN:
        return type(args[0]), False
    elif annotation in _PLAIN:
        return annotation, False
    raise TypeError(f"field {field!r}: no plain flag holds {annotation!r}; give its Flag a parse function")


def _as_text(default: Any) -> Optional[str]:
    """The default of a text flag: a list as its comma-separated items, None as no default."""
    if default is None:
        return None
    if isinstance(default, (list, tuple)):
        return ",".join(map(str, default))
    return str(default)


def _parameter(schema: type[BaseModel], flag: Flag) -> inspect.Parameter:
    info = schema.model_fields[flag.field]
    default = info.get_default(call_default_factory=True)
    if flag.parse is not None:
        kind, default = str, _as_text(default)
        annotation: Any = str if default is not None else Optional[str]
    else:
        kind, optional = _plain_type(info.annotation, flag.field)
        annotation = Optional[kind] if optional else kind
    decls = f"{flag.option}/--no-{flag.option[2:]}" if kind is bool else flag.option
    option = typer.Option(default, decls, help=flag.help if flag.help is not None else info.description)
    return inspect.Parameter(flag.param, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=option, annotation=annotation)


def _options(flags: Sequence[Flag], values: dict[str, Any]) -> dict[str, Any]:
    """The flags' values by field name (parsed where the flag takes text); fields left at None are left out."""
    options = {}
    for f in flags:
        value = values.pop(f.param)
        if f.parse is not None and value is not None:
            try:
                value = f.parse(value)
            except ValueError as err:
                fail(f"{f.option} {value!r}: {err}")
        if value is not None:
            options[f.field] = value
    return options


def schema_flags(
    schema: type[BaseModel], flags: Sequence[Flag]
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Decorate a command: its ``options`` parameter becomes one typer option per flag, in that place."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        params: list[inspect.Parameter] = []
        for p in inspect.signature(command, eval_str=True).parameters.values():
            if p.name == "options":
                params += [_parameter(schema, f) for f in flags]
            else:
                params.append(p.replace(kind=inspect.Parameter.POSITIONAL_OR_KEYWORD))

        def with_options(**values: Any) -> None:
            options = _options(flags, values)
            command(**values, options=options)

        for attr in ("__name__", "__qualname__", "__doc__", "__module__"):
            setattr(with_options, attr, getattr(command, attr))
        with_options.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        with_options.__annotations__ = {p.name: p.annotation for p in params}
        return with_options

    return decorate

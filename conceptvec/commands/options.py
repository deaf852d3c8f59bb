"""CLI options made from a settings dataclass: one place defines each option's name, type,
help and default (the field), so a command does not mirror them by hand.

::

    @config_options(EvalConfig, {"k": {"min": 1}, "names": {"flag": "--concept"}})
    def evaluate(base: ..., **settings): config = EvalConfig(**settings)

adds one typer option per named field (``--field-name``; a bool field becomes
``--name/--no-name``) before the command's ``**settings``, which receives them.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any

import typer

from conceptvec.config import Config


def config_options(
    cls: type[Config], fields: Mapping[str, Mapping[str, Any]]
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Return a decorator giving a command one option per field of ``cls`` named in
    ``fields`` (in that order); each field's spec may set ``flag`` (``--forget``), ``type``
    (``Path`` for a ``str`` field), ``default`` (the CLI's, when it differs) and any
    ``typer.Option`` keyword (``min``, ``max``)."""
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    hints = _field_types(cls, fields)

    def wrap(command: Callable[..., None]) -> Callable[..., None]:
        sig = inspect.signature(command, eval_str=True)
        params = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
        made = []
        for name, spec in fields.items():
            spec = dict(spec)
            f = by_name[name]
            kind = spec.pop("type", hints[name])
            flag = spec.pop("flag", "--" + name.replace("_", "-"))
            default = spec.pop("default", _default(f))
            if hints[name] in (bool, bool | None) and "/" not in flag:
                flag = f"{flag}/--no-{flag[2:]}"
            option = typer.Option(flag, help=str(f.metadata.get("help", "")), **spec)
            made.append(
                inspect.Parameter(
                    name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=default,
                    annotation=Annotated[kind, option],
                )  # fmt: skip
            )
        keyword = [p for p in params if p.kind is p.KEYWORD_ONLY]
        positional = [p for p in params if p.kind is not p.KEYWORD_ONLY]
        positional = [p.replace(kind=p.POSITIONAL_OR_KEYWORD) for p in positional]
        command.__signature__ = sig.replace(  # type: ignore[attr-defined]
            parameters=[*positional, *made, *keyword]
        )
        return command

    return wrap


def _field_types(cls: type[Config], names: Iterable[str]) -> dict[str, object]:
    """Return the resolved types of the fields ``names`` of ``cls``, read in its module (only
    those: the module imports some field types for type checking alone)."""
    only = type("_Fields", (), {"__annotations__": {n: cls.__annotations__[n] for n in names}})
    return typing.get_type_hints(only, globalns=vars(sys.modules[cls.__module__]))


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"field {f.name} has no default")


def settings_of(cls: type[Config], values: Mapping[str, Any]) -> dict[str, Any]:
    """Return the entries of ``values`` that are fields of ``cls`` (paths as text)."""
    names = set(cls.field_names())
    return {k: (str(v) if hasattr(v, "__fspath__") else v) for k, v in values.items() if k in names}

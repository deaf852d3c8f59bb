"""Settings objects: one dataclass per verb (``UnlearnConfig``, ``EvalConfig``, ``FindConfig``).

Each field is documented where it is declared; its ``metadata`` may carry ``help`` (one
line, the CLI's option help). :class:`Config` gives every settings class the same
``to_dict`` / ``from_dict`` and :meth:`Config.build`, which lets a verb accept a config
object, keywords, or a config plus keyword overrides::

    intrinsic(base, unl, concepts, EvalConfig(qa=False))
    intrinsic(base, unl, concepts, qa=False)          # the same
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from conceptvec.errors import ConceptvecError

C = TypeVar("C", bound="Config")


def _plain(value: Any) -> Any:
    """Return ``value`` as JSON-ready data (paths as strings, tuples as lists)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)  # a model object, say: recorded by what it prints as


@dataclasses.dataclass
class Config:
    """Base of the settings dataclasses: ``to_dict``, ``from_dict`` and ``build``."""

    error = ConceptvecError
    """The error raised on an unknown setting (a subclass names its own)."""

    def to_dict(self) -> dict[str, Any]:
        """Return every field as JSON-ready data (what outputs record as ``config``)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Return the config ``data`` describes (a :meth:`to_dict` output); raise on a key
        that is not a field."""
        return cls().replace(**dict(data))

    @classmethod
    def field_names(cls) -> list[str]:
        """Return the names of the settings, in declaration order."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def build(cls: type[C], config: C | Mapping[str, Any] | None, **overrides: Any) -> C:
        """Return ``config`` (a config, a dict of settings, or None for the defaults) with
        ``overrides`` applied: how a verb takes a config object or keywords."""
        if config is None:
            base = cls()
        elif isinstance(config, cls):
            base = config
        elif isinstance(config, Mapping):
            base = cls.from_dict(config)
        else:
            raise cls.error(
                f"config must be a {cls.__name__} or a dict of its settings, not "
                f"{type(config).__name__}"
            )
        return base.replace(**overrides) if overrides else base

    def replace(self: C, **changes: Any) -> C:
        """Return a copy with ``changes``; raise naming the fields on an unknown key."""
        names = self.field_names()
        unknown = [k for k in changes if k not in names]
        if unknown:
            raise self.error(
                f"{type(self).__name__} has no setting {unknown[0]!r}; its settings: "
                f"{', '.join(names)}"
            )
        return dataclasses.replace(self, **changes)


def help_of(cls: type[Config], name: str) -> str:
    """Return the ``help`` metadata of field ``name`` of ``cls`` ('' when none)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return str(f.metadata.get("help", ""))
    raise KeyError(name)

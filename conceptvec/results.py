"""The one interface every result type shares, and ``SearchResult`` for lists of hits.

Every result (a :class:`~conceptvec.Decoding`, an atlas or weight hit, a build report, an
effect, a concept search...) answers four calls:

- ``to_dict()``: plain JSON-ready data with the dataclass's own field names
  (:func:`dataclasses.asdict`, with neuron ids, paths and tensors made plain); results that
  are written to disk carry a ``schema_version``;
- ``str(result)``: a readable table;
- ``_repr_html_()``: the same, in a Jupyter cell;
- ``plot()``: a plotly figure, built in :mod:`conceptvec.viz` (plotly is imported then).

:class:`Result` gives the defaults; a type overrides what it can say better.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Callable, Iterable
from pathlib import PurePath
from typing import Any


def plain(value: Any) -> Any:
    """Return ``value`` as JSON-ready data: dataclasses as dicts (field names kept), neuron
    ids and paths as strings, tensors and tuples as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        to_dict = getattr(value, "to_dict", None)
        if to_dict is not None and not _is_default_to_dict(value):
            return to_dict()
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {
            str(k) if not isinstance(k, (str, int, float)) else k: plain(v)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    if hasattr(value, "tolist") and callable(value.tolist):  # torch tensors, numpy arrays
        return value.tolist()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)  # NeuronId and other small value types print as they are written


def _is_default_to_dict(value: Any) -> bool:
    return type(value).to_dict is Result.to_dict


class Result:
    """Mixin for result dataclasses: ``to_dict``, ``__str__``, ``_repr_html_``, ``plot``."""

    def to_dict(self) -> dict[str, Any]:
        """Return the result as plain data, field names kept (see :func:`plain`)."""
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def __str__(self) -> str:
        """Return a two-column table of the result's fields."""
        rows = [(k, _short(v)) for k, v in self.to_dict().items()]
        width = max([len(k) for k, _ in rows] + [1])
        return "\n".join([type(self).__name__] + [f"  {k:<{width}}  {v}" for k, v in rows])

    def _repr_html_(self) -> str:
        """Return the readable table for Jupyter."""
        return f"<pre>{html.escape(str(self))}</pre>"

    def plot(self) -> Any:
        """Return a plotly figure of the result (see :func:`conceptvec.viz.figure`)."""
        from conceptvec.viz import figure

        return figure(self)


def _short(value: Any, limit: int = 100) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class SearchResult(list, Result):
    """A ranked list of hits (atlas or weight search), best first, that prints as a table.

    It is a list: index it, loop over it, compare it with a list. ``query`` is what was
    searched for; ``str()`` shows each hit with its neuron's own top tokens.
    """

    def __init__(
        self,
        hits: Iterable[Any] = (),
        *,
        query: str = "",
        table: Callable[[list[Any]], str] | None = None,
    ):
        super().__init__(hits)
        self.query = query
        self._table = table

    def to_dict(self) -> dict[str, Any]:
        """Return ``{"query", "hits"}``; each hit's ``rank`` counts from 1, as printed."""
        hits = [{"rank": n, **plain(h)} for n, h in enumerate(self, 1)]
        return {"query": self.query, "hits": hits}

    def __str__(self) -> str:
        if not self:
            return f"no neuron matches {self.query!r}" if self.query else "no hits"
        if self._table is not None:
            return self._table(list(self))
        return "\n".join(str(h) for h in self)

    def __repr__(self) -> str:
        return f"SearchResult({list.__repr__(self)}, query={self.query!r})"

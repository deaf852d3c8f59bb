"""The one interface every result type shares, and ``SearchResult`` for lists of hits.

Every result (a :class:`~conceptvec.Decoding`, an atlas or weight hit, a build report, an
effect, a concept search...) answers four calls:

- ``to_dict()``: plain JSON-ready data with the dataclass's own field names
  (:func:`dataclasses.asdict`, with neuron ids, paths and tensors made plain); results that
  are written to disk carry a ``schema_version``;
- ``str(result)``: a readable table;
- ``_repr_html_()``: an HTML table in a Jupyter cell, of the rows ``_html_rows()`` gives
  (field and value by default; a type with a natural table gives its own rows);
- ``plot()``: a plotly figure, ``conceptvec.viz.figure(result)``, which dispatches on the
  result's type (plotly is imported then).

:class:`Result` gives the defaults; a type overrides what it can say better.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Callable, Iterable
from pathlib import PurePath
from typing import Any


def plain(value: object) -> Any:
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

    def to_dict(self) -> dict[str, object]:
        """Return the result as plain data, field names kept (see :func:`plain`)."""
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def __str__(self) -> str:
        """Return a two-column table of the result's fields."""
        rows = [(k, _short(v)) for k, v in self.to_dict().items()]
        width = max([len(k) for k, _ in rows] + [1])
        return "\n".join([type(self).__name__] + [f"  {k:<{width}}  {v}" for k, v in rows])

    def _html_rows(self) -> tuple[str, list[dict[str, object]]]:
        """Return ``(title, rows)``: what the HTML table shows (a row is column -> value)."""
        return type(self).__name__, [{"field": k, "value": v} for k, v in self.to_dict().items()]

    def _repr_html_(self) -> str:
        """Return the result as an HTML table for Jupyter."""
        title, rows = self._html_rows()
        return html_table(rows, title)

    def plot(self) -> Any:
        """Return a plotly figure of the result (see :func:`conceptvec.viz.figure`)."""
        from conceptvec.viz import figure

        return figure(self)


def cell(value: object, limit: int = 120) -> str:
    """Return ``value`` as the text of a table cell: floats to 4 significant digits, lists
    joined by commas (strings quoted, as tokens are), None as ``-``."""
    from conceptvec.tokens import show

    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        text = ", ".join(show(v) if isinstance(v, str) else cell(v, limit) for v in value)
    elif isinstance(value, dict):
        text = ", ".join(f"{k}: {cell(v, limit)}" for k, v in value.items())
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def html_table(rows: list[dict[str, object]], title: str = "") -> str:
    """Return ``rows`` (dicts sharing their keys) as an HTML ``<table>`` under a bold title;
    numbers align right, every value is escaped."""
    head = f"<p><b>{html.escape(title)}</b></p>" if title else ""
    if not rows:
        return head + "<p>(nothing)</p>"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    th = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = []
    for r in rows:
        tds = []
        for c in cols:
            v = r.get(c)
            num = isinstance(v, (int, float)) and not isinstance(v, bool)
            style = " style='text-align:right'" if num else ""
            tds.append(f"<td{style}>{html.escape(cell(v))}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    return f"{head}<table><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _short(value: object, limit: int = 100) -> str:
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

    def to_dict(self) -> dict[str, object]:
        """Return ``{"query", "hits"}``; each hit's ``rank`` counts from 1, as printed."""
        return {"query": self.query, "hits": self._hits()}

    def _hits(self) -> list[dict[str, object]]:
        return [{"rank": n, **plain(h)} for n, h in enumerate(self, 1)]

    def __str__(self) -> str:
        if not self:
            return f"no neuron matches {self.query!r}" if self.query else "no hits"
        if self._table is not None:
            return self._table(list(self))
        return "\n".join(str(h) for h in self)

    def __repr__(self) -> str:
        return f"SearchResult({list.__repr__(self)}, query={self.query!r})"

    def _html_rows(self) -> tuple[str, list[dict[str, object]]]:
        title = f"hits for {self.query!r}" if self.query else "hits"
        return title, self._hits()

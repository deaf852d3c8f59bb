"""The one plot route: :func:`figure`, dispatching on the result's type, and its fallback."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

from conceptvec.tokens import show


@functools.singledispatch
def figure(result: Any) -> Any:
    """Return the plotly figure of any conceptvec result (what ``result.plot()`` returns);
    a type without a chart of its own gets :func:`table_figure`."""
    return table_figure(result)


def table_figure(result: Any) -> Any:
    """Return a plotly table of a result's fields (for results without a natural chart)."""
    import plotly.graph_objects as go

    data = result.to_dict()
    keys = list(data)
    values = [json_cell(data[k]) for k in keys]
    fig = go.Figure(
        go.Table(header=dict(values=["field", "value"]), cells=dict(values=[keys, values]))
    )
    fig.update_layout(title=type(result).__name__)
    return fig


def json_cell(value: Any, limit: int = 200) -> str:
    """Return ``value`` as a short JSON string for a table cell."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def quoted(tokens: Sequence[str] | str) -> str:
    """Return tokens as a label shows them: quoted, so a leading space is seen
    (``" dog"``, not `` dog``), joined by commas."""
    if isinstance(tokens, str):
        return show(tokens)
    return ", ".join(show(t) for t in tokens)


def short(text: str, limit: int = 40) -> str:
    """Return ``text`` cut to ``limit`` characters with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"

"""Plotly figures of conceptvec results, by one route: ``figure(result)``.

``figure`` dispatches on the result's type (:func:`functools.singledispatch`); every result's
``plot()`` calls it, and a result type without a chart of its own gets a table of its fields.
A new result type draws itself with ``@conceptvec.viz.figure.register(MyResult)``.
``eval_page`` builds the HTML page of an evaluation (``conceptvec eval --html``).

plotly is imported when a figure is drawn, never when conceptvec is imported. Nothing here
calls ``.show()``.
"""

from . import evaluation, figures  # noqa: F401  (they register their figures)
from .base import figure, quoted, table_figure
from .page import eval_page

__all__ = ["eval_page", "figure", "quoted", "table_figure"]

"""Figures of an evaluation (:class:`~conceptvec.evaluate.EvalReport`): each panel alone, for
the HTML page, and the three together, for ``report.plot()``.

- **change**: the concept vector's change percentile among all the model's vectors, per
  concept and checkpoint (90: moved more than 90% of them, i.e. targeted);
- **layers**: the relative change of each layer's down projection, per checkpoint;
- **recovery**: the share of the lost forget-QA log p that each attack brought back; where
  the forget QA lost less than the measurement's noise, a mark says "too little forgetting
  to measure" instead of a ratio that would divide noise by a number near zero;
- **trace**: one concept vector's mean activation on concept text, base vs. unlearned;
- **depth**: the ``patch`` attack's depth profile: per layer, the share recovered by patching
  the base's residual stream after it (solid) or its whole MLP activation (dotted).
"""

from __future__ import annotations

from typing import Any

from conceptvec.evaluate.report import TOO_LITTLE, ConceptEval, EvalReport

from .base import figure

PALETTE = ("#0969da", "#cf222e", "#1a7f37", "#8250df", "#9a6700", "#bf3989", "#1b7c83")
"""One colour per checkpoint, the same in every panel."""
PATTERNS = ("", "/", ".", "x", "\\", "+")
"""One fill pattern per concept in the recovery panel."""

CHANGE = ("Is the concept vector targeted?", "concept", "change percentile among all vectors")
LAYERS = ("Which layers changed?", "layer", "relative change of down_proj (log scale)")
RECOVERY = ("Does the concept come back?", "attack", "share of lost forget-QA log p recovered")
DEPTH = (
    "Where was the path to the answer cut? (patching the base's activations per layer)",
    "layer",
    "share of lost forget-QA log p recovered",
)


def _colour(n: int) -> str:
    return PALETTE[n % len(PALETTE)]


def _change_traces(report: EvalReport) -> list[Any]:
    import plotly.graph_objects as go

    return [
        go.Bar(
            name=run.name,
            legendgroup=run.name,
            marker_color=_colour(n),
            x=[c.concept for c in run.concepts],
            y=[c.vector.change_pct_model for c in run.concepts],
            hovertemplate="%{x}: percentile %{y:.1f}<extra>" + run.name + "</extra>",
        )
        for n, run in enumerate(report.runs)
    ]


def _layer_traces(report: EvalReport) -> list[Any]:
    import plotly.graph_objects as go

    out = []
    for n, run in enumerate(report.runs):
        down = [m for m in run.weights.matrices if m.matrix == "down" and m.rel_frobenius > 0]
        out.append(
            go.Scatter(
                name=run.name,
                legendgroup=run.name,
                showlegend=False,
                line_color=_colour(n),
                x=[m.layer for m in down],
                y=[m.rel_frobenius for m in down],
                mode="lines+markers",
            )
        )
    return out


def _recovery_traces(report: EvalReport) -> list[Any]:
    """One bar group per attack, a bar per checkpoint and concept; a share that cannot be
    measured (too little forgetting) is a zero-height bar labelled so."""
    import plotly.graph_objects as go

    out = []
    concepts = list(dict.fromkeys(c.concept for run in report.runs for c in run.concepts))
    for n, run in enumerate(report.runs):
        for c in run.concepts:
            if not c.recovery:
                continue
            name = run.name if len(concepts) == 1 else f"{run.name} / {c.concept}"
            values = [r.recovered for r in c.recovery]
            out.append(
                go.Bar(
                    name=name,
                    legendgroup=run.name,
                    showlegend=len(concepts) > 1,  # the runs' colours are in the first panel
                    marker=dict(
                        color=_colour(n),
                        pattern_shape=PATTERNS[concepts.index(c.concept) % len(PATTERNS)],
                    ),
                    x=[r.attack.split(":")[-1] for r in c.recovery],
                    y=[0.0 if v is None else v for v in values],
                    text=["too little forgetting" if v is None else f"{v:.2f}" for v in values],
                    textposition="outside",
                    textangle=-90,
                    textfont_size=11,
                    constraintext="none",
                    cliponaxis=False,
                    hovertext=[
                        f"{name}: forget drop {_drop(c):+.3f} is within the noise ({r.floor:.3f}): "
                        + TOO_LITTLE
                        if r.recovered is None
                        else f"{name}: {r.recovered:.2f}; {r.detail}"
                        for r in c.recovery
                    ],
                    hoverinfo="text",
                )
            )
    return out


def _recovery_range(report: EvalReport) -> list[float]:
    """The recovery axis: 0 to 1 and every share, with room above the bars for their text."""
    shares = [
        r.recovered
        for run in report.runs
        for c in run.concepts
        for r in c.recovery
        if r.recovered is not None
    ]
    low, high = min([0.0, *shares]), max([1.0, *shares])
    return [low - 0.05 * (high - low), high + 0.45 * (high - low)]


def _depth_traces(report: EvalReport) -> list[Any]:
    """One line per (checkpoint, concept, point) from the ``patch`` attack's profile."""
    import plotly.graph_objects as go

    out = []
    for n, run in enumerate(report.runs):
        for c in run.concepts:
            for r in c.recovery:
                if r.profile is None:
                    continue
                for point, dash in (("resid", "solid"), ("mlp", "dot")):
                    out.append(
                        go.Scatter(
                            x=r.profile["layers"],
                            y=[float("nan") if v is None else v for v in r.profile[point]],
                            mode="lines+markers",
                            name=f"{run.name} / {c.concept}: {point}",
                            line=dict(color=_colour(n), dash=dash),
                        )
                    )
    return out


def _drop(c: ConceptEval) -> float:
    d = c.drop("forget")
    return float("nan") if d is None else d


def _alone(title: tuple[str, str, str], traces: list[Any], **layout: Any) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure(traces)
    fig.update_layout(
        title=title[0],
        xaxis_title=title[1],
        yaxis_title=title[2],
        barmode="group",
        height=380,
        margin=dict(t=60, b=60),
        legend=dict(orientation="h", y=-0.25),
        **layout,
    )
    return fig


def change_figure(report: EvalReport) -> Any:
    """Return the change-percentile bars, with the 90th percentile marked."""
    fig = _alone(CHANGE, _change_traces(report), yaxis_range=[0, 100])
    fig.add_hline(y=90, line_dash="dot", annotation_text="90: targeted")
    return fig


def layers_figure(report: EvalReport) -> Any:
    """Return the relative change of each layer's down projection, per checkpoint."""
    fig = _alone(LAYERS, _layer_traces(report), yaxis_type="log", xaxis_dtick=1)
    fig.update_traces(showlegend=True)
    return fig


def recovery_figure(report: EvalReport) -> Any | None:
    """Return the recovered shares per attack (None when no attack ran)."""
    traces = _recovery_traces(report)
    if not traces:
        return None
    fig = _alone(RECOVERY, traces, yaxis_range=_recovery_range(report))
    fig.update_traces(showlegend=True)
    fig.add_hline(y=1, line_dash="dot", annotation_text="1: all of it")
    fig.add_hline(y=0, line_width=1)
    return fig


def depth_figure(report: EvalReport) -> Any | None:
    """Return the ``patch`` depth profiles (None when that attack did not run)."""
    traces = _depth_traces(report)
    if not traces:
        return None
    fig = _alone(DEPTH, traces, xaxis_dtick=1)
    fig.add_hline(y=1, line_dash="dot", annotation_text="1: all of it")
    fig.add_hline(y=0, line_width=1)
    return fig


def trace_figure(c: ConceptEval) -> Any | None:
    """Return one vector's mean activation on concept text, base vs. unlearned (None when
    the trace was not run)."""
    import plotly.graph_objects as go

    t = c.trace
    if t is None:
        return None
    fig = go.Figure(
        go.Bar(
            x=["base", "unlearned"],
            y=[t.mean_base, t.mean_unlearned],
            marker_color=["steelblue", "indianred"],
            text=[f"{t.mean_base:+.3f}", f"{t.mean_unlearned:+.3f}"],
            textposition="outside",
            cliponaxis=False,
        )
    )
    r = "n/a" if t.correlation is None else f"{t.correlation:.2f}"
    fig.update_layout(
        title=f"{c.neuron}: its activation on concept text",
        xaxis_title=f"model ({t.tokens} tokens; per-token r = {r})",
        yaxis_title="mean MLP activation",
        height=300,
        width=420,
        margin=dict(t=50, b=40, l=60, r=20),
        showlegend=False,
    )
    return fig


@figure.register(EvalReport)
def eval_report_figure(report: EvalReport) -> Any:
    """Return the three panels stacked, each with its own title and axis titles."""
    from plotly.subplots import make_subplots

    panels = [(CHANGE, _change_traces(report)), (LAYERS, _layer_traces(report))]
    recovery = _recovery_traces(report)
    if recovery:
        panels.append((RECOVERY, recovery))
    depth = _depth_traces(report)
    if depth:
        panels.append((DEPTH, depth))
    fig = make_subplots(
        rows=len(panels),
        cols=1,
        subplot_titles=[p[0][0] for p in panels],
        vertical_spacing=0.1 if len(panels) > 3 else 0.14 if len(panels) == 3 else 0.2,
    )
    for row, (title, traces) in enumerate(panels, 1):
        for t in traces:
            fig.add_trace(t, row=row, col=1)
        fig.update_xaxes(title_text=title[1], row=row, col=1)
        fig.update_yaxes(title_text=title[2], row=row, col=1)
    fig.update_yaxes(range=[0, 100], row=1, col=1)
    fig.update_yaxes(type="log", row=2, col=1)
    fig.update_xaxes(dtick=1, row=2, col=1)
    if recovery:
        fig.update_yaxes(range=_recovery_range(report), row=3, col=1)
    fig.update_layout(
        height=330 * len(panels) + 80,
        width=900,
        barmode="group",
        title=f"Unlearning against {report.base}",
        legend=dict(orientation="h", y=-0.08),
        margin=dict(t=90),
    )
    return fig

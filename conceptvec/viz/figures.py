"""The figure of each result type, registered on :func:`conceptvec.viz.figure`.

plotly is imported inside each function. Labels quote tokens (``p(" dog")``) so a leading
space shows.
"""

from __future__ import annotations

from typing import Any

from conceptvec.activations import TopContexts
from conceptvec.atlas import AtlasDiff, BuildReport
from conceptvec.concepts import ConceptSearch
from conceptvec.decoding import Decoding
from conceptvec.interventions import DoseResponse, EffectResult
from conceptvec.qa import QAEvaluation
from conceptvec.results import SearchResult
from conceptvec.unlearning import UnlearnResult

from .base import figure, quoted, short


@figure.register(EffectResult)
def effect_figure(result: Any) -> Any:
    """Return a figure of an :class:`EffectResult`: per prompt, the change in log p(target)
    of the intervention (a marker) over the spread of its random controls (a box)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    labels = [short(p.prompt) for p in result.prompts]
    for label, p in zip(labels, result.prompts):
        if p.control_deltas:
            fig.add_trace(
                go.Box(
                    y=p.control_deltas,
                    x=[label] * len(p.control_deltas),
                    name="random controls",
                    marker_color="lightgray",
                    boxpoints="all",
                    showlegend=label == labels[0],
                )
            )
    fig.add_trace(
        go.Scatter(
            x=labels,
            y=[p.delta for p in result.prompts],
            mode="markers",
            marker=dict(size=12, color="crimson", symbol="diamond"),
            name=", ".join(result.intervention),
        )
    )
    fig.update_layout(
        title=f"{result.model}: effect of {', '.join(result.intervention)} on "
        f"log p({quoted(result.targets)})",
        yaxis_title=f"change in log p({quoted(result.targets)})",
        xaxis_title="prompt",
    )
    return fig


@figure.register(DoseResponse)
def dose_figure(dose: Any) -> Any:
    """Return a figure of a :class:`DoseResponse`: mean p(target) against the clamp value
    for the chosen neurons, with the controls' range shaded."""
    import plotly.graph_objects as go

    fig = go.Figure()
    base = dose.base_prob
    control_probs = dose.control_probs
    if control_probs and control_probs[0]:
        lows = [min(c) for c in control_probs]
        highs = [max(c) for c in control_probs]
        fig.add_trace(
            go.Scatter(
                x=dose.values + dose.values[::-1],
                y=highs + lows[::-1],
                fill="toself",
                fillcolor="rgba(128,128,128,0.25)",
                line=dict(width=0),
                name="random controls (min-max)",
            )
        )
    fig.add_trace(
        go.Scatter(
            x=dose.values,
            y=dose.probs,
            mode="lines+markers",
            name="clamp " + ", ".join(dose.neurons),
        )
    )
    fig.add_hline(y=base, line_dash="dot", annotation_text="no intervention")
    fig.update_layout(
        title=f"{dose.model}: p({quoted(dose.targets)}) against the clamp value",
        xaxis_title="clamp value",
        yaxis_title=f"mean p({quoted(dose.targets)})",
    )
    return fig


@figure.register(QAEvaluation)
def qa_figure(result: Any) -> Any:
    """Return a figure of a :class:`QAEvaluation`: the change in the reference answers'
    log-probability per token under the intervention (a marker) and each control (a box)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    if result.controls:
        fig.add_trace(
            go.Box(
                y=result.control_deltas,
                name="random controls",
                marker_color="lightgray",
                boxpoints="all",
            )
        )
    fig.add_trace(
        go.Scatter(
            x=["random controls" if result.controls else "intervention"],
            y=[result.delta_logprob],
            mode="markers",
            marker=dict(size=12, color="crimson", symbol="diamond"),
            name=", ".join(result.intervention) or "no intervention",
        )
    )
    fig.update_layout(
        title=f"{result.model}: answers' log p per token ({result.prompting} prompts)",
        xaxis_title="condition",
        yaxis_title="change in mean log p per answer token",
    )
    return fig


@figure.register(TopContexts)
def top_contexts_figure(result: Any) -> Any:
    """Return a horizontal bar figure of a :class:`TopContexts`: one bar per context, its
    activation, labelled ``…left [token] right…`` (strongest at the top)."""
    import plotly.graph_objects as go

    contexts = list(result.contexts)
    labels = [f"{i}. {c.snippet()}" for i, c in enumerate(contexts, 1)]
    values = [c.value for c in contexts]
    fig = go.Figure(
        go.Bar(
            x=values,
            y=labels,
            orientation="h",
            marker_color=["crimson" if v >= 0 else "royalblue" for v in values],
            customdata=[[c.text, c.position] for c in contexts],
            hovertemplate="%{x:+.3f}<br>text %{customdata[0]}, token %{customdata[1]}"
            "<extra></extra>",
        )
    )
    which = "lowest" if result.bottom else "highest"
    fig.update_layout(
        title=f"{result.model} {result.neuron}: {which} activations",
        xaxis_title="MLP activation",
        yaxis=dict(
            autorange="reversed",
            tickfont=dict(family="monospace"),
            title="context (…left [token] right…)",
        ),
        height=max(300, 24 * len(contexts) + 120),
    )
    return fig


@figure.register(ConceptSearch)
def concept_figure(search: Any) -> Any:
    """Return a figure of a :class:`ConceptSearch`: per validated candidate and knockout
    mode, the change of concept QA (x) against unrelated QA (y), controls in grey."""
    import plotly.graph_objects as go

    fig = go.Figure()
    cx, cy = [], []
    for c in search.validated:
        for k in c.knockouts:
            cx += k.control_delta_concept
            cy += k.control_delta_unrelated
    if cx:
        fig.add_trace(
            go.Scatter(x=cx, y=cy, mode="markers", marker_color="lightgray", name="controls")
        )
    for c in search.validated:
        fig.add_trace(
            go.Scatter(
                x=[k.delta_concept for k in c.knockouts],
                y=[k.delta_unrelated for k in c.knockouts],
                text=[k.mode for k in c.knockouts],
                mode="markers+text",
                textposition="top center",
                marker=dict(size=11),
                name=f"{c.neuron} ({c.verdict})",
            )
        )
    fig.update_layout(
        title=f"{search.concept} in {search.model}: knockouts",
        xaxis_title="concept QA: change in log p per answer token",
        yaxis_title="unrelated QA: change in log p per answer token",
    )
    return fig


@figure.register(AtlasDiff)
def atlas_diff_figure(diff: Any) -> Any:
    """Return a plotly figure: share of neurons with the same top-1 token, per layer."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for m in sorted({r.matrix for r in diff.layers}):
        rows = [r for r in diff.layers if r.matrix == m]
        fig.add_trace(go.Scatter(x=[r.layer for r in rows], y=[r.same_top1 for r in rows], name=m))
    fig.update_layout(
        title="Neurons with the same top-1 token",
        xaxis_title="layer",
        yaxis_title="share of neurons",
        yaxis_range=[0, 1],
    )
    return fig


@figure.register(Decoding)
def decoding_figure(decoding: Any) -> Any:
    """Return a figure of a :class:`Decoding`: its top and bottom tokens' scores as bars."""
    import plotly.graph_objects as go

    tokens = decoding.top + decoding.bottom[::-1]
    fig = go.Figure(
        go.Bar(
            x=[t.score for t in tokens],
            y=[f"{quoted(t.token)} ({t.id})" for t in tokens],
            orientation="h",
            marker_color=["steelblue"] * len(decoding.top) + ["indianred"] * len(decoding.bottom),
        )
    )
    what = f"{decoding.neuron} ({decoding.matrix})" if decoding.neuron is not None else "vector"
    fig.update_layout(
        title=f"{decoding.model} {what}: top and bottom tokens",
        xaxis_title="score (logit units)",
        yaxis=dict(autorange="reversed", tickfont=dict(family="monospace"), title="token (id)"),
        height=max(300, 18 * len(tokens) + 120),
    )
    return fig


@figure.register(SearchResult)
def search_figure(hits: Any) -> Any:
    """Return a figure of a :class:`SearchResult`: each hit's score, best first."""
    import plotly.graph_objects as go

    labels = [f"{h.neuron} {h.matrix}" for h in hits]
    values = [getattr(h, "zscore", None) or h.score for h in hits]
    fig = go.Figure(
        go.Bar(x=values, y=labels, orientation="h", text=[quoted(h.token) for h in hits])
    )
    measure = "z-score" if hits and hasattr(hits[0], "zscore") else "score"
    fig.update_layout(
        title=f"neurons for {hits.query!r}" if getattr(hits, "query", "") else "search hits",
        xaxis_title=measure,
        yaxis=dict(autorange="reversed", tickfont=dict(family="monospace"), title="neuron"),
        height=max(300, 22 * len(hits) + 120),
    )
    return fig


@figure.register(BuildReport)
def build_figure(report: Any) -> Any:
    """Return a figure of a :class:`BuildReport`: where the seconds went."""
    import plotly.graph_objects as go

    parts = {k: v for k, v in report.seconds.items() if k != "total"}
    fig = go.Figure(go.Bar(x=list(parts), y=list(parts.values())))
    fig.update_layout(
        title=f"atlas {report.out}: {report.seconds.get('total', sum(parts.values())):.1f} s "
        f"on {report.device} ({report.dtype})",
        xaxis_title="stage",
        yaxis_title="seconds",
    )
    return fig


@figure.register(UnlearnResult)
def unlearn_figure(result: Any) -> Any:
    """Return a figure of an :class:`UnlearnResult`: its final losses."""
    import plotly.graph_objects as go

    losses = result.losses
    losses = losses() if callable(losses) else losses
    fig = go.Figure(go.Bar(x=list(losses), y=list(losses.values())))
    fig.update_layout(title="unlearning: final losses", xaxis_title="loss term", yaxis_title="loss")
    return fig

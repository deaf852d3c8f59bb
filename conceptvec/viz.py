"""Plotly figures built from result objects. Nothing here calls ``.show()``.

plotly is imported inside each function, so importing conceptvec stays light.
"""

from __future__ import annotations

from typing import Any


def effect_figure(result: Any) -> Any:
    """Return a figure of an :class:`EffectResult`: per prompt, the change in log p(target)
    of the intervention (a marker) over the spread of its random controls (a box)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    labels = [p.prompt if len(p.prompt) <= 40 else p.prompt[:37] + "..." for p in result.prompts]
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
        title=f"{result.model}: effect on log p({', '.join(result.targets)})",
        yaxis_title="change in log p(target)",
        xaxis_title="prompt",
    )
    return fig


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
        go.Scatter(x=dose.values, y=dose.probs, mode="lines+markers", name=", ".join(dose.neurons))
    )
    fig.add_hline(y=base, line_dash="dot", annotation_text="no intervention")
    fig.update_layout(
        title=f"{dose.model}: p({', '.join(dose.targets)}) vs clamp value",
        xaxis_title="clamp value",
        yaxis_title="mean p(target)",
    )
    return fig


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
        yaxis_title="change in mean log p per answer token",
    )
    return fig


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
        yaxis=dict(autorange="reversed", tickfont=dict(family="monospace")),
        height=max(300, 24 * len(contexts) + 120),
    )
    return fig


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

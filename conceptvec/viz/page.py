"""The page ``conceptvec eval --html`` writes: one a researcher can send a colleague.

- a table, one row per checkpoint and concept, with the verdict;
- the evaluation's figures, each titled, with axis titles;
- a card per concept vector: the verdict and why, the numbers that decided it, its decoded
  tokens before and after, and its activation trace;
- the settings, folded away.

Self-contained: plotly's script is inlined once; nothing is fetched when the page opens.
"""

from __future__ import annotations

import html
import json

from conceptvec.evaluate.report import TOO_LITTLE, ConceptEval, EvalReport, RunEval, cosine_text
from conceptvec.evaluate.trace import NOT_MEASURED
from conceptvec.results import cell

from .base import quoted
from .evaluation import change_figure, depth_figure, layers_figure, recovery_figure, trace_figure

CONFIG = {"displayModeBar": False, "responsive": True}
"""plotly's options for the page's figures: no toolbar over the titles."""

VERDICT_COLOURS = {
    "erased": "#1a7f37",
    "disconnected": "#9a6700",
    "drifted": "#8250df",
    "intact": "#cf222e",
    NOT_MEASURED: "#57606a",
}
"""Green when the concept is gone from the weights, red when it is still all there."""

STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1100px;
 color:#1f2328;line-height:1.45;padding:0 1em}
h1{margin-bottom:.2em} .sub{color:#57606a;margin-top:0}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:13px}
th,td{border:1px solid #d0d7de;padding:4px 8px;vertical-align:top}
th{background:#f6f8fa;text-align:left} td.num{text-align:right;font-variant-numeric:tabular-nums}
.wide{overflow-x:auto}
.verdict{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-weight:600;
 font-size:13px;white-space:nowrap}
.card{border:1px solid #d0d7de;border-radius:8px;padding:1em 1.2em;margin:1.2em 0}
.card h3{margin:.1em 0 .4em} .why{margin:.2em 0 .8em}
.cols{display:flex;flex-wrap:wrap;gap:1.5em} .cols>div{flex:1 1 320px}
code{background:#f6f8fa;padding:0 3px;border-radius:3px;font-size:13px}
.tokens code{margin:0 2px 2px 0;display:inline-block}
.muted{color:#57606a} details{margin:1.5em 0} summary{cursor:pointer;font-weight:600}
pre{background:#f6f8fa;padding:.8em;overflow-x:auto;font-size:12px}
"""


def verdict(label: str) -> str:
    """Return ``label`` as a coloured badge."""
    colour = VERDICT_COLOURS.get(label, "#57606a")
    return f"<span class='verdict' style='background:{colour}'>{html.escape(label)}</span>"


def _table(head: list[str], rows: list[list[str]], numeric: frozenset[int] = frozenset()) -> str:
    """Return an HTML table of text cells (``numeric`` columns align right); a cell that is
    already HTML is passed as ``Markup``."""
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = []
    for row in rows:
        tds = []
        for i, v in enumerate(row):
            text = v if isinstance(v, Markup) else html.escape(v)
            tds.append(f"<td class='num'>{text}</td>" if i in numeric else f"<td>{text}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    return f"<div class='wide'><table><tr>{th}</tr>{''.join(body)}</table></div>"


class Markup(str):
    """Text that is already HTML."""


def _recovered(c: ConceptEval) -> str:
    if not c.recovery:
        return "-"
    if all(r.recovered is None for r in c.recovery):
        return TOO_LITTLE
    parts = []
    for r in c.recovery:
        name = r.attack.split(":")[-1]
        if r.recovered is None:
            parts.append(f"{name}: {TOO_LITTLE}")
        else:
            pct = "" if r.percentile is None else f" (pct {r.percentile:.0f})"
            parts.append(f"{name}: {r.recovered:.2f}{pct}")
    return Markup("<br>".join(html.escape(p) for p in parts))


def _summary(report: EvalReport) -> str:
    """The verdict table: one row per checkpoint and concept."""
    k = report.settings.get("k", 200)
    head = ["checkpoint", "method", "concept", "vector", "verdict", "cosine", f"Jaccard@{k}",
            "change pct (model / layer)", "activation base → after", "forget drop",
            "retain drop", "recovered (share of lost forget QA)"]  # fmt: skip
    rows = []
    for run in report.runs:
        for c in run.concepts:
            v, t = c.vector, c.trace
            act = NOT_MEASURED if t is None else f"{t.mean_base:+.2f} → {t.mean_unlearned:+.2f}"
            rows.append(
                [run.name, str(run.record.get("method") or "-"), c.concept, c.neuron,
                 Markup(verdict(c.label)), cosine_text(v.cosine), f"{v.jaccard:.3f}",
                 f"{v.change_pct_model:.0f} / {v.change_pct_layer:.0f}", act,
                 _f(c.drop("forget"), "+.3f"), _f(c.drop("retain"), "+.3f"), _recovered(c)]
            )  # fmt: skip
    return _table(head, rows, numeric=frozenset({5, 6, 7, 9, 10}))


def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _numbers(report: EvalReport, c: ConceptEval) -> list[list[str]]:
    """The numbers that decided the verdict, with what each one means."""
    v, t, th = c.vector, c.trace, report.settings.get("thresholds", {})
    k = report.settings.get("k", 200)
    rows = [
        ["cosine (base vs. unlearned vector)", cosine_text(v.cosine),
         f"erased below {th.get('cosine_min', 0.9)}"],
        [f"Jaccard@{k} of the decoded tokens", f"{v.jaccard:.3f}",
         f"erased below {th.get('jaccard_min', 0.5)}"],
        ["relative change ||u - b|| / ||b||", f"{v.rel_change:.3g}", ""],
        ["change percentile: model / layer",
         f"{v.change_pct_model:.0f} / {v.change_pct_layer:.0f}", "90 or more: targeted"],
    ]  # fmt: skip
    if t is None:
        rows.append(["activation on concept text", NOT_MEASURED, "the trace was not run"])
    else:
        rows += [
            ["mean activation on concept text: base -> unlearned",
             f"{t.mean_base:+.3f} -> {t.mean_unlearned:+.3f}", f"over {t.tokens} tokens"],
            ["firing kept (unlearned / base mean)", _f(t.fire_kept, ".2f"),
             f"disconnected below {th.get('fire_min', 0.5)}"],
            ["per-token correlation with the base", _f(t.correlation, ".2f"),
             f"disconnected below {th.get('corr_min', 0.5)}"],
            ["its shift's percentile in its layer", _f(t.shift_pct_layer, ".0f"),
             f"stands out at {th.get('outlier_pct', 90.0):.0f} or more"],
        ]  # fmt: skip
    for probe, meaning in (("forget", "the concept's QA"), ("retain", "other QA")):
        d = c.drop(probe)
        if d is not None:
            rows.append(
                [f"{probe} drop (nats per answer token)", f"{d:+.3f}",
                 f"{meaning}: base minus unlearned log p; positive: less likely"]
            )  # fmt: skip
    for r in c.recovery:
        if r.recovered is None:
            value = TOO_LITTLE
            meaning = f"the forget drop is within the measurement's noise ({r.floor:.3f})"
        else:
            pct = "" if r.percentile is None else f" (percentile {r.percentile:.0f})"
            value, meaning = f"{r.recovered:.2f}{pct}", r.detail
        rows.append([f"recovered by {r.attack}", value, meaning])
    for name, value in c.metrics.items():
        rows.append([f"metric {name}", cell(value), "a registered metric (--metrics)"])
    return rows


def _tokens(tokens: list[str], n: int = 20) -> str:
    if not tokens:
        return "<span class='muted'>none recorded</span>"
    return "".join(f"<code>{html.escape(quoted(t))}</code>" for t in tokens[:n])


def _card(report: EvalReport, run: RunEval, c: ConceptEval, fig_html: str) -> str:
    numbers = _table(["measure", "value", "meaning"], _numbers(report, c), numeric=frozenset({1}))
    trace = fig_html or "<p class='muted'>Activation trace: not measured.</p>"
    v = c.vector
    return (
        f"<div class='card'><h3>{html.escape(c.concept)} &middot; <code>{html.escape(c.neuron)}"
        f"</code> &middot; {html.escape(run.name)} {verdict(c.label)}</h3>"
        f"<p class='why'>{html.escape(c.why)}</p>"
        f"<div class='cols'><div>{numbers}</div><div>{trace}</div></div>"
        f"<p><b>Decoded tokens before</b> ({html.escape(v.side)} side)</p>"
        f"<p class='tokens'>{_tokens(v.top_before)}</p>"
        f"<p><b>Decoded tokens after</b></p><p class='tokens'>{_tokens(v.top_after)}</p></div>"
    )


def eval_page(report: EvalReport) -> str:
    """Return the evaluation as a self-contained HTML page."""
    figs = [change_figure(report), layers_figure(report), recovery_figure(report)]
    figs = [f for f in (*figs, depth_figure(report)) if f]
    plots = []
    for n, fig in enumerate(figs):
        plots.append(fig.to_html(full_html=False, include_plotlyjs=n == 0, config=CONFIG))
    cards = []
    for run in report.runs:
        for c in run.concepts:
            tf = trace_figure(c)
            fig_html = (
                ""
                if tf is None
                else tf.to_html(full_html=False, include_plotlyjs=False, config=CONFIG)
            )
            cards.append(_card(report, run, c, fig_html))
    methods = sorted({str(r.record.get("method")) for r in report.runs if r.record.get("method")})
    sub = f"{len(report.runs)} checkpoint(s)" + (f" ({', '.join(methods)})" if methods else "")
    settings = html.escape(json.dumps(report.settings, indent=1, default=str))
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>conceptvec eval: {html.escape(report.base)}</title><style>{STYLE}</style>"
        "</head><body>"
        "<h1>Did unlearning remove the concept, or hide it?</h1>"
        f"<p class='sub'>{sub} against the base model <code>{html.escape(report.base)}</code>"
        "</p><p>Each concept vector is an MLP column that writes the concept. <b>erased</b>: "
        "its weights moved away from the concept; <b>disconnected</b>: weights intact but it "
        "no longer fires on the concept's text; <b>drifted</b>: its firing changed only as "
        "much as its whole layer's; <b>intact</b>: weights and firing as in the base; "
        f"<b>{NOT_MEASURED}</b>: weights intact, activations not traced. Drops are base minus "
        "unlearned log p per answer token; <i>recovered</i> is the share of the lost forget-QA "
        "log p that an attack brings back.</p>"
        "<h2>Verdicts</h2>"
        + _summary(report)
        + "<h2>Figures</h2>"
        + "".join(plots)
        + "<h2>Concept vectors</h2>"
        + "".join(cards)
        + f"<details><summary>Settings</summary><pre>{settings}</pre></details>"
        + "</body></html>\n"
    )

"""The evaluation report: one base, one or more unlearned checkpoints, their concept vectors.

``EvalReport.to_dict()`` follows the versioned schema ``conceptvec.eval/1`` (documented in
``docs/evaluation.md``); ``table()`` is the terminal table, ``plot()`` a plotly figure
(change percentile per concept, the layer change map, recovery bars) and ``write_html()``
a self-contained page.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conceptvec.errors import EvaluationError
from conceptvec.files import write_new
from conceptvec.results import Result
from conceptvec.tokens import show

from .behaviour import Probe, Recovery
from .trace import Trace
from .weights import VectorChange, WeightComparison

SCHEMA = "conceptvec.eval/1"


@dataclass
class ConceptEval:
    """One concept vector in one unlearned checkpoint."""

    concept: str
    neuron: str
    vector: VectorChange
    label: str
    why: str
    trace: Trace | None = None
    behaviour: dict[str, Probe] = field(default_factory=dict)
    """``forget``, ``retain``, ``completion`` on the unlearned model."""
    base_behaviour: dict[str, Probe] = field(default_factory=dict)
    recovery: list[Recovery] = field(default_factory=list)
    questions: str = ""
    """Which questions the QA used (``held-out`` from the unlearning record, or ``all``)."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """The registered metrics asked for (``--metrics``), by name."""

    def drop(self, probe: str) -> float | None:
        """Base minus unlearned log p per token on ``probe`` (positive: unlearning hurt it)."""
        if probe not in self.behaviour or probe not in self.base_behaviour:
            return None
        return self.base_behaviour[probe].logprob - self.behaviour[probe].logprob

    def recovered(self, attack: str) -> float | None:
        """The share of forget QA ``attack`` brought back (None: not run, or too little forgetting to measure)."""
        r = next((r for r in self.recovery if r.attack == attack), None)
        return None if r is None else r.recovered

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "concept": self.concept,
            "neuron": self.neuron,
            "label": self.label,
            "why": self.why,
            "vector": self.vector.to_dict(),
            "trace": None if self.trace is None else self.trace.to_dict(),
            "questions": self.questions,
            "behaviour": {
                k: {
                    "base": self.base_behaviour[k].to_dict(),
                    "unlearned": v.to_dict(),
                    "logprob_drop": self.drop(k),
                }
                for k, v in self.behaviour.items()
            },
            "recovery": [r.to_dict() for r in self.recovery],
            "metrics": self.metrics,
        }


@dataclass
class RunEval:
    """One unlearned checkpoint against the base."""

    name: str
    weights: WeightComparison
    concepts: list[ConceptEval]
    record: dict[str, Any] = field(default_factory=dict)
    """What its ``unlearning.json`` says (method, steps, lr, scope), when it has one."""
    collateral: list[VectorChange] = field(default_factory=list)
    """The file's other validated concept vectors, measured alike (:mod:`.collateral`)."""

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "name": self.name,
            "record": self.record,
            "identical": self.weights.identical,
            "concepts": [c.to_dict() for c in self.concepts],
            "collateral": [v.to_dict() for v in self.collateral],
            "weights": self.weights.to_dict(),
        }


def _finite(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


TOO_LITTLE = "too little forgetting to measure"
"""What the table says where the forget QA lost less than the measurement's noise."""


def cosine_text(c: float) -> str:
    """Show a cosine so that 0.9999982 and 0.9999999 stay apart: ``1-1.8e-06``."""
    return f"{c:.7f}" if c < 0.9999995 else f"1-{1 - c:.1e}"


def collateral_text(run: RunEval) -> str:
    """One line: each other concept vector's cosine and change percentile (model)."""
    return "; ".join(
        f"{v.concept} {v.neuron}: cosine {cosine_text(v.cosine)}, Jaccard {v.jaccard:.3f}, "
        f"change pct {v.change_pct_model:.1f}"
        for v in run.collateral
    )


def depth_text(d: Any) -> str:
    """Show the ``depth`` metric: ``shallow 0.00``, ``not measured``, or ``-`` (null)."""
    if not isinstance(d, dict) or d.get("label") is None:
        return "-"
    return d["label"] if d.get("score") is None else f"{d['label']} {d['score']:.2f}"


def _f(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


@dataclass
class EvalReport(Result):
    """What :func:`conceptvec.evaluate.intrinsic` found."""

    base: str
    runs: list[RunEval]
    settings: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    """Wall seconds per stage, summed over checkpoints and concepts: ``open`` (loading and
    checks), ``weights``, ``trace``, ``base_qa`` (the base's answers and scores, once per
    question set), ``qa`` (the unlearned model's), ``attack:NAME`` for each attack; and ``total``."""

    def to_dict(self) -> dict[str, Any]:
        """Return the report as JSON-ready data (schema ``conceptvec.eval/1``); a non-finite
        number (a diverged attack, say) becomes null."""
        return _finite(
            {
                "schema": SCHEMA,
                "base": self.base,
                "settings": self.settings,
                "runs": [r.to_dict() for r in self.runs],
                "timings": self.timings,
            }
        )

    def rows(self) -> list[dict[str, Any]]:
        """Return one flat row per (checkpoint, concept): the numbers of the table."""
        out = []
        for run in self.runs:
            for c in run.concepts:
                v = c.vector
                row = {
                    "checkpoint": run.name,
                    "method": run.record.get("method"),
                    "concept": c.concept,
                    "neuron": c.neuron,
                    "cosine": v.cosine,
                    "rel_change": v.rel_change,
                    "jaccard": v.jaccard,
                    "change_pct_model": v.change_pct_model,
                    "change_pct_layer": v.change_pct_layer,
                    "act_base": None if c.trace is None else c.trace.mean_base,
                    "act_unlearned": None if c.trace is None else c.trace.mean_unlearned,
                    "label": c.label,
                    "forget_drop": c.drop("forget"),
                    "retain_drop": c.drop("retain"),
                    "forget_rouge_l": c.behaviour["forget"].rouge_l
                    if "forget" in c.behaviour
                    else None,
                    "retain_rouge_l": c.behaviour["retain"].rouge_l
                    if "retain" in c.behaviour
                    else None,
                }
                row.update({k: v for k, v in c.metrics.items() if k not in row})
                for r in c.recovery:
                    row[f"recovered[{r.attack}]"] = r.recovered
                    if r.percentile is not None:
                        row[f"recovered_pct[{r.attack}]"] = r.percentile
                out.append(row)
        return out

    def cells(self) -> list[list[str]]:
        """Return the table as text cells: the header, then one row per (checkpoint, concept)."""
        attacks = sorted({r.attack for run in self.runs for c in run.concepts for r in c.recovery})
        head = [
            "checkpoint",
            "concept",
            "vector",
            "cosine",
            f"Jaccard@{self.settings.get('k', 200)}",
            "change pct (model/layer)",
            "act. base -> after",
            "label",
            "depth",
            "forget drop",
            "retain drop",
            "forget ROUGE-L",
        ] + [f"recovered {a.split(':')[-1]}" for a in attacks]
        lines = [head]
        for run in self.runs:
            for c in run.concepts:
                v, t = c.vector, c.trace
                act = (
                    "not measured"
                    if t is None
                    else f"{t.mean_base:+.2f} -> {t.mean_unlearned:+.2f}"
                )
                rouge = c.behaviour["forget"].rouge_l if "forget" in c.behaviour else None
                rec = []
                for a in attacks:
                    r = next((r for r in c.recovery if r.attack == a), None)
                    if r is None or r.recovered is None:
                        rec.append("-" if r is None else TOO_LITTLE)
                    else:
                        pct = "" if r.percentile is None else f" (pct {r.percentile:.0f})"
                        rec.append(f"{r.recovered:.2f}{pct}")
                lines.append(
                    [
                        run.name,
                        c.concept,
                        c.neuron,
                        cosine_text(v.cosine),
                        f"{v.jaccard:.3f}",
                        f"{v.change_pct_model:.0f} / {v.change_pct_layer:.0f}",
                        act,
                        c.label,
                        depth_text(c.metrics.get("depth")),
                        _f(c.drop("forget"), "+.3f"),
                        _f(c.drop("retain"), "+.3f"),
                        _f(rouge, ".2f"),
                        *rec,
                    ]
                )
        return lines

    def table(self, markdown: bool = False) -> str:
        """Return the report as a table (``markdown=True`` for docs)."""
        head, *lines = self.cells()
        if markdown:
            out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            out += ["| " + " | ".join(row) + " |" for row in lines]
            return "\n".join(out)
        widths = [
            max(len(h), *(len(r[i]) for r in lines)) if lines else len(h)
            for i, h in enumerate(head)
        ]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        return "\n".join([fmt.format(*head)] + [fmt.format(*r) for r in lines])

    def __str__(self) -> str:
        notes = [
            f"base {self.base}; drops are base minus unlearned log p per answer token "
            "(positive: the answers got less likely); recovered: share of the lost forget-QA "
            "log p that came back (pct: among random same-layer controls)"
        ]
        for run in self.runs:
            if run.weights.identical:
                notes.append(f"{run.name}: no MLP weight changed at all")
            if run.collateral:
                notes.append(
                    f"{run.name}: the file's other concept vectors: " + collateral_text(run)
                )
            for c in run.concepts:
                notes.append(f"{run.name} / {c.concept}: {c.label}: {c.why}")
                notes.append(
                    "  top tokens before: " + ", ".join(show(t) for t in c.vector.top_before[:6])
                )
                notes.append(
                    "  top tokens after:  " + ", ".join(show(t) for t in c.vector.top_after[:6])
                )
        if self.timings:
            notes.append("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items()))
        return self.table() + "\n\n" + "\n".join(notes)

    def _repr_pretty_(self, printer: Any, _cycle: bool) -> None:
        printer.text(str(self))

    def _html_rows(self) -> tuple[str, list[dict[str, Any]]]:
        head, *rows = self.cells()
        return f"unlearning vs. {self.base}", [dict(zip(head, r)) for r in rows]

    def write_json(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write :meth:`to_dict` to ``path`` atomically."""
        data = json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n"
        return write_new(path, data.encode(), overwrite, EvaluationError)

    def write_html(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write a self-contained HTML page: the verdict table, labelled figures, a card per
        concept vector and the settings folded away (:func:`conceptvec.viz.eval_page`)."""
        from conceptvec.viz import eval_page

        return write_new(path, eval_page(self).encode(), overwrite, EvaluationError)

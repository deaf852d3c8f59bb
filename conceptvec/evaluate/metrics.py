"""Metrics: named numbers per (checkpoint, concept vector), as a registry (``--metrics``).

A metric is a function of one :class:`MetricInput` (both models, the concept, what the
evaluation measured of it: weights, trace, behaviour, attacks; the settings) that returns a
number, a string, a dict of them, or None (not measurable here). The built-ins read the
report's own measures and are what :func:`conceptvec.evaluate.score` returns per concept;
yours add to them::

    from conceptvec.evaluate import register_metric

    @register_metric("norm_ratio")
    def norm_ratio(inp):
        v = inp.result.vector
        return v.l2 / v.base_norm

``conceptvec eval --plugin MODULE --metrics norm_ratio`` then reports it under ``metrics``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from conceptvec.config import EvalConfig
from conceptvec.errors import EvaluationError
from conceptvec.models import Model
from conceptvec.models.backends import Target
from conceptvec.registry import Registry

from .concepts import EvalConcept
from .report import ConceptEval

Value = float | int | str | dict[str, Any] | None
"""What a metric returns."""


@dataclass
class MetricInput:
    """What a metric gets for one (checkpoint, concept vector)."""

    base: Model
    unlearned: Model
    concept: EvalConcept
    result: ConceptEval
    """What the evaluation measured: ``vector``, ``trace``, ``behaviour``, ``recovery``."""
    config: EvalConfig
    base_target: Target | None = None
    """The live base model (None when neither QA nor the trace ran)."""
    target: Target | None = None
    """The live unlearned model (None likewise)."""
    cache: dict[str, Any] = field(default_factory=dict)
    """Shared by every run of this evaluation."""


@dataclass(frozen=True)
class Metric:
    """A registered metric."""

    name: str
    compute: Callable[[MetricInput], Value]


METRICS: Registry[Metric] = Registry("metric", EvaluationError)
"""Every metric by its ``--metrics`` name."""


def register_metric(
    name: str, *, replace: bool = False
) -> Callable[[Callable[[MetricInput], Value]], Callable[[MetricInput], Value]]:
    """Register the decorated function as the metric ``name`` and return it unchanged."""

    def wrap(fn: Callable[[MetricInput], Value]) -> Callable[[MetricInput], Value]:
        METRICS.add(name, Metric(name, fn), replace=replace)
        return fn

    return wrap


def compute(names: list[str], inp: MetricInput) -> dict[str, Value]:
    """Return each metric of ``names`` on ``inp``."""
    return {n: METRICS[n].compute(inp) for n in names}


# ------------------------------------------------------------------------------ built-ins
def _vector_field(name: str) -> Callable[[MetricInput], Value]:
    return lambda inp: getattr(inp.result.vector, name)


BUILTIN = (
    "cosine",
    "l2",
    "rel_change",
    "jaccard",
    "preciser_jaccard",
    "related_rate",
    "change_pct_model",
    "change_pct_layer",
)
"""The weight measures of :class:`.weights.VectorChange`, each a metric."""
for _name in BUILTIN:
    register_metric(_name)(_vector_field(_name))


@register_metric("label")
def _label(inp: MetricInput) -> Value:
    """erased / disconnected / drifted / intact."""
    return inp.result.label


@register_metric("forget_drop")
def _forget_drop(inp: MetricInput) -> Value:
    """Base minus unlearned forget-QA log p per token (None without QA)."""
    return inp.result.drop("forget")


@register_metric("retain_drop")
def _retain_drop(inp: MetricInput) -> Value:
    """Base minus unlearned retain-QA log p per token (None without QA)."""
    return inp.result.drop("retain")


DEFAULT = (*BUILTIN, "label", "forget_drop", "retain_drop")
"""What :func:`conceptvec.evaluate.score` reports per concept (plus ``--metrics``)."""

"""Intrinsic evaluation of unlearning: did it remove the concept from the weights, or hide it?

- :func:`intrinsic` -> :class:`EvalReport`: weights (cosine, L2, Jaccard@k, change
  percentile among all vectors), activation trace (erased / disconnected / intact),
  behaviour (forget QA, retain QA, text completion) and recovery attacks, for one or more
  unlearned checkpoints against one base (``conceptvec eval``);
- :func:`score`: the same as a plain dict for other harnesses;
- :func:`compare_weights`: the weight-level part alone, streamed from disk;
- :class:`EvalConfig`: every setting in one object; :func:`register_attack` adds an attack
  (:data:`ATTACKS`) that ``conceptvec eval --attacks NAME`` runs, :func:`register_metric`
  a metric (:data:`METRICS`) that ``--metrics NAME`` reports.
"""

from conceptvec.config import EvalConfig

from . import literature as _literature  # noqa: F401  (registers its attacks)
from .attacks import ATTACKS, AttackInput, register_attack
from .behaviour import Recovery, quantized
from .concepts import EvalConcept, eval_concepts
from .metrics import METRICS, MetricInput, register_metric
from .report import SCHEMA, ConceptEval, EvalReport, RunEval
from .run import intrinsic, score
from .trace import TraceThresholds
from .weights import RECIPES, VectorChange, WeightComparison, compare_weights

__all__ = [
    "ATTACKS",
    "METRICS",
    "RECIPES",
    "AttackInput",
    "SCHEMA",
    "ConceptEval",
    "EvalConcept",
    "EvalConfig",
    "MetricInput",
    "EvalReport",
    "Recovery",
    "RunEval",
    "TraceThresholds",
    "VectorChange",
    "WeightComparison",
    "compare_weights",
    "eval_concepts",
    "intrinsic",
    "quantized",
    "register_attack",
    "register_metric",
    "score",
]

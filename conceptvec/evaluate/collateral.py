"""Collateral: how much every *other* validated concept vector of the concepts file moved.

When one concept is unlearned (Ancient Rome, say), the file's other validated vectors (Italy,
Poland, ...) are measured with the same weight measures (:class:`.weights.VectorChange`:
cosine, L2, relative change and its percentiles, Jaccard@k) in the same streamed pass, and
reported per checkpoint under ``collateral``. A record counts as validated unless it says
otherwise (a ``verdict`` other than ``concept``: the finder's ``unvalidated``, ``category``,
``not causal``); ConceptVectors' released records carry no verdict and were validated by
its authors. Vectors outside the model, or the same vector as an evaluated concept, are
left out.
"""

from __future__ import annotations

from typing import Any

from conceptvec.concepts import ConceptVector

from .concepts import EvalConcept, _items, _one


def _verdict(item: Any) -> str | None:
    if isinstance(item, ConceptVector):
        return item.verdict
    extra = getattr(item, "extra", None)
    if isinstance(extra, dict):
        v = extra.get("verdict")
        return v if isinstance(v, str) else None
    return None


def collateral_concepts(
    concepts: Any, chosen: list[EvalConcept], n_layers: int, d_mlp: int
) -> list[EvalConcept]:
    """Return the validated concept vectors of ``concepts`` other than ``chosen``."""
    names = {c.name.casefold() for c in chosen}
    seen = {str(c.neuron) for c in chosen}
    out = []
    for item in _items(concepts):
        if _verdict(item) not in (None, "concept"):
            continue
        c = _one(item)
        if c is None or c.name.casefold() in names or str(c.neuron) in seen:
            continue
        if not (0 <= c.neuron.layer < n_layers and 0 <= c.neuron.index < d_mlp):
            continue
        seen.add(str(c.neuron))
        out.append(c)
    return out

"""The concepts an evaluation looks at: a name, its vector in *this* model, and its probes.

Accepted inputs, all turned into :class:`EvalConcept`:

- a ConceptVectors-format file or list (:func:`conceptvec.concepts.read_concepts`) whose ``Layer`` and
  ``Dim`` name the vector in the evaluated model (``conceptvec concepts build`` writes such
  a file for your model: the released LLaMA/OLMo files name *their* models' vectors);
- :class:`conceptvec.ConceptVector` records from :func:`conceptvec.find_concept` (the QA and
  text then come from ``probes``, a concepts file for the same names);
- dicts in the ConceptVectors format (``Concept``, ``Layer``, ``Dim``, ``QA``, ...; see
  :func:`conceptvec.concepts.read_concepts` for what it requires).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from conceptvec.concepts.benchmark import ConceptEntry, TextCompletion, read_concepts
from conceptvec.concepts.record import ConceptVector
from conceptvec.errors import ConceptvecError, EvaluationError
from conceptvec.neurons import NeuronId


@dataclass
class EvalConcept:
    """One concept vector to evaluate, with the probes of its concept."""

    name: str
    neuron: NeuronId
    qa: list[str] = field(default_factory=list)
    unrelated_qa: list[str] = field(default_factory=list)
    text: str = ""
    completions: list[TextCompletion] = field(default_factory=list)
    side: str = "top"
    """Where the concept shows in the vector's decoding: ``top`` or ``bottom`` tokens (from
    the finder's record; ConceptVectors' released vectors are ``top``)."""


def eval_concepts(
    concepts: Any, probes: Any = None, names: Sequence[str] | None = None
) -> list[EvalConcept]:
    """Return the :class:`EvalConcept` list of ``concepts`` (see the module doc).

    ``probes`` (a concepts file or list) supplies QA and text by concept name where
    ``concepts`` has none; ``names`` keeps only those concepts (in that order).
    """
    items = _items(concepts)
    extra = {e.concept: e for e in _items(probes)} if probes is not None else {}
    out: list[EvalConcept] = []
    for item in items:
        c = _one(item)
        if c is None:
            continue
        more = extra.get(c.name)
        if more is not None:
            c.qa = c.qa or list(more.qa)
            c.unrelated_qa = c.unrelated_qa or list(more.unrelated_qa)
            c.text = c.text or more.wikipedia_content
            c.completions = c.completions or list(more.text_completion)
        out.append(c)
    if names:
        by = {c.name.casefold(): c for c in out}
        missing = [n for n in names if n.casefold() not in by]
        if missing:
            have = ", ".join(c.name for c in out) or "none"
            raise EvaluationError(
                f"no concept vector for {', '.join(map(repr, missing))} in the concepts "
                f"(have: {have}); check --concept"
            )
        out = [by[n.casefold()] for n in names]
    if not out:
        raise EvaluationError(
            "the concept list is empty (or none names a vector with Layer and Dim); pass a "
            "file written by `conceptvec concepts build` or records with Layer and Dim"
        )
    return out


def check_concepts(concepts: list[EvalConcept], n_layers: int, d_mlp: int, model: str) -> None:
    """Raise :class:`EvaluationError` when a concept's vector is outside the model."""
    for c in concepts:
        try:
            c.neuron.check(n_layers, d_mlp)
        except ConceptvecError:
            raise EvaluationError(
                f"the vector of {c.name!r} is {c.neuron}, outside {model} ({n_layers} layers x "
                f"{d_mlp} neurons); the concepts file names another model's vectors: build "
                "one for this model with `conceptvec concepts build`"
            ) from None


def _items(source: Any) -> list[Any]:
    if source is None:
        return []
    if isinstance(source, (str, os.PathLike)):
        return list(read_concepts(source))
    if isinstance(source, (ConceptVector, ConceptEntry, dict)):
        return [source]
    if isinstance(source, Iterable):
        items = list(source)
        if items and all(isinstance(i, dict) for i in items):
            return list(read_concepts(items))
        return items
    raise EvaluationError(
        f"concepts must be a file, a list of records or ConceptVector objects, not "
        f"{type(source).__name__}"
    )


def _one(item: Any) -> EvalConcept | None:
    if isinstance(item, ConceptVector):
        if item.matrix != "down":
            raise EvaluationError(
                f"{item.concept}: {item.neuron} is a {item.matrix} vector; concept vectors are "
                "down columns"
            )
        return EvalConcept(item.concept, NeuronId.parse(item.neuron), side=item.weights.side)
    if isinstance(item, ConceptEntry):
        if item.layer is None or item.dim is None:
            return None
        return EvalConcept(
            item.concept,
            NeuronId(int(item.layer), int(item.dim)),
            list(item.qa),
            list(item.unrelated_qa),
            item.wikipedia_content,
            list(item.text_completion),
            side=_side(item.extra),
        )
    raise EvaluationError(
        f"a concept must be a ConceptVectors record or a ConceptVector, not {type(item).__name__}"
    )


def _side(extra: dict[str, Any]) -> str:
    side = extra.get("side")
    if side is None:
        vector = (extra.get("conceptvec") or {}).get("vector") or {}
        side = (vector.get("weights") or {}).get("side") if isinstance(vector, dict) else None
    if side not in (None, "top", "bottom"):
        raise EvaluationError(f"a concept record says side {side!r}; it must be top or bottom")
    return side or "top"


def unrelated_texts(concepts: Any, probes: Any, name: str) -> list[str]:
    """Return the articles of every concept in ``concepts`` and ``probes`` (with or without a
    vector) that never mention a content word of ``name`` or a word sharing its stem
    (``Rome`` also drops ``Roman``; case-insensitive): text for the relearning attack that
    cannot teach the concept back directly."""
    from conceptvec.concepts.tokens import name_words

    words = [w.casefold() for w in name_words(name)]
    out, seen = [], set()
    for item in [*_items(concepts), *_items(probes)]:
        text = getattr(item, "wikipedia_content", "") or ""
        title = getattr(item, "concept", "")
        if not text or title in seen or title.casefold() == name.casefold():
            continue
        seen.add(title)
        stems = [re.escape(w[: max(3, len(w) - 2)]) for w in words]
        if not any(re.search(rf"\b{st}", text.casefold()) for st in stems):
            out.append(text)
    return out

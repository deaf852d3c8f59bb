"""Category neurons across concepts: a neuron whose tokens serve other concepts as well.

A neuron *serves* concept Y when Y's own weight search ranks it among Y's candidates: its
tokens score Y's words as highly as the best neurons' do. A candidate of concept X that
serves another concept Y as well is a ``category`` neuron: it holds what X and Y share (a
games neuron for Baseball and Tactical role-playing game, a British one for the NHS and New
Zealand), not X. Two checks use it:

- :func:`reference_pools` + :func:`mark_shared`: ``find_concept(reference=names)`` (and
  ``concepts find --reference``) checks a concept's candidates against a list of names;
- :func:`check_file`: ``concepts build`` checks every row of the file against the other
  rows' candidates, after the run (rows resumed or kept by ``--update`` included).

No neuron ends as the vector of two rows: a shared neuron is nobody's pick.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from conceptvec.neurons import NeuronId

from .benchmark import ConceptEntry
from .record import VERDICTS, ConceptVector
from .validate import shared_reason

if TYPE_CHECKING:
    from conceptvec.models import Model


def reference_pools(
    model: Model, names: Iterable[str], *, exclude: str, matrix: str, top: int
) -> dict[str, set[str]]:
    """Return, for each reference concept name (but ``exclude``), the neurons its own name
    search ranks among its ``top`` candidates (both sides, as the finder searches)."""
    from .find import search_concept
    from .tokens import concept_tokens

    pools: dict[str, set[str]] = {}
    for name in dict.fromkeys(n.strip() for n in names):
        if name and name != exclude:
            hits = search_concept(model, concept_tokens(model, name), matrix=matrix, top=top)
            pools[name] = {str(h.neuron) for h in hits}
    return pools


def mark_shared(candidates: Iterable[ConceptVector], pools: dict[str, set[str]]) -> None:
    """Set each candidate's ``weights.shared_with``: the pools (concepts) that hold it."""
    for c in candidates:
        c.weights.shared_with = sorted(n for n, pool in pools.items() if c.neuron in pool)


def _candidates(row: ConceptEntry) -> list[dict[str, Any]]:
    """The row's candidates as ``concepts build`` recorded them, vector first, each as
    ``{neuron, side, verdict, evidence}`` (evidence: the full record, or None)."""
    cv = row.extra.get("conceptvec") or {}
    vector = cv.get("vector")
    first = []
    if vector:
        side = vector["weights"]["side"] if "weights" in vector else vector.get("side")
        evidence = vector if "weights" in vector else vector.get("evidence")
        first = [dict(neuron=vector["neuron"], side=side, verdict=vector["verdict"],
                      evidence=evidence)]  # fmt: skip
    return first + [{"evidence": None, **o} for o in cv.get("others") or []]


def check_file(rows: list[ConceptEntry]) -> list[ConceptEntry]:
    """Return the rows of a built file with the category check across the whole file.

    A candidate of one row that is also a candidate of another row serves both: when it
    was validated its verdict becomes ``category`` (the reason names the others). Each row
    then names its best candidate that no other row has (verdict order, then weight rank;
    validated first), else no vector. A pick whose evidence the file does not hold (files
    built before this check recorded only the chosen vector's) says so in its reasons.
    """
    pools = {r.concept: {c["neuron"] for c in _candidates(r)} for r in rows}
    return [_check_row(r, {k: v for k, v in pools.items() if k != r.concept}) for r in rows]


def _check_row(row: ConceptEntry, pools: dict[str, set[str]]) -> ConceptEntry:
    found = _candidates(row)
    if not found:
        return row
    for c in found:
        c["shared_with"] = sorted(n for n, pool in pools.items() if c["neuron"] in pool)
        ev = c["evidence"]
        if ev is not None:
            ev = c["evidence"] = {**ev, "weights": {**ev["weights"]}}
            ev["weights"]["shared_with"] = c["shared_with"]
        if c["shared_with"] and c["verdict"] != "unvalidated":
            c["verdict"] = "category"
            if ev is not None:
                old = [r for r in ev.get("reasons", []) if r != shared_reason(c["shared_with"])]
                ev.update(verdict="category", reasons=[shared_reason(c["shared_with"]), *old])
    own = [c for c in found if not c["shared_with"]]
    own.sort(key=lambda c: VERDICTS.index(c["verdict"]))  # stable: weight rank within one
    pick = own[0] if own else None
    cv = dict(row.extra["conceptvec"])
    cv["others"] = [_brief(c) for c in found if c is not pick]
    extra = dict(row.extra, conceptvec=cv)
    if pick is None:
        cv["vector"] = None
        extra["verdict"] = "none"
        extra.pop("side", None)
        return replace(row, layer=None, dim=None, extra=extra)
    cv["vector"] = pick["evidence"] or {
        "neuron": pick["neuron"],
        "side": pick["side"],
        "verdict": pick["verdict"],
        "evidence": None,
        "reasons": [
            "named by the file-wide category check; the file holds no evidence for it: "
            "rebuild the row with `conceptvec concepts build --update --concept NAME`"
        ],
    }
    extra.update(verdict=pick["verdict"], side=pick["side"])
    n = NeuronId.parse(pick["neuron"])
    return replace(row, layer=n.layer, dim=n.index, extra=extra)


def _brief(c: dict[str, Any]) -> dict[str, Any]:
    """A candidate as ``others`` records it: neuron, side, verdict, shared_with, evidence."""
    out = {k: c[k] for k in ("neuron", "side", "verdict")}
    if c["shared_with"]:
        out["shared_with"] = c["shared_with"]
    if c["evidence"] is not None:
        out["evidence"] = c["evidence"]
    return out

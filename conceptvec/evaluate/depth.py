"""The depth score of a concept vector (metric ``depth``, in every report's ``metrics``).

``score = 1 − clip(r_patch, 0, 1)``, where ``r_patch`` is the ``patch`` attack's recovered
share (:mod:`.patching`): the part of the lost forget log p that giving the vector its base
activation at every position does *not* bring back. 0: the concept is only cut off upstream
of an intact vector (hidden; its own activation brings everything back); 1: nothing of what
was lost comes back through this vector's activation (removed in its weights, or elsewhere).

The label is derived from measured numbers only:

- ``shallow`` (score < 0.5) and ``deep`` (score ≥ 0.5) when ``r_patch`` was measured;
- ``not measured`` when the ``patch`` attack did not run (no number to derive it from);
- ``unchanged`` when neither the vector's weights nor its activation changed at all;
- null (with ``why``) when the forget QA lost too little to measure a share.

Edge cases are null with a reason, not a convention that reads as a measurement:
``cosine`` is null for a zero vector (before or after), and ``change_pct_model`` /
``change_pct_layer`` are null for a vector that did not change at all (a tie among untouched
columns is not "the 45th percentile").
"""

from __future__ import annotations

from typing import Any

from .metrics import MetricInput, Value, register_metric

NOT_MEASURED = "not measured"
ALWAYS = ("depth",)
"""Metrics every report carries, asked for or not."""
SHALLOW_BELOW = 0.5
"""Scores below this are ``shallow``, the others ``deep``."""


def _weights(inp: MetricInput) -> tuple[dict[str, Any], list[str]]:
    """The vector's weight measures with their edge cases made null, and the reasons."""
    v = inp.result.vector
    out: dict[str, Any] = {
        "cosine": v.cosine,
        "change_pct_model": v.change_pct_model,
        "change_pct_layer": v.change_pct_layer,
    }
    why = []
    zero_after = v.base_norm > 0 and v.cosine == 0 and abs(v.l2 - v.base_norm) <= 1e-9 * v.base_norm
    if v.base_norm == 0 or zero_after:
        out["cosine"] = None
        why.append(f"the vector is zero {'after' if zero_after else 'in the base'}: no cosine")
    if v.l2 == 0:
        out["change_pct_model"] = out["change_pct_layer"] = None
        why.append("its weights did not change: no change percentile (ties are not a rank)")
    return out, why


@register_metric("depth")
def depth(inp: MetricInput) -> Value:
    """``{score, label, why, recovered_patch, cosine, change_pct_model, change_pct_layer}``
    (module doc)."""
    weights, notes = _weights(inp)
    p = next((r for r in inp.result.recovery if r.attack == "patch"), None)
    out: dict[str, Any] = {"score": None, "label": None, "recovered_patch": None, **weights}
    if p is None:
        out["label"] = NOT_MEASURED
        why = "the patch attack did not run (--attacks patch)"
    elif p.profile and p.profile.get("vector_unchanged") and inp.result.vector.l2 == 0:
        out["label"] = "unchanged"
        why = "neither its weights nor its activation on the forget sequences changed"
    elif p.recovered is None:
        why = "too little forgetting to measure a recovered share"
    else:
        r = p.recovered
        out["recovered_patch"] = r
        out["score"] = 1.0 - min(1.0, max(0.0, r))
        out["label"] = "shallow" if out["score"] < SHALLOW_BELOW else "deep"
        why = f"patching its base activation back recovered {r:.2f} of the lost forget log p"
    out["why"] = "; ".join([why, *notes])
    return out

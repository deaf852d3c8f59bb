"""Activation-level trace: does the concept vector still fire in the unlearned model?

On the concept's own text, the vector's MLP activation is read per token (signed) in the
base and the unlearned model. Each vector then gets a label:

- **erased**: its weights moved away from the concept (decoded top-k Jaccard below
  ``jaccard_min`` or cosine below ``cosine_min``);
- **disconnected**: the weights are intact, but upstream no longer drives it as in the base:
  its mean activation on concept text kept less than ``fire_min`` of the base's (same
  sign), or the per-token activations correlate below ``corr_min`` with the base's, *and*
  that change stands out in its layer: its standardised shift (``|mean_u - mean_b| /
  std_b``) is at or above the ``outlier_pct`` percentile of the layer's neurons;
- **drifted**: its firing changed as much, but no more than most of its layer's: the
  model's activations moved wholesale (GA's collapse does this), not this vector's input;
- **intact**: weights and firing both as in the base.

The layer's neurons are read in the same forward pass, so the reference costs nothing.

Activations can be negative in context (late-layer suppression neurons fire *against*
their top tokens), so the comparison is signed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from conceptvec.activations import read_activations
from conceptvec.activations.texts import split_paragraphs
from conceptvec.models.backends import Target
from conceptvec.neurons import NeuronId

NOT_MEASURED = "not measured"
"""The label of a vector whose weights are intact but whose activations were not traced."""


@dataclass(frozen=True)
class TraceThresholds:
    """Where the labels change; recorded in every report."""

    jaccard_min: float = 0.5
    cosine_min: float = 0.9
    fire_min: float = 0.5
    corr_min: float = 0.5
    outlier_pct: float = 90.0


@dataclass
class Trace:
    """The vector's activation on concept text, base vs. unlearned."""

    tokens: int
    mean_base: float
    mean_unlearned: float
    fire_kept: float | None
    """``mean_unlearned / mean_base`` (signed; None when the base mean is ~0)."""
    correlation: float | None
    """Pearson correlation of the per-token activations (None when either is constant)."""
    shift: float = 0.0
    """``|mean_unlearned - mean_base| / std_base`` on concept text."""
    shift_pct_layer: float | None = None
    """Percentile of ``shift`` among the layer's neurons (100: it moved most)."""

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return asdict(self)


def concept_text(text: str, max_chars: int = 6000) -> list[str]:
    """Return the first paragraphs of ``text`` up to about ``max_chars`` characters."""
    out, total = [], 0
    for p in split_paragraphs(text):
        if total >= max_chars:
            break
        out.append(p[: max_chars - total])
        total += len(out[-1])
    return out


def layer_activations(model: Target, texts: list[str], layer: int) -> torch.Tensor:
    """Return ``[tokens, d_mlp]`` float64: every neuron of ``layer`` on every token of ``texts``."""
    neurons = [NeuronId(layer, i) for i in range(model.model.dims.d_mlp)]
    acts = read_activations(model, texts, neurons, max_tokens=256)
    return torch.stack([acts.values(n) for n in neurons], dim=1).double()


def trace(base_layer: torch.Tensor, unlearned: Target, texts: list[str], neuron: NeuronId) -> Trace:
    """Return the :class:`Trace` of ``neuron``, given its layer's base activations on ``texts``."""
    u_layer = layer_activations(unlearned, texts, neuron.layer)
    b, u = base_layer[:, neuron.index], u_layer[:, neuron.index]
    mb, mu = float(b.mean()), float(u.mean())
    kept = mu / mb if abs(mb) > 1e-3 * float(b.abs().mean()) + 1e-12 else None
    corr = None
    if b.numel() > 1 and float(b.std()) > 0 and float(u.std()) > 0:
        corr = float(torch.corrcoef(torch.stack([b, u]))[0, 1])
    shifts = (u_layer.mean(0) - base_layer.mean(0)).abs() / base_layer.std(0).clamp_min(1e-12)
    shift = float(shifts[neuron.index])
    below = int((shifts < shift).sum())
    pct = 100.0 * (below + 0.5 * int((shifts == shift).sum())) / shifts.numel()
    return Trace(int(b.numel()), mb, mu, kept, corr, shift, pct)


def label(cosine: float, jaccard: float, t: Trace | None, th: TraceThresholds) -> tuple[str, str]:
    """Return ``(label, why)`` for a vector from its weight change and its trace."""
    if jaccard < th.jaccard_min or cosine < th.cosine_min:
        return (
            "erased",
            f"Jaccard {jaccard:.2f} / cosine {cosine:.4f} below {th.jaccard_min} / {th.cosine_min}",
        )
    if t is None:  # intact or disconnected: only the trace can tell
        return NOT_MEASURED, "weights intact; the activation trace was not run"
    changed = []
    if t.fire_kept is not None and t.fire_kept < th.fire_min:
        changed.append(
            f"it fires at {t.fire_kept:.2f}x its base mean "
            f"({t.mean_base:+.3f} -> {t.mean_unlearned:+.3f}) on concept text"
        )
    if t.correlation is not None and t.correlation < th.corr_min:
        changed.append(f"its per-token firing correlates {t.correlation:.2f} with the base's")
    if changed:
        pct = t.shift_pct_layer
        where = "" if pct is None else f" (its shift is at the {pct:.0f}th percentile of its layer)"
        if pct is None or pct >= th.outlier_pct:
            return "disconnected", "weights intact, but " + " and ".join(changed) + where
        return "drifted", (
            "weights intact; " + " and ".join(changed) + where + ": its layer moved alike"
        )
    return "intact", (
        f"weights intact and it fires as in the base ({t.mean_base:+.3f} -> {t.mean_unlearned:+.3f},"
        f" r = {t.correlation if t.correlation is not None else float('nan'):.2f})"
    )

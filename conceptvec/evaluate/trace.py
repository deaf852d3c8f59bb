"""Activation-level trace: does the concept vector still fire in the unlearned model?

On the concept's own text, the vector's MLP activation is read per token (signed) in the
base and the unlearned model. Each vector then gets a label:

- **erased**: its weights moved away from the concept (decoded top-k Jaccard below
  ``jaccard_min`` or cosine below ``cosine_min``);
- **disconnected**: the weights are intact, but upstream no longer drives it as in the base:
  its mean activation on concept text kept less than ``fire_min`` of the base's (same
  sign), or the per-token activations correlate below ``corr_min`` with the base's;
- **intact**: weights and firing both as in the base.

Activations can be negative in context (late-layer suppression neurons fire *against*
their top tokens), so the comparison is signed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..activations import read_activations
from ..activations.texts import split_paragraphs
from ..interventions.targets import Target
from ..neurons import NeuronId


@dataclass(frozen=True)
class Thresholds:
    """Where the labels change; recorded in every report."""

    jaccard_min: float = 0.5
    cosine_min: float = 0.9
    fire_min: float = 0.5
    corr_min: float = 0.5


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


def base_activations(base: Target, texts: list[str], neuron: NeuronId) -> torch.Tensor:
    """Return the neuron's per-token activations in ``base`` on ``texts``."""
    return read_activations(base, texts, [neuron], max_tokens=256).values(neuron).double()


def trace(
    base_values: torch.Tensor, unlearned: Target, texts: list[str], neuron: NeuronId
) -> Trace:
    """Return the :class:`Trace` of ``neuron``, given its base activations on ``texts``."""
    u = read_activations(unlearned, texts, [neuron], max_tokens=256).values(neuron).double()
    b = base_values
    mb, mu = float(b.mean()), float(u.mean())
    kept = mu / mb if abs(mb) > 1e-6 else None
    corr = None
    if b.numel() > 1 and float(b.std()) > 0 and float(u.std()) > 0:
        corr = float(torch.corrcoef(torch.stack([b, u]))[0, 1])
    return Trace(int(b.numel()), mb, mu, kept, corr)


def label(cosine: float, jaccard: float, t: Trace | None, th: Thresholds) -> tuple[str, str]:
    """Return ``(label, why)`` for a vector from its weight change and its trace."""
    if jaccard < th.jaccard_min or cosine < th.cosine_min:
        return (
            "erased",
            f"Jaccard {jaccard:.2f} / cosine {cosine:.4f} below {th.jaccard_min} / {th.cosine_min}",
        )
    if t is None:
        return "intact", "weights intact (no activation trace run)"
    if t.fire_kept is not None and t.fire_kept < th.fire_min:
        return "disconnected", (
            f"weights intact, but it fires at {t.fire_kept:.2f}x its base mean "
            f"({t.mean_base:+.3f} -> {t.mean_unlearned:+.3f}) on concept text"
        )
    if t.correlation is not None and t.correlation < th.corr_min:
        return "disconnected", (
            f"weights intact, but its per-token firing correlates {t.correlation:.2f} with the base's"
        )
    return "intact", (
        f"weights intact and it fires as in the base ({t.mean_base:+.3f} -> {t.mean_unlearned:+.3f},"
        f" r = {t.correlation if t.correlation is not None else float('nan'):.2f})"
    )

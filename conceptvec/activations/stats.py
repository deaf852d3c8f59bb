"""How well a neuron's activation tells concept text from unrelated text.

:func:`auroc` is the probability that a random concept token's activation exceeds a random
unrelated token's (ties count half): 1.0 means the neuron fires higher on every concept
token, 0.0 lower on every one (a neuron that reads the concept with a negative sign), 0.5
not at all. It is computed from ranks (the Mann-Whitney U statistic), in O(n log n).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from conceptvec.errors import BadTextError
from conceptvec.neurons import NeuronId
from conceptvec.results import Result

from .read import Activations


def auroc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """Return P(a random value of ``pos`` > a random value of ``neg``), ties counted half.

    ``pos`` and ``neg`` are 1-D (or are flattened).

    >>> auroc(torch.tensor([3.0, 2.0]), torch.tensor([1.0, 2.0]))
    0.875
    """
    pos = pos.detach().reshape(-1).double().cpu()
    neg = neg.detach().reshape(-1).double().cpu()
    n_pos, n_neg = pos.numel(), neg.numel()
    if n_pos == 0 or n_neg == 0:
        raise BadTextError(
            f"AUROC needs values on both sides; got {n_pos} concept and {n_neg} unrelated"
        )
    both = torch.cat([pos, neg])
    if torch.isnan(both).any():
        raise BadTextError("AUROC got NaN activations; check the model's dtype and weights")
    _, inverse, counts = torch.unique(both, sorted=True, return_inverse=True, return_counts=True)
    # 1-based rank of each distinct value, averaged over its ties
    last = torch.cumsum(counts, 0).double()
    mid_rank = last - (counts.double() - 1) / 2
    rank_sum = float(mid_rank[inverse[:n_pos]].sum())
    u = rank_sum - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


@dataclass
class Separation(Result):
    """One neuron's activations on concept text against unrelated text."""

    neuron: str
    auroc: float
    """P(activation on a concept token > on an unrelated token); 0.5 is no separation,
    below 0.5 the neuron reads the concept with a negative sign."""
    mean_concept: float
    """Mean activation over the concept text's tokens (negative: zeroing it releases)."""
    mean_unrelated: float
    n_concept: int
    """Tokens of concept text."""
    n_unrelated: int

    def to_dict(self) -> dict[str, object]:
        """Return the fields as a plain dict."""
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"{self.neuron:<10} AUROC {self.auroc:.3f}  mean {self.mean_concept:+.3f} on "
            f"concept ({self.n_concept} tokens) vs {self.mean_unrelated:+.3f} unrelated "
            f"({self.n_unrelated} tokens)"
        )


def separation(concept: Activations, unrelated: Activations) -> list[Separation]:
    """Return, for each neuron read in both, its AUROC and means on ``concept`` vs
    ``unrelated`` activations (two results of :func:`read_activations`)."""
    shared = [n for n in concept.neurons if n in unrelated.neurons]
    if not shared:
        raise BadTextError(
            "the two readings share no neuron; read the same neurons on both sets of texts"
        )
    out = []
    for n in shared:
        pos, neg = concept.values(n), unrelated.values(n)
        out.append(
            Separation(
                neuron=str(NeuronId.parse(n)),
                auroc=auroc(pos, neg),
                mean_concept=float(pos.double().mean()),
                mean_unrelated=float(neg.double().mean()),
                n_concept=pos.numel(),
                n_unrelated=neg.numel(),
            )
        )
    return out

"""Random controls: the same intervention moved to random neurons of the same layers.

A neuron edit or weight edit keeps its layer, operation and value and moves to a neuron
drawn at random from the same layer (never one the intervention itself edits). A steering
vector is replaced by a random direction of the same norm at the same layer. If the real
intervention moves a target token more than (nearly) all controls, the effect belongs to
the neuron, not to the size of the push.
"""

from __future__ import annotations

import random

import torch

from conceptvec.errors import BadInterventionError
from conceptvec.neurons import NeuronId

from .edit_specs import Edit, NeuronEdit, Patch, Steer, WeightEdit


def random_controls(edits: list[Edit], d_mlp: int, n: int, seed: int = 0) -> list[list[Edit]]:
    """Return ``n`` control interventions, each ``edits`` moved to random same-layer neurons.

    Controls are distinct from each other where the layer has room (``d_mlp`` minus the
    edited neurons), and reproducible for a given ``seed``.
    """
    if n < 0:
        raise BadInterventionError(f"the number of controls must be >= 0, got {n}")
    if n > d_mlp:
        raise BadInterventionError(
            f"{n} controls asked for, but a layer has only {d_mlp} neurons to draw them from; "
            f"use at most {d_mlp}"
        )
    patches = [e for e in edits if isinstance(e, Patch)]
    if n and patches:
        raise BadInterventionError(
            f"{patches[0]} carries its own values, so it has no random control; patch each "
            "control neuron with its own values instead (controls=0)"
        )
    rng = random.Random(seed)
    taken: dict[int, set[int]] = {}
    for e in edits:
        if isinstance(e, (NeuronEdit, WeightEdit)):
            taken.setdefault(e.neuron.layer, set()).add(e.neuron.index)
    pools = {
        layer: rng.sample([i for i in range(d_mlp) if i not in used], d_mlp - len(used))
        for layer, used in taken.items()
    }
    controls: list[list[Edit]] = []
    for k in range(n):
        control: list[Edit] = []
        for j, e in enumerate(edits):
            if isinstance(e, Steer):
                gen = torch.Generator().manual_seed(seed * 100_003 + k * 101 + j)
                direction = torch.randn(e.vector.shape, generator=gen)
                v = direction * (e.vector.float().norm() / direction.norm())
                control.append(Steer(e.layer, v.to(e.vector.dtype), e.scale, e.positions))
                continue
            assert not isinstance(e, Patch)  # refused above
            pool = pools[e.neuron.layer]
            if not pool:
                raise BadInterventionError(
                    f"layer {e.neuron.layer} has no neuron left to use as a control"
                )
            index = pool[(k * len(edits) + j) % len(pool)]
            control.append(e.on(NeuronId(e.neuron.layer, index)))
        controls.append(control)
    return controls


def percentile(value: float, controls: list[float]) -> float | None:
    """Return the percentile of ``value`` among ``controls`` (ties count half), or None.

    100 means larger than every control, 0 smaller than every control.
    """
    if not controls:
        return None
    below = sum(c < value for c in controls)
    ties = sum(c == value for c in controls)
    return 100.0 * (below + 0.5 * ties) / len(controls)

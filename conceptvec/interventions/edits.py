"""The tensor arithmetic every backend shares: edit MLP activations, add steering vectors.

Each backend (torch hooks, TransformerLens hook points, nnsight traces) hands these
functions the tensor it intercepted and puts back what they return, so the three backends
compute the same thing by construction.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from .edit_specs import NeuronEdit, Steer
from .positions import PassTracker


def _spans(
    edits: Sequence[Any],
    tracker: PassTracker,
    length: int,
    applied: Counter,
    rows: dict[Any, int] | None,
) -> Iterator[tuple[Any, tuple]]:
    """Yield (edit, index of its rows and tokens) for each edit that covers some of this
    pass's tokens, counting it in ``applied``. An edit in ``rows`` touches only that batch
    row (random controls run side by side in one batch); others touch every row."""
    for e in edits:
        span = tracker.select(e.positions, length)
        if span is not None:
            applied[e] += 1
            row = rows.get(e) if rows else None
            yield e, (Ellipsis if row is None else row, span)


def edit_hidden(
    x: torch.Tensor,
    edits: list[NeuronEdit],
    tracker: PassTracker,
    applied: Counter,
    rows: dict[Any, int] | None = None,
) -> torch.Tensor:
    """Return a copy of the MLP hidden activation ``x`` ``[batch, tokens, d_mlp]`` with
    ``edits`` applied at their positions; count in ``applied`` each edit that touched a token."""
    out = x.clone()
    for e, where in _spans(edits, tracker, x.shape[-2], applied, rows):
        at = (*where, e.neuron.index)
        if e.op == "clamp":
            out[at] = e.value
        elif e.op == "scale":
            out[at] = out[at] * e.value
        else:
            out[at] = out[at] + e.value
    return out


def add_steering(
    h: torch.Tensor,
    steers: list[Steer],
    tracker: PassTracker,
    applied: Counter,
    rows: dict[Any, int] | None = None,
) -> torch.Tensor:
    """Return the residual stream ``h`` ``[batch, tokens, d_model]`` plus each steering vector
    at its positions; count in ``applied`` each one that touched a token."""
    out = h.clone()
    for s, where in _spans(steers, tracker, h.shape[-2], applied, rows):
        index = (*where, slice(None))
        out[index] += s.scale * s.vector.to(device=h.device, dtype=h.dtype)
    return out

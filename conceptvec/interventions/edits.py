"""The tensor arithmetic every backend shares: edit MLP activations, add steering vectors,
patch activations from a tensor.

Each backend (torch hooks, TransformerLens hook points, nnsight traces) hands these
functions the tensor it intercepted and puts back what they return, so the three backends
compute the same thing by construction.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from conceptvec.errors import BadInterventionError

from .edit_specs import NeuronEdit, Patch, Steer, WeightEdit
from .positions import PassTracker


def edit_point(
    x: torch.Tensor,
    edits: Sequence[NeuronEdit | Steer | Patch],
    tracker: PassTracker,
    applied: Counter,
    rows: Mapping[NeuronEdit | Steer | Patch | WeightEdit, int | list[int]] | None = None,
) -> torch.Tensor:
    """Return a copy of the tensor ``x`` ``[batch, tokens, width]`` at one hook point (an MLP
    hidden activation or a residual stream) with ``edits`` applied in order, each at its
    positions; count in ``applied`` each edit that touched a token. An edit in ``rows``
    touches only that batch row (or those rows) (random controls run side by side in one batch)."""
    out = x.clone()
    length = x.shape[-2]
    for e in edits:
        row = rows.get(e) if rows else None
        first = Ellipsis if row is None else row
        if isinstance(e, Patch):
            _set_patch(out, e, tracker.offset, first, applied)
            continue
        span = tracker.select(e.positions, length)
        if span is None:
            continue
        applied[e] += 1
        if isinstance(e, Steer):
            out[first, span, :] += e.scale * e.vector.to(device=x.device, dtype=x.dtype)
        elif e.op == "clamp":
            out[first, span, e.neuron.index] = e.value
        elif e.op == "scale":
            out[first, span, e.neuron.index] *= e.value
        else:
            out[first, span, e.neuron.index] += e.value
    return out


def _set_patch(out: torch.Tensor, p: Patch, offset: int, first: Any, applied: Counter) -> None:
    """Write ``p``'s values for this pass's positions (``offset`` onwards) into ``out``."""
    n = min(out.shape[-2], p.n_positions - offset)
    if n <= 0:
        return
    v = p.values.to(device=out.device, dtype=out.dtype)
    piece = v[..., offset : offset + n] if p.index is not None else v[..., offset : offset + n, :]
    where = (first, slice(0, n), p.index if p.index is not None else slice(None))
    batched = piece.ndim == (2 if p.index is not None else 3)
    rows = out.shape[0] if first is Ellipsis else 1
    if batched and (first is not Ellipsis or piece.shape[0] != rows):
        raise BadInterventionError(
            f"{p}: its values have {piece.shape[0]} rows but the batch it ran on has {rows}; "
            "pass one row of values per batch row, or values without a batch dimension"
        )
    out[where] = piece
    applied[p] += 1

"""Weight edits: change one neuron's vector in place, and put the exact bytes back after.

The vector is a view of the live parameter (a ``down`` column or an ``up``/``gate`` row, read
through :meth:`Model.neurons` on a model built over the live module), so the edit shows in
every backend that runs those modules: plain torch, a TransformerBridge, an nnsight trace.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import torch

from conceptvec.errors import BadInterventionError, UnsupportedModelError
from conceptvec.models import Model

from . import guard
from .edit_specs import WeightEdit


def neuron_view(model: Model, edit: WeightEdit) -> torch.Tensor:
    """Return ``[d_model]``: a view of the edited neuron's vector inside the live weight."""
    n = edit.neuron
    rows = model.neurons(n.layer, edit.matrix, expert=n.expert)
    vector = rows[n.index]
    param = model.reader.get(model.mlp_place(edit.matrix, n.layer, n.expert)[0])
    if vector.untyped_storage().data_ptr() != param.untyped_storage().data_ptr():
        raise UnsupportedModelError(
            f"the {edit.matrix} weights of layer {edit.neuron.layer} are not a plain tensor "
            "that can be edited in place (quantized?); load the model unquantized"
        )
    return vector


def new_vector(edit: WeightEdit, old: torch.Tensor) -> torch.Tensor:
    """Return the vector that ``edit`` puts in place of ``old`` (same dtype and device)."""
    if edit.op == "zero":
        return torch.zeros_like(old)
    if edit.op == "replace":
        assert edit.vector is not None  # replace_weights always gives one
        return edit.vector.to(device=old.device, dtype=old.dtype)
    gen = torch.Generator().manual_seed(edit.seed)
    std = edit.std
    if edit.relative:
        std = std * float(old.float().norm()) / math.sqrt(old.shape[0])
    noise = torch.randn(old.shape, generator=gen, dtype=torch.float32) * std
    new = (old.float() + noise.to(old.device)).to(old.dtype)
    if not bool(torch.isfinite(new).all()):
        raise BadInterventionError(
            f"{edit}: noise of std {std:g} overflows this model's {str(old.dtype)[6:]} "
            "weights (inf or NaN); use a smaller --std"
        )
    return new


@contextmanager
def edited_weights(model: Model, edits: list[WeightEdit]) -> Iterator[None]:
    """Apply ``edits`` to the live weights of ``model``; restore them bit-exactly on exit,
    exceptions included.

    The original of each vector is saved the first time any block edits it
    (:mod:`.guard`); on exit the vector is recomputed from that original with the edits of
    blocks still open, so blocks may end in any order and the last one restores the bytes.
    """
    token = object()
    try:
        for e in edits:
            view = neuron_view(model, e)
            guard.push(view, token, partial(new_vector, e))
        yield
    finally:
        guard.pop(token)

"""The concept finder's use of an activation atlas: candidates whose exemplars (the corpus
contexts where they fire most, either sign) hold the concept's own words rank up.

For each candidate neuron, :func:`context_counts` counts the exemplars (top and bottom, each
with its context window) whose window holds one of the concept's core token ids (the name's
words and their spellings). :func:`rank_with_atlas` then orders the candidates by that count,
most first, keeping the weight ranking among equal counts. A neuron in a layer the atlas's
corpus pass did not cover counts ``None`` and ranks as 0.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from conceptvec.errors import ConceptSearchError
from conceptvec.neurons import NeuronId

if TYPE_CHECKING:
    from conceptvec.atlas import Atlas


def open_atlas(atlas: str | os.PathLike[str] | Atlas) -> Atlas:
    """Return ``atlas`` as an :class:`~conceptvec.atlas.Atlas` that has an activation part."""
    from conceptvec.atlas import Atlas

    got = atlas if isinstance(atlas, Atlas) else Atlas(Path(atlas))
    if got.activations is None or not got.activations.layers:
        raise ConceptSearchError(
            f"the atlas {got.path} has no activation part; add one with `conceptvec map "
            f"{got.path} --corpus SOURCE`, or give no atlas"
        )
    return got


def context_counts(
    atlas: Atlas, neurons: Sequence[str | NeuronId], ids: Sequence[int]
) -> list[int | None]:
    """Return, per neuron, how many of its exemplars' context windows hold one of ``ids``
    (None for a neuron whose layer the atlas's corpus pass did not cover)."""
    part = open_atlas(atlas).activations
    assert part is not None
    have = set(part.layers)
    want = torch.tensor(sorted(set(ids)), dtype=torch.int32)
    out: list[int | None] = []
    for n in neurons:
        nid = n if isinstance(n, NeuronId) else NeuronId.parse(str(n))
        if nid.layer not in have or not len(want):
            out.append(None)
            continue
        t = part.layer(nid.layer)
        count = 0
        for side in ("top", "bottom"):
            windows = t[f"{side}_window_ids"][nid.index]  # [k, W]
            filled = t[f"{side}_pos"][nid.index] >= 0
            count += int((torch.isin(windows, want).any(-1) & filled).sum())
        out.append(count)
    return out


def rank_with_atlas(counts: Sequence[int | None]) -> list[int]:
    """Return the candidates' new order (indices into ``counts``): most exemplars holding the
    concept's words first, the weight ranking kept among equal counts."""
    return sorted(range(len(counts)), key=lambda i: -(counts[i] or 0))

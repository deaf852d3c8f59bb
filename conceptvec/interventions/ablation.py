"""Mean ablation: clamp neurons to their mean activation over a set of reference texts.

Zero is an unusual value for many neurons (SiLU-gated activations are rarely exactly 0 and
often have a non-zero mean), so mean ablation removes what a neuron says on *this* input
while keeping its typical contribution. The means are read with the same hooks that edit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from conceptvec.errors import BadInterventionError
from conceptvec.models.backends import resolve
from conceptvec.neurons import NeuronId
from conceptvec.reference_texts import REFERENCE_TEXTS
from conceptvec.types import HookFn, ModelSource, Tokenizer

from .apply import forward_with
from .edit_specs import NeuronEdit, Positions, check_against, check_positions


def neuron_means(
    model: ModelSource,
    neurons: Sequence[NeuronId | str],
    texts: Sequence[str] = REFERENCE_TEXTS,
    tokenizer: Tokenizer | None = None,
) -> list[float]:
    """Return each neuron's mean MLP activation over every token of ``texts``."""
    target = resolve(model, tokenizer)
    ns = [NeuronId.parse(n) for n in neurons]
    d = target.model.dims
    check_against([NeuronEdit(n, "add", 0.0) for n in ns], d.n_layers, d.d_mlp, d.d_model)
    texts = list(texts)
    if not texts or target.tokenizer is None:
        raise BadInterventionError("mean ablation needs reference texts and a tokenizer")
    layers = sorted({n.layer for n in ns})
    sums = {n: 0.0 for n in ns}
    count = 0
    seen: dict[int, torch.Tensor] = {}

    def reader(layer: int) -> HookFn:
        def read(x: torch.Tensor) -> torch.Tensor:
            seen[layer] = x.detach()
            return x

        return read

    readers = {layer: reader(layer) for layer in layers}
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([target.encode(text)], device=target.device)
            seen.clear()
            forward_with(target, ids, None, readers)
            for n in ns:
                sums[n] += float(seen[n.layer][..., n.index].float().sum())
            count += ids.numel()
    return [sums[n] / count for n in ns]


def mean_ablate(
    model: ModelSource,
    neurons: NeuronId | str | Sequence[NeuronId | str],
    texts: Sequence[str] = REFERENCE_TEXTS,
    positions: Positions = "all",
    tokenizer: Tokenizer | None = None,
) -> list[NeuronEdit]:
    """Return clamps of ``neurons`` to their mean activation over ``texts`` (label ``mean``)."""
    given = [neurons] if isinstance(neurons, (str, NeuronId)) else list(neurons)
    ns = [NeuronId.parse(n) for n in given]
    means = neuron_means(model, ns, texts, tokenizer)
    check_positions(positions)
    return [NeuronEdit(n, "clamp", m, positions, "mean") for n, m in zip(ns, means)]

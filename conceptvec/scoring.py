"""Teacher-forced scores of many interventions on one batch, sharing what they share.

Random-neuron controls edit one layer ``L`` each; every layer below ``L`` computes exactly
what the unedited model computes. On a ``transformers`` model, :func:`score_many` runs the
unedited batch once, keeps each decoder layer's output, and runs every edited variant from
its first edited layer on: the skipped layers return their kept outputs (bit-identical to
recomputing them, since their inputs are the same). Logits are computed only where an
answer token is predicted, not over the whole sequence. For a layer-29 neuron of a 30-layer
model this makes each control an order of magnitude cheaper, with the same numbers.

Backends that do not run the ``transformers`` module with plain torch hooks
(TransformerLens, nnsight) score each variant with a full forward pass.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from .interventions.apply import Intervention
from .interventions.apply import logits as forward_logits
from .interventions.edit_specs import Edits, NeuronEdit, Patch, Steer, WeightEdit, flatten
from .models.backends.hf import layer_modules

if TYPE_CHECKING:
    from .models.backends.target import Target

T = TypeVar("T")


def first_layer(edits: Edits) -> int:
    """Return the first decoder layer whose output an edit set can change (0 when unknown)."""
    layers = []
    for e in flatten(edits):
        if isinstance(e, (NeuronEdit, WeightEdit)):
            layers.append(e.neuron.layer)
        elif isinstance(e, Steer):
            layers.append(e.layer + 1)  # added to the output of its layer
        elif isinstance(e, Patch):
            layers.append(e.layer + (1 if e.point == "resid" else 0))
        else:
            return 0
    return min(layers) if layers else 0


def _gather(logits: torch.Tensor, spans: list[tuple[int, list[int]]]) -> list[float]:
    """Mean log p per token of each row's answer tokens (``spans``: row start, token ids)."""
    out = []
    for r, (start, tail) in enumerate(spans):
        if not tail:
            out.append(0.0)
            continue
        lp = logits[r, start : start + len(tail)].float().log_softmax(-1)
        picked = lp.gather(1, torch.tensor(tail, device=lp.device)[:, None])
        out.append(float(picked.mean()))
    return out


def score_many(
    target: Target, ids: torch.Tensor, spans: list[tuple[int, list[int]]], variants: Sequence[Edits]
) -> list[list[float]]:
    """Return, per variant, each row's mean log p per answer token.

    ``ids`` is a right-padded batch ``[rows, tokens]``; ``spans[r]`` is ``(position of the
    logits that predict the answer's first token, the answer's token ids)``.
    """
    if not target.backend.torch_hooks:
        return [_gather(forward_logits(target, ids, v), spans) for v in variants]
    return _each_variant(target, ids, variants, lambda h: _from_hidden(target, h, spans))


def greedy_many(
    target: Target, ids: torch.Tensor, spans: list[tuple[int, int]], variants: Sequence[Edits]
) -> list[list[list[int]]]:
    """Return, per variant, each row's greedy next token at ``spans[r] = (start, n)``: the
    argmax of the logits at positions ``start .. start + n - 1`` (teacher-forced on ``ids``,
    a right-padded batch), shared-prefix as :func:`score_many` scores."""
    if not target.backend.torch_hooks:
        return [_argmax(forward_logits(target, ids, v), spans) for v in variants]
    return _each_variant(target, ids, variants, lambda h: _argmax_from_hidden(target, h, spans))


def score_and_greedy(
    target: Target, ids: torch.Tensor, spans: list[tuple[int, list[int]]]
) -> tuple[list[float], list[list[int]]]:
    """Return (each row's mean log p per answer token, as :func:`score_many` gives it; each
    row's greedy next token at every answer position and the one after it) of the unedited
    model, from one teacher-forced pass: an answer is scored and checked as a draft of the
    model's own greedy answer at the same time."""
    greedy = [(start, len(tail) + 1) for start, tail in spans]
    if not target.backend.torch_hooks:
        logits = forward_logits(target, ids, ())
        return _gather(logits, spans), _argmax(logits, greedy)
    return _each_variant(
        target,
        ids,
        [()],
        lambda h: (_from_hidden(target, h, spans), _argmax_from_hidden(target, h, greedy)),
    )[0]


def _each_variant(
    target: Target,
    ids: torch.Tensor,
    variants: Sequence[Edits],
    reduce: Callable[[torch.Tensor], T],
) -> list[T]:
    """Return ``reduce(final hidden states)`` per variant: the unedited batch runs once and
    keeps each layer's output; each edited variant runs from its first edited layer on."""
    if not variants:
        return []
    first = [first_layer(v) for v in variants]
    keep = max(first)
    outputs: dict[int, Any] = {}
    out: dict[int, T] = {}
    with torch.no_grad():
        plain = [k for k, v in enumerate(variants) if not flatten(v)]
        hidden = _run(target, ids, (), record=outputs if keep > 0 else None, upto=keep)
        for k in plain:
            out[k] = reduce(hidden)
        done: dict[tuple, int] = {}  # a variant that repeats an earlier one is not rerun
        for k, v in enumerate(variants):
            if k in out:
                continue
            key = _identity(v)
            if key is not None and key in done:
                out[k] = copy.deepcopy(out[done[key]])
                continue
            skip = {i: outputs[i] for i in range(first[k])}
            out[k] = reduce(_run(target, ids, v, skip=skip))
            if key is not None:
                done[key] = k
    return [out[k] for k in range(len(variants))]


def _identity(edits: Edits) -> tuple | None:
    """Return what makes edit set ``edits`` compute what it computes (two sets with the same
    identity give bit-identical outputs), or None where that cannot be told from its fields
    (a steering vector, a patch or a weight replacement carry tensors). Random-neuron
    controls of knockouts in one layer often repeat: the same seed draws the same neurons."""
    out: list[tuple] = []
    for e in flatten(edits):
        if isinstance(e, NeuronEdit):
            out.append(("neuron", str(e.neuron), e.op, float(e.value), str(e.positions)))
        elif isinstance(e, WeightEdit) and e.vector is None:
            out.append(("weight", str(e.neuron), e.matrix, e.op, e.std, e.relative, e.seed))
        else:
            return None
    return tuple(out)


def _run(
    target: Target,
    ids: torch.Tensor,
    edits: Edits,
    *,
    record: dict[int, Any] | None = None,
    upto: int = 0,
    skip: dict[int, Any] | None = None,
) -> torch.Tensor:
    """Run the HF model with ``edits``; return the final hidden states that feed the LM
    head ``[rows, tokens, d_model]`` (the head itself is not applied)."""
    layers = layer_modules(target.hf, target.model.spec)
    seen: dict[str, torch.Tensor] = {}
    head = target.hf.get_output_embeddings()

    def grab(_module: torch.nn.Module, args: tuple) -> tuple:
        seen["h"] = args[0]
        return (args[0][:, :1],)  # the head runs on one position only; we apply it later

    handles = [head.register_forward_pre_hook(grab)]
    if record is not None:
        for i in range(upto):
            handles.append(layers[i].register_forward_hook(_keep(record, i)))
    try:
        with _skipping(layers, skip or {}), Intervention(target, edits):
            target.hf(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return seen["h"]


def _keep(record: dict[int, Any], i: int):
    def hook(_module: torch.nn.Module, _args: tuple, output: Any) -> None:
        record[i] = output

    return hook


@contextmanager
def _skipping(layers: Any, outputs: dict[int, Any]) -> Iterator[None]:
    """Make layers ``outputs`` return their kept output instead of computing it."""
    patched = []
    try:
        for i, out in outputs.items():
            layers[i].forward = _constant(out)
            patched.append(layers[i])
        yield
    finally:
        for module in patched:
            del module.forward


def _constant(out: Any):
    def forward(*_args: Any, **_kwargs: Any) -> Any:
        return out

    return forward


def _from_hidden(target: Target, hidden: torch.Tensor, spans: list[tuple[int, list[int]]]):
    """Mean log p per answer token, applying the LM head at the answer positions only."""
    logits = _head_at(target, hidden, [(start, len(tail)) for start, tail in spans])
    return _gather(logits, [(0, tail) for _, tail in spans])


def _argmax(logits: torch.Tensor, spans: list[tuple[int, int]]) -> list[list[int]]:
    return [logits[r, start : start + n].argmax(-1).tolist() for r, (start, n) in enumerate(spans)]


def _argmax_from_hidden(target: Target, hidden: torch.Tensor, spans: list[tuple[int, int]]):
    """Greedy tokens at ``spans`` (row start, count), the LM head on those positions only."""
    return _argmax(_head_at(target, hidden, spans), [(0, n) for _, n in spans])


def _head_at(target: Target, hidden: torch.Tensor, spans: list[tuple[int, int]]) -> torch.Tensor:
    """Float32 logits ``[rows, width, vocab]`` of positions ``start .. start + n - 1`` of each
    row (``spans``), the LM head (and any logit soft-cap) applied to those positions only."""
    head = target.hf.get_output_embeddings()
    width = max((n for _, n in spans), default=0) or 1
    picked = hidden.new_zeros((hidden.shape[0], width, hidden.shape[-1]))
    for r, (start, n) in enumerate(spans):
        picked[r, :n] = hidden[r, start : start + n]
    logits = head(picked).float()
    cap = target.model.dims.logit_softcap
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits

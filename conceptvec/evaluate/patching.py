"""The ``patch`` attack: give the unlearned model the base's activations back, per position.

On the teacher-forced forget sequences (each question as the model sees it, then the base's
answer), one padded batch, the base's activations are cached at every position: the concept
vector's, every layer's whole MLP activation and the residual stream after every layer.
Each patched variant is then one forward pass of the unlearned model over the whole batch:

- the concept vector patched with its base activations (``recovered``), against random
  same-layer neurons each patched with its own (``percentile``);
- per layer, the whole MLP activation, and the residual stream after the layer: the **depth
  profile**, where along the model the path to the answer was cut.

``recovered`` = (log p patched − log p unlearned) / (log p base − log p unlearned) on the
forget answers, null when the loss is within the controls' noise (:func:`.behaviour.noise_floor`).
"""

from __future__ import annotations

from typing import Any

import torch

from conceptvec.errors import EvaluationError
from conceptvec.interventions.controls import percentile, random_controls
from conceptvec.interventions.edit_specs import (
    NeuronEdit,
    Patch,
    clamp,
    patch,
    patch_mlp,
    patch_resid,
)
from conceptvec.models.backends import Target
from conceptvec.neurons import NeuronId
from conceptvec.qa import _encode, _pad_value, prompt_texts
from conceptvec.scoring import score_many

from .behaviour import ConceptProbes, Recovery, _recovered, noise_floor

Span = tuple[int, list[int]]


def forget_batch(target: Target, probes: ConceptProbes) -> tuple[torch.Tensor, list[Span]]:
    """Return the right-padded forget sequences ``[rows, tokens]`` (prompt, then the base's
    answer) and per row ``(position predicting the answer's first token, answer ids)``."""
    chat = probes.prompting == "chat"
    heads = _encode(target, prompt_texts(target, probes.questions, chat), chat)
    sep = "" if chat else " "
    tok = target.tokenizer
    tails = [
        list(tok(sep + a.strip(), add_special_tokens=False)["input_ids"]) if a.strip() else []
        for a in probes.references
    ]
    seqs = [h + t for h, t in zip(heads, tails)]
    ids = torch.full((len(seqs), max(len(s) for s in seqs)), _pad_value(target), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s)
    return ids, [(len(h) - 1, t) for h, t in zip(heads, tails)]


def cache(target: Target, ids: torch.Tensor, layers: list[int]) -> dict[str, dict[int, Any]]:
    """Return ``{"mlp": {layer: [rows, tokens, d_mlp]}, "resid": {layer: [rows, tokens,
    d_model]}}`` of one forward pass of ``target`` over ``ids`` (every backend)."""
    from conceptvec.interventions.apply import hooked

    seen: dict[str, dict[int, Any]] = {"mlp": {}, "resid": {}}

    def keeper(point: str, layer: int) -> Any:
        def keep(x: torch.Tensor) -> torch.Tensor:
            seen[point][layer] = x.detach().float().cpu()
            return x

        return keep

    mlp = {L: keeper("mlp", L) for L in layers}
    resid = {L: keeper("resid", L) for L in layers}
    spec = target.model.spec
    with torch.no_grad(), hooked(target, mlp, resid):
        target.backend.forward(
            ids.to(target.device), None, lambda: target.backend.place(spec, mlp, resid)
        )
    return seen


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def patch_recovery(
    base: Target,
    unlearned: Target,
    neuron: NeuronId,
    probes: ConceptProbes,
    *,
    controls: int,
    seed: int,
    layers: list[int] | None = None,
) -> Recovery:
    """Return the ``patch`` :class:`Recovery` of ``neuron`` with its depth ``profile``
    (module doc). ``layers`` limits the profile (default: every layer)."""
    n_layers = base.model.dims.n_layers
    layers = list(range(n_layers)) if layers is None else sorted(set(layers))
    if not layers or layers[0] < 0 or layers[-1] >= n_layers:
        raise EvaluationError(
            f"patch profile layers {layers} are not layers of {base.model.name} "
            f"(0..{n_layers - 1}); name some of those"
        )
    ids, spans = forget_batch(base, probes)
    width = ids.shape[1]
    wanted = sorted({*layers, neuron.layer})
    got = cache(base, ids, wanted)
    own = cache(unlearned, ids, [neuron.layer])["mlp"][neuron.layer]
    d_mlp = base.model.dims.d_mlp
    ctrl = [
        c[0].neuron
        for c in random_controls([clamp(neuron, 0.0)], d_mlp, controls, seed)
        if isinstance(c[0], NeuronEdit)
    ]
    layer_acts = got["mlp"][neuron.layer]
    variants: list[list[Patch]] = [[]]
    variants += [[patch(n, layer_acts[..., n.index])] for n in [neuron, *ctrl]]
    variants += [[patch_mlp(L, got["mlp"][L])] for L in layers]
    variants += [[patch_resid(L, got["resid"][L])] for L in layers]
    base_lp = _mean(score_many(base, ids.to(base.device), spans, [[]])[0])
    scores = [_mean(s) for s in score_many(unlearned, ids.to(unlearned.device), spans, variants)]
    plain, real, ctrl_lp = scores[0], scores[1], scores[2 : 2 + len(ctrl)]
    rest = scores[2 + len(ctrl) :]
    floor = noise_floor([s - plain for s in ctrl_lp])

    def share(lp: float) -> float | None:
        return _recovered(lp, plain, base_lp, floor)

    rec = share(real)
    others = [r for r in (share(s) for s in ctrl_lp) if r is not None]
    unchanged = torch.equal(layer_acts[..., neuron.index], own[..., neuron.index])
    pct = None if rec is None or unchanged else percentile(rec, others)
    detail = (
        f"{neuron} given its base activation at each of {width} positions of "
        f"{len(spans)} teacher-forced forget sequences; {len(ctrl)} random "
        f"L{neuron.layer} controls patched with their own"
    )
    if unchanged:
        detail += f"; {neuron}'s activation is unchanged by unlearning, so no percentile is claimed"
    profile = {
        "layers": layers,
        "mlp": [share(s) for s in rest[: len(layers)]],
        "resid": [share(s) for s in rest[len(layers) :]],
        "mlp_logprob": rest[: len(layers)],
        "resid_logprob": rest[len(layers) :],
        "base_logprob": base_lp,
        "unlearned_logprob": plain,
        "vector_unchanged": unchanged,
    }
    return Recovery("patch", real, rec, others, pct, detail, floor=floor, profile=profile)

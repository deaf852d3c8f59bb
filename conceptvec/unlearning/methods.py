"""Unlearning methods as losses over a forget batch and, where the method has one, a retain batch.

Every loss here is a **mean over sequences of a per-sequence quantity** (a sequence's mean
token NLL, its summed log-likelihood ratio, its mean activation error). Averaging per rank
and then across ranks therefore gives the same number as one process on the global batch,
which is what makes a multi-process run match a single-process one.

A batch is a dict with ``input_ids``, ``attention_mask`` and ``labels`` (``-100`` where no
loss is taken). :data:`METHODS` (a :class:`~conceptvec.registry.Registry`) maps each CLI
name to a :class:`Method`: its paper, the hyperparameters it accepts with their defaults,
and what it needs (retain data, a frozen reference model, the concept vector). The
built-ins register themselves with :func:`register_method`, as your own methods do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from conceptvec.errors import UnlearningError
from conceptvec.registry import Registry


# ----------------------------------------------------------------------------- pieces
def sequence_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (summed NLL ``[batch]``, label-token count ``[batch]``) of each sequence.

    ``logits`` is ``[batch, seq, vocab]``; ``labels`` ``[batch, seq]`` with ``-100`` where
    no loss is taken. Position t predicts label t + 1 (the causal shift).
    """
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    mask = labels != -100
    nll = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        labels.clamp(min=0).reshape(-1),
        reduction="none",
    ).view(labels.shape)
    return (nll * mask).sum(-1), mask.sum(-1).clamp(min=1)


def mean_nll(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Return ``[batch]``: each sequence's mean NLL per label token."""
    total, count = sequence_nll(_logits(model, batch), batch["labels"])
    return total / count


def _logits(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def token_kl(model: Any, ref: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Return ``[batch]``: mean over attended tokens of KL(p_ref || p_model) per sequence."""
    logp = _logits(model, batch).float().log_softmax(-1)
    with torch.no_grad():
        ref_logp = _logits(ref, batch).float().log_softmax(-1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
    mask = batch["attention_mask"].to(kl.dtype)
    return (kl * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def layer_output(
    model: Any, layers: Any, layer: int, batch: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Return ``[batch, seq, d_model]``: the residual stream after decoder layer ``layer``
    (``layers`` is the model's decoder-layer list)."""
    seen: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        seen.append(output[0] if isinstance(output, tuple) else output)

    handle = layers[layer].register_forward_hook(hook)
    try:
        _logits(model, batch)
    finally:
        handle.remove()
    if len(seen) != 1:
        raise UnlearningError(f"the hook on layer {layer} fired {len(seen)} times, expected 1")
    return seen[0]


def activation_mse(acts: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Return ``[batch]``: per sequence, the mean over attended tokens of the mean over
    ``d_model`` of the squared difference (RMU's activation loss)."""
    err = (acts.float() - target.float()).pow(2).mean(-1)
    mask = mask.to(err.dtype)
    return (err * mask).sum(-1) / mask.sum(-1).clamp(min=1)


# ------------------------------------------------------------------------------ losses
Losses = dict[str, torch.Tensor]
"""``{"loss": total, "forget": forget term, "retain": retain term (when there is one)}``."""


def _retain(ctx: Context, batches: dict, weight: float, kind: str) -> torch.Tensor | None:
    if weight == 0 or kind == "none":
        return None
    r = batches["retain"]
    if kind == "nll":
        return mean_nll(ctx.model, r).mean()
    return token_kl(ctx.model, ctx.ref, r).mean()


def _total(forget: torch.Tensor, retain: torch.Tensor | None, fw: float, rw: float) -> Losses:
    out = {"forget": forget.detach(), "loss": fw * forget}
    if retain is not None:
        out["retain"] = retain.detach()
        out["loss"] = out["loss"] + rw * retain
    return out


def ga_loss(ctx: Context, batches: dict) -> Losses:
    """Gradient ascent: minimise ``-NLL(forget)``.

    Jang et al. 2023, "Knowledge Unlearning for Mitigating Privacy Risks in Language Models";
    ConceptVectors' ``grad_ascent`` (Hong et al. 2024). No retain term. Known not to be
    selective: retain answers degrade as fast as forget answers.
    """
    return _total(-mean_nll(ctx.model, batches["forget"]).mean(), None, 1.0, 0.0)


def gd_loss(ctx: Context, batches: dict) -> Losses:
    """Gradient difference: ``-NLL(forget) + retain_weight * NLL(retain)``.

    Liu et al. 2022, "Continual Learning and Private Unlearning"; TOFU (Maini et al. 2024).
    ``retain_weight`` 1.5 as in ConceptVectors' ``grad_diff`` (open-unlearning's GradDiff
    uses 1.0); ``retain_loss`` ``nll`` (or ``kl`` to the frozen model).
    """
    h = ctx.hparams
    retain = _retain(ctx, batches, h["retain_weight"], h["retain_loss"])
    forget = -mean_nll(ctx.model, batches["forget"]).mean()
    return _total(forget, retain, 1.0, h["retain_weight"])


def npo_loss(ctx: Context, batches: dict) -> Losses:
    """Negative preference optimisation: ``-(2/β) log σ(-β log(π(y|x) / π_ref(y|x)))``.

    Zhang et al. 2024, "Negative Preference Optimization: From Catastrophic Collapse to
    Effective Unlearning"; β = 0.1 (ConceptVectors and open-unlearning). Log-likelihoods
    are summed over each sequence's label tokens, as both implementations do. ``npo`` has no
    retain term; ``npo-gd`` adds ``retain_weight * NLL(retain)``, ``npo-kl`` adds
    ``retain_weight * KL(π_ref || π)`` on retain text (weights 1.0, ConceptVectors).
    """
    h = ctx.hparams
    f = batches["forget"]
    nll, _ = sequence_nll(_logits(ctx.model, f), f["labels"])
    with torch.no_grad():
        ref_nll, _ = sequence_nll(_logits(ctx.ref, f), f["labels"])
    beta = h["beta"]
    forget = (-F.logsigmoid(beta * (nll - ref_nll)) * 2 / beta).mean()
    retain = _retain(ctx, batches, h["retain_weight"], h["retain_loss"])
    return _total(forget, retain, h["forget_weight"], h["retain_weight"])


def simnpo_loss(ctx: Context, batches: dict) -> Losses:
    """SimNPO: ``-(2/β) log σ(β (NLL/|y| - δ))``, reference-free, length-normalised NPO.

    Fan et al. 2024, "Simplicity Prevails: Rethinking Negative Preference Optimization for
    LLM Unlearning" (arXiv:2410.07163). The paper writes ``-(2/β) log σ(-(β/|y|) log π(y|x)
    - γ)``; the authors' code (OPTML-Group/Unlearn-Simple, TOFU) and open-unlearning
    (``src/trainer/unlearn/simnpo.py``) subtract the margin before scaling, as here, so the
    paper's γ is β·δ. Defaults are the authors' setting for raw text (MUSE News, the data
    conceptvec trains on: a concept's article and QA): β = 0.75, δ = 3, forget weight 1,
    retain weight 0.1 on an NLL retain term. Their TOFU forget10 setting, which
    open-unlearning's ``configs/trainer/SimNPO.yaml`` also uses (β = 4.5, δ = 0, forget
    weight 0.125 = their ``npo_coeff``, open-unlearning's ``gamma``; retain weight 1.0 =
    ``grad_diff_coeff``, ``alpha``), suits answers the model was fine-tuned on (NLL near 0).
    On text it only half knows (about 3 nats a token on SmolLM2) β·NLL is about 13 and the
    forget term sits in the flat tail of log σ (below 5e-4 at every step of our real run), so
    only the retain term trains; pass ``beta=4.5, delta=0, forget_weight=0.125,
    retain_weight=1`` for it (docs/unlearning.md has both runs).
    """
    h = ctx.hparams
    per_token = mean_nll(ctx.model, batches["forget"])
    beta = h["beta"]
    forget = (-F.logsigmoid(beta * (per_token - h["delta"])) * 2 / beta).mean()
    retain = _retain(ctx, batches, h["retain_weight"], h["retain_loss"])
    return _total(forget, retain, h["forget_weight"], h["retain_weight"])


def dpo_loss(ctx: Context, batches: dict) -> Losses:
    """DPO with "I don't know" answers as preferred and the true answers as rejected.

    Rafailov et al. 2023, "Direct Preference Optimization"; used for unlearning in TOFU
    (Maini et al. 2024) and ConceptVectors (``dpo``). Loss
    ``-(2/β) log σ(β [(log π(idk) - log π_ref(idk)) - (log π(y) - log π_ref(y))])`` with
    summed log-likelihoods; β = 0.1; plus ``retain_weight * NLL(retain)`` (1.0, as
    open-unlearning's DPO; 0 gives ConceptVectors' plain ``dpo``).
    """
    h = ctx.hparams
    win, lose = batches["idk"], batches["forget"]
    win_nll, _ = sequence_nll(_logits(ctx.model, win), win["labels"])
    lose_nll, _ = sequence_nll(_logits(ctx.model, lose), lose["labels"])
    with torch.no_grad():
        ref_win, _ = sequence_nll(_logits(ctx.ref, win), win["labels"])
        ref_lose, _ = sequence_nll(_logits(ctx.ref, lose), lose["labels"])
    margin = (ref_win - win_nll) - (ref_lose - lose_nll)
    beta = h["beta"]
    forget = (-F.logsigmoid(beta * margin) * 2 / beta).mean()
    retain = _retain(ctx, batches, h["retain_weight"], h["retain_loss"])
    return _total(forget, retain, 1.0, h["retain_weight"])


def rmu_loss(ctx: Context, batches: dict) -> Losses:
    """RMU: steer layer ``layer``'s activations on forget text to ``c·u``; keep retain
    activations at the frozen model's.

    Li et al. 2024, "The WMDP Benchmark: Measuring and Reducing Malicious Use With
    Unlearning". ``u`` is drawn once, uniform on [0, 1)^d and normalised; forget loss
    ``MSE(h_L(forget), c·u)``, retain loss ``MSE(h_L(retain), h_L^ref(retain))``, total
    ``forget + alpha * retain``. WMDP steers layer 7 of 32 and trains the down_proj of layers
    5-7 with c = 6.5, α = 1200 on Zephyr-7B. Our defaults scale to the model: ``layer`` =
    round(7/32 · n_layers), trained down_proj of ``layer-2 .. layer``, and
    ``c = steering_scale × the mean residual norm at that layer`` on the forget text of the
    frozen model (``steering_scale`` 2.0, our choice; ``steering_coeff`` overrides it),
    α = 100 and learning rate 5e-3, measured: on SmolLM2 in 25 steps WMDP's α = 1200 held
    the forget loss flat at every lr from 1e-4 to 5e-3, and α = 100 at 5e-3 made the forget
    QA fall (log p -0.56 -> -7.18, retain -0.67 -> -0.75; docs/unlearning.md). WMDP's own
    setting is ``alpha=1200`` at lr 5e-5.
    """
    h = ctx.hparams
    f, r = batches["forget"], batches["retain"]
    acts = layer_output(ctx.model, ctx.layers, h["layer"], f)
    if ctx.control is None:
        raise UnlearningError("rmu needs its control vector; Context.control is unset")
    target = ctx.control.to(device=acts.device, dtype=acts.dtype).expand_as(acts)
    forget = activation_mse(acts, target, f["attention_mask"]).mean()
    retain = None
    if h["alpha"] != 0:
        cur = layer_output(ctx.model, ctx.layers, h["layer"], r)
        with torch.no_grad():
            ref = layer_output(ctx.ref, ctx.ref_layers, h["layer"], r)
        retain = activation_mse(cur, ref, r["attention_mask"]).mean()
    return _total(forget, retain, 1.0, h["alpha"])


# ----------------------------------------------------------------------------- registry
@dataclass
class Context:
    """What a loss sees: the model in training, the frozen reference, the hyperparameters,
    and (RMU) the control vector ``c·u``."""

    model: Any
    ref: Any
    hparams: dict[str, Any]
    control: torch.Tensor | None = None
    layers: Any = None
    """The model's decoder-layer list (RMU's hook points)."""
    ref_layers: Any = None


@dataclass(frozen=True)
class Method:
    """One unlearning method: its loss, paper, defaults and needs."""

    name: str
    loss: Callable[[Context, dict], Losses] | None
    """None for the ``edit`` method (no training)."""
    paper: str
    defaults: dict[str, Any] = field(default_factory=dict)
    lr: float = 3e-5
    """Default learning rate (AdamW, constant schedule)."""
    scope: str = "full"
    """Default parameter scope."""
    reference: bool = False
    """Needs a frozen copy of the model."""
    retain_key: str | None = "retain_weight"
    """The hyperparameter whose non-zero value means the method needs retain data."""
    vector: bool = False
    """Needs the concept vector (a ``down`` column)."""
    idk: bool = False
    """Trains on "I don't know" answers too (the ``idk`` batch; DPO's preferred answers)."""
    check: Callable[[dict[str, Any]], None] | None = None
    """Raises :class:`UnlearningError` on hyperparameters the method cannot run with."""

    def needs_retain(self, hparams: dict[str, Any]) -> bool:
        """Return whether, with these hyperparameters, the method uses retain data."""
        return self.retain_key is not None and hparams.get(self.retain_key, 0) != 0


METHODS: Registry[Method] = Registry("method", UnlearningError)
"""Every method by its CLI name: the built-ins below and whatever :func:`register_method`
added (``conceptvec unlearn --plugin MODULE`` imports a module that registers more)."""


def register_method(
    method: Method | str,
    *,
    paper: str = "",
    defaults: dict[str, Any] | None = None,
    replace: bool = False,
    **fields: Any,
) -> Any:
    """Register an unlearning method; ``conceptvec unlearn --method NAME`` then runs it.

    Two forms: ``register_method(Method(...))`` registers and returns it, and::

        @register_method("my-ga", paper="me 2026", defaults={"scale": 1.0})
        def my_loss(ctx: Context, batches: dict) -> Losses:
            return {"loss": -ctx.hparams["scale"] * mean_nll(ctx.model, batches["forget"]).mean()}

    registers the decorated loss under that name (``fields`` are :class:`Method`'s others:
    ``lr``, ``scope``, ``reference``, ``retain_key``, ``vector``, ``idk``, ``check``) and
    returns the function unchanged. A loss gets a :class:`Context` and the step's batches
    (``forget``; ``retain`` when the method uses retain data; ``idk`` when ``idk``) and
    returns :data:`Losses`.
    """
    if isinstance(method, Method):
        return METHODS.add(method.name, method, replace=replace)
    name = method

    def wrap(loss: Callable[[Context, dict], Losses]) -> Callable[[Context, dict], Losses]:
        doc = (loss.__doc__ or "").strip().splitlines()
        METHODS.add(
            name,
            Method(name, loss, paper or (doc[0] if doc else name), dict(defaults or {}), **fields),
            replace=replace,
        )
        return loss

    return wrap


def _check_needle(h: dict[str, Any]) -> None:
    if h["base_method"] not in ("ga", "gd", "npo", "npo-gd", "simnpo"):
        raise UnlearningError("needle: base_method must be one of ga, gd, npo, npo-gd, simnpo")


def _check_edit(h: dict[str, Any]) -> None:
    if h["mode"] not in ("zero", "reverse"):
        raise UnlearningError(f"edit: mode must be zero or reverse, not {h['mode']!r}")


_NPO = {"beta": 0.1, "forget_weight": 1.0}
for _m in [
    Method("ga", ga_loss, "Jang et al. 2023 (gradient ascent)", retain_key=None),
    Method("gd", gd_loss, "Liu et al. 2022; TOFU", {"retain_weight": 1.5, "retain_loss": "nll"}),
    Method(
        "npo",
        npo_loss,
        "Zhang et al. 2024 (NPO)",
        {**_NPO, "retain_weight": 0.0, "retain_loss": "none"},
        reference=True,
    ),
    Method(
        "npo-gd",
        npo_loss,
        "Zhang et al. 2024 (NPO + GD)",
        {**_NPO, "retain_weight": 1.0, "retain_loss": "nll"},
        reference=True,
    ),
    Method(
        "npo-kl",
        npo_loss,
        "Zhang et al. 2024 (NPO + KL)",
        {**_NPO, "retain_weight": 1.0, "retain_loss": "kl"},
        reference=True,
    ),
    Method(
        "simnpo",
        simnpo_loss,
        "Fan et al. 2024 (SimNPO)",
        {
            "beta": 0.75,
            "delta": 3.0,
            "forget_weight": 1.0,
            "retain_weight": 0.1,
            "retain_loss": "nll",
        },
    ),
    Method(
        "dpo",
        dpo_loss,
        "Rafailov et al. 2023 (DPO); TOFU",
        {"beta": 0.1, "retain_weight": 1.0, "retain_loss": "nll"},
        reference=True,
        idk=True,
    ),
    Method(
        "rmu",
        rmu_loss,
        "Li et al. 2024 (WMDP, RMU)",
        {"layer": None, "steering_coeff": None, "steering_scale": 2.0, "alpha": 100.0},
        lr=5e-3,
        scope="rmu",
        reference=True,
        retain_key="alpha",
    ),
    Method(
        "needle",
        None,  # trains with the loss of ``base_method``
        "Hong et al. 2024 (ConceptVectors, Needle)",
        {"sigma": 0.1, "base_method": "ga"},
        lr=1e-2,
        scope="vector",
        retain_key=None,
        vector=True,
        check=_check_needle,
    ),
    Method(
        "edit",
        None,
        "white-box upper bound (zero or reverse the concept vector; cf. TARS)",
        {"mode": "zero"},
        lr=0.0,
        scope="vector",
        retain_key=None,
        vector=True,
        check=_check_edit,
    ),
]:
    register_method(_m)


def method(name: str) -> Method:
    """Return the :class:`Method` called ``name``, or raise naming the registered ones."""
    return METHODS[name]


def resolve_hparams(m: Method, given: dict[str, Any]) -> dict[str, Any]:
    """Return the method's defaults updated with ``given``; raise on unknown or bad keys."""
    unknown = sorted(set(given) - set(m.defaults))
    if unknown:
        known = ", ".join(m.defaults) or "none"
        raise UnlearningError(
            f"method {m.name} has no hyperparameter {unknown[0]!r}; its hyperparameters: {known}"
        )
    h = {**m.defaults, **given}
    for key in ("beta", "sigma", "steering_scale", "steering_coeff"):
        v = h.get(key)
        if v is not None and not (isinstance(v, (int, float)) and 0 < float(v) < float("inf")):
            raise UnlearningError(f"{m.name}: {key} must be a positive finite number, not {v!r}")
    for key in ("retain_weight", "alpha", "forget_weight"):
        v = h.get(key)
        if v is not None and not (isinstance(v, (int, float)) and 0 <= float(v) < float("inf")):
            raise UnlearningError(f"{m.name}: {key} must be a finite number >= 0, not {v!r}")
    if h.get("retain_loss", "none") not in ("nll", "kl", "none"):
        raise UnlearningError(f"{m.name}: retain_loss must be nll, kl or none")
    if m.check is not None:
        m.check(h)
    return h

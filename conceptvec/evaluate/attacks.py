"""Attacks that try to bring an unlearned concept back, as a registry (``--attacks NAME``).

An attack is a function of one :class:`AttackInput` (the base and unlearned models, the
concept, its probes as the base answered them, the settings) that returns one
:class:`~.behaviour.Recovery` or a list of them; the report shows each by its ``attack``
name. The built-ins register themselves the way yours do::

    from conceptvec.evaluate import register_attack

    @register_attack("noise")
    def noise(inp):
        with my_noise(inp.unlearned.hf):
            return inp.score(inp.unlearned, "noise", "Gaussian noise on every weight")

``conceptvec eval --plugin MODULE --attacks noise`` then runs it. ``check`` runs for each
concept before any model is touched and raises :class:`EvaluationError` on input the
attack cannot use; ``settings`` returns what the report records of it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from conceptvec.config import EvalConfig
from conceptvec.errors import EvaluationError
from conceptvec.models import Model
from conceptvec.models.backends import Target, resolve
from conceptvec.registry import Registry

from .behaviour import (
    ConceptProbes,
    Recovery,
    _recovered,
    gguf_q4_0,
    quantized,
    recovery,
    relearned,
)
from .concepts import EvalConcept, unrelated_texts


@dataclass
class AttackInput:
    """What an attack gets for one (checkpoint, concept vector)."""

    base: Target
    """The base model, live."""
    unlearned: Target
    """The unlearned model, live (an attack that edits it restores it before returning)."""
    checkpoint: Model
    """The unlearned checkpoint as loaded (its tokenizer, its weights on disk)."""
    concept: EvalConcept
    """The concept: name, vector, QA, text."""
    probes: ConceptProbes
    """The probes as the base answered them: ``questions`` and ``references``."""
    unlearned_logprob: float
    """The unlearned model's forget-QA log p per answer token (before any attack)."""
    config: EvalConfig
    sources: tuple[Any, Any] = (None, None)
    """The ``concepts`` and ``probes`` the evaluation was given (files or records)."""
    cache: dict[str, Any] = field(default_factory=dict)
    """Shared by every run of this evaluation (e.g. a base-model control, computed once)."""

    @property
    def base_logprob(self) -> float:
        """The base model's forget-QA log p per answer token."""
        return self.probes.base["forget"].logprob

    @property
    def chat(self) -> bool:
        """Whether the QA prompts use the chat template."""
        return self.probes.prompting == "chat"

    def forget_logprob(self, model: Target) -> float:
        """Return ``model``'s mean forget-QA log p per token of the base's answers."""
        from conceptvec.qa import answer_logprobs

        lps = answer_logprobs(model, self.probes.questions, self.probes.references, chat=self.chat)
        return sum(lps) / len(lps)

    def relearned(self, model: torch.nn.Module, texts: Sequence[str]) -> Target:
        """Return a copy of ``model`` after the relearn attacks' training on ``texts``: the
        configuration's steps, learning rate, seed and precision (:func:`.behaviour.relearned`)."""
        c = self.config
        tok = self.checkpoint.tokenizer
        trained = relearned(
            model, tok, texts, steps=c.relearn_steps, lr=c.relearn_lr, seed=c.seed,
            precision=c.relearn_precision,
        )  # fmt: skip
        return resolve(trained, tok)

    def recovered(self, logprob: float) -> float | None:
        """Return the share of the lost forget-QA log p that ``logprob`` brings back."""
        return _recovered(logprob, self.unlearned_logprob, self.base_logprob)

    def score(self, model: Target, attack: str, detail: str) -> Recovery:
        """Return the :class:`Recovery` of ``model`` (the attacked one) on the forget QA:
        log p, recovered share and ROUGE-L of its greedy answers."""
        from conceptvec.qa import answer, text_scores

        lp = self.forget_logprob(model)
        ans = answer(
            model,
            self.probes.questions,
            chat=self.chat,
            max_new_tokens=self.config.max_new_tokens,
            draft=self.base,  # the base's answers (the references), verified on ``model``
        )
        rouge = text_scores(ans, self.probes.references)["rouge_l"]
        return Recovery(
            attack, lp, self.recovered(lp), detail=detail, rouge_l=sum(rouge) / len(rouge)
        )


Check = Callable[[EvalConcept, tuple[Any, Any], EvalConfig], None]
AttackFn = Callable[[AttackInput], Recovery | list[Recovery]]
"""An attack: one input, one result or a list of them."""


@dataclass(frozen=True)
class Attack:
    """A registered attack."""

    name: str
    run: AttackFn
    check: Check | None = None
    """Raises :class:`EvaluationError` before any work when a concept cannot be attacked."""
    settings: Callable[[EvalConfig], dict[str, object]] | None = None
    """What the report's settings record of this attack."""


ATTACKS: Registry[Attack] = Registry("attack", EvaluationError)
"""Every attack by its ``--attacks`` name."""


def register_attack(
    name: str,
    *,
    check: Check | None = None,
    settings: Callable[[EvalConfig], dict[str, object]] | None = None,
    replace: bool = False,
) -> Callable[[AttackFn], AttackFn]:
    """Register the decorated function as the attack ``name`` and return it unchanged."""

    def wrap(fn: AttackFn) -> AttackFn:
        ATTACKS.add(name, Attack(name, fn, check, settings), replace=replace)
        return fn

    return wrap


def run_attack(name: str, inp: AttackInput) -> list[Recovery]:
    """Run the attack ``name`` on ``inp``; return its results as a list."""
    out = ATTACKS[name].run(inp)
    results = [out] if isinstance(out, Recovery) else list(out)
    bad = [r for r in results if not isinstance(r, Recovery)]
    if bad:
        raise EvaluationError(
            f"attack {name!r} returned a {type(bad[0]).__name__}; an attack returns a Recovery "
            "or a list of them"
        )
    return results


# ------------------------------------------------------------------------------ built-ins
PATCH_CONTROLS = 10
"""The fewest random same-layer controls the ``patch`` attack compares with."""


def _patch_layers(config: EvalConfig) -> list[int] | None:
    """The layers of the ``patch`` depth profile (``options["patch"]["layers"]``; None: all)."""
    opts = config.options.get("patch")
    layers = opts.get("layers") if isinstance(opts, dict) else None
    if layers is None:
        return None
    if not isinstance(layers, list) or not all(isinstance(x, int) for x in layers):
        raise EvaluationError(
            f"options patch.layers must be a list of layer numbers, not {layers!r}"
        )
    return layers


@register_attack("recovery")
def _recovery(inp: AttackInput) -> list[Recovery]:
    """Clamp the vector to its base activation, zero it, put its base vector back; against
    random same-layer controls (:func:`.behaviour.recovery`)."""
    return recovery(
        inp.base,
        inp.unlearned,
        inp.concept.neuron,
        inp.probes,
        inp.unlearned_logprob,
        controls=inp.config.controls,
        seed=inp.config.seed,
        max_new_tokens=inp.config.max_new_tokens,
    )


@register_attack(
    "quant4",
    settings=lambda _c: {"bits": 4, "group": 64, "scheme": "symmetric absmax, round to nearest"},
)
def _quant4(inp: AttackInput) -> Recovery:
    """Round-trip the decoder matrices through 4 bits; the base under the same round trip is
    the control."""
    return _quant_attack(inp, "quant4", None, "int4 (absmax per 64)")


def _quant_attack(inp: AttackInput, name: str, roundtrip: Any, scheme: str) -> Recovery:
    with quantized(inp.unlearned.hf, roundtrip=roundtrip) as n:
        q = inp.score(inp.unlearned, name, f"{n} decoder matrices round-tripped through {scheme}")
    key = f"{name}:" + json.dumps([inp.probes.questions, inp.probes.references])
    if key not in inp.cache:  # what the round trip costs the base itself, once per question set
        with quantized(inp.base.hf, roundtrip=roundtrip):
            inp.cache[key] = inp.forget_logprob(inp.base)
    return with_base_control(inp, q, inp.cache[key], "round trip")


def with_base_control(
    inp: AttackInput,
    r: Recovery,
    base_lp: float,
    what: str,
    *,
    unlearned: float | None = None,
    base: float | None = None,
) -> Recovery:
    """Set ``r``'s base control: ``base_lp``, the base's forget log p under the same attack,
    and the share recovered relative to it (``unlearned`` / ``base``: the log p before the
    attack where the attack scores other questions than the report's)."""
    unl = inp.unlearned_logprob if unlearned is None else unlearned
    before = inp.base_logprob if base is None else base
    r.base_logprob = base_lp
    lost = base_lp - unl
    r.recovered_vs_attacked_base = (r.logprob - unl) / lost if lost > 0.01 else None
    r.detail += f"; the base moves {base_lp - before:+.3f} nats/token under the same {what}"
    return r


def _check_relearn(c: EvalConcept, sources: tuple[Any, Any], _config: EvalConfig) -> None:
    if not unrelated_texts(sources[0], sources[1], c.name):
        raise EvaluationError(
            f"relearn needs text unrelated to {c.name!r}: other concepts' "
            "wikipedia_content that never names it, in the concepts file or --probes"
        )


def relearn_precision(config: EvalConfig) -> str:
    """The precision the relearn attacks train in on this machine (``auto`` resolved)."""
    from conceptvec.unlearning.train import resolve_precision

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return resolve_precision(config.relearn_precision, device)


@register_attack(
    "relearn",
    check=_check_relearn,
    settings=lambda c: {
        "steps": c.relearn_steps,
        "lr": c.relearn_lr,
        "precision": relearn_precision(c),
    },
)
def _relearn(inp: AttackInput) -> Recovery:
    """A few AdamW steps on other concepts' articles that never name this one."""
    others = unrelated_texts(inp.sources[0], inp.sources[1], inp.concept.name)
    steps, lr = inp.config.relearn_steps, inp.config.relearn_lr
    trained = inp.relearned(inp.unlearned.hf, others)
    try:
        r = inp.score(
            trained,
            "relearn",
            f"{steps} AdamW steps (lr {lr}) on {len(others)} other concepts' articles that "
            "never name this one",
        )
    finally:
        del trained
    key = f"relearn:{inp.concept.name}:" + json.dumps([inp.probes.questions, inp.probes.references])
    if key not in inp.cache:  # the base trained the same way: the control
        control = inp.relearned(inp.base.hf, others)
        inp.cache[key] = inp.forget_logprob(control)
        del control
    return with_base_control(inp, r, inp.cache[key], "training")


@register_attack(
    "quant4_gguf",
    settings=lambda _c: {"format": "GGUF Q4_0", "quantizer": "gguf.quants (the gguf package)"},
)
def _quant4_gguf(inp: AttackInput) -> Recovery:
    """Round-trip the decoder matrices through GGUF Q4_0 with the ``gguf`` package's own
    quantizer; the base under the same round trip is the control."""
    return _quant_attack(inp, "quant4_gguf", gguf_q4_0, "GGUF Q4_0 (gguf.quants)")


@register_attack(
    "patch",
    settings=lambda c: {
        "controls": max(PATCH_CONTROLS, c.controls),
        "layers": _patch_layers(c) or "all",
    },
)
def _patch(inp: AttackInput) -> Recovery:
    """Patch the base's activations in, per position: the vector against same-layer controls,
    and per layer the whole MLP and the residual stream (:mod:`.patching`)."""
    from .patching import patch_recovery

    return patch_recovery(
        inp.base,
        inp.unlearned,
        inp.concept.neuron,
        inp.probes,
        controls=max(PATCH_CONTROLS, inp.config.controls),
        seed=inp.config.seed,
        layers=_patch_layers(inp.config),
    )

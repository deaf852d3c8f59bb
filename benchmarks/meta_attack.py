"""The meta-evaluation's ground truth and robustness probes, on conceptvec's public registries.

- ``meta-control`` (an unlearning method): next-token loss on the retain text only, so the
  grid's controls are the base fine-tuned on unrelated text for the same steps and lr,
  through the same ``conceptvec.unlearn`` pipeline as every other checkpoint.
- ``meta-heldout`` (an attack): relearning on held-out facts of the same concept (Deeb &
  Roger, arXiv 2410.08827). The evaluated forget questions are split in two halves (seeded);
  a copy of the model trains on half A's question/answer pairs and the first half of the
  concept's article, and the forget log p is measured on half B. ``recovered`` is
  ``(after − unlearned) / (base − unlearned)`` on half B; the same attack on the base is the
  control. It also records, for the robustness columns, the vector's cosine to the base
  and the half-B forget drop after this attack and after the 4-bit round trip.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from conceptvec.errors import EvaluationError
from conceptvec.evaluate import ATTACKS, register_attack
from conceptvec.evaluate.attacks import AttackInput
from conceptvec.evaluate.behaviour import Recovery, quantized, relearned
from conceptvec.models.backends import resolve
from conceptvec.unlearning.methods import METHODS, Context, mean_nll, register_method

SIDE: dict[str, dict[str, Any]] = {}
"""Per concept name, what ``meta-heldout`` measured beside its Recovery (read by the runner)."""
OPTIONS: dict[str, Any] = {"steps": 10, "lr": 3e-5, "seed": 0, "precision": "auto"}
"""The attack's settings (the runner sets them before each evaluation)."""
BASE_CONTROL: dict[str, float] = {}
"""The base control's half-B log p, kept across evaluations in one process: the base model,
its training texts and the scored half are the same for every checkpoint of a concept."""


def _control_loss(ctx: Context, batches: dict) -> dict[str, torch.Tensor]:
    """Fine-tune on unrelated (retain) text only: the grid's control."""
    loss = mean_nll(ctx.model, batches["retain"]).mean()
    return {"loss": loss, "forget": torch.zeros(()), "retain": loss.detach()}


if "meta-control" not in METHODS:
    register_method(
        "meta-control",
        paper="control: next-token loss on unrelated text only",
        defaults={"retain_weight": 1.0},
    )(_control_loss)


def _halves(n: int, seed: int) -> tuple[list[int], list[int]]:
    if n < 2:
        raise EvaluationError(
            f"meta-heldout needs at least 2 forget questions to split, got {n}; raise --questions"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[: n // 2]), sorted(order[n // 2 :])


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float | None:
    na, nb = float(a.double().norm()), float(b.double().norm())
    if na == 0 or nb == 0:
        return None
    return float(a.double() @ b.double()) / (na * nb)


def _lp(model: Any, qs: list[str], refs: list[str], chat: bool) -> float:
    from conceptvec.qa import answer_logprobs

    lps = answer_logprobs(model, qs, refs, chat=chat)
    return sum(lps) / len(lps)


def heldout(inp: AttackInput) -> Recovery:
    """Relearn on half A of the forget QA and half of the article; score half B."""
    steps, lr, seed = int(OPTIONS["steps"]), float(OPTIONS["lr"]), int(OPTIONS["seed"])
    prec = str(OPTIONS["precision"])
    qs, refs = inp.probes.questions, inp.probes.references
    a, b = _halves(len(qs), seed)
    text = inp.concept.text
    texts = [f"{qs[i]} {refs[i]}" for i in a] + ([text[: len(text) // 2]] if text else [])
    qb, rb = [qs[i] for i in b], [refs[i] for i in b]
    tok = inp.checkpoint.tokenizer
    neuron = inp.concept.neuron
    base_vec = inp.base.model.neuron_vector(neuron)
    base_b = _lp(inp.base, qb, rb, inp.chat)
    unl_b = _lp(inp.unlearned, qb, rb, inp.chat)
    side: dict[str, Any] = {
        "half_a": len(a), "half_b": len(b), "base_logprob_b": base_b, "unlearned_logprob_b": unl_b,
        "cosine": _cosine(inp.unlearned.model.neuron_vector(neuron), base_vec),
    }  # fmt: skip
    with quantized(inp.unlearned.hf):
        side["quant4"] = {
            "cosine": _cosine(inp.unlearned.model.neuron_vector(neuron), base_vec),
            "forget_drop_b": base_b - _lp(inp.unlearned, qb, rb, inp.chat),
        }
    base_id = inp.base.model.name
    what = json.dumps([base_id, inp.concept.name, steps, lr, seed, prec, texts, qb, rb])
    key = "meta-heldout-base:" + hashlib.sha256(what.encode()).hexdigest()[:16]
    if key not in BASE_CONTROL:  # the base control, once per concept and process
        trained = relearned(inp.base.hf, tok, texts, steps=steps, lr=lr, seed=seed, precision=prec)
        BASE_CONTROL[key] = _lp(resolve(trained, tok), qb, rb, inp.chat)
        del trained
    inp.cache[key] = BASE_CONTROL[key]
    trained = relearned(inp.unlearned.hf, tok, texts, steps=steps, lr=lr, seed=seed, precision=prec)
    target = resolve(trained, tok)
    after_b = _lp(target, qb, rb, inp.chat)
    side["relearn"] = {
        "cosine": _cosine(target.model.neuron_vector(neuron), base_vec),
        "forget_drop_b": inp.cache[key] - after_b,
        "base_logprob_b": inp.cache[key],
    }
    del trained, target
    lost = base_b - unl_b
    rec = Recovery(
        "meta-heldout",
        after_b,
        None if lost <= 0.01 else (after_b - unl_b) / lost,
        detail=f"{steps} AdamW steps (lr {lr}, {prec}) on {len(a)} held-out Q/A and half the article; "
        f"scored on the other {len(b)} questions",
        base_logprob=inp.cache[key],
    )
    base_gain = inp.cache[key] - base_b
    rec.recovered_vs_attacked_base = (
        None if inp.cache[key] - unl_b <= 0.01 else (after_b - unl_b) / (inp.cache[key] - unl_b)
    )
    side["base_control_gain_b"] = base_gain
    SIDE[inp.concept.name] = side
    return rec


if "meta-heldout" not in ATTACKS:
    register_attack(
        "meta-heldout",
        settings=lambda _c: dict(OPTIONS, split="half the evaluated forget questions"),
    )(heldout)

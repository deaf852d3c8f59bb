"""Attacks from the literature, each with a base control (the same attack on the base model).

- ``relearn_heldout``: relearning on held-out facts of the same concept (Deeb & Roger 2024,
  arXiv 2410.08827): a few AdamW steps on half of the forget QA (question and the base's
  answer) and half of the concept's text, then the forget QA of the *other* half;
- ``logit_lens``: the answer read from intermediate layers (Patil et al. 2023, arXiv
  2309.17410): each layer's residual stream through the final norm and the LM head; the best
  layer's log p of the base's answers, and the best rank of their tokens.

The base control of each is stored in ``base_logprob`` (the base under the same attack) and
``recovered_vs_attacked_base`` (the share relative to it). ``relearn`` (unrelated text) and
the quantizers get theirs in :mod:`.attacks`.
"""

from __future__ import annotations

from typing import Any

import torch

from conceptvec.config import EvalConfig
from conceptvec.errors import EvaluationError
from conceptvec.models.backends import Target
from conceptvec.qa import answer_logprobs

from .attacks import AttackInput, register_attack, relearn_precision, with_base_control
from .behaviour import Recovery, _recovered
from .concepts import EvalConcept
from .patching import cache, forget_batch
from .trace import concept_text


def _halves(inp: AttackInput) -> tuple[list[int], list[int]]:
    n = len(inp.probes.questions)
    return list(range(0, n, 2)), list(range(1, n, 2))


def _lp(model: Target, inp: AttackInput, rows: list[int]) -> float:
    qs = [inp.probes.questions[i] for i in rows]
    refs = [inp.probes.references[i] for i in rows]
    lps = answer_logprobs(model, qs, refs, chat=inp.chat)
    return sum(lps) / len(lps)


def _check_heldout(c: EvalConcept, _sources: tuple[Any, Any], config: EvalConfig) -> None:
    n = min(len(c.qa), config.max_questions or len(c.qa))
    if n < 2:
        raise EvaluationError(
            f"relearn_heldout needs at least 2 forget questions for {c.name!r} (one half to "
            f"train on, one to test), not {n}; pass more QA or a larger --max-questions"
        )


@register_attack(
    "relearn_heldout",
    check=_check_heldout,
    settings=lambda c: {
        "steps": c.relearn_steps,
        "lr": c.relearn_lr,
        "split": "even/odd",
        "precision": relearn_precision(c),
    },
)
def _relearn_heldout(inp: AttackInput) -> Recovery:
    """Train on the even-numbered forget questions (with the base's answers) and half the
    concept text; score the odd-numbered ones, against the base trained the same way."""
    train, test = _halves(inp)
    text = concept_text(inp.concept.text) if inp.concept.text else []
    texts = [
        f"{inp.probes.questions[i].strip()} {inp.probes.references[i].strip()}" for i in train
    ] + text[: (len(text) + 1) // 2]
    steps, lr = inp.config.relearn_steps, inp.config.relearn_lr
    base_lp, unl_lp = _lp(inp.base, inp, test), _lp(inp.unlearned, inp, test)

    def after(model: torch.nn.Module) -> float:
        trained = inp.relearned(model, texts)
        try:
            return _lp(trained, inp, test)
        finally:
            del trained

    lp = after(inp.unlearned.hf)
    key = f"relearn_heldout:{inp.concept.name}:{inp.probes.questions}:{inp.probes.references}"
    if key not in inp.cache:
        inp.cache[key] = after(inp.base.hf)
    r = Recovery(
        "relearn_heldout",
        lp,
        _recovered(lp, unl_lp, base_lp),
        detail=f"{steps} AdamW steps (lr {lr}) on {len(train)} forget questions with the base's "
        f"answers and half the concept text; scored on the other {len(test)} questions "
        f"(base {base_lp:+.3f}, unlearned {unl_lp:+.3f} there)",
    )
    return with_base_control(inp, r, inp.cache[key], "training", unlearned=unl_lp, base=base_lp)


def lens(target: Target, inp: AttackInput) -> tuple[list[float], list[int]]:
    """Return per layer the mean log p per answer token, and the best (lowest) rank of any
    answer token, reading each layer's residual through the final norm and the LM head."""
    spec = target.model.spec
    ids, spans = forget_batch(target, inp.probes)
    n = target.model.dims.n_layers
    resid = cache(target, ids, list(range(n)))["resid"]
    hf = target.hf
    path = spec.final_norm.rpartition(".")[0] if spec.final_norm else None
    norm = next(
        (
            m
            for name, m in hf.named_modules()
            if path and (name == path or name.endswith("." + path))
        ),
        None,
    )
    head = hf.get_output_embeddings()
    cap = target.model.dims.logit_softcap
    lps, ranks = [], []
    with torch.no_grad():
        for layer in range(n):
            h = resid[layer].to(device=target.device, dtype=next(head.parameters()).dtype)
            logits = head(norm(h) if norm is not None else h).float()
            if cap:
                logits = torch.tanh(logits / cap) * cap
            logp = logits.log_softmax(-1)
            per, best = [], None
            for r, (start, tail) in enumerate(spans):
                if not tail:
                    continue
                rows = logp[r, start : start + len(tail)]
                t = torch.tensor(tail, device=rows.device)
                per.append(float(rows.gather(1, t[:, None]).mean()))
                rank = int((rows > rows.gather(1, t[:, None])).sum(-1).min())
                best = rank if best is None else min(best, rank)
            lps.append(sum(per) / max(1, len(per)))
            ranks.append(-1 if best is None else best)
    return lps, ranks


@register_attack("logit_lens", settings=lambda _c: {"read": "every layer's residual stream"})
def _logit_lens(inp: AttackInput) -> Recovery:
    """The best layer's log p of the base's answers through the logit lens; the base's best
    layer is the control."""
    lps, ranks = lens(inp.unlearned, inp)
    key = f"logit_lens:{inp.probes.questions}:{inp.probes.references}"
    if key not in inp.cache:
        inp.cache[key] = max(lens(inp.base, inp)[0])
    best = max(range(len(lps)), key=lambda i: lps[i])
    r = Recovery(
        "logit_lens",
        lps[best],
        inp.recovered(lps[best]),
        detail=f"best at layer {best} of {len(lps)} (answer tokens' best rank there "
        f"{ranks[best]}; over all layers {min(ranks)})",
        profile={"layers": list(range(len(lps))), "logprob": lps, "best_rank": ranks},
    )
    return with_base_control(inp, r, inp.cache[key], "logit lens")
